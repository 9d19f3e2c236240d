//! Listing: ListObjects v1 and v2, and ListObjectVersions answered for an unversioned bucket
//! (every object is its only, "null", version). With `encoding-type=url` the keys and
//! prefixes in the answer are URL-encoded, as botocore and rclone ask by default so that keys
//! with control characters survive XML.

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::{Gateway, blocking, buckets::owner, timestamp};
use crate::store::{Entry, Listing};

/// Encodes listing strings when the client asked for `encoding-type=url`.
struct Encoder(bool);

impl Encoder {
    fn new(t: Option<&EncodingType>) -> Encoder {
        Encoder(t.is_some_and(|t| t.as_str().eq_ignore_ascii_case("url")))
    }

    fn enc(&self, s: &str) -> String {
        if self.0 {
            form_urlencoded::byte_serialize(s.as_bytes()).collect()
        } else {
            s.to_string()
        }
    }

    fn opt(&self, s: Option<&str>) -> Option<String> {
        s.map(|s| self.enc(s))
    }

    fn echo(&self) -> Option<EncodingType> {
        self.0.then(|| EncodingType::from_static(EncodingType::URL))
    }

    fn prefixes(&self, l: &Listing) -> Vec<CommonPrefix> {
        l.common_prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(self.enc(p)),
            })
            .collect()
    }

    fn object(&self, key: &str, e: &Entry) -> Object {
        Object {
            key: Some(self.enc(key)),
            size: Some(e.size as i64),
            e_tag: Some(ETag::Strong(e.etag.clone())),
            last_modified: Some(timestamp(e.last_modified_ms)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        }
    }
}

async fn list(
    g: &Gateway,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<String>,
    max: usize,
) -> S3Result<Listing> {
    let store = g.store.clone();
    let (bucket, prefix, delimiter) = (
        bucket.to_string(),
        prefix.to_string(),
        delimiter.map(String::from),
    );
    blocking(move || {
        store.list(
            &bucket,
            &prefix,
            delimiter.as_deref(),
            after.as_deref(),
            max,
        )
    })
    .await
}

fn max_keys(m: Option<i32>) -> usize {
    m.unwrap_or(1000).clamp(0, 1000) as usize
}

pub(super) async fn list_objects_v2(
    g: &Gateway,
    req: S3Request<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    let i = req.input;
    let max = max_keys(i.max_keys);
    let prefix = i.prefix.clone().unwrap_or_default();
    // The continuation token is the last key or prefix returned, hex (opaque to clients).
    let after = match &i.continuation_token {
        Some(t) => Some(
            hex::decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    s3_error!(
                        InvalidArgument,
                        "The continuation token provided is incorrect"
                    )
                })?,
        ),
        None => i.start_after.clone(),
    };
    let l = list(g, &i.bucket, &prefix, i.delimiter.as_deref(), after, max).await?;
    let e = Encoder::new(i.encoding_type.as_ref());
    let contents: Vec<Object> = l.objects.iter().map(|(k, en)| e.object(k, en)).collect();
    let prefixes = e.prefixes(&l);
    Ok(S3Response::new(ListObjectsV2Output {
        name: Some(i.bucket),
        prefix: Some(e.enc(&prefix)),
        delimiter: e.opt(i.delimiter.as_deref()),
        max_keys: Some(max as i32),
        key_count: Some((contents.len() + prefixes.len()) as i32),
        is_truncated: Some(l.truncated),
        continuation_token: i.continuation_token,
        next_continuation_token: l.next_marker.map(hex::encode),
        start_after: e.opt(i.start_after.as_deref()),
        encoding_type: e.echo(),
        contents: Some(contents),
        common_prefixes: Some(prefixes),
        ..Default::default()
    }))
}

pub(super) async fn list_objects(
    g: &Gateway,
    req: S3Request<ListObjectsInput>,
) -> S3Result<S3Response<ListObjectsOutput>> {
    let i = req.input;
    let max = max_keys(i.max_keys);
    let prefix = i.prefix.clone().unwrap_or_default();
    let l = list(
        g,
        &i.bucket,
        &prefix,
        i.delimiter.as_deref(),
        i.marker.clone(),
        max,
    )
    .await?;
    let e = Encoder::new(i.encoding_type.as_ref());
    Ok(S3Response::new(ListObjectsOutput {
        name: Some(i.bucket),
        prefix: Some(e.enc(&prefix)),
        delimiter: e.opt(i.delimiter.as_deref()),
        marker: e.opt(i.marker.as_deref()),
        max_keys: Some(max as i32),
        is_truncated: Some(l.truncated),
        // Like AWS, NextMarker only with a delimiter (clients use the last key otherwise).
        next_marker: e.opt(l.next_marker.as_deref().filter(|_| i.delimiter.is_some())),
        encoding_type: e.echo(),
        contents: Some(l.objects.iter().map(|(k, en)| e.object(k, en)).collect()),
        common_prefixes: Some(e.prefixes(&l)),
        ..Default::default()
    }))
}

pub(super) async fn list_object_versions(
    g: &Gateway,
    req: S3Request<ListObjectVersionsInput>,
) -> S3Result<S3Response<ListObjectVersionsOutput>> {
    let i = req.input;
    let max = max_keys(i.max_keys);
    let prefix = i.prefix.clone().unwrap_or_default();
    let l = list(
        g,
        &i.bucket,
        &prefix,
        i.delimiter.as_deref(),
        i.key_marker.clone(),
        max,
    )
    .await?;
    let e = Encoder::new(i.encoding_type.as_ref());
    let versions = l
        .objects
        .iter()
        .map(|(k, en)| ObjectVersion {
            key: Some(e.enc(k)),
            version_id: Some("null".into()),
            is_latest: Some(true),
            size: Some(en.size as i64),
            e_tag: Some(ETag::Strong(en.etag.clone())),
            last_modified: Some(timestamp(en.last_modified_ms)),
            owner: Some(owner()),
            storage_class: Some(ObjectVersionStorageClass::from_static(
                ObjectVersionStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect();
    Ok(S3Response::new(ListObjectVersionsOutput {
        name: Some(i.bucket),
        prefix: Some(e.enc(&prefix)),
        delimiter: e.opt(i.delimiter.as_deref()),
        key_marker: e.opt(i.key_marker.as_deref()),
        version_id_marker: i.version_id_marker,
        max_keys: Some(max as i32),
        is_truncated: Some(l.truncated),
        next_key_marker: e.opt(l.next_marker.as_deref()),
        next_version_id_marker: l.next_marker.as_ref().map(|_| "null".to_string()),
        encoding_type: e.echo(),
        versions: Some(versions),
        common_prefixes: Some(e.prefixes(&l)),
        ..Default::default()
    }))
}
