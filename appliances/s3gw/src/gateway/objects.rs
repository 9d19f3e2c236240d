//! Object operations: PUT, GET (ranges, part numbers, conditions, verified as it streams),
//! HEAD, DELETE, DeleteObjects and CopyObject.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::body::{self, Claims};
use super::conditions::{self, Conditions};
use super::{Gateway, blocking, now_ms, s3, timestamp};
use crate::checksums::{self, Checksums};
use crate::object_file::{self, Meta};
use crate::store::{Store, StoreError, Upload, WriteCondition};

/// The standard HTTP headers an object keeps (lower-case name -> value). `aws-chunked` is a
/// transfer detail of the upload, not the object's encoding: AWS drops it and so do we.
pub(super) fn http_headers(
    content_encoding: Option<&str>,
    content_disposition: Option<&str>,
    content_language: Option<&str>,
    cache_control: Option<&str>,
) -> BTreeMap<String, String> {
    let encoding = content_encoding.map(|e| {
        e.split(',')
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("aws-chunked") && !t.is_empty())
            .collect::<Vec<_>>()
            .join(", ")
    });
    [
        ("content-encoding", encoding.filter(|e| !e.is_empty())),
        ("content-disposition", content_disposition.map(String::from)),
        ("content-language", content_language.map(String::from)),
        ("cache-control", cache_control.map(String::from)),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
    .collect()
}

/// Fill the fields GET and HEAD answers share from the object's metadata.
macro_rules! describe {
    ($out:expr, $meta:expr, $with_checksums:expr) => {{
        let m: &Meta = $meta;
        let h = |k: &str| m.http_headers.get(k).cloned();
        $out.accept_ranges = Some("bytes".into());
        $out.last_modified = Some(timestamp(m.last_modified_ms));
        $out.e_tag = Some(ETag::Strong(m.etag.clone()));
        $out.content_type = m.content_type.clone();
        $out.content_encoding = h("content-encoding");
        $out.content_disposition = h("content-disposition");
        $out.content_language = h("content-language");
        $out.cache_control = h("cache-control");
        $out.metadata = Some(m.user_metadata.clone().into_iter().collect());
        if m.part_sizes.len() > 1 {
            $out.parts_count = Some(m.part_sizes.len() as i32);
        }
        if $with_checksums {
            $out.checksum_type = checksums::checksum_type(&m.checksums);
            checksums::fill!($out, &m.checksums);
        }
    }};
}

pub(super) async fn put_object(
    g: &Gateway,
    req: S3Request<PutObjectInput>,
) -> S3Result<S3Response<PutObjectOutput>> {
    let input = req.input;
    let size = body::declared_size(input.content_length)?;
    let condition =
        conditions::write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
    let claims = Claims::new(
        &req.headers,
        input.checksum_algorithm.as_ref(),
        checksums::claimed!(input),
        input.content_md5,
        req.trailing_headers,
    )?;
    let store = g.store.clone();
    let bucket = input.bucket.clone();
    let upload = match blocking(move || store.begin_upload(&bucket, size)).await {
        Ok(upload) => upload,
        Err(e) => return Err(body::refuse(input.body, &req.headers, e).await),
    };
    let received = body::receive(input.body, upload, claims).await?;
    let meta = Meta {
        content_type: input.content_type.clone(),
        http_headers: http_headers(
            input.content_encoding.as_deref(),
            input.content_disposition.as_deref(),
            input.content_language.as_deref(),
            input.cache_control.as_deref(),
        ),
        user_metadata: input.metadata.unwrap_or_default().into_iter().collect(),
        checksums: received.checksums,
        ..Meta::new(input.key.clone(), received.md5_hex, now_ms())
    };
    let store = g.store.clone();
    let upload = received.upload;
    let meta = blocking(move || store.publish(&input.bucket, upload, meta, &condition)).await?;
    let mut out = PutObjectOutput {
        e_tag: Some(ETag::Strong(meta.etag)),
        checksum_type: checksums::checksum_type(&meta.checksums),
        size: Some(meta.size as i64),
        ..Default::default()
    };
    checksums::fill!(out, &meta.checksums);
    Ok(S3Response::new(out))
}

