//! A small S3 client for benchmarks and tests: requests are SigV4 presigned URLs made by
//! `rusty-s3` (sans-IO signing, so any S3 endpoint accepts them: AWS, MinIO, this gateway) and
//! sent with hyper over HTTP or HTTPS (rustls, the system's roots). Bodies stream both ways:
//! an upload of any size is produced chunk by chunk, a download is consumed chunk by chunk,
//! so neither side of a benchmark holds an object in memory.

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
        let url = endpoint
            .parse()
            .with_context(|| format!("endpoint {endpoint:?}"))?;
        let bucket = Bucket::new(url, UrlStyle::Path, bucket.to_string(), region.to_string())
            .with_context(|| format!("bucket {bucket:?} at {endpoint}"))?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .context("loading the system's TLS roots")?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
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
        let req = hyper::Request::builder()
            .method(method)
            .uri(url.as_str())
            .body(body)
            .context("building the request")?;
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
        let resp = self.request(method, url, body).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
