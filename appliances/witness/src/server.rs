//! Lifecycle: lock the data directory, start the quorum member on its files, serve the quorum
//! protocol and the admin endpoints, watch the Raft core; stop in reverse.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use quorum::node::QuorumNode;
use quorum::raft::RaftMetrics;
use quorum::transport::{self, TcpTransport};
use telemetry::Health;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::WitnessConfig;
use crate::data_dir::{DataDir, QuorumFiles};

pub type WitnessNode = QuorumNode<TcpTransport>;

/// Health conditions (`/ready` names the ones that do not hold).
const LISTENER: &str = "quorum_listener";
const RAFT: &str = "raft";
/// Ready only as a voter: a witness left out of the voters (a mistyped id, a replacement not
/// made a voter yet) gives the hub no site-loss tolerance, and must not look healthy.
const VOTER: &str = "voter";

/// A running witness.
pub struct WitnessHandle {
    /// The bound quorum listener (useful with port 0).
    pub quorum_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Where the other nodes reach this one.
    pub advertised: String,
    node: Arc<WitnessNode>,
    running: Running,
    /// Released (by drop) only after the quorum member stopped writing.
    _data_dir: DataDir,
}

/// The tasks around the quorum member.
struct Running {
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    serve: JoinHandle<()>,
    admin: JoinHandle<()>,
    watcher: JoinHandle<()>,
    /// Why the Raft core stopped on its own, once it has.
    failure: watch::Receiver<Option<String>>,
}

impl WitnessHandle {
    /// The quorum member (its state, metrics, controller calls).
    pub fn node(&self) -> &Arc<WitnessNode> {
        &self.node
    }

    /// Resolves if the quorum member stops on its own (a storage error stops openraft's core;
    /// the node then neither votes nor replicates until restarted). Never resolves otherwise.
    pub async fn failed(&self) -> String {
        let mut failure = self.running.failure.clone();
        match failure.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The watcher ended without a failure: the witness is shutting down.
            Err(_) => std::future::pending().await,
        }
    }

    /// Stop serving, stop the quorum member (its log is synced at every step, so there is
    /// nothing to flush), then release the data directory.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let r = self.running;
        r.shutdown.cancel();
        r.serve.await.context("quorum listener task")?;
        r.watcher.await.context("raft watcher task")?;
        self.node.shutdown().await;
        r.admin.await.context("admin task")?;
        tracing::info!(quorum = %self.quorum_addr, "witness stopped");
        Ok(())
    }
}

/// Bind `quorum.listen` and start.
pub async fn start(config: WitnessConfig) -> anyhow::Result<WitnessHandle> {
    let listener = TcpListener::bind(config.quorum.listen)
        .await
        .with_context(|| format!("binding the quorum listener {}", config.quorum.listen))?;
    start_with_listener(config, listener).await
}

/// Start on a quorum listener the caller bound (a test that must put the witness's address in
/// `cluster.voters` before the witness starts).
pub async fn start_with_listener(
    config: WitnessConfig,
    listener: TcpListener,
) -> anyhow::Result<WitnessHandle> {
    let quorum_addr = listener
        .local_addr()
        .context("the quorum listener's address")?;
    let (data_dir, files) = open_data_dir(&config).await?;
    let advertised = config
        .cluster
        .advertised(config.node(), &config.quorum, quorum_addr)
        .map_err(anyhow::Error::msg)?;
    let tls = quorum::config::QuorumTls::load(&config.quorum, config.tls.as_ref())
        .map_err(anyhow::Error::msg)?;
    let node = start_node(&config, files, &advertised, tls.as_ref()).await?;
    let running = match serve(&config, listener, &node, tls).await {
        Ok(r) => r,
        Err(e) => {
            node.shutdown().await;
            return Err(e);
        }
    };
    tracing::info!(
        node = config.node_id,
        cluster = %config.cluster.name,
        site = %config.site,
        quorum = %quorum_addr,
        %advertised,
        admin = %running.admin_addr,
        "witness ready"
    );
    if !config
        .cluster
        .voters()
        .is_ok_and(|v| v.contains_key(&config.node()))
    {
        tracing::warn!(
            node = config.node_id,
            "not one of cluster.voters: this witness follows the quorum once an operator makes it a voter (clk cluster replace-voter)"
        );
    }
    Ok(WitnessHandle {
        quorum_addr,
        admin_addr: running.admin_addr,
        advertised,
        node,
        running,
        _data_dir: data_dir,
    })
}

async fn open_data_dir(config: &WitnessConfig) -> anyhow::Result<(DataDir, QuorumFiles)> {
    let (root, node, cluster) = (
        config.data_dir.clone(),
        config.node_id,
        config.cluster.name.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let dir = DataDir::open(&root, node, &cluster)?;
        let files = dir.quorum_files()?;
        Ok::<_, anyhow::Error>((dir, files))
    })
    .await
    .context("opening the data directory")?
}

