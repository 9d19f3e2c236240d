//! A small S3 client for benchmarks, tests and the edge gateway's claim checks: requests are
//! SigV4 presigned URLs made by `rusty-s3` (sans-IO signing, so any S3 endpoint accepts
//! them: AWS, MinIO, this gateway) and sent with hyper over HTTP or HTTPS (rustls: the
//! system's roots, or the caller's configuration for a private CA and a client certificate).
//! Bodies stream both ways: an upload of any size is produced chunk by chunk, a download is
//! consumed chunk by chunk, so neither side of a benchmark holds an object in memory.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

type Body = BoxBody<Bytes, std::io::Error>;

/// How long a presigned request stays valid: long enough for a slow 1 GiB transfer.
const VALID_FOR: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct S3Client {
    bucket: Bucket,
    credentials: Credentials,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
}

impl S3Client {
    /// A client for `bucket` at `endpoint` (`http://host:port` or `https://...`), path style.
    pub fn new(
        endpoint: &str,
        bucket: &str,
        access_key: &str,
        secret_key: &str,
        region: &str,
    ) -> anyhow::Result<S3Client> {
        S3Client::with_tls(endpoint, bucket, access_key, secret_key, region, None)
    }

    /// [`S3Client::new`] trusting what `tls` trusts and presenting its certificate (mutual
    /// TLS to a gateway of the hub's own PKI) instead of the system's roots.
    pub fn with_tls(
        endpoint: &str,
        bucket: &str,
        access_key: &str,
        secret_key: &str,
        region: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<S3Client> {
        let url = endpoint
            .parse()
            .with_context(|| format!("endpoint {endpoint:?}"))?;
        let bucket = Bucket::new(url, UrlStyle::Path, bucket.to_string(), region.to_string())
            .with_context(|| format!("bucket {bucket:?} at {endpoint}"))?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match tls {
            Some(config) => builder.with_tls_config((*config).clone()),
            None => builder
                .with_native_roots()
                .context("loading the system's TLS roots")?,
        };
        let https = builder.https_or_http().enable_http1().wrap_connector(tcp);
        Ok(S3Client {
            bucket,
            credentials: Credentials::new(access_key, secret_key),
            http: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// Create the bucket; one that already exists and is ours is fine.
    pub async fn create_bucket(&self) -> anyhow::Result<()> {
        let url = self.bucket.create_bucket(&self.credentials).sign(VALID_FOR);
        let (status, body) = self.send("PUT", url, empty()).await?;
        if status.is_success() || String::from_utf8_lossy(&body).contains("BucketAlreadyOwnedByYou")
        {
            return Ok(());
        }
        bail!(
            "create bucket: {status}: {}",
            String::from_utf8_lossy(&body)
        )
    }

    /// Upload `data`.
    pub async fn put(&self, key: &str, data: Bytes) -> anyhow::Result<()> {
        let body = Full::new(data).map_err(|never| match never {}).boxed();
        self.put_body(key, body).await
    }

    /// Upload `len` bytes made by repeating `chunk`, produced as they are sent.
    pub async fn put_repeated(&self, key: &str, chunk: Bytes, len: u64) -> anyhow::Result<()> {
        let chunks = futures::stream::unfold(0u64, move |sent| {
            let chunk = chunk.clone();
            async move {
                if sent >= len {
                    return None;
                }
                let n = (len - sent).min(chunk.len() as u64) as usize;
                Some((Ok(Frame::data(chunk.slice(..n))), sent + n as u64))
            }
        });
        self.put_body(key, BodyExt::boxed(StreamBody::new(chunks)))
            .await
    }

    async fn put_body(&self, key: &str, body: Body) -> anyhow::Result<()> {
        let url = self
            .bucket
            .put_object(Some(&self.credentials), key)
            .sign(VALID_FOR);
        let (status, text) = self.send("PUT", url, body).await?;
        if !status.is_success() {
            bail!("PUT {key}: {status}: {}", String::from_utf8_lossy(&text));
        }
        Ok(())
    }

    /// Upload `data` so that the server checks every byte: with its SHA-256
    /// (`x-amz-checksum-sha256`, signed), refused by the server when the body it got does not
    /// match. Over `part_bytes`, a multipart upload whose parts each carry their own SHA-256.
    /// Returns the SHA-256 of the whole object.
    pub async fn put_verified(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        part_bytes: usize,
    ) -> anyhow::Result<[u8; 32]> {
        let sha256 = sha256(&data);
        if data.len() <= part_bytes {
            let mut action = self.bucket.put_object(Some(&self.credentials), key);
            let checksum = b64(&sha256);
            let headers = [
                ("x-amz-checksum-sha256", checksum.as_str()),
                ("content-type", content_type),
            ];
            for (k, v) in headers {
                action.headers_mut().insert(k, v);
            }
            let url = action.sign(VALID_FOR);
            let (status, text) = self.send_with("PUT", url, &headers, full(data)).await?;
            if !status.is_success() {
                bail!("PUT {key}: {status}: {}", String::from_utf8_lossy(&text));
            }
        } else {
            self.put_multipart(key, data, content_type, part_bytes)
                .await?;
        }
        Ok(sha256)
    }

    /// The SHA-256 checksum the server keeps for an object (`x-amz-checksum-sha256` of a HEAD
    /// with checksum mode on): what [`S3Client::expected_sha256`] gives for a
    /// [`S3Client::put_verified`] upload. `None` when the object, or its checksum, is missing.
    pub async fn stored_sha256(&self, key: &str) -> anyhow::Result<Option<String>> {
        let mut action = self.bucket.head_object(Some(&self.credentials), key);
        action
            .headers_mut()
            .insert("x-amz-checksum-mode", "ENABLED");
        let url = action.sign(VALID_FOR);
        let headers = [("x-amz-checksum-mode", "ENABLED")];
        let resp = self.request_with("HEAD", url, &headers, empty()).await?;
        let status = resp.status();
        // A writer without read (a branch's least privilege) may not look: as if absent, so
        // the caller uploads it (again).
        if status == hyper::StatusCode::NOT_FOUND || status == hyper::StatusCode::FORBIDDEN {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("HEAD {key}: {status}");
        }
        Ok(resp
            .headers()
            .get("x-amz-checksum-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// The checksum the server keeps after [`S3Client::put_verified`] uploads `data`: its
    /// SHA-256 in base64, or over `part_bytes` the multipart "composite" (the SHA-256 of the
    /// parts' SHA-256s, then `-<parts>`).
    pub fn expected_sha256(data: &[u8], part_bytes: usize) -> String {
        if data.len() <= part_bytes {
            return b64(&sha256(data));
        }
        let parts: Vec<u8> = data.chunks(part_bytes).flat_map(sha256).collect();
        format!(
            "{}-{}",
            b64(&sha256(&parts)),
            data.len().div_ceil(part_bytes)
        )
    }

    async fn put_multipart(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
        part_bytes: usize,
    ) -> anyhow::Result<()> {
        let mut create = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), key);
        // With the algorithm named, the server keeps the composite checksum of the parts'
        // SHA-256s, which `stored_sha256` reads back.
        let headers = [
            ("content-type", content_type),
            ("x-amz-checksum-algorithm", "SHA256"),
        ];
        for (k, v) in headers {
            create.headers_mut().insert(k, v);
        }
        let url = create.sign(VALID_FOR);
        let (status, text) = self.send_with("POST", url, &headers, empty()).await?;
        if !status.is_success() {
            bail!(
                "creating the upload of {key}: {status}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        let created = rusty_s3::actions::CreateMultipartUpload::parse_response(
            &String::from_utf8_lossy(&text),
        )
        .with_context(|| format!("the answer to creating the upload of {key}"))?;
        let upload_id = created.upload_id().to_string();
        let mut etags = Vec::new();
        for (i, part) in data.chunks(part_bytes).enumerate() {
            let number = u16::try_from(i + 1).context("more than 65535 parts")?;
            let part = data.slice_ref(part);
            let mut action =
                self.bucket
                    .upload_part(Some(&self.credentials), key, number, &upload_id);
            let checksum = b64(&sha256(&part));
            action
                .headers_mut()
                .insert("x-amz-checksum-sha256", checksum.as_str());
            let url = action.sign(VALID_FOR);
            let headers = [("x-amz-checksum-sha256", checksum.as_str())];
            let resp = self.request_with("PUT", url, &headers, full(part)).await?;
            let status = resp.status();
            let etag = resp
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = resp.into_body().collect().await?.to_bytes();
            match (status.is_success(), etag) {
                (true, Some(etag)) => etags.push((etag, checksum)),
                _ => bail!(
                    "part {number} of {key}: {status}: {}",
                    String::from_utf8_lossy(&text)
                ),
            }
        }
        let complete = self.bucket.complete_multipart_upload(
            Some(&self.credentials),
            key,
            &upload_id,
            etags.iter().map(|(e, _)| e.as_str()),
        );
        let url = complete.sign(VALID_FOR);
        // Written here rather than by rusty-s3, whose body has no part checksums: S3 wants
        // each part's checksum when the upload named its algorithm.
        let parts: String = etags
            .iter()
            .enumerate()
            .map(|(i, (etag, checksum))| {
                format!(
                    "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag>\
                     <ChecksumSHA256>{checksum}</ChecksumSHA256></Part>",
                    i + 1,
                    xml_text(etag)
                )
            })
            .collect();
        let body = Bytes::from(format!(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{parts}</CompleteMultipartUpload>"
        ));
        let (status, text) = self.send_with("POST", url, &[], full(body)).await?;
        // S3 may answer 200 with an error inside the body.
        if !status.is_success() || String::from_utf8_lossy(&text).contains("<Error>") {
            bail!(
                "completing the upload of {key}: {status}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        Ok(())
    }

    /// Download an object, handing each chunk to `sink`; returns the bytes read.
    pub async fn get_with(&self, key: &str, mut sink: impl FnMut(&[u8])) -> anyhow::Result<u64> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), key)
            .sign(VALID_FOR);
        let resp = self.request("GET", url, empty()).await?;
        let status = resp.status();
        let mut body = resp.into_body().into_data_stream();
        if !status.is_success() {
            let mut text = vec![];
            while let Some(c) = body.next().await {
                text.extend_from_slice(&c?);
            }
            bail!("GET {key}: {status}: {}", String::from_utf8_lossy(&text));
        }
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.with_context(|| format!("reading {key}"))?;
            n += chunk.len() as u64;
            sink(&chunk);
        }
        Ok(n)
    }

    /// Download an object and drop its bytes; returns how many there were.
    pub async fn get(&self, key: &str) -> anyhow::Result<u64> {
        self.get_with(key, |_| {}).await
    }

    /// The keys and sizes of the bucket's objects (the first 1000).
    pub async fn list(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let url = self
            .bucket
            .list_objects_v2(Some(&self.credentials))
            .sign(VALID_FOR);
        let (status, text) = self.send("GET", url, empty()).await?;
        if !status.is_success() {
            bail!("LIST: {status}: {}", String::from_utf8_lossy(&text));
        }
        let listed =
            rusty_s3::actions::ListObjectsV2::parse_response(&String::from_utf8_lossy(&text))
                .context("the listing")?;
        Ok(listed
            .contents
            .into_iter()
            .map(|c| (c.key, c.size.unwrap_or(0)))
            .collect())
    }

    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), key)
            .sign(VALID_FOR);
        let (status, text) = self.send("DELETE", url, empty()).await?;
        if !status.is_success() {
            bail!("DELETE {key}: {status}: {}", String::from_utf8_lossy(&text));
        }
        Ok(())
    }

    async fn request(
        &self,
        method: &str,
        url: url::Url,
        body: Body,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        self.request_with(method, url, &[], body).await
    }

    /// A request with `headers` (those the URL's signature covers must be sent as signed).
    async fn request_with(
        &self,
        method: &str,
        url: url::Url,
        headers: &[(&str, &str)],
        body: Body,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut req = hyper::Request::builder().method(method).uri(url.as_str());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body).context("building the request")?;
        self.http
            .request(req)
            .await
            .with_context(|| format!("{method} {}", url.path()))
    }

    async fn send(
        &self,
        method: &str,
        url: url::Url,
        body: Body,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        self.send_with(method, url, &[], body).await
    }

    async fn send_with(
        &self,
        method: &str,
        url: url::Url,
        headers: &[(&str, &str)],
        body: Body,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let resp = self.request_with(method, url, headers, body).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn full(data: Bytes) -> Body {
    Full::new(data).map_err(|never| match never {}).boxed()
}

/// `s` as XML text.
fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// SHA-256, as [`S3Client::put_verified`] computes it.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_checksum_is_plain_or_composite_by_size() {
        let data = vec![7u8; 10];
        assert_eq!(S3Client::expected_sha256(&data, 10), b64(&sha256(&data)));
        let parts: Vec<u8> = [&data[..4], &data[4..8], &data[8..]]
            .iter()
            .flat_map(|p| sha256(p))
            .collect();
        assert_eq!(
            S3Client::expected_sha256(&data, 4),
            format!("{}-3", b64(&sha256(&parts)))
        );
    }
}
