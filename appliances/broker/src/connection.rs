//! One Kafka client connection: a reader that decodes requests and runs their ordered phase,
//! and a writer that awaits completions in request order and writes the responses.
//!
//! The stream is generic (plain TCP today, TLS with the security layer) and the connection
//! carries a [`Session`] (listener, peer, principal) that the dispatch point checks.
//!
//! Limits (see also the listener's [`admission`] of connections per listener and address):
//! - a request larger than `max_request_size` closes the connection (as Kafka does);
//! - request bytes held across all connections are bounded ([`RequestMemory`]) so that many
//!   large requests wait instead of exhausting memory. The budget is taken as bytes arrive,
//!   never as sizes are announced (an announced size costs nothing until it is sent), and
//!   small requests draw from a reserve of their own, so large ones filling the budget never
//!   keep a metadata request or a heartbeat waiting;
//! - a request must arrive whole within `request_timeout` of its first byte, so a client
//!   that trickles or stalls gives back what it holds;
//! - an idle connection is closed after `idle_timeout`; at most `pipeline_depth` requests
//!   are in flight per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{self, Completion, Reply};
use crate::authn::{self, Gate, Login};
use crate::frame::{self, Decoded};
use crate::session::Session;
use crate::state::BrokerState;

/// What a connection runs over: TCP now, TLS later.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Requests of at most this many bytes draw from [`RequestMemory::small`].
pub const SMALL_REQUEST_BYTES: usize = 64 << 10;
/// The reserve for small requests, beside the configured budget for large ones.
pub const SMALL_REQUESTS_RESERVE_BYTES: usize = 32 << 20;
/// Memory is taken at most this far ahead of the bytes that arrived.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// The memory budget of requests being read or handled, across all connections: one pool for
/// large requests (`max_inflight_request_bytes`) and a reserve for small ones.
#[derive(Debug)]
pub struct RequestMemory {
    large: Arc<Semaphore>,
    large_bytes: usize,
    small: Arc<Semaphore>,
}

impl RequestMemory {
    pub fn new(large_bytes: usize) -> Arc<RequestMemory> {
        Arc::new(RequestMemory {
            large: Arc::new(Semaphore::new(large_bytes)),
            large_bytes,
            small: Arc::new(Semaphore::new(SMALL_REQUESTS_RESERVE_BYTES)),
        })
    }

    /// Bytes held now by requests being read or handled: (large, small).
    pub fn used_bytes(&self) -> (usize, usize) {
        (
            self.large_bytes - self.large.available_permits(),
            SMALL_REQUESTS_RESERVE_BYTES - self.small.available_permits(),
        )
    }

    fn pool_for(&self, size: usize) -> &Arc<Semaphore> {
        if size <= SMALL_REQUEST_BYTES {
            &self.small
        } else {
            &self.large
        }
    }
}

/// `broker_request_memory_bytes{pool}`: what [`RequestMemory`] holds at scrape time.
#[derive(Debug)]
pub struct MemoryCollector(pub Arc<RequestMemory>);

impl prometheus_client::collector::Collector for MemoryCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        let family = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        let (large, small) = self.0.used_bytes();
        family
            .get_or_create(&vec![("pool", "large")])
            .set(large as i64);
        family
            .get_or_create(&vec![("pool", "small")])
            .set(small as i64);
        family.encode(encoder.encode_descriptor(
            "broker_request_memory_bytes",
            "Bytes of Kafka requests held in memory (being read, or waiting for their answer), by pool: large requests (max_inflight_request_bytes) and the reserve for requests of at most 64 KiB",
            None,
            family.metric_type(),
        )?)
    }
}

struct Pending {
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    started: Instant,
    completion: Completion,
    _memory: OwnedSemaphorePermit,
}