async fn start_node(
    config: &WitnessConfig,
    files: QuorumFiles,
    advertised: &str,
    tls: Option<&quorum::config::QuorumTls>,
) -> anyhow::Result<Arc<WitnessNode>> {
    let node_config = config
        .cluster
        .node_config(config.node(), &config.site, advertised)
        .map_err(anyhow::Error::msg)?;
    let client = tls.map(|t| Arc::clone(&t.client));
    let transport =
        Arc::new(TcpTransport::new(&config.cluster.name, config.node()).with_tls(client));
    QuorumNode::start(
        node_config,
        Box::new(files.log),
        Box::new(files.snapshot),
        transport,
    )
    .await
    .with_context(|| {
        format!(
            "starting the quorum member on {}",
            config.data_dir.join("quorum").display()
        )
    })
}

/// The admin endpoints, the quorum listener and the Raft watcher.
async fn serve(
    config: &WitnessConfig,
    listener: TcpListener,
    node: &Arc<WitnessNode>,
    tls: Option<quorum::config::QuorumTls>,
) -> anyhow::Result<Running> {
    let shutdown = CancellationToken::new();
    if let Some(t) = &tls {
        t.watch(&shutdown);
    }
    let health = Arc::new(Health::new());
    health.require(LISTENER, "the quorum listener is not serving yet");
    health.set_ok(RAFT);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(quorum::metrics::QuorumCollector::new(
        node.raft.metrics(),
    )));
    registry.register_collector(Box::new(telemetry::ProcessCollector));
    registry.register_collector(Box::new(telemetry::DiskCollector::new(&config.data_dir)));
    let routes = quorum::admin::QuorumAdmin::default();
    routes.attach(Arc::clone(node));
    let admin = telemetry::serve_admin_with(
        config.admin.listen,
        Arc::new(registry),
        Arc::clone(&health),
        Some(match &config.tls {
            None => Arc::new(routes) as Arc<dyn telemetry::AdminRoutes>,
            Some(t) => Arc::new(telemetry::Routes(vec![
                Arc::new(routes),
                Arc::new(telemetry::TlsFilesRoute(t.clone())),
            ])),
        }),
        config.admin.access(config.tls.as_ref())?,
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("binding the admin listener {}", config.admin.listen))?;
    let serve = tokio::spawn(transport::serve(
        listener,
        Arc::clone(node),
        tls.map(|t| t.server),
        shutdown.clone(),
    ));
    // The listener is bound and the accept loop runs from here: peers are served.
    health.set_ok(LISTENER);
    let (failed, failure) = watch::channel(None);
    let watcher = tokio::spawn(watch_raft(
        node.raft.metrics(),
        health,
        failed,
        shutdown.clone(),
    ));
    Ok(Running {
        admin_addr: admin.local_addr,
        shutdown,
        serve,
        admin: admin.task,
        watcher,
        failure,
    })
}

/// Turn a stopped Raft core into a failing readiness condition, an error in the log and a
/// resolved [`WitnessHandle::failed`].
async fn watch_raft(
    mut metrics: watch::Receiver<RaftMetrics>,
    health: Arc<Health>,
    failed: watch::Sender<Option<String>>,
    shutdown: CancellationToken,
) {
    let why = loop {
        let (fatal, voter) = {
            let m = metrics.borrow_and_update();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == m.id);
            (
                m.running_state.as_ref().err().map(ToString::to_string),
                voter,
            )
        };
        if let Some(fatal) = fatal {
            break fatal;
        }
        if voter {
            health.set_ok(VOTER);
        } else {
            health.set_failing(
                VOTER,
                "not a voter of the quorum (yet): clk cluster replace-voter makes it one",
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() {
                break "the raft core ended".to_string();
            },
        }
    };
    tracing::error!(error = %why, "the quorum member stopped: this witness no longer votes");
    health.set_failing(RAFT, format!("stopped: {why}"));
    failed.send_replace(Some(why));
}

#[cfg(test)]
mod tests {
    use quorum::ids::NodeId;

    use super::*;

    /// The Raft core stopping (here: reported stopped; in life, a storage error) turns
    /// readiness off with the reason and resolves the failure channel `main` waits on.
    #[tokio::test]
    async fn a_stopped_raft_core_fails_readiness() {
        let (metrics, rx) = watch::channel(RaftMetrics::new_initial(NodeId(100)));
        let health = Arc::new(Health::new());
        health.set_ok(RAFT);
        let (failed, mut failure) = watch::channel(None);
        let task = tokio::spawn(watch_raft(
            rx,
            Arc::clone(&health),
            failed,
            CancellationToken::new(),
        ));
        assert!(health.readiness().is_ok());
        metrics.send_modify(|m| m.running_state = Err(openraft::error::Fatal::Stopped));
        let why = failure.wait_for(Option::is_some).await.unwrap().clone();
        assert!(why.is_some_and(|w| w.contains("stopped")));
        assert!(health.readiness().unwrap_err().starts_with("raft: stopped"));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_shutdown_is_not_a_failure() {
        let (metrics, rx) = watch::channel(RaftMetrics::new_initial(NodeId(100)));
        let health = Arc::new(Health::new());
        let (failed, failure) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_raft(rx, Arc::clone(&health), failed, stop.clone()));
        stop.cancel();
        task.await.unwrap();
        drop(metrics);
        assert!(failure.borrow().is_none());
        // Not failed; not ready either: these metrics name no voters (this witness is none).
        let why = health.readiness().unwrap_err().to_string();
        assert!(
            why.contains("not a voter") && !why.contains("stopped"),
            "{why}"
        );
    }
}
