//! The HTTP ingest's listener: HTTP/1.1 (HTTPS with `security = "SSL"`), `POST
//! /topics/<topic>` in REST Proxy v2's format ([`crate::rest`]), each request's records
//! appended to the buffer through the broker's produce path ([`crate::local`]) with the
//! caller's rights (the buffer's ACLs, `User:ANONYMOUS` without a client certificate) and
//! answered once they are fsynced.
//!
//! Unlike REST Proxy, a request whose records were not all stored is not answered 200 with
//! errors inside: a device that only looks at the status must not believe they are stored.
//! The body still says, record by record, which were.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use admission::{Admission, ConnectionLimits};
use broker::authz::Access;
use broker::state::BrokerState;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kafka_protocol::error::ResponseError;
use schema_registry::server::{BodyError, read_body};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::HttpSettings;
use crate::local::{self, Refused, TopicPartition, TopicRefused};
use crate::metrics::{EdgeMetrics, StatusLabel, TopicLabel};
use crate::partitioner::hub_partition;
use crate::rest::{RestError, embedded_format, offsets_body, parse_records};
use crate::schemas::Schemas;

/// Connections served at once, and from one address.
const CONNECTIONS_MAX: usize = 1024;
const CONNECTIONS_PER_IP_MAX: usize = 256;
/// Bytes of request bodies held at once across connections.
const BODIES_BYTES_MAX: usize = 256 << 20;
/// A request's head, then its body, must arrive within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection shares.
pub struct Ingest {
    state: Arc<BrokerState>,
    settings: HttpSettings,
    metrics: Arc<EdgeMetrics>,
    /// The hub's schemas: JSON values for a topic with one are encoded with it.
    schemas: Option<Arc<Schemas>>,
    bodies: Arc<Semaphore>,
    /// Keyless records of one request go together to one partition, the next request's to
    /// the next partition.
    keyless: AtomicU32,
}

impl Ingest {
    pub fn new(
        state: Arc<BrokerState>,
        settings: HttpSettings,
        metrics: Arc<EdgeMetrics>,
        schemas: Option<Arc<Schemas>>,
    ) -> Arc<Ingest> {
        Arc::new(Ingest {
            state,
            settings,
            metrics,
            schemas,
            bodies: Arc::new(Semaphore::new(BODIES_BYTES_MAX)),
            keyless: AtomicU32::new(0),
        })
    }
}

/// Accept connections on `listener` and serve them until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    tls: Option<Arc<tls::TlsServer>>,
    stop: CancellationToken,
) {
    let admission = Admission::new(ConnectionLimits::fixed(
        CONNECTIONS_MAX,
        CONNECTIONS_PER_IP_MAX,
    ));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP ingest accept failed");
                    continue;
                }
            },
        };
        let Ok(admitted) = admission.admit(peer.ip()) else {
            tracing::debug!(%peer, "refusing an HTTP ingest connection: too many");
            continue;
        };
        let (ingest, tls) = (Arc::clone(&ingest), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, None, ingest).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(a) => {
                        let serve = serve_connection(a.stream, peer, a.principal, ingest);
                        a.revocation
                            .serve_until_revoked(serve, "HTTP ingest", peer)
                            .await
                    }
                    Err(e) => {
                        tracing::warn!(%peer, reason = %e, "HTTP ingest: TLS handshake refused")
                    }
                },
            }
            drop(admitted);
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    principal: Option<String>,
    ingest: Arc<Ingest>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let principal: Arc<str> = match principal {
        Some(p) => format!("User:{p}").into(),
        None => "User:ANONYMOUS".into(),
    };
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let (ingest, principal) = (Arc::clone(&ingest), Arc::clone(&principal));
        async move {
            let answer = answer(req, peer, &principal, &ingest).await;
            let status = StatusLabel {
                status: answer.status().as_u16(),
            };
            ingest.metrics.http_requests.get_or_create(&status).inc();
            Ok::<_, Infallible>(answer)
        }
    });
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "HTTP ingest connection ended");
    }
}

async fn answer(
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    principal: &str,
    ingest: &Ingest,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let outcome = match (req.method().as_str(), segments.as_slice()) {
        ("POST", ["topics", topic]) => {
            let topic = topic.to_string();
            produce(req, &topic, peer, principal, ingest).await
        }
        (_, ["topics", _]) => Err(RestError::new(405, 405, "only POST is served here")),
        _ => Err(RestError::new(
            404,
            404,
            format!("{path} is not POST /topics/<topic>"),
        )),
    };
    match outcome {
        Ok((status, body)) => json(status, &body),
        Err(e) => {
            tracing::debug!(%peer, status = e.status, error = %e, "HTTP ingest refused a request");
            json(e.status, &e.body())
        }
    }
}