#[derive(Debug)]
enum ReadEnd {
    Closed,
    Idle,
    Shutdown,
    /// A request did not arrive whole within `request_timeout`.
    TooSlow,
    /// A request the login does not allow (before it, or after it expired).
    Unauthenticated(&'static str),
    /// A failed login (its answer is sent, late, before the connection closes).
    LoginFailed,
    /// Its principal has its maximum of connections open (counted where refused).
    PrincipalFull,
    Refused(String),
    Io(std::io::Error),
}

pub async fn serve<S: Stream>(
    state: Arc<BrokerState>,
    stream: S,
    session: Session,
    memory: Arc<RequestMemory>,
    shutdown: CancellationToken,
) {
    state.metrics.connections.inc();
    state.metrics.connections_accepted.inc();
    let peer: SocketAddr = session.peer;
    let span = tracing::info_span!("conn", %peer, listener = %session.listener.name);
    async {
        let (rd, wr) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel(state.config.kafka.pipeline_depth);
        // Cancelled by a broker shutdown, or by the writer when it ends the connection.
        let closing = shutdown.child_token();
        let writer = tokio::spawn(
            write_responses(Arc::clone(&state), wr, rx, closing.clone()).in_current_span(),
        );
        let peer_gone = session.peer_gone.clone();
        let listener = session.listener.name.to_string();
        let end = read_requests(&state, rd, session, tx, &memory, &closing).await;
        if matches!(end, ReadEnd::Closed | ReadEnd::Io(_)) {
            peer_gone.cancel();
        }
        let closed = |reason| state.metrics.connection_closed(&listener, reason);
        match &end {
            ReadEnd::Closed | ReadEnd::Shutdown => {
                tracing::debug!(reason = ?end, "connection closed")
            }
            ReadEnd::Idle => tracing::info!("closing idle connection"),
            ReadEnd::TooSlow => {
                closed("request_timeout");
                tracing::warn!(
                    timeout = ?state.config.kafka.request_timeout,
                    "closing connection: a request did not arrive whole within request_timeout"
                )
            }
            ReadEnd::Unauthenticated(why) => {
                closed("unauthenticated");
                tracing::info!(reason = why, "closing connection")
            }
            ReadEnd::LoginFailed => closed("login_failed"),
            ReadEnd::PrincipalFull => {}
            ReadEnd::Refused(why) => {
                closed("bad_request");
                tracing::warn!(reason = %why, "closing connection")
            }
            ReadEnd::Io(e) => tracing::debug!(error = %e, "connection read failed"),
        }
        let _ = writer.await;
    }
    .instrument(span)
    .await;
    state.metrics.connections.dec();
}

async fn read_requests<S: Stream>(
    state: &Arc<BrokerState>,
    mut rd: ReadHalf<S>,
    mut session: Session,
    tx: mpsc::Sender<Pending>,
    memory: &RequestMemory,
    shutdown: &CancellationToken,
) -> ReadEnd {
    let limits = &state.config.kafka;
    let mut login = Login::new(&session.listener, &state.config.sasl);
    loop {
        let size = tokio::select! {
            _ = shutdown.cancelled() => return ReadEnd::Shutdown,
            r = tokio::time::timeout(limits.idle_timeout, rd.read_i32()) => match r {
                Err(_) => return ReadEnd::Idle,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return ReadEnd::Closed,
                Ok(Err(e)) => return ReadEnd::Io(e),
                Ok(Ok(size)) => size,
            },
        };
        let size_max = login.max_request_bytes(limits.max_request_size);
        if size < 0 || size as u64 > size_max {
            let what = if size_max < limits.max_request_size {
                "sasl.max_receive_bytes before the login"
            } else {
                "socket.request.max.bytes"
            };
            return ReadEnd::Refused(format!(
                "request size {size} is outside [0, {size_max}] ({what})"
            ));
        }
        let deadline = tokio::time::Instant::now() + limits.request_timeout;
        let body = tokio::select! {
            _ = shutdown.cancelled() => return ReadEnd::Shutdown,
            b = read_body(&mut rd, size as usize, memory.pool_for(size as usize), deadline, limits.idle_timeout) => b,
        };
        let (frame, permit) = match body {
            Ok(b) => b,
            Err(end) => return end,
        };
        let mut ending = None;
        let pending = match frame::decode(frame.freeze()) {
            Decoded::Close(why) => return ReadEnd::Refused(why),
            Decoded::ApiVersionsTooNew { correlation_id } => Pending {
                api_key: ApiKey::ApiVersions,
                version: 0,
                correlation_id,
                started: Instant::now(),
                completion: Box::pin(std::future::ready(Reply::Send(ResponseKind::ApiVersions(
                    api::api_versions_too_new(),
                )))),
                _memory: permit,
            },
            Decoded::Request(req) => {
                if let Some(id) = &req.header.client_id
                    && *session.client_id != **id
                {
                    session.client_id = id.to_string();
                }
                let (api_key, version, correlation_id) =
                    (req.api_key, req.version, req.header.correlation_id);
                let started = Instant::now();
                let (completion, closing) = match login.gate(api_key, tokio::time::Instant::now()) {
                    Gate::Pass => (api::handle(state, &session, *req).await, None),
                    Gate::Refuse(why) => return ReadEnd::Unauthenticated(why),
                    Gate::Login => {
                        authn::step(state, &mut login, &mut session, version, req.body).await
                    }
                };
                // A login step that ends the connection still sends its answer first.
                ending = closing.map(|c| match c {
                    authn::Closing::LoginFailed => ReadEnd::LoginFailed,
                    authn::Closing::PrincipalFull => ReadEnd::PrincipalFull,
                });
                Pending {
                    api_key,
                    version,
                    correlation_id,
                    started,
                    completion,
                    _memory: permit,
                }
            }
        };
        if tx.send(pending).await.is_err() {
            return ReadEnd::Closed;
        }
        if let Some(end) = ending {
            return end;
        }
    }
}

/// Read a request body of `size` bytes by `deadline`, taking memory from `pool` as the bytes
/// arrive (at most a chunk ahead of them), never the announced size up front: a client that
/// announces a large request and sends part of it holds only that part, and only until the
/// deadline. Waiting for memory counts against the deadline too, so requests that each hold
/// part of the budget and wait for more cannot wait on each other for ever. A connection
/// silent for `idle` is closed as idle, inside a request too.
async fn read_body<S: Stream>(
    rd: &mut ReadHalf<S>,
    size: usize,
    pool: &Arc<Semaphore>,
    deadline: tokio::time::Instant,
    idle: std::time::Duration,
) -> Result<(BytesMut, OwnedSemaphorePermit), ReadEnd> {
    let take = |n: usize| {
        let pool = Arc::clone(pool);
        async move {
            match tokio::time::timeout_at(deadline, pool.acquire_many_owned(n as u32)).await {
                Err(_) => Err(ReadEnd::TooSlow),
                Ok(Err(_)) => Err(ReadEnd::Shutdown),
                Ok(Ok(p)) => Ok(p),
            }
        }
    };
    let mut held = take(0).await?;
    let mut buf = BytesMut::new();
    while buf.len() < size {
        let chunk = (size - buf.len()).min(READ_CHUNK_BYTES);
        let need = buf.len() + chunk;
        if held.num_permits() < need {
            held.merge(take(need - held.num_permits()).await?);
        }
        buf.reserve(chunk);
        let mut limited = (&mut *rd).take(chunk as u64);
        let silent_until = tokio::time::Instant::now() + idle;
        match tokio::time::timeout_at(deadline.min(silent_until), limited.read_buf(&mut buf)).await
        {
            Err(_) if silent_until < deadline => return Err(ReadEnd::Idle),
            Err(_) => return Err(ReadEnd::TooSlow),
            Ok(Ok(0)) => return Err(ReadEnd::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReadEnd::Io(e)),
        }
    }
    debug_assert!(held.num_permits() >= size);
    Ok((buf, held))
}

async fn write_responses<S: Stream>(
    state: Arc<BrokerState>,
    wr: WriteHalf<S>,
    rx: mpsc::Receiver<Pending>,
    closing: CancellationToken,
) {
    write_in_order(&state, BufWriter::with_capacity(64 * 1024, wr), rx).await;
    closing.cancel();
}

async fn write_in_order<S: Stream>(
    state: &BrokerState,
    mut out: BufWriter<WriteHalf<S>>,
    mut rx: mpsc::Receiver<Pending>,
) {
    while let Some(p) = rx.recv().await {
        let reply = p.completion.await;
        let api = crate::api::versions::name(p.api_key);
        state
            .metrics
            .requests
            .get_or_create(&crate::metrics::ApiLabel { api })
            .inc();
        state
            .metrics
            .request_latency
            .get_or_create(&crate::metrics::ApiLabel { api })
            .observe(p.started.elapsed().as_secs_f64());
        let (body, last) = match reply {
            Reply::Send(body) => (body, false),
            Reply::Last(body) => (body, true),
            Reply::Nothing => continue,
            Reply::Close => break,
        };
        let bytes = match frame::encode_response(p.api_key, p.version, p.correlation_id, &body) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(api, version = p.version, error = %e, "cannot encode a response; closing");
                break;
            }
        };
        if out.write_all(&bytes).await.is_err() {
            return;
        }
        if last {
            break;
        }
        if rx.is_empty() && out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}
