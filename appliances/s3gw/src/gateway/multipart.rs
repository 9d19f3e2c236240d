//! Multipart upload operations: create, upload part (body or copy), list parts, list
//! uploads, complete (retries answered like the first), abort.

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::body::{self, Claims};
use super::conditions;
use super::objects::{copy_into_upload, copy_source, http_headers};
use super::{Gateway, blocking, buckets::owner, now_ms, timestamp};
use crate::checksums::{self, Checksums};
use crate::object_file::Meta;
use crate::store::{Completion, MAX_PART_NUMBER, MultipartInfo, PartRef};

fn check_part_number(n: i32) -> S3Result<()> {
    if (1..=MAX_PART_NUMBER).contains(&n) {
        Ok(())
    } else {
        Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        ))
    }
}

fn part_meta(key: &str, etag: String, checksums: Checksums) -> Meta {
    Meta {
        checksums,
        ..Meta::new(key, etag, now_ms())
    }
}

pub(super) async fn create(
    g: &Gateway,
    req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    let i = req.input;
    let algorithm = match &i.checksum_algorithm {
        Some(a) => Some(checksums::canonical(a.as_str()).ok_or_else(|| {
            s3_error!(
                InvalidRequest,
                "Value for x-amz-checksum-algorithm header is invalid."
            )
        })?),
        None => None,
    };
    let info = MultipartInfo {
        bucket: i.bucket.clone(),
        key: i.key.clone(),
        upload_id: String::new(),
        initiated_ms: now_ms(),
        content_type: i.content_type.clone(),
        http_headers: http_headers(
            i.content_encoding.as_deref(),
            i.content_disposition.as_deref(),
            i.content_language.as_deref(),
            i.cache_control.as_deref(),
        ),
        user_metadata: i.metadata.clone().unwrap_or_default().into_iter().collect(),
        checksum_algorithm: algorithm.map(String::from),
        checksum_type: algorithm.map(|_| {
            i.checksum_type
                .as_ref()
                .map_or(ChecksumType::COMPOSITE.to_string(), |t| {
                    t.as_str().to_string()
                })
        }),
    };
    let store = g.store.clone();
    let info = blocking(move || store.create_multipart(info)).await?;
    Ok(S3Response::new(CreateMultipartUploadOutput {
        bucket: Some(i.bucket),
        key: Some(i.key),
        upload_id: Some(info.upload_id),
        checksum_algorithm: i.checksum_algorithm,
        checksum_type: info.checksum_type.map(ChecksumType::from),
        ..Default::default()
    }))
}

pub(super) async fn upload_part(
    g: &Gateway,
    req: S3Request<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    let i = req.input;
    check_part_number(i.part_number)?;
    let size = body::declared_size(i.content_length)?;
    let store = g.store.clone();
    let (bucket, key, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
    let began = blocking(move || {
        let info = store.multipart(&bucket, &key, &id)?;
        Ok((info, store.begin_upload(&bucket, size)?))
    })
    .await;
    let (info, upload) = match began {
        Ok(began) => began,
        Err(e) => return Err(body::refuse(i.body, &req.headers, e).await),
    };
    let mut claims = Claims::new(
        &req.headers,
        i.checksum_algorithm.as_ref(),
        checksums::claimed!(i),
        i.content_md5,
        req.trailing_headers,
    )?;
    // The part's checksum in the upload's algorithm is needed for the composite at the end.
    claims.also(info.checksum_algorithm.as_deref());
    let received = body::receive(i.body, upload, claims).await?;
    let meta = part_meta(&i.key, received.md5_hex, received.checksums);
    let store = g.store.clone();
    let upload = received.upload;
    let meta = blocking(move || store.publish_part(&info, i.part_number, upload, meta)).await?;
    let mut out = UploadPartOutput {
        e_tag: Some(ETag::Strong(meta.etag)),
        ..Default::default()
    };
    checksums::fill!(out, &meta.checksums);
    Ok(S3Response::new(out))
}

/// `bytes=first-last` of x-amz-copy-source-range, checked against the source's size.
fn copy_range(range: Option<&str>, size: u64) -> S3Result<std::ops::Range<u64>> {
    let Some(r) = range else {
        return Ok(0..size);
    };
    let parsed = r.strip_prefix("bytes=").and_then(|r| {
        let (a, b) = r.split_once('-')?;
        Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
    });
    match parsed {
        Some((first, last)) if first <= last && last < size => Ok(first..last + 1),
        Some(_) => Err(s3_error!(
            InvalidRange,
            "The requested range is not satisfiable"
        )),
        None => Err(s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where \
             first and last are the zero-based offsets of the first and last bytes to copy"
        )),
    }
}

