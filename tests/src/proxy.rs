//! A TCP proxy between clients and a broker that can cut every connection on demand: what a
//! branch's WAN does to a producer. Requests already read by the broker are processed, their
//! responses are lost, and the client must retry: the test of idempotence.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct ChaosProxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    cut: watch::Sender<u64>,
    runtime: tokio::runtime::Runtime,
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
        let (cut, _) = watch::channel(0u64);
        let t = Arc::clone(&target);
        let cuts = cut.clone();
        runtime.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let Some(dest) = *t.lock().expect("target lock") else {
                    continue;
                };
                let mut cut_rx = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(dest).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        ChaosProxy {
            addr,
            target,
            cut,
            runtime,
        }
    }

    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().expect("target lock") = Some(target);
    }

    /// Close every open connection at once.
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }
}
