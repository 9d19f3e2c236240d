//! The admin HTTP server: `GET /metrics` (Prometheus text format), `GET /health` (liveness:
//! 200 while the process serves), `GET /ready` (readiness: 200, or 503 naming what is not
//! ready). HTTP/1.1 on its own port, as operators expect from Redpanda's 9644; HTTPS with
//! `[admin] security = "SSL"`.
//! An appliance may add its own routes ([`AdminRoutes`]: the quorum members' cluster status
//! and voter replacement); [`call`] is the client side `clk` uses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use admission::{Admission, ConnectionLimits};
use anyhow::Context;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::access::{AdminAccess, Refusal};
use crate::health::Health;

/// The largest answer [`call`] reads.
const ANSWER_MAX_BYTES: usize = 4 << 20;
/// The largest request body an admin route reads.
const BODY_MAX_BYTES: usize = 64 * 1024;
/// A request's head, and its body, must arrive within this; a connection silent this long
/// between requests is closed too.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once, and from one address (a Prometheus server, probes, `clk`):
/// past these, a connection is closed as it is accepted.
const CONNECTIONS_MAX: usize = 256;
const CONNECTIONS_PER_IP_MAX: usize = 64;

/// What an added route answers: a status and a JSON body.
pub struct AdminReply {
    pub status: StatusCode,
    pub json: String,
}

impl AdminReply {
    /// `body` as (pretty) JSON.
    pub fn json(status: StatusCode, body: &impl serde::Serialize) -> AdminReply {
        AdminReply {
            status,
            json: serde_json::to_string_pretty(body).expect("admin answers serialize"),
        }
    }

    /// `{"error": message}`.
    pub fn error(status: StatusCode, message: impl Into<String>) -> AdminReply {
        AdminReply::json(status, &serde_json::json!({ "error": message.into() }))
    }
}

pub type AdminFuture = Pin<Box<dyn Future<Output = AdminReply> + Send>>;

/// Routes an appliance adds to its admin port, beside `/metrics`, `/health` and `/ready`.
pub trait AdminRoutes: Send + Sync + 'static {
    /// The answer to `method path` with `body`, or `None` when it is not one of these routes.
    fn route(&self, method: &Method, path: &str, body: Bytes) -> Option<AdminFuture>;
}

/// Several appliances' route sets on one port: the first that knows a route answers it.
pub struct Routes(pub Vec<Arc<dyn AdminRoutes>>);

impl AdminRoutes for Routes {
    fn route(&self, method: &Method, path: &str, body: Bytes) -> Option<AdminFuture> {
        self.0
            .iter()
            .find_map(|r| r.route(method, path, body.clone()))
    }
}

/// `POST /v1/tls`: replace this node's TLS files (a renewed certificate and key, a new CRL or
/// CA) with the PEM text in the JSON body (`tls::install::TlsUpdate`); they must load
/// together, and the node's file watchers pick them up within `reload_check`.
pub struct TlsFilesRoute(pub tls::TlsSettings);

impl AdminRoutes for TlsFilesRoute {
    fn route(&self, method: &Method, path: &str, body: Bytes) -> Option<AdminFuture> {
        if (method, path) != (&Method::POST, "/v1/tls") {
            return None;
        }
        let settings = self.0.clone();
        Some(Box::pin(async move {
            let update: tls::install::TlsUpdate = match serde_json::from_slice(&body) {
                Ok(u) => u,
                Err(e) => {
                    let message = format!("not a TLS update: {e}");
                    return AdminReply::error(StatusCode::BAD_REQUEST, message);
                }
            };
            let installed =
                tokio::task::spawn_blocking(move || tls::install::install(&settings, &update))
                    .await;
            match installed {
                Ok(Ok(files)) => {
                    tracing::info!(?files, "TLS files installed through the admin API");
                    AdminReply::json(StatusCode::OK, &serde_json::json!({ "installed": files }))
                }
                Ok(Err(e)) => AdminReply::error(StatusCode::BAD_REQUEST, e.to_string()),
                Err(e) => AdminReply::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }))
    }
}

pub struct AdminServer {
    pub local_addr: SocketAddr,
    pub task: JoinHandle<()>,
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn builtin(path: &str, registry: &Registry, health: &Health) -> Option<Response<Full<Bytes>>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    Some(match path {
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => respond(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "encoding failed\n"),
            }
        }
        "/health" | "/healthz" => respond(StatusCode::OK, TEXT, "ok\n"),
        "/ready" | "/readyz" => match health.readiness() {
            Ok(()) => respond(StatusCode::OK, TEXT, "ready\n"),
            Err(why) => respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
        },
        _ => return None,
    })
}

