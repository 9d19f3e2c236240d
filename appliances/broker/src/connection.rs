//! One Kafka client connection: a reader that decodes requests and runs their ordered phase,
//! and a writer that awaits completions in request order and writes the responses.
//!
//! The stream is generic (plain TCP today, TLS with the security layer) and the connection
//! carries a [`Session`] (listener, peer, principal) that the dispatch point checks.
//!
//! Limits: a request larger than `max_request_size` closes the connection (as Kafka does);
//! request bytes held across all connections are bounded by a semaphore so that many large
//! requests wait instead of exhausting memory; an idle connection is closed after
//! `idle_timeout`; at most `pipeline_depth` requests are in flight per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{self, Completion, Reply};
use crate::frame::{self, Decoded};
use crate::session::Session;
use crate::state::BrokerState;

/// What a connection runs over: TCP now, TLS later.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

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
    Refused(String),
    Io(std::io::Error),
}

pub async fn serve<S: Stream>(
    state: Arc<BrokerState>,
    stream: S,
    session: Session,
    memory: Arc<Semaphore>,
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
        let end = read_requests(&state, rd, session, tx, &memory, &closing).await;
        if matches!(end, ReadEnd::Closed | ReadEnd::Io(_)) {
            peer_gone.cancel();
        }
        match &end {
            ReadEnd::Closed | ReadEnd::Shutdown => {
                tracing::debug!(reason = ?end, "connection closed")
            }
            ReadEnd::Idle => tracing::info!("closing idle connection"),
            ReadEnd::Refused(why) => tracing::warn!(reason = %why, "closing connection"),
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
    memory: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> ReadEnd {
    let limits = &state.config.kafka;
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
        if size < 0 || size as u64 > limits.max_request_size {
            return ReadEnd::Refused(format!(
                "request size {size} is outside [0, {}] (socket.request.max.bytes)",
                limits.max_request_size
            ));
        }
        let Ok(permit) = Arc::clone(memory)
            .acquire_many_owned(size.max(1) as u32)
            .await
        else {
            return ReadEnd::Shutdown;
        };
        let frame = match read_body(&mut rd, size as usize, limits.idle_timeout).await {
            Ok(f) => f,
            Err(end) => return end,
        };
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
                let completion = api::handle(state, &session, *req).await;
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
    }
}

/// Read a request body of `size` bytes, growing the buffer as data arrives rather than
/// trusting the size field up front.
async fn read_body<S: Stream>(
    rd: &mut ReadHalf<S>,
    size: usize,
    idle: Duration,
) -> Result<BytesMut, ReadEnd> {
    let mut buf = BytesMut::with_capacity(size.min(64 * 1024));
    while buf.len() < size {
        buf.reserve((size - buf.len()).min(1 << 20));
        let want = size - buf.len();
        let mut limited = (&mut *rd).take(want as u64);
        match tokio::time::timeout(idle, limited.read_buf(&mut buf)).await {
            Err(_) => return Err(ReadEnd::Idle),
            Ok(Ok(0)) => return Err(ReadEnd::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReadEnd::Io(e)),
        }
    }
    Ok(buf)
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
        let body = match reply {
            Reply::Send(body) => body,
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
        if rx.is_empty() && out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}
