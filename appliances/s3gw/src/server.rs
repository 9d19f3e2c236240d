//! Lifecycle: open the store, serve S3 over HTTP (`s3s` on hyper) and the admin endpoints,
//! stop gracefully.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use telemetry::{DiskCollector, Health, ProcessCollector};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access::{AccessPolicy, CertificatePrincipal, OperationSlot};
use crate::config::S3gwConfig;
use crate::gateway::Gateway;
use crate::store::Store;

type Labels = Vec<(String, String)>;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A running gateway.
pub struct S3gwHandle {
    pub s3_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl S3gwHandle {
    /// Stop accepting, let requests in flight finish (up to 30 s).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("S3 server task")?;
        Ok(())
    }
}

/// The S3 HTTP service over `store`: routing, authentication with the configured keys and
/// their bucket grants, virtual-host style for the configured domains. (The fuzz target
/// drives this too.)
pub fn build_service(store: Arc<Store>, config: &S3gwConfig) -> anyhow::Result<S3Service> {
    let mut b = S3ServiceBuilder::new(Gateway::new(store));
    let mut auth = SimpleAuth::new();
    for c in &config.credentials {
        auth.register(c.access_key.clone(), c.secret_key.clone().into());
    }
    b.set_auth(auth);
    b.set_access(AccessPolicy::new(config));
    if !config.s3.domains.is_empty() {
        b.set_host(crate::host::Domains::new(&config.s3.domains));
    }
    Ok(b.build())
}

pub async fn start(config: S3gwConfig) -> anyhow::Result<S3gwHandle> {
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let metrics = RequestMetrics::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(ProcessCollector));
    registry.register_collector(Box::new(DiskCollector::new(&config.data_dir)));
    let health = Arc::new(Health::new());
    health.require("store", "opening the object store");
    let routes = config
        .tls
        .as_ref()
        .map(|t| Arc::new(telemetry::TlsFilesRoute(t.clone())) as Arc<dyn telemetry::AdminRoutes>);
    let access = config.admin.access(config.tls.as_ref())?;
    let admin = telemetry::serve_admin_with(
        config.admin.listen,
        Arc::new(registry),
        health.clone(),
        routes,
        access,
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("binding the admin listener {}", config.admin.listen))?;

    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await?
        .with_context(|| format!("opening the object store in {}", config.data_dir.display()))?;
    let store = Arc::new(store.reserving(config.s3.keep_free_mib << 20));
    let service = build_service(store.clone(), &config)?;
    spawn_multipart_sweeper(
        store,
        config.s3.incomplete_upload_expiry_hours,
        shutdown.clone(),
    );
    let listener = TcpListener::bind(config.s3.listen)
        .await
        .with_context(|| format!("binding the S3 listener {}", config.s3.listen))?;
    let s3_addr = listener.local_addr()?;
    let tls = match (config.s3.security, &config.tls) {
        (tls::SecurityProtocol::Ssl, Some(settings)) => {
            let server = tls::TlsServer::load(settings.clone())
                .context("loading the [tls] certificate and key")?;
            tokio::spawn(Arc::clone(&server).watch("[tls]".into(), shutdown.clone()));
            Some(server)
        }
        (tls::SecurityProtocol::Ssl, None) => anyhow::bail!("s3.security = \"SSL\" needs [tls]"),
        (tls::SecurityProtocol::Plaintext, _) => None,
    };
    health.set_ok("store");
    tracing::info!(s3 = %s3_addr, admin = %admin.local_addr, "s3gw ready");

    let stop = shutdown.clone();
    let connection_limits = config.s3.connections.clone();
    let task = tokio::spawn(async move {
        let admission = admission::Admission::new(connection_limits);
        let mut http = ConnBuilder::new(TokioExecutor::new());
        // A client that connects and never finishes its request head (or goes silent between
        // requests on a kept-alive connection) is dropped instead of holding a connection
        // for ever.
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (socket, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let admitted = match admission.admit(peer.ip()) {
                Ok(a) => a,
                Err(why) => {
                    tracing::debug!(%peer, reason = %why, "refusing an S3 connection");
                    continue;
                }
            };
            // hyper writes a response head and a small body separately: with Nagle on, the
            // body waits for the client's delayed ACK (40 ms per small GET).
            let _ = socket.set_nodelay(true);
            let (svc, metrics) = (service.clone(), metrics.clone());
            // Set once the TLS handshake has mapped the client certificate, before any
            // request is read.
            let certificate: Arc<OnceLock<Option<Arc<str>>>> = Arc::default();
            let principal = Arc::clone(&certificate);
            let counted = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let (svc, metrics) = (svc.clone(), metrics.clone());
                    let principal = CertificatePrincipal(principal.get().cloned().flatten());
                    async move {
                        let started = Instant::now();
                        let operation = OperationSlot::default();
                        req.extensions_mut().insert(operation.clone());
                        req.extensions_mut().insert(principal);
                        let received = content_length(req.headers());
                        let empty_expecting_continue = expects_continue_without_body(&req);
                        let with_body = has_body(&req, received);
                        let mut resp = hyper::service::Service::call(&svc, req).await;
                        if let Ok(r) = resp.as_mut()
                            && (empty_expecting_continue || with_body && !r.status().is_success())
                        {
                            r.headers_mut().insert(
                                hyper::header::CONNECTION,
                                hyper::header::HeaderValue::from_static("close"),
                            );
                        }
                        let (status, sent) = match &resp {
                            Ok(r) => (r.status().as_u16().to_string(), content_length(r.headers())),
                            Err(_) => ("error".to_string(), 0),
                        };
                        if status.starts_with('5') || status == "error" {
                            tracing::warn!(
                                operation = operation.name(),
                                status,
                                "request failed on the server side"
                            );
                        }
                        metrics.observe(operation.name(), status, received, sent, started);
                        resp
                    }
                },
            );
            let (http, watcher, tls) = (http.clone(), graceful.watcher(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => {
                        let conn = http.serve_connection(TokioIo::new(socket), counted);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                    // The handshake runs on the connection's own task, within
                    // `[tls] handshake_timeout`, so a slow client delays no one else.
                    Some(tls) => match tls.accept(socket).await {
                        Ok(a) => {
                            // Named as Kafka names principals, so one name means one branch everywhere.
                            let _ = certificate
                                .set(a.principal.map(|p| Arc::from(format!("User:{p}"))));
                            let conn = http.serve_connection(TokioIo::new(a.stream), counted);
                            let serve = watcher.watch(conn.into_owned());
                            a.revocation.serve_until_revoked(serve, "s3", peer).await;
                        }
                        Err(e) => tracing::info!(%peer, reason = %e, "TLS handshake refused"),
                    },
                }
                drop(admitted);
            });
        }
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!("requests still running after 30 s; stopping anyway"),
        }
    });
    Ok(S3gwHandle {
        s3_addr,
        admin_addr: admin.local_addr,
        shutdown,
        task,
    })
}