/// What one connection's requests share.
struct Served {
    registry: Arc<Registry>,
    health: Arc<Health>,
    extra: Option<Arc<dyn AdminRoutes>>,
    access: AdminAccess,
}

/// The answer to a request that lacks the credentials it needs.
fn refused(why: Refusal, protected_read: bool) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match why {
        Refusal::NothingConfigured => respond(
            StatusCode::FORBIDDEN,
            TEXT,
            "changes through this port need [admin] token or admins in this node's configuration\n",
        ),
        Refusal::Unauthorized(reason) => {
            tracing::info!(reason, "admin request refused");
            let what = if protected_read {
                " ([admin] protect_reads)"
            } else {
                ""
            };
            respond(
                StatusCode::UNAUTHORIZED,
                TEXT,
                format!(
                    "a valid Authorization: Bearer token or admin certificate is needed{what}\n"
                ),
            )
        }
    }
}

async fn route(
    req: Request<Incoming>,
    served: &Served,
    certificate: Option<&str>,
) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (access, extra) = (&served.access, served.extra.as_deref());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let read_only = method == Method::GET || method == Method::HEAD;
    if access.protect_reads
        && let Err(why) = access.check(&req, certificate)
    {
        return refused(why, true);
    }
    if read_only && let Some(r) = builtin(&path, &served.registry, &served.health) {
        return r;
    }
    // Changes (anything but a read) need credentials; without any configured there are none.
    if !read_only
        && extra.is_some()
        && let Err(why) = access.check(&req, certificate)
    {
        return refused(why, false);
    }
    if let Some(extra) = extra {
        let body = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(req.into_body(), BODY_MAX_BYTES).collect(),
        )
        .await
        {
            Err(_) => {
                return respond(
                    StatusCode::REQUEST_TIMEOUT,
                    TEXT,
                    "the body came too slowly\n",
                );
            }
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return respond(StatusCode::PAYLOAD_TOO_LARGE, TEXT, "body too large\n");
            }
            Ok(Err(_)) => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    "the body could not be read\n",
                );
            }
        };
        if let Some(answer) = extra.route(&method, &path, body) {
            let reply = answer.await;
            return respond(reply.status, "application/json", reply.json);
        }
    }
    if read_only {
        respond(StatusCode::NOT_FOUND, TEXT, "not found\n")
    } else {
        respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n")
    }
}

/// Bind `addr` and serve until `shutdown` is cancelled.
pub async fn serve_admin(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<AdminServer> {
    serve_admin_with(
        addr,
        registry,
        health,
        None,
        AdminAccess::default(),
        shutdown,
    )
    .await
}

/// [`serve_admin`] with the appliance's own routes; those that change something need
/// `Authorization: Bearer <token>` (refused altogether without a token).
pub async fn serve_admin_with(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
    extra: Option<Arc<dyn AdminRoutes>>,
    access: AdminAccess,
    shutdown: CancellationToken,
) -> std::io::Result<AdminServer> {
    let tls = access.tls.clone();
    if let Some(b) = &access.bearer {
        tokio::spawn(crate::jwks::refresh(Arc::clone(b), shutdown.clone()));
    }
    if let Some(t) = &tls {
        tokio::spawn(Arc::clone(t).watch("admin [tls]".into(), shutdown.clone()));
    }
    let served = Arc::new(Served {
        registry,
        health,
        extra,
        access,
    });
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let admission = Admission::new(ConnectionLimits::fixed(
        CONNECTIONS_MAX,
        CONNECTIONS_PER_IP_MAX,
    ));
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        continue;
                    }
                },
            };
            let admitted = match admission.admit(peer.ip()) {
                Ok(a) => a,
                Err(why) => {
                    tracing::debug!(%peer, reason = %why, "refusing an admin connection");
                    continue;
                }
            };
            let (served, tls) = (Arc::clone(&served), tls.clone());
            tokio::spawn(async move {
                let _admitted = admitted;
                match tls {
                    None => serve_connection(stream, served, None).await,
                    // Within `[tls] handshake_timeout`, on this connection's own task.
                    Some(tls) => match tls.accept(stream).await {
                        Ok(a) => {
                            let principal = a.principal.map(|p| Arc::from(format!("User:{p}")));
                            let serve = serve_connection(a.stream, served, principal);
                            a.revocation.serve_until_revoked(serve, "admin", peer).await;
                        }
                        Err(e) => tracing::info!(%peer, reason = %e, "admin TLS handshake refused"),
                    },
                }
            });
        }
    });
    Ok(AdminServer { local_addr, task })
}

