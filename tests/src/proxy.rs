//! A Kafka-aware TCP proxy between clients and a broker, to inject the faults a branch's WAN
//! causes. It reads Kafka frames in both directions, so that it can:
//! - cut every open connection at once ([`ChaosProxy::cut_all`]);
//! - lose the response to every Nth Produce request ([`ChaosProxy::lose_produce_responses`]):
//!   the broker has appended the batch, the producer never hears so and must retry. That is
//!   exactly the case idempotence exists for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PRODUCE: i16 = 0;

#[derive(Default)]
struct Faults {
    /// Lose the response of every Nth Produce request (0: never).
    lose_every: AtomicU64,
    produce_responses: AtomicU64,
    lost: AtomicU64,
}

pub struct ChaosProxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    cut: watch::Sender<u64>,
    faults: Arc<Faults>,
    _runtime: tokio::runtime::Runtime,
}

impl ChaosProxy {
    /// Listen now; forward once [`ChaosProxy::set_target`] names the broker.
    pub fn start() -> ChaosProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let faults: Arc<Faults> = Arc::default();
        let (cut, _) = watch::channel(0u64);
        let (t, f, cuts) = (Arc::clone(&target), Arc::clone(&faults), cut.clone());
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Some(dest) = *t.lock().expect("target lock") else {
                    continue;
                };
                let mut cut_rx = cuts.subscribe();
                let faults = Arc::clone(&f);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(dest).await else {
                        return;
                    };
                    let (client_rd, client_wr) = client.into_split();
                    let (server_rd, server_wr) = server.into_split();
                    let apis: Arc<Mutex<HashMap<i32, i16>>> = Arc::default();
                    tokio::select! {
                        _ = requests(client_rd, server_wr, Arc::clone(&apis)) => {}
                        _ = responses(server_rd, client_wr, apis, faults) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        ChaosProxy {
            addr,
            target,
            cut,
            faults,
            _runtime: runtime,
        }
    }

    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().expect("target lock") = Some(target);
    }

    /// Close every open connection at once.
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// From now on, drop the connection instead of delivering every `n`th Produce response.
    pub fn lose_produce_responses(&self, n: u64) {
        self.faults.lose_every.store(n, Ordering::Relaxed);
    }

    /// Produce responses lost so far.
    pub fn lost_responses(&self) -> u64 {
        self.faults.lost.load(Ordering::Relaxed)
    }
}

async fn read_frame(rd: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let size = rd.read_i32().await.ok()?;
    let mut frame = vec![0u8; usize::try_from(size).ok()?];
    rd.read_exact(&mut frame).await.ok()?;
    Some(frame)
}

async fn write_frame(wr: &mut OwnedWriteHalf, frame: &[u8]) -> Option<()> {
    wr.write_all(&(frame.len() as i32).to_be_bytes())
        .await
        .ok()?;
    wr.write_all(frame).await.ok()
}

/// Client to broker: remember which API each correlation id is for, forward unchanged.
async fn requests(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    apis: Arc<Mutex<HashMap<i32, i16>>>,
) {
    while let Some(frame) = read_frame(&mut rd).await {
        if frame.len() >= 8 {
            let api = i16::from_be_bytes([frame[0], frame[1]]);
            let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            apis.lock().expect("apis lock").insert(correlation, api);
        }
        if write_frame(&mut wr, &frame).await.is_none() {
            return;
        }
    }
}

/// Broker to client: forward responses, except the Produce responses chosen to be lost.
async fn responses(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    apis: Arc<Mutex<HashMap<i32, i16>>>,
    faults: Arc<Faults>,
) {
    while let Some(frame) = read_frame(&mut rd).await {
        if frame.len() >= 4 {
            let correlation = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
            let api = apis.lock().expect("apis lock").remove(&correlation);
            let every = faults.lose_every.load(Ordering::Relaxed);
            if api == Some(PRODUCE) && every > 0 {
                let n = faults.produce_responses.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(every) {
                    faults.lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        if write_frame(&mut wr, &frame).await.is_none() {
            return;
        }
    }
}
