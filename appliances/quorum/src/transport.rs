//! The quorum protocol over TCP: one framed request, one framed answer, on connections kept
//! for reuse. Strangers (another cluster, another protocol version) are refused with a
//! logged reason; a malformed frame closes the connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use admission::{Admission, ConnectionLimits};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::ids::NodeId;
use crate::node::QuorumNode;
use crate::raft::frames::{self, HEADER_BYTES};
use crate::raft::network::{Transport, TransportError};
use crate::rpc::{self, Envelope, PROTOCOL_VERSION, Request, Response};

/// Connections served at once, and from one address. A quorum has a handful of members, each
/// with a few connections (all on one address in a lab on loopback); past these limits a
/// connection is closed as it is accepted, so a stranger opening sockets can take at most its
/// address's share, never the places the members need.
const CONNECTIONS_MAX: usize = 256;
const CONNECTIONS_PER_IP_MAX: usize = 64;
/// Bytes of incoming frames held at once across connections, taken as the bytes arrive: a
/// frame may be up to 64 MiB (a snapshot), but a peer that announces one and sends little
/// holds little, and only until `FRAME_TIMEOUT`.
const FRAMES_IN_FLIGHT_BYTES_MAX: usize = 128 << 20;

/// Quorum connections refused at accept by this process (`quorum_connections_refused_total`).
pub static CONNECTIONS_REFUSED: AtomicU64 = AtomicU64::new(0);
/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 4;
/// A connection that sends nothing for this long is closed (peers keep theirs for less).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A frame whose header arrived must arrive whole within this: a peer that trickles bytes
/// loses its connection instead of holding a slot.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Pooled connections unused for this long are not reused (the peer may have closed them).
const POOL_MAX_IDLE: Duration = Duration::from_secs(60);

/// A connection to a peer: plain TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

pub struct TcpTransport {
    cluster: String,
    from: NodeId,
    idle: Mutex<HashMap<String, Vec<(Conn, tokio::time::Instant)>>>,
    /// mTLS to peers (`[quorum] security = "SSL"`).
    tls: Option<Arc<tls::TlsClient>>,
}

impl TcpTransport {
    pub fn new(cluster: &str, from: NodeId) -> TcpTransport {
        TcpTransport {
            cluster: cluster.to_string(),
            from,
            idle: Mutex::new(HashMap::new()),
            tls: None,
        }
    }

    /// Connect to peers over TLS with `tls` (their certificates must name the host of their
    /// quorum address).
    pub fn with_tls(mut self, tls: Option<Arc<tls::TlsClient>>) -> TcpTransport {
        self.tls = tls;
        self
    }

    async fn exchange(
        &self,
        to: NodeId,
        stream: &mut Conn,
        request: &[u8],
    ) -> Result<Response, TransportError> {
        let broken = |e: std::io::Error| TransportError::Unreachable(to, e.to_string());
        stream.write_all(request).await.map_err(broken)?;
        stream.flush().await.map_err(broken)?;
        let frame = read_frame(stream).await.map_err(broken)?;
        let envelope: Envelope<Response> =
            rpc::decode(&frame).map_err(|e| TransportError::Protocol(to, e.to_string()))?;
        match envelope.body {
            Response::Refused(r) => Err(TransportError::Refused(to, r)),
            other => Ok(other),
        }
    }
}

/// Read one frame (header and payload), refusing lengths over the limit. The buffer grows
/// with the bytes that arrive, not with what the header claims, and a frame whose header
/// arrived must arrive whole within [`FRAME_TIMEOUT`].
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    Ok(read_frame_within(stream, None, None).await?.0)
}

/// Read one frame; with a `budget`, take memory from it as the bytes arrive (at most 1 MiB
/// ahead of them) and hand it back with the frame. The frame, waiting for memory included,
/// must arrive within `FRAME_TIMEOUT` of its header.
async fn read_frame_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    first: Option<u8>,
    budget: Option<&Arc<Semaphore>>,
) -> std::io::Result<(Vec<u8>, Option<OwnedSemaphorePermit>)> {
    let mut header = [0u8; HEADER_BYTES];
    match first {
        Some(b) => {
            header[0] = b;
            stream.read_exact(&mut header[1..]).await?;
        }
        None => {
            stream.read_exact(&mut header).await?;
        }
    }
    let len = frames::payload_len(&header).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame length over the limit",
        )
    })?;
    let body = async {
        let mut held = match budget {
            Some(b) => Some(Arc::clone(b).acquire_many_owned(0).await.map_err(closed)?),
            None => None,
        };
        let mut frame = Vec::with_capacity(HEADER_BYTES + len.min(64 << 10));
        frame.extend_from_slice(&header);
        let mut limited = (&mut *stream).take(len as u64);
        while frame.len() < HEADER_BYTES + len {
            let chunk = (HEADER_BYTES + len - frame.len()).min(1 << 20);
            if let (Some(b), Some(h)) = (budget, held.as_mut()) {
                let need = (frame.len() - HEADER_BYTES + chunk).saturating_sub(h.num_permits());
                h.merge(
                    Arc::clone(b)
                        .acquire_many_owned(need as u32)
                        .await
                        .map_err(closed)?,
                );
            }
            frame.reserve(chunk);
            if limited.read_buf(&mut frame).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
        Ok((frame, held))
    };
    tokio::time::timeout(FRAME_TIMEOUT, body)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "frame too slow"))?
}

