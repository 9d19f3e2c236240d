//! Receiving an upload body (PUT object, upload part): streamed to the upload's file as it
//! arrives, with its MD5 (the ETag, checked against Content-MD5) and the checksums the client
//! claims in headers or aws-chunked trailers computed on the way, and refused with the error
//! AWS gives when anything disagrees. Memory stays at one network chunk whatever the size.

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::{ChecksumAlgorithm, StreamingBlob};
use s3s::{S3Error, S3ErrorCode, S3Result, TrailingHeaders, s3_error};

use super::s3;
use crate::checksums::{self, Checksums};
use crate::store::{StoreError, Upload};

/// S3's limit for one PUT or one part.
pub(super) const MAX_UPLOAD: u64 = 5 << 30;

/// The body size a PUT or part upload declares (0 when it does not), refused up front when
/// over S3's limit.
pub(super) fn declared_size(content_length: Option<i64>) -> S3Result<u64> {
    let size = content_length.map_or(0, |l| l.max(0) as u64);
    if size > MAX_UPLOAD {
        return Err(s3_error!(
            EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed size"
        ));
    }
    Ok(size)
}

/// How much of a refused upload's body is read before the answer, at most.
const DRAIN_BYTES_MAX: u64 = 64 << 20;
const DRAIN_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Refuse an upload with `err` only after reading what the client sends, within bounds. An
/// HTTP/1 server that answers before the body is read closes the connection with the body
/// still arriving; the client's kernel then sees a reset and drops the answer, so the client
/// reports "connection reset" instead of the 507 or 404 it was given (what nginx's lingering
/// close avoids). A client that sent `Expect: 100-continue` has not sent its body: it is
/// answered at once.
pub(super) async fn refuse(
    body: Option<StreamingBlob>,
    headers: &hyper::HeaderMap,
    err: S3Error,
) -> S3Error {
    let expects_continue = headers
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if let (Some(mut body), false) = (body, expects_continue) {
        let drain = async {
            let mut read = 0u64;
            while let Some(Ok(chunk)) = body.next().await {
                read += chunk.len() as u64;
                if read > DRAIN_BYTES_MAX {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME_MAX, drain).await;
    }
    err
}

/// What a request says about its body's integrity, before the body is read.
pub(super) struct Claims {
    /// Checksums given in headers (trailers are added once the body is read).
    claimed: Checksums,
    /// Algorithms to compute: the claimed ones, the announced ones and the extra ones the
    /// caller wants stored.
    algorithms: Vec<&'static str>,
    content_md5: Option<String>,
    trailers: Option<TrailingHeaders>,
}

impl Claims {
    pub fn new(
        headers: &hyper::HeaderMap,
        algorithm: Option<&ChecksumAlgorithm>,
        claimed: Checksums,
        content_md5: Option<String>,
        trailers: Option<TrailingHeaders>,
    ) -> S3Result<Claims> {
        let mut algorithms: Vec<&'static str> = claimed
            .keys()
            .filter_map(|a| checksums::canonical(a))
            .collect();
        if let Some(a) = algorithm {
            algorithms.push(checksums::canonical(a.as_str()).ok_or_else(|| {
                s3_error!(
                    InvalidRequest,
                    "Value for x-amz-checksum-algorithm header is invalid."
                )
            })?);
        }
        // aws-chunked uploads announce their trailing checksum here.
        if let Some(t) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
            for name in t.split(',') {
                if let Some(a) = name
                    .trim()
                    .strip_prefix("x-amz-checksum-")
                    .and_then(checksums::canonical)
                {
                    algorithms.push(a);
                }
            }
        }
        algorithms.sort_unstable();
        algorithms.dedup();
        Ok(Claims {
            claimed,
            algorithms,
            content_md5,
            trailers,
        })
    }

    /// Also compute (and so store) `algorithm`, e.g. the one a multipart upload announced.
    pub fn also(&mut self, algorithm: Option<&str>) {
        if let Some(a) = algorithm.and_then(checksums::canonical)
            && !self.algorithms.contains(&a)
        {
            self.algorithms.push(a);
        }
    }
}

/// A body that arrived whole and matched every claim.
pub(super) struct Received {
    pub upload: Upload,
    pub md5_hex: String,
    pub checksums: Checksums,
}

pub(super) async fn receive(
    body: Option<StreamingBlob>,
    mut upload: Upload,
    mut claims: Claims,
) -> S3Result<Received> {
    let mut md5 = Md5::new();
    let mut hasher = checksums::hasher(claims.algorithms.iter().copied());
    if let Some(mut body) = body {
        while let Some(chunk) = body.next().await {
            let chunk: Bytes = chunk.map_err(stream_error)?;
            if upload.written() + chunk.len() as u64 > MAX_UPLOAD {
                return Err(s3_error!(
                    EntityTooLarge,
                    "Your proposed upload exceeds the maximum allowed size"
                ));
            }
            md5.update(&chunk);
            hasher.update(&chunk);
            tokio::task::block_in_place(|| upload.write(&chunk)).map_err(|e| {
                s3(StoreError::Io {
                    context: "write the object".into(),
                    source: e,
                })
            })?;
        }
    }
    let md5 = md5.finalize();
    if let Some(expected) = &claims.content_md5 {
        match base64::engine::general_purpose::STANDARD.decode(expected) {
            Ok(e) if e.len() == 16 => {
                if e.as_slice() != md5.as_slice() {
                    return Err(s3_error!(
                        BadDigest,
                        "The Content-MD5 you specified did not match what we received."
                    ));
                }
            }
            _ => {
                return Err(s3_error!(
                    InvalidDigest,
                    "The Content-MD5 you specified was invalid."
                ));
            }
        }
    }
    if let Some(trailers) = claims.trailers.take().and_then(|t| t.take()) {
        claims.claimed.extend(checksums::from_headers(&trailers));
    }
    let computed = checksums::from_dto(hasher.finalize());
    if let Some(alg) = checksums::first_mismatch(&claims.claimed, &computed) {
        return Err(S3Error::with_message(
            S3ErrorCode::BadDigest,
            format!("The {alg} you specified did not match the calculated checksum."),
        ));
    }
    Ok(Received {
        upload,
        md5_hex: hex::encode(md5),
        checksums: computed,
    })
}

/// s3s reports bad chunk signatures and framing of streamed bodies as stream errors. Its
/// aws-chunked error type is private (s3s 0.14), so a bad chunk signature is recognised by its
/// message; it is answered as AWS does (403 SignatureDoesNotMatch). Anything else is a body
/// that ended early or was malformed.
fn stream_error(e: s3s::StdError) -> S3Error {
    match e.downcast::<S3Error>() {
        Ok(e) => *e,
        Err(e) if e.to_string().contains("SignatureMismatch") => s3_error!(
            SignatureDoesNotMatch,
            "The request signature we calculated does not match the signature you provided."
        ),
        Err(e) => S3Error::with_message(S3ErrorCode::IncompleteBody, e.to_string()),
    }
}
