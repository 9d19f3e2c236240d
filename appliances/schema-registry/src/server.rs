//! The registry's HTTP listener (:8081): HTTP/1.1 over a stream the caller accepted (plain TCP
//! today; TLS plugs in as another stream), each request checked by the [`Gate`] with the
//! caller's identity, answered by [`Registry::handle`], or forwarded to the writer when it is
//! a write and another broker writes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use admission::{Admission, ConnectionLimits};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::{Answer, CONTENT_TYPE, Registry, Request};
use crate::error::RegistryError;

use crate::gate::{Action, filter_listing, segments};
pub use crate::gate::{Caller, Gate, Open};

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// The largest request body read (a schema is bounded separately, and smaller).
    pub body_bytes_max: usize,
    /// Bytes of request bodies held at once across connections, taken as the bytes arrive.
    pub bodies_bytes_max: usize,
    /// How long a forwarded write may take at the writer.
    pub forward_timeout: Duration,
    /// A request's head, and then its body, must arrive within this; a connection silent
    /// this long between requests is closed.
    pub request_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            body_bytes_max: 4 << 20,
            bodies_bytes_max: 64 << 20,
            forward_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Connections served at once, and from one address (serializers cache schemas: a client
/// needs few); past these, a connection is closed as it is accepted.
const CONNECTIONS_MAX: usize = 1024;
const CONNECTIONS_PER_IP_MAX: usize = 128;

/// HTTPS for the listener: the server side, and the client side for forwarding writes to
/// the writer's HTTPS listener.
#[derive(Clone)]
pub struct RegistryTls {
    pub server: Arc<tls::TlsServer>,
    pub client: Option<Arc<tls::TlsClient>>,
}

/// What every connection of one listener shares.
struct Served {
    registry: Arc<Registry>,
    gate: Arc<dyn Gate>,
    limits: ServerLimits,
    /// The budget of [`ServerLimits::bodies_bytes_max`].
    bodies: Arc<Semaphore>,
    tls: Option<RegistryTls>,
}

/// Accept connections on `listener` and serve each (anonymous callers: TLS and SASL set the
/// principal later), until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    gate: Arc<dyn Gate>,
    limits: ServerLimits,
    tls: Option<RegistryTls>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let admission = Admission::new(ConnectionLimits::fixed(
        CONNECTIONS_MAX,
        CONNECTIONS_PER_IP_MAX,
    ));
    let served = Arc::new(Served {
        registry,
        gate,
        limits,
        bodies: Arc::new(Semaphore::new(limits.bodies_bytes_max)),
        tls,
    });
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "schema registry accept failed");
                    continue;
                }
            },
        };
        let admitted = match admission.admit(peer.ip()) {
            Ok(a) => a,
            Err(why) => {
                tracing::debug!(%peer, reason = %why, "refusing a schema registry connection");
                continue;
            }
        };
        let caller = Caller {
            peer,
            principal: None,
        };
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            match served.tls.clone() {
                None => serve_connection(stream, caller, served).await,
                Some(tls) => match tls.server.accept(stream).await {
                    Ok(a) => {
                        let caller = Caller {
                            principal: a.principal.map(Into::into),
                            ..caller
                        };
                        let serve = serve_connection(a.stream, caller, served);
                        a.revocation
                            .serve_until_revoked(serve, "schema registry", peer)
                            .await
                    }
                    Err(e) => tracing::warn!(
                        %peer,
                        reason = %e,
                        "schema registry: TLS handshake refused"
                    ),
                },
            }
            drop(admitted);
        });
    }
}

/// Serve HTTP/1.1 on one accepted connection until it closes.
async fn serve_connection<S>(stream: S, caller: Caller, served: Arc<Served>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = served.limits.request_timeout;
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let (served, caller) = (Arc::clone(&served), caller.clone());
        async move { Ok::<_, Infallible>(answer(req, &caller, &served).await) }
    });
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "registry connection ended");
    }
}

/// An HTTP/1.1 client connection over `stream` (its driver runs on its own task).
async fn handshake<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body did not arrive within {0:?}")]
    TooSlow(Duration),
    #[error("the server is stopping")]
    Stopping,
    #[error("reading the body: {0}")]
    Read(String),
}

/// Read a body of at most `max` bytes within `within`, taking memory from `bodies` as its
/// bytes arrive (never as a length is announced). Also the edge gateway's HTTP ingest's.
pub async fn read_body(
    mut body: Incoming,
    max: usize,
    bodies: &Arc<Semaphore>,
    within: Duration,
) -> Result<(Bytes, OwnedSemaphorePermit), BodyError> {
    let take = |n: usize| async move {
        Arc::clone(bodies)
            .acquire_many_owned(n as u32)
            .await
            .map_err(|_| BodyError::Stopping)
    };
    let read = async {
        let mut held = take(0).await?;
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame
                .map_err(|e| BodyError::Read(e.to_string()))?
                .into_data()
            else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            held.merge(take(data.len()).await?);
            buf.extend_from_slice(&data);
        }
        Ok((Bytes::from(buf), held))
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| BodyError::TooSlow(within))?
}