pub(super) async fn upload_part_copy(
    g: &Gateway,
    req: S3Request<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    let i = req.input;
    check_part_number(i.part_number)?;
    let (src_bucket, src_key) = copy_source(&i.copy_source)?;
    let store = g.store.clone();
    let (bucket, key, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
    let (info, (file, src)) = blocking(move || {
        Ok((
            store.multipart(&bucket, &key, &id)?,
            store.open_object(&src_bucket, &src_key)?,
        ))
    })
    .await?;
    conditions::copy_source_conditions!(i).check_copy_source(&src.etag, src.last_modified_ms)?;
    let range = copy_range(i.copy_source_range.as_deref(), src.size)?;
    if range.end - range.start > body::MAX_UPLOAD {
        return Err(s3_error!(EntityTooLarge));
    }
    let store = g.store.clone();
    let meta = blocking(move || {
        let algorithm = info.checksum_algorithm.as_deref();
        let copy = copy_into_upload(&store, &info.bucket, &file, &src, range, algorithm)?;
        let meta = part_meta(&info.key, copy.md5_hex, copy.checksums);
        store.publish_part(&info, i.part_number, copy.upload, meta)
    })
    .await?;
    let mut result = CopyPartResult {
        e_tag: Some(ETag::Strong(meta.etag)),
        last_modified: Some(timestamp(meta.last_modified_ms)),
        ..Default::default()
    };
    checksums::fill!(result, &meta.checksums);
    Ok(S3Response::new(UploadPartCopyOutput {
        copy_part_result: Some(result),
        ..Default::default()
    }))
}

pub(super) async fn list_parts(
    g: &Gateway,
    req: S3Request<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    let i = req.input;
    let max = i.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
    let marker = i.part_number_marker.unwrap_or(0);
    let store = g.store.clone();
    let (bucket, key, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
    let (info, parts) = blocking(move || {
        let info = store.multipart(&bucket, &key, &id)?;
        let parts = store.list_parts(&info)?;
        Ok((info, parts))
    })
    .await?;
    let after: Vec<(i32, Meta)> = parts.into_iter().filter(|(n, _)| *n > marker).collect();
    let truncated = after.len() > max;
    let page = &after[..after.len().min(max)];
    let parts = page
        .iter()
        .map(|(n, m)| {
            let mut part = Part {
                part_number: Some(*n),
                e_tag: Some(ETag::Strong(m.etag.clone())),
                size: Some(m.size as i64),
                last_modified: Some(timestamp(m.last_modified_ms)),
                ..Default::default()
            };
            checksums::fill!(part, &m.checksums);
            part
        })
        .collect();
    Ok(S3Response::new(ListPartsOutput {
        bucket: Some(i.bucket),
        key: Some(i.key),
        upload_id: Some(i.upload_id),
        part_number_marker: i.part_number_marker,
        next_part_number_marker: page.last().filter(|_| truncated).map(|(n, _)| *n),
        max_parts: Some(max as i32),
        is_truncated: Some(truncated),
        parts: Some(parts),
        owner: Some(owner()),
        checksum_algorithm: info.checksum_algorithm.map(ChecksumAlgorithm::from),
        checksum_type: info.checksum_type.map(ChecksumType::from),
        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
        ..Default::default()
    }))
}

pub(super) async fn list_uploads(
    g: &Gateway,
    req: S3Request<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let i = req.input;
    let max = i.max_uploads.unwrap_or(1000).clamp(0, 1000) as usize;
    let prefix = i.prefix.clone().unwrap_or_default();
    let store = g.store.clone();
    let bucket = i.bucket.clone();
    let all = blocking(move || store.list_multipart(&bucket)).await?;
    let key_marker = i.key_marker.clone().unwrap_or_default();
    let id_marker = i.upload_id_marker.clone();
    let delimiter = i.delimiter.clone().filter(|d| !d.is_empty());
    let (mut uploads, mut prefixes) = (vec![], Vec::<String>::new());
    let mut truncated = false;
    let mut last: Option<(String, String)> = None;
    for u in all.into_iter().filter(|u| u.key.starts_with(&prefix)) {
        // After the markers: keys past key-marker, or the same key with a later upload id.
        let past = match &id_marker {
            Some(id) if u.key == key_marker => u.upload_id.as_str() > id.as_str(),
            _ => u.key.as_str() > key_marker.as_str(),
        };
        if !past {
            continue;
        }
        let rolled = delimiter.as_deref().and_then(|d| {
            u.key[prefix.len()..]
                .find(d)
                .map(|n| u.key[..prefix.len() + n + d.len()].to_string())
        });
        if let Some(cp) = &rolled
            && prefixes.last() == Some(cp)
        {
            continue;
        }
        if uploads.len() + prefixes.len() == max {
            truncated = true;
            break;
        }
        last = Some((u.key.clone(), u.upload_id.clone()));
        match rolled {
            Some(cp) => prefixes.push(cp),
            None => uploads.push(MultipartUpload {
                key: Some(u.key),
                upload_id: Some(u.upload_id),
                initiated: Some(timestamp(u.initiated_ms)),
                owner: Some(owner()),
                initiator: Some(Initiator {
                    display_name: owner().display_name,
                    id: owner().id,
                }),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                checksum_algorithm: u.checksum_algorithm.map(ChecksumAlgorithm::from),
                checksum_type: u.checksum_type.map(ChecksumType::from),
            }),
        }
    }
    let (next_key, next_id) = match last.filter(|_| truncated) {
        Some((k, id)) => (Some(k), Some(id)),
        None => (None, None),
    };
    Ok(S3Response::new(ListMultipartUploadsOutput {
        bucket: Some(i.bucket),
        prefix: i.prefix,
        delimiter: i.delimiter,
        key_marker: i.key_marker,
        upload_id_marker: i.upload_id_marker,
        max_uploads: Some(max as i32),
        is_truncated: Some(truncated),
        next_key_marker: next_key,
        next_upload_id_marker: next_id,
        uploads: Some(uploads),
        common_prefixes: Some(
            prefixes
                .into_iter()
                .map(|p| CommonPrefix { prefix: Some(p) })
                .collect(),
        ),
        ..Default::default()
    }))
}

pub(super) async fn complete(
    g: &Gateway,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let i = req.input;
    let parts: Vec<PartRef> = i
        .multipart_upload
        .and_then(|m| m.parts)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let number = p.part_number.unwrap_or(0);
            PartRef {
                number,
                etag: p.e_tag.map(ETag::into_value).unwrap_or_default(),
                checksums: checksums::claimed!(p),
            }
        })
        .collect();
    if parts.is_empty() {
        return Err(s3_error!(
            MalformedXML,
            "The XML you provided was not well-formed or did not validate against our published schema"
        ));
    }
    let claimed = checksums::claimed!(i);
    let completion = Completion {
        parts,
        claimed,
        condition: conditions::write_condition(i.if_match.as_ref(), i.if_none_match.as_ref())?,
    };
    let store = g.store.clone();
    let (bucket, key, id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
    let done =
        blocking(move || store.complete_multipart(&bucket, &key, &id, &completion, now_ms()))
            .await?;
    let mut out = CompleteMultipartUploadOutput {
        bucket: Some(i.bucket.clone()),
        key: Some(i.key.clone()),
        location: Some(format!("/{}/{}", i.bucket, i.key)),
        e_tag: Some(ETag::Strong(done.etag)),
        checksum_type: done.checksum_type.map(ChecksumType::from),
        ..Default::default()
    };
    checksums::fill!(out, &done.checksums);
    Ok(S3Response::new(out))
}

pub(super) async fn abort(
    g: &Gateway,
    req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    let i = req.input;
    let store = g.store.clone();
    blocking(move || store.abort_multipart(&i.bucket, &i.key, &i.upload_id)).await?;
    Ok(S3Response::new(AbortMultipartUploadOutput::default()))
}
