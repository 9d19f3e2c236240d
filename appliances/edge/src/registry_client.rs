//! GET requests to the hub's Schema Registry (`[hub] schema_registry`), over HTTP or over
//! HTTPS with the branch's certificate (`[hub.tls]`). One request per connection: the
//! gateway asks only every `schema_refresh`, so keeping connections is not worth their state.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// The largest answer read (a subject's schema, a list of subjects).
const ANSWER_BYTES_MAX: usize = 16 << 20;

pub struct RegistryClient {
    urls: Vec<Uri>,
    tls: Option<Arc<tls::TlsClient>>,
    timeout: Duration,
}

impl RegistryClient {
    /// `urls` as `http://host:port` or `https://host:port`, tried in turn.
    pub fn new(
        urls: &[String],
        tls: Option<Arc<tls::TlsClient>>,
        timeout: Duration,
    ) -> anyhow::Result<RegistryClient> {
        let urls = urls
            .iter()
            .map(|u| {
                let uri: Uri = u.parse().with_context(|| format!("{u:?} is not a URL"))?;
                match (uri.scheme_str(), uri.host()) {
                    (Some("http" | "https"), Some(_)) => Ok(uri),
                    _ => bail!("{u:?} is not http://host:port or https://host:port"),
                }
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RegistryClient { urls, tls, timeout })
    }

    /// GET `path` and parse the JSON answer, from the first registry that answers.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let mut last = None;
        for base in &self.urls {
            match tokio::time::timeout(self.timeout, self.get_from(base, path)).await {
                Ok(Ok(body)) => {
                    return serde_json::from_slice(&body)
                        .with_context(|| format!("the registry's answer to GET {path}"));
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(anyhow::anyhow!("no answer within {:?}", self.timeout)),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no registry configured")))
            .with_context(|| format!("GET {path} from the hub's schema registry"))
    }

    async fn get_from(&self, base: &Uri, path: &str) -> anyhow::Result<Bytes> {
        let host = base.host().context("a registry URL without a host")?;
        let https = base.scheme_str() == Some("https");
        let port = base.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let authority = format!("{host}:{port}");
        if https {
            let tls = self
                .tls
                .as_ref()
                .context("an https registry needs [hub.tls]")?;
            let stream = tls.connect(host, tcp).await.context("TLS handshake")?;
            request(stream, &authority, path).await
        } else {
            request(tcp, &authority, path).await
        }
    }
}

async fn request<S>(stream: S, authority: &str, path: &str) -> anyhow::Result<Bytes>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::ACCEPT,
            "application/vnd.schemaregistry.v1+json",
        )
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let answer = sender.send_request(req).await.context("sending")?;
    let status = answer.status();
    let body = Limited::new(answer.into_body(), ANSWER_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        bail!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)])
        );
    }
    Ok(body)
}