async fn answer(
    req: hyper::Request<Incoming>,
    caller: &Caller,
    served: &Served,
) -> Response<Full<Bytes>> {
    let (registry, gate, limits) = (&served.registry, served.gate.as_ref(), served.limits);
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let parts_headers = req.headers().clone();
    let segs = segments(&path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let action = Action::of(&method, &segs);
    if !gate.allow(caller, action) {
        tracing::debug!(principal = ?caller.principal, peer = %caller.peer, ?action, "registry request denied");
        return json_response(
            403,
            &serde_json::json!({"error_code": 40301, "message": "User is denied operation on this resource."}),
        );
    }
    let listing = action == Action::Listing;
    let read = read_body(
        req.into_body(),
        limits.body_bytes_max,
        &served.bodies,
        limits.request_timeout,
    );
    let (body, _memory) = match read.await {
        Ok(b) => b,
        Err(e) => {
            let err = RegistryError::BadRequest(format!(
                "the request body could not be read (limit {} bytes): {e}",
                limits.body_bytes_max
            ));
            return json_response(
                err.codes().0,
                &serde_json::to_value(err.body()).expect("error bodies serialize"),
            );
        }
    };
    let forwarded = headers_forwarded(&parts_headers);
    let request = Request {
        method: &method,
        path: &path,
        query: query.as_deref(),
        body: &body,
        forwarded,
    };
    match registry.handle(request).await {
        Answer::Json(status, mut json) => {
            if listing {
                filter_listing(gate, caller, &mut json);
            }
            json_response(status, &json)
        }
        Answer::Forward(base) => {
            let target = match &query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let client = served.tls.as_ref().and_then(|t| t.client.as_deref());
            match tokio::time::timeout(
                limits.forward_timeout,
                forward(&base, &method, &target, body, client),
            )
            .await
            {
                Ok(Ok(r)) if listing => filter_relayed(r, gate, caller).await,
                Ok(Ok(r)) => r,
                Ok(Err(e)) => error_response(RegistryError::Forwarding(e)),
                Err(_) => error_response(RegistryError::Forwarding(format!(
                    "{base} did not answer within {:?}",
                    limits.forward_timeout
                ))),
            }
        }
    }
}

/// A listing the writer answered, filtered for `caller` as a local one is.
async fn filter_relayed(
    r: Response<Full<Bytes>>,
    gate: &dyn Gate,
    caller: &Caller,
) -> Response<Full<Bytes>> {
    let (parts, body) = r.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(never) => match never {},
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut json) if parts.status.is_success() => {
            filter_listing(gate, caller, &mut json);
            json_response(parts.status.as_u16(), &json)
        }
        _ => Response::from_parts(parts, Full::new(bytes)),
    }
}

fn error_response(e: RegistryError) -> Response<Full<Bytes>> {
    json_response(
        e.codes().0,
        &serde_json::to_value(e.body()).expect("error bodies serialize"),
    )
}

fn json_response(status: u16, json: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", CONTENT_TYPE)
        .body(Full::new(Bytes::from(json.to_string())))
        .expect("a response with a valid status and header")
}

/// Marks a request one broker forwarded to the writer: it is never forwarded again (two
/// brokers that each think the other writes would otherwise pass it back and forth).
const FORWARDED: &str = "x-clk-registry-forwarded";

fn headers_forwarded(h: &hyper::HeaderMap) -> bool {
    h.contains_key(FORWARDED)
}

/// Send the request to the writer's registry (`base`: `http://host:port`) and relay its answer.
async fn forward(
    base: &str,
    method: &str,
    target: &str,
    body: Bytes,
    tls: Option<&tls::TlsClient>,
) -> Result<Response<Full<Bytes>>, String> {
    let (https, authority) = match base.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, base.strip_prefix("http://").unwrap_or(base)),
    };
    let authority = authority.trim_end_matches('/');
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let mut sender = match (https, tls) {
        (false, _) => handshake(stream).await?,
        (true, Some(tls)) => {
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            let stream = tls
                .connect(host, stream)
                .await
                .map_err(|e| format!("TLS to {authority}: {e}"))?;
            handshake(stream).await?
        }
        (true, None) => return Err(format!("{base} needs TLS, and [tls] has no CA to check it")),
    };
    let request = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header("host", authority)
        .header("content-type", CONTENT_TYPE)
        .header(FORWARDED, "1")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Response::builder()
        .status(status)
        .header("content-type", CONTENT_TYPE)
        .body(Full::new(body))
        .map_err(|e| e.to_string())
}