/// Store a request's records; the status and the answer's body.
async fn produce(
    req: hyper::Request<Incoming>,
    topic: &str,
    peer: SocketAddr,
    principal: &str,
    ingest: &Ingest,
) -> Result<(u16, serde_json::Value), RestError> {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = embedded_format(content_type)?;
    let max = ingest.settings.body_bytes_max as usize;
    let (body, _held) = read_body(req.into_body(), max, &ingest.bodies, REQUEST_TIMEOUT)
        .await
        .map_err(|e| {
            let status = match e {
                BodyError::TooLarge(_) => 413,
                BodyError::TooSlow(_) => 408,
                BodyError::Stopping => 503,
                BodyError::Read(_) => 400,
            };
            RestError::new(status, u32::from(status), e.to_string())
        })?;
    let records = parse_records(format, &body, ingest.settings.records_max)?;
    let access = Access::of_principal(&ingest.state, || {
        (principal.to_string(), peer.ip().to_string())
    });
    if !access.topic(acl::Operation::Write, topic) {
        let e = format!("{principal} may not write to topic {topic}");
        return Err(RestError::new(403, 40301, e));
    }
    let create = ingest.state.config.topics.auto_create && access.create_topic(topic);
    let (partitions, _) = local::partitions(&ingest.state, topic, create, &BTreeMap::new())
        .await
        .map_err(|e| match e {
            TopicRefused::Unknown(_) => RestError::new(404, 40401, e.to_string()),
            TopicRefused::Create(..) => RestError::new(422, 42200, e.to_string()),
        })?;
    let keyless = ingest.keyless.fetch_add(1, Ordering::Relaxed) as i32;
    let mut batches: BTreeMap<TopicPartition, Vec<local::Entry>> = BTreeMap::new();
    let mut places = Vec::with_capacity(records.len());
    for (i, mut r) in records.into_iter().enumerate() {
        // An Avro key is encoded first: the partition is the encoded key's, as Kafka's.
        if let (Some(schemas), Some(json)) = (&ingest.schemas, &r.key_json)
            && let Some(encoded) = schemas.encode_json_key(topic, json)
        {
            r.key = Some(encoded.map_err(|e| {
                ingest.metrics.refused_by_schema(topic, 1);
                RestError::new(422, 42203, format!("record {i}: the key: {e}"))
            })?);
        }
        let partition = match r.partition {
            Some(p) if p >= partitions => {
                let e = format!("record {i}: topic {topic} has no partition {p}");
                return Err(RestError::new(404, 40402, e));
            }
            Some(p) => p,
            None => hub_partition(r.key.as_deref(), keyless, partitions),
        };
        let value = match (&ingest.schemas, &r.json) {
            (Some(schemas), Some(json)) => match schemas.encode_json(topic, json) {
                Some(encoded) => Some(encoded.map_err(|e| {
                    ingest.metrics.refused_by_schema(topic, 1);
                    RestError::new(422, 42203, format!("record {i}: {e}"))
                })?),
                None => r.value,
            },
            _ => r.value,
        };
        let batch = batches.entry((topic.to_string(), partition)).or_default();
        places.push((partition, batch.len()));
        batch.push((r.key, value, Default::default()));
    }
    let appended = local::append(&ingest.state, &access, batches).await;
    let results: Vec<Result<(i32, i64), Refused>> = places
        .iter()
        .map(|(p, index)| match &appended[&(topic.to_string(), *p)] {
            Ok(base) => Ok((*p, base + *index as i64)),
            Err(r) => Err(r.clone()),
        })
        .collect();
    let stored = results.iter().filter(|r| r.is_ok()).count() as u64;
    let label = TopicLabel {
        topic: topic.to_string(),
    };
    ingest
        .metrics
        .http_records
        .get_or_create(&label)
        .inc_by(stored);
    let status = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(status_of)
        .max()
        .unwrap_or(200);
    Ok((status, offsets_body(&results)))
}

/// The status a request is answered with when the buffer refused some of its records.
fn status_of(r: &Refused) -> u16 {
    match ResponseError::try_from_code(r.code) {
        Some(ResponseError::TopicAuthorizationFailed) => 403,
        Some(ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge) => 413,
        // A full buffer, a slow disk: the device tries again later.
        _ if r.retriable() => 503,
        _ => 422,
    }
}

fn json(status: u16, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/vnd.kafka.v2+json"),
    );
    r
}
