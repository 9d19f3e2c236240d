//! The S3 operations, as `s3s` hands them over (already routed, authenticated and with their
//! XML and headers parsed), implemented on the [`Store`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::object_file::{self, Meta};
use crate::store::{Store, StoreError};

pub struct Gateway {
    store: Arc<Store>,
}

impl Gateway {
    pub fn new(store: Arc<Store>) -> Gateway {
        Gateway { store }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// Store errors as the S3 errors AWS returns for them.
fn s3(e: StoreError) -> S3Error {
    match e {
        StoreError::NoSuchBucket => s3_error!(NoSuchBucket),
        StoreError::BucketExists => s3_error!(BucketAlreadyOwnedByYou),
        StoreError::BucketNotEmpty => s3_error!(BucketNotEmpty),
        StoreError::NoSuchKey => s3_error!(NoSuchKey),
        other => {
            tracing::error!(error = %other, "storage failure");
            S3Error::with_message(S3ErrorCode::InternalError, other.to_string())
        }
    }
}

/// Run blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> S3Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))?
        .map_err(s3)
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self
            .store
            .list_buckets()
            .into_iter()
            .map(|(name, created)| Bucket {
                name: Some(name),
                creation_date: Some(timestamp(created)),
                bucket_region: None,
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let store = self.store.clone();
        let bucket = req.input.bucket.clone();
        blocking(move || store.create_bucket(&bucket, now_ms())).await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        if !self.store.bucket_exists(&req.input.bucket) {
            return Err(s3_error!(NoSuchBucket));
        }
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let store = self.store.clone();
        blocking(move || store.delete_bucket(&req.input.bucket)).await?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        // Versioning is never enabled: the empty answer AWS gives for such a bucket.
        if !self.store.bucket_exists(&req.input.bucket) {
            return Err(s3_error!(NoSuchBucket));
        }
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let Some(mut body) = input.body else {
            return Err(s3_error!(IncompleteBody));
        };
        let store = self.store.clone();
        let bucket = input.bucket.clone();
        let mut upload = blocking(move || store.begin_upload(&bucket)).await?;
        let mut md5 = Md5::new();
        let mut failed: Option<S3Error> = None;
        while let Some(chunk) = body.next().await {
            let chunk: Bytes = match chunk {
                Ok(c) => c,
                Err(e) => {
                    // s3s reports checksum and signature mismatches of streamed bodies here.
                    failed = Some(S3Error::with_message(
                        S3ErrorCode::IncompleteBody,
                        e.to_string(),
                    ));
                    break;
                }
            };
            md5.update(&chunk);
            if let Err(e) = tokio::task::block_in_place(|| upload.writer.write(&chunk)) {
                failed = Some(s3(StoreError::Io {
                    context: "write the object".into(),
                    source: e,
                }));
                break;
            }
        }
        let md5 = md5.finalize();
        if failed.is_none()
            && let Some(content_md5) = &input.content_md5
        {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(content_md5) {
                Ok(expected) if expected.len() == 16 => {
                    if expected.as_slice() != md5.as_slice() {
                        failed = Some(s3_error!(BadDigest));
                    }
                }
                _ => failed = Some(s3_error!(InvalidDigest)),
            }
        }
        if let Some(e) = failed {
            self.store.abandon(upload);
            return Err(e);
        }
        let meta = Meta {
            key: input.key.clone(),
            size: 0,
            etag: hex::encode(md5),
            last_modified_ms: now_ms(),
            content_type: input.content_type.clone(),
            user_metadata: input
                .metadata
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            checksums: Default::default(),
            block_crcs: vec![],
        };
        let store = self.store.clone();
        let bucket = input.bucket.clone();
        let meta = blocking(move || store.publish(&bucket, upload, meta)).await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(meta.etag)),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let store = self.store.clone();
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let (file, meta) = blocking(move || store.open_object(&bucket, &key)).await?;
        let (range, content_range) = match &input.range {
            None => (0..meta.size, None),
            Some(r) => {
                let r = r.check(meta.size).map_err(|_| s3_error!(InvalidRange))?;
                let cr = format!(
                    "bytes {}-{}/{}",
                    r.start,
                    r.end.saturating_sub(1),
                    meta.size
                );
                (r, Some(cr))
            }
        };
        let length = range.end - range.start;
        // Verified block by block as it streams: a damaged block ends the response with an
        // error instead of sending bad bytes.
        let file = Arc::new(file);
        let meta_for_body = Arc::new(meta.clone());
        let chunks = futures::stream::unfold(range.start, move |pos| {
            let (file, meta) = (file.clone(), meta_for_body.clone());
            let end = range.end;
            async move {
                if pos >= end {
                    return None;
                }
                let next = ((pos / object_file::BLOCK) + 1) * object_file::BLOCK;
                let to = next.min(end);
                let read = tokio::task::spawn_blocking(move || {
                    object_file::read_range(&file, &meta, pos, to)
                })
                .await;
                let item = match read {
                    Ok(Ok(data)) => Ok(Bytes::from(data)),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "refusing to serve damaged object data");
                        Err(std::io::Error::other(e.to_string()))
                    }
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                };
                Some((item, to))
            }
        });
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(chunks)),
            content_length: Some(length as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            e_tag: Some(ETag::Strong(meta.etag.clone())),
            content_type: meta.content_type.clone(),
            metadata: Some(meta.user_metadata.clone().into_iter().collect()),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let store = self.store.clone();
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let (_, meta) = blocking(move || store.open_object(&bucket, &key)).await?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(meta.size as i64),
            accept_ranges: Some("bytes".into()),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            e_tag: Some(ETag::Strong(meta.etag.clone())),
            content_type: meta.content_type.clone(),
            metadata: Some(meta.user_metadata.into_iter().collect()),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let store = self.store.clone();
        blocking(move || store.delete_object(&req.input.bucket, &req.input.key)).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = req.input;
        let max = i.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = i.prefix.clone().unwrap_or_default();
        // The continuation token is the last key or prefix returned (opaque to clients).
        let after = match &i.continuation_token {
            Some(t) => Some(
                String::from_utf8(
                    hex::decode(t)
                        .map_err(|_| s3_error!(InvalidArgument, "bad continuation token"))?,
                )
                .map_err(|_| s3_error!(InvalidArgument, "bad continuation token"))?,
            ),
            None => i.start_after.clone(),
        };
        let store = self.store.clone();
        let (bucket, delimiter) = (i.bucket.clone(), i.delimiter.clone());
        let p = prefix.clone();
        let listing =
            blocking(move || store.list(&bucket, &p, delimiter.as_deref(), after.as_deref(), max))
                .await?;
        let contents: Vec<Object> = listing.objects.iter().map(|(k, e)| object(k, e)).collect();
        let prefixes: Vec<CommonPrefix> = listing
            .common_prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(p.clone()),
            })
            .collect();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: Some(prefix),
            delimiter: i.delimiter,
            max_keys: Some(max as i32),
            key_count: Some((contents.len() + prefixes.len()) as i32),
            is_truncated: Some(listing.truncated),
            continuation_token: i.continuation_token,
            next_continuation_token: listing.next_marker.map(hex::encode),
            start_after: i.start_after,
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let i = req.input;
        let max = i.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let prefix = i.prefix.clone().unwrap_or_default();
        let store = self.store.clone();
        let (bucket, delimiter, marker) = (i.bucket.clone(), i.delimiter.clone(), i.marker.clone());
        let p = prefix.clone();
        let listing =
            blocking(move || store.list(&bucket, &p, delimiter.as_deref(), marker.as_deref(), max))
                .await?;
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket),
            prefix: Some(prefix),
            delimiter: i.delimiter.clone(),
            marker: i.marker,
            max_keys: Some(max as i32),
            is_truncated: Some(listing.truncated),
            // Like AWS, NextMarker only with a delimiter (clients use the last key otherwise).
            next_marker: listing.next_marker.filter(|_| i.delimiter.is_some()),
            contents: Some(listing.objects.iter().map(|(k, e)| object(k, e)).collect()),
            common_prefixes: Some(
                listing
                    .common_prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect(),
            ),
            ..Default::default()
        }))
    }
}

fn object(key: &str, e: &crate::store::Entry) -> Object {
    Object {
        key: Some(key.to_string()),
        size: Some(e.size as i64),
        e_tag: Some(ETag::Strong(e.etag.clone())),
        last_modified: Some(timestamp(e.last_modified_ms)),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        ..Default::default()
    }
}