/// The byte range a GET or HEAD asks for (Range header or part number), with its
/// Content-Range.
fn requested_range(
    meta: &Meta,
    range: Option<&Range>,
    part_number: Option<i32>,
) -> S3Result<(std::ops::Range<u64>, Option<String>)> {
    let r = match (range, part_number) {
        (Some(_), Some(_)) => {
            return Err(s3_error!(
                InvalidRequest,
                "Cannot specify both Range header and partNumber query parameter"
            ));
        }
        (None, None) => return Ok((0..meta.size, None)),
        (Some(r), None) => r
            .check(meta.size)
            .map_err(|_| s3_error!(InvalidRange, "The requested range is not satisfiable"))?,
        (None, Some(n)) => {
            // A single-part object is its own part 1.
            let sizes: &[u64] = if meta.part_sizes.is_empty() {
                &[meta.size]
            } else {
                &meta.part_sizes
            };
            if n < 1 || n as usize > sizes.len() {
                let mut e = S3Error::with_message(
                    S3ErrorCode::Custom("InvalidPartNumber".into()),
                    "The requested partnumber is not satisfiable",
                );
                e.set_status_code(hyper::StatusCode::RANGE_NOT_SATISFIABLE);
                return Err(e);
            }
            let start: u64 = sizes[..n as usize - 1].iter().sum();
            start..start + sizes[n as usize - 1]
        }
    };
    let cr = format!(
        "bytes {}-{}/{}",
        r.start,
        r.end.saturating_sub(1),
        meta.size
    );
    Ok((r, Some(cr)))
}

/// What GET and HEAD share (their inputs have the same fields but different types): open the
/// object, check the request's conditions, resolve the range it asks for.
macro_rules! open_for_read {
    ($g:expr, $input:expr) => {{
        let store = $g.store.clone();
        let (bucket, key) = ($input.bucket.clone(), $input.key.clone());
        let (file, meta) = blocking(move || store.open_object(&bucket, &key)).await?;
        Conditions {
            if_match: $input.if_match.as_ref(),
            if_none_match: $input.if_none_match.as_ref(),
            if_modified_since: $input.if_modified_since.as_ref(),
            if_unmodified_since: $input.if_unmodified_since.as_ref(),
        }
        .check_read(&meta.etag, meta.last_modified_ms)?;
        let (range, content_range) =
            requested_range(&meta, $input.range.as_ref(), $input.part_number)?;
        (file, meta, range, content_range)
    }};
}