/// Serve HTTP/1.1 on one admin connection; `certificate` is its client certificate's
/// principal.
async fn serve_connection<S>(stream: S, served: Arc<Served>, certificate: Option<Arc<str>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (served, certificate) = (Arc::clone(&served), certificate.clone());
        async move { Ok::<_, Infallible>(route(req, &served, certificate.as_deref()).await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// One request to an admin port (`clk`'s side): the status and the body, within `timeout`.
/// `admin` is `host:port`, or `https://host:port` with `tls` to check the server by.
pub async fn call(
    admin: &str,
    tls: Option<&tls::Connector>,
    method: Method,
    path: &str,
    body: Option<String>,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, String)> {
    let exchange = async {
        let (https, addr) = match admin.strip_prefix("https://") {
            Some(a) => (true, a.trim_end_matches('/')),
            None => (false, admin.strip_prefix("http://").unwrap_or(admin)),
        };
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the admin port {addr}"))?;
        let request = admin_request(addr, method, path, body, token)?;
        match (https, tls) {
            (false, _) => exchange(stream, request).await,
            (true, Some(tls)) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let stream = tls
                    .connect(host, stream)
                    .await
                    .with_context(|| format!("TLS to {addr}"))?;
                exchange(stream, request).await
            }
            (true, None) => anyhow::bail!("{admin}: HTTPS needs the CA to check it by"),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{admin} did not answer within {timeout:?}"))?
}

fn admin_request(
    addr: &str,
    method: Method,
    path: &str,
    body: Option<String>,
    token: Option<&str>,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .context("building the request")
}

/// Send `request` over `stream`: the status and the body.
async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .context("sending the request")?;
        let status = response.status();
        // Admin answers and identity providers' key sets are small.
        let body = Limited::new(response.into_body(), ANSWER_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> StatusCode {
        let timeout = Duration::from_secs(10);
        let addr = addr.to_string();
        call(&addr, None, Method::GET, path, None, token, timeout)
            .await
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn reads_are_open_by_default_and_need_the_token_when_protected() {
        let token = "an-admin-token-0123456789".to_string();
        for protect_reads in [false, true] {
            let shutdown = CancellationToken::new();
            let access = AdminAccess {
                token: Some(token.clone()),
                protect_reads,
                ..AdminAccess::default()
            };
            let any = "127.0.0.1:0".parse().unwrap();
            let (registry, health) = (Arc::new(Registry::default()), Arc::new(Health::new()));
            let server = serve_admin_with(any, registry, health, None, access, shutdown.clone())
                .await
                .unwrap();
            let addr = server.local_addr;
            for path in ["/metrics", "/health", "/ready"] {
                let open = get(addr, path, None).await;
                let with_token = get(addr, path, Some(&token)).await;
                let wrong = get(addr, path, Some("wrong-token-0123456789")).await;
                assert_eq!(with_token, StatusCode::OK, "{path}");
                if protect_reads {
                    assert_eq!(
                        (open, wrong),
                        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED),
                        "{path}"
                    );
                } else {
                    assert_eq!(open, StatusCode::OK, "{path}");
                }
            }
            shutdown.cancel();
        }
    }

    crate::admin_port!(AnyPort, 0);

    /// Answers `POST /v1/echo`: a change, which needs credentials.
    struct Echo;

    impl AdminRoutes for Echo {
        fn route(&self, method: &Method, path: &str, _: Bytes) -> Option<AdminFuture> {
            ((method, path) == (&Method::POST, "/v1/echo")).then(|| {
                Box::pin(async { AdminReply::json(StatusCode::OK, &"echo") }) as AdminFuture
            })
        }
    }

    #[tokio::test]
    async fn admins_may_change_with_their_oidc_tokens_and_no_one_else() {
        use sasl::oauthbearer::{BearerSettings, test_issuer::TestIssuer};
        let dir = tempfile::tempdir().unwrap();
        let idp = TestIssuer::new(dir.path(), "https://idp.test/realms/hub", "k1");
        let stranger = TestIssuer::new(dir.path(), "https://idp.test/realms/hub", "k2");
        let token = "an-admin-token-0123456789".to_string();
        let settings = crate::AdminSettings::<AnyPort> {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: Some(token.clone()),
            admins: vec!["User:ops-alice".into()],
            oauthbearer: Some(BearerSettings {
                issuer: idp.issuer.clone(),
                audience: "hub".into(),
                jwks_file: Some(idp.jwks.clone()),
                jwks_url: None,
                jwks_ca: None,
                jwks_refresh_secs: 300,
                principal_claim: "sub".into(),
                leeway_secs: 0,
            }),
            ..Default::default()
        };
        settings.check(None).unwrap();
        let shutdown = CancellationToken::new();
        let (registry, health) = (Arc::new(Registry::default()), Arc::new(Health::new()));
        let server = serve_admin_with(
            settings.listen,
            registry,
            health,
            Some(Arc::new(Echo)),
            settings.access(None).unwrap(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let addr = server.local_addr.to_string();
        let post = |bearer: Option<String>| {
            let addr = addr.clone();
            async move {
                let timeout = Duration::from_secs(10);
                call(
                    &addr,
                    None,
                    Method::POST,
                    "/v1/echo",
                    None,
                    bearer.as_deref(),
                    timeout,
                )
                .await
                .unwrap()
                .0
            }
        };
        let hour = 3600;
        assert_eq!(
            post(Some(idp.token("ops-alice", "hub", 0, hour))).await,
            StatusCode::OK
        );
        assert_eq!(post(Some(token.clone())).await, StatusCode::OK);
        let refused = [
            // A good token of someone who is not an admin.
            Some(idp.token("analyst-bob", "hub", 0, hour)),
            // Expired, for another audience, signed by a key the issuer never published.
            Some(idp.token("ops-alice", "hub", -2 * hour, -hour)),
            Some(idp.token("ops-alice", "grafana", 0, hour)),
            Some(stranger.token("ops-alice", "hub", 0, hour)),
            Some("not-a-jwt-and-not-the-token".into()),
            None,
        ];
        for bearer in refused {
            assert_eq!(
                post(bearer.clone()).await,
                StatusCode::UNAUTHORIZED,
                "{bearer:?}"
            );
        }
        // Reads stay open without protect_reads.
        assert_eq!(
            get(server.local_addr, "/metrics", None).await,
            StatusCode::OK
        );
        shutdown.cancel();
    }

    #[test]
    fn admins_need_a_way_to_be_recognised() {
        let mut s = crate::AdminSettings::<AnyPort> {
            admins: vec!["User:ops-alice".into()],
            ..Default::default()
        };
        assert!(s.check(None).unwrap_err().contains("admin.oauthbearer"));
        s.admins = vec!["ops-alice".into()];
        assert!(s.check(None).unwrap_err().contains("User:<name>"));
        s.admins.clear();
        s.security = tls::SecurityProtocol::Ssl;
        assert!(s.check(None).unwrap_err().contains("needs [tls]"));
        s.security = tls::SecurityProtocol::Plaintext;
        s.protect_reads = true;
        assert!(s.check(None).unwrap_err().contains("protect_reads"));
    }
}