/// Requests by S3 operation and status, latency and bytes by operation.
#[derive(Clone)]
struct RequestMetrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    received: Family<Labels, Counter>,
    sent: Family<Labels, Counter>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            received: Family::default(),
            sent: Family::default(),
        }
    }
}

impl RequestMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "s3gw_requests",
            "S3 requests by operation and HTTP status",
            self.requests.clone(),
        );
        registry.register(
            "s3gw_request_latency_seconds",
            "S3 request latency (to the response head) by operation",
            self.latency.clone(),
        );
        registry.register(
            "s3gw_received_bytes",
            "Request body bytes by operation (from Content-Length)",
            self.received.clone(),
        );
        registry.register(
            "s3gw_sent_bytes",
            "Response body bytes by operation (from Content-Length)",
            self.sent.clone(),
        );
    }

    fn observe(&self, operation: &str, status: String, received: u64, sent: u64, started: Instant) {
        let op = vec![("operation".to_string(), operation.to_string())];
        let mut with_status = op.clone();
        with_status.push(("status".into(), status));
        self.requests.get_or_create(&with_status).inc();
        self.latency
            .get_or_create(&op)
            .observe(started.elapsed().as_secs_f64());
        self.received.get_or_create(&op).inc_by(received);
        self.sent.get_or_create(&op).inc_by(sent);
    }
}

fn content_length(h: &hyper::HeaderMap) -> u64 {
    h.get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// Remove abandoned multipart uploads now and every hour.
fn spawn_multipart_sweeper(store: Arc<Store>, expiry_hours: u32, stop: CancellationToken) {
    let expire_after_ms = i64::from(expiry_hours) * 3600 * 1000;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let store = store.clone();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let _ =
                tokio::task::spawn_blocking(move || store.sweep_multipart(now, expire_after_ms))
                    .await;
        }
    });
}

/// An error can be answered before the request's body is read (a full disk, a bad
/// signature): the connection is then closed after the answer, so that the client does not
/// send its next request into the rest of this body, or into a connection hyper is closing.
fn has_body<B>(req: &hyper::Request<B>, content_length: u64) -> bool {
    content_length > 0 || req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
}

/// boto3 sends `Expect: 100-continue` even with an empty body. hyper then answers at once
/// without an interim 100 (there is no body to ask for), which is valid HTTP, but botocore's
/// connection is left in a state where the NEXT request on it stalls until its read timeout
/// (60 s). Closing the connection after such a response avoids that at the cost of one
/// reconnect per empty upload.
fn expects_continue_without_body<B>(req: &hyper::Request<B>) -> bool {
    let expect = req
        .headers()
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let empty = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    expect && empty
}