fn closed(_: tokio::sync::AcquireError) -> std::io::Error {
    std::io::Error::other("shutting down")
}

impl TcpTransport {
    fn take_idle(&self, addr: &str) -> Option<Conn> {
        let mut idle = self.idle.lock();
        let pool = idle.get_mut(addr)?;
        while let Some((s, since)) = pool.pop() {
            if since.elapsed() < POOL_MAX_IDLE {
                return Some(s);
            }
        }
        None
    }

    async fn connect(&self, to: NodeId, addr: &str) -> Result<Conn, TransportError> {
        let unreachable = |e: std::io::Error| TransportError::Unreachable(to, e.to_string());
        let stream = TcpStream::connect(addr).await.map_err(unreachable)?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(stream)),
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let stream = tls.connect(host, stream).await.map_err(unreachable)?;
                Ok(Box::new(stream))
            }
        }
    }
}

impl Transport for TcpTransport {
    async fn call(
        &self,
        to: NodeId,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let bytes = rpc::encode(&Envelope {
            version: PROTOCOL_VERSION,
            cluster: self.cluster.clone(),
            from: self.from,
            body: request,
        });
        let attempt = async {
            let reused = self.take_idle(addr);
            let (mut stream, fresh) = match reused {
                Some(s) => (s, false),
                None => (self.connect(to, addr).await?, true),
            };
            let answer = match self.exchange(to, &mut stream, &bytes).await {
                // A pooled connection the peer closed meanwhile (it restarted, or timed the
                // connection out): once more on a new one.
                Err(TransportError::Unreachable(..)) if !fresh => {
                    stream = self.connect(to, addr).await?;
                    self.exchange(to, &mut stream, &bytes).await?
                }
                other => other?,
            };
            let mut idle = self.idle.lock();
            let pool = idle.entry(addr.to_string()).or_default();
            if pool.len() < IDLE_PER_PEER {
                pool.push((stream, tokio::time::Instant::now()));
            }
            Ok(answer)
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| TransportError::Timeout(to, timeout))?
    }
}

/// Serve the quorum protocol on `listener` until `shutdown` or the node's own shutdown.
pub async fn serve<T: Transport>(
    listener: TcpListener,
    node: Arc<QuorumNode<T>>,
    tls: Option<Arc<tls::TlsServer>>,
    shutdown: CancellationToken,
) {
    // The node's own shutdown ends serving too (one token for callers to manage).
    let shutdown = {
        let both = shutdown.child_token();
        let node_down = node.stopping();
        let token = both.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = node_down.cancelled() => token.cancel(),
                _ = token.cancelled() => {}
            }
        });
        both
    };
    let admission = Admission::new(ConnectionLimits::fixed(
        CONNECTIONS_MAX,
        CONNECTIONS_PER_IP_MAX,
    ));
    let budget = Arc::new(Semaphore::new(FRAMES_IN_FLIGHT_BYTES_MAX));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let admitted = match admission.admit(peer.ip()) {
                    Ok(a) => a,
                    Err(why) => {
                        CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, reason = %why, "refusing a quorum connection");
                        continue;
                    }
                };
                let (node, shutdown) = (Arc::clone(&node), shutdown.clone());
                let (budget, tls) = (Arc::clone(&budget), tls.clone());
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let served = match tls {
                        None => connection(stream, &node, &budget, &shutdown).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(a) => connection(a.stream, &node, &budget, &shutdown).await,
                            Err(e) => {
                                tracing::warn!(%peer, reason = %e, "quorum: TLS handshake refused");
                                Ok(())
                            }
                        },
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "quorum connection closed");
                    }
                    drop(admitted);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "quorum accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection<T: Transport, S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    node: &QuorumNode<T>,
    budget: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    loop {
        // Idle until a frame begins; from its first byte, it must arrive whole (its header
        // too) within FRAME_TIMEOUT.
        let mut first = [0u8; 1];
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            f = tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut first)) => match f {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            },
        };
        let read = read_frame_within(&mut stream, Some(first[0]), Some(budget));
        let (frame, _memory) = tokio::time::timeout(FRAME_TIMEOUT, read)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "frame too slow"))??;
        let envelope = match rpc::decode_request(&frame) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "malformed quorum message: closing");
                return Ok(());
            }
        };
        let answer = node.handle(envelope).await;
        let bytes = rpc::encode(&crate::node::envelope(node.config(), answer));
        stream.write_all(&bytes).await?;
        stream.flush().await?;
    }
}