pub(super) async fn get_object(
    g: &Gateway,
    req: S3Request<GetObjectInput>,
) -> S3Result<S3Response<GetObjectOutput>> {
    let input = req.input;
    let (file, meta, range, content_range) = open_for_read!(g, input);
    let length = range.end - range.start;
    let whole = length == meta.size;
    let mut out = GetObjectOutput {
        content_length: Some(length as i64),
        content_range,
        ..Default::default()
    };
    // S3 returns checksums only for whole-object reads, and only when asked.
    describe!(out, &meta, whole && input.checksum_mode.is_some());
    // Verified block by block as it streams: a damaged block ends the response with an
    // error instead of sending bad bytes.
    let file = Arc::new(file);
    let meta = Arc::new(meta);
    let chunks = futures::stream::unfold(range.start, move |pos| {
        let (file, meta) = (file.clone(), meta.clone());
        let end = range.end;
        async move {
            if pos >= end {
                return None;
            }
            let to = ((pos / object_file::BLOCK + 1) * object_file::BLOCK).min(end);
            let read =
                tokio::task::spawn_blocking(move || object_file::read_range(&file, &meta, pos, to))
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
    out.body = Some(StreamingBlob::wrap(chunks));
    Ok(S3Response::new(out))
}

pub(super) async fn head_object(
    g: &Gateway,
    req: S3Request<HeadObjectInput>,
) -> S3Result<S3Response<HeadObjectOutput>> {
    let input = req.input;
    let (_, meta, range, content_range) = open_for_read!(g, input);
    let mut out = HeadObjectOutput {
        content_length: Some((range.end - range.start) as i64),
        content_range,
        ..Default::default()
    };
    describe!(
        out,
        &meta,
        range.end - range.start == meta.size && input.checksum_mode.is_some()
    );
    Ok(S3Response::new(out))
}

pub(super) async fn delete_object(
    g: &Gateway,
    req: S3Request<DeleteObjectInput>,
) -> S3Result<S3Response<DeleteObjectOutput>> {
    let store = g.store.clone();
    blocking(move || store.delete_object(&req.input.bucket, &req.input.key)).await?;
    Ok(S3Response::new(DeleteObjectOutput::default()))
}

pub(super) async fn delete_objects(
    g: &Gateway,
    req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    let input = req.input;
    if input.delete.objects.len() > 1000 {
        return Err(s3_error!(
            MalformedXML,
            "The XML you provided was not well-formed or did not validate against our published schema"
        ));
    }
    let quiet = input.delete.quiet.unwrap_or(false);
    let store = g.store.clone();
    let bucket = input.bucket.clone();
    let keys: Vec<String> = input.delete.objects.into_iter().map(|o| o.key).collect();
    let results = blocking(move || {
        if !store.bucket_exists(&bucket) {
            return Err(crate::store::StoreError::NoSuchBucket);
        }
        Ok(keys
            .into_iter()
            .map(|k| {
                let r = store.delete_object(&bucket, &k);
                (k, r)
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let (mut deleted, mut errors) = (vec![], vec![]);
    for (key, r) in results {
        match r {
            Ok(()) if quiet => {}
            Ok(()) => deleted.push(DeletedObject {
                key: Some(key),
                ..Default::default()
            }),
            Err(e) => {
                let e = s3(e);
                errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(key),
                    message: e.message().map(String::from),
                    version_id: None,
                });
            }
        }
    }
    Ok(S3Response::new(DeleteObjectsOutput {
        deleted: Some(deleted),
        errors: Some(errors),
        ..Default::default()
    }))
}

/// The bucket and key of a copy source (only plain `bucket/key`, unversioned).
pub(crate) fn copy_source(src: &CopySource) -> S3Result<(String, String)> {
    match src {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => {
            if version_id.as_deref().is_some_and(|v| v != "null") {
                return Err(s3_error!(NoSuchVersion));
            }
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(s3_error!(
            NotImplemented,
            "Only bucket/key copy sources are supported"
        )),
    }
}

/// A server-side copy's data, not yet published.
pub(super) struct Copied {
    pub upload: Upload,
    pub md5_hex: String,
    pub checksums: Checksums,
}

/// Copy `range` of the object `src` (open as `file`), each block verified, into a new upload
/// in `bucket`, computing its MD5 (the ETag) and the `algorithms`' checksums on the way.
pub(super) fn copy_into_upload<'a>(
    store: &Store,
    bucket: &str,
    file: &File,
    src: &Meta,
    range: std::ops::Range<u64>,
    algorithms: impl IntoIterator<Item = &'a str>,
) -> Result<Copied, StoreError> {
    let mut upload = store.begin_upload(bucket, range.end - range.start)?;
    let mut md5 = <md5::Md5 as md5::Digest>::new();
    let mut hasher = checksums::hasher(algorithms);
    object_file::for_each_verified_chunk(file, src, range.start, range.end, |chunk| {
        md5::Digest::update(&mut md5, chunk);
        hasher.update(chunk);
        upload.write(chunk)
    })?;
    Ok(Copied {
        upload,
        md5_hex: hex::encode(md5::Digest::finalize(md5)),
        checksums: checksums::from_dto(hasher.finalize()),
    })
}

pub(super) async fn copy_object(
    g: &Gateway,
    req: S3Request<CopyObjectInput>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    let input = req.input;
    let (src_bucket, src_key) = copy_source(&input.copy_source)?;
    let store = g.store.clone();
    let (b, k) = (src_bucket.clone(), src_key.clone());
    let (file, src) = blocking(move || store.open_object(&b, &k)).await?;
    conditions::copy_source_conditions!(input)
        .check_copy_source(&src.etag, src.last_modified_ms)?;
    let replace = input
        .metadata_directive
        .as_ref()
        .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
    if !replace
        && src_bucket == input.bucket
        && src_key == input.key
        && input.checksum_algorithm.is_none()
    {
        return Err(s3_error!(
            InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself \
             without changing the object's metadata, storage class, website redirect location \
             or encryption attributes."
        ));
    }
    // The copy keeps the source's whole-object checksums (recomputed on the way) and adds the
    // requested one; a composite checksum does not survive a copy, as on AWS.
    let mut algorithms: Vec<String> = src
        .checksums
        .iter()
        .filter(|(_, v)| !v.contains('-'))
        .map(|(a, _)| a.clone())
        .collect();
    if let Some(a) = &input.checksum_algorithm {
        algorithms.push(a.as_str().to_string());
    }
    let (content_type, http, user) = if replace {
        (
            input.content_type.clone(),
            http_headers(
                input.content_encoding.as_deref(),
                input.content_disposition.as_deref(),
                input.content_language.as_deref(),
                input.cache_control.as_deref(),
            ),
            input
                .metadata
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        )
    } else {
        (
            src.content_type.clone(),
            src.http_headers.clone(),
            src.user_metadata.clone(),
        )
    };
    let store = g.store.clone();
    let (bucket, key) = (input.bucket.clone(), input.key.clone());
    let meta = blocking(move || {
        let algorithms = algorithms.iter().map(String::as_str);
        let copy = copy_into_upload(&store, &bucket, &file, &src, 0..src.size, algorithms)?;
        let meta = Meta {
            content_type,
            http_headers: http,
            user_metadata: user,
            checksums: copy.checksums,
            ..Meta::new(key, copy.md5_hex, now_ms())
        };
        store.publish(&bucket, copy.upload, meta, &WriteCondition::Always)
    })
    .await?;
    let mut result = CopyObjectResult {
        e_tag: Some(ETag::Strong(meta.etag.clone())),
        last_modified: Some(timestamp(meta.last_modified_ms)),
        checksum_type: checksums::checksum_type(&meta.checksums),
        ..Default::default()
    };
    checksums::fill!(result, &meta.checksums);
    Ok(S3Response::new(CopyObjectOutput {
        copy_object_result: Some(result),
        ..Default::default()
    }))
}
