//! The gateway's lifecycle: start the buffer (the broker in one-node mode), then a task that
//! finds the local partitions to forward and runs one forwarder per partition.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use broker::BrokerHandle;
use broker::partition::Partition;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::EdgeConfig;
use crate::forwarder::{self, Forwarding};
use crate::hub::Hub;
use crate::limits::{self, BufferLimits, Cursors};
use crate::metrics::EdgeMetrics;

/// Local partitions forwarded at most (each is a task, a journal and a hub producer).
pub const STREAMS_MAX: usize = 4096;

/// A running gateway.
pub struct EdgeHandle {
    /// Where the branch's Kafka clients connect.
    pub kafka_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The HTTP ingest, when `[http]` asks for it.
    pub http_addr: Option<SocketAddr>,
    buffer: BrokerHandle,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// Start the gateway.
pub async fn start(config: EdgeConfig) -> anyhow::Result<EdgeHandle> {
    let metrics = Arc::new(EdgeMetrics::default());
    let limits = Arc::new(BufferLimits::new(
        config.limits.clone(),
        Arc::clone(&metrics),
    ));
    let schemas = if config.hub.schema_registry.is_empty() {
        None
    } else {
        let dir = config.buffer.data_dir.join("schemas");
        Some(crate::schemas::Schemas::load(dir, Arc::clone(&metrics))?)
    };
    let m = Arc::clone(&metrics);
    let parking = Arc::new(crate::parking::Parking::default());
    let embedding = broker::Embedding {
        admin_routes: Some(Arc::clone(&parking) as Arc<dyn telemetry::AdminRoutes>),
        register: Some(Box::new(move |r| m.register(r))),
        ingest: Some(Arc::clone(&limits) as Arc<dyn broker::state::IngestGate>),
        record_check: schemas
            .clone()
            .map(|s| s as Arc<dyn broker::state::RecordCheck>),
    };
    let buffer = broker::start_with(config.buffer.clone(), embedding)
        .await
        .context("starting the buffer")?;
    let dir = config.buffer.data_dir.join("forwarder");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let hub = Hub::new(config.hub.clone(), format!("edge-{}", config.gateway))?;
    let claim_check = config
        .claim_check
        .clone()
        .map(|c| crate::claim_check::ClaimCheck::new(c, hub.tls().cloned()))
        .transpose()
        .context("[claim_check]")?;
    let forwarding = Arc::new(Forwarding {
        gateway: config.gateway.clone(),
        hub: Arc::new(hub),
        settings: config.forward.clone(),
        backoff: (config.hub.retry_backoff, config.hub.retry_backoff_max),
        metrics,
        dir,
        cursors: Cursors::default(),
        claim_check,
        parking,
    });
    let gateway = config.gateway.clone();
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    if let Some(outbox) = &config.outbox {
        let dir = config.buffer.data_dir.join("outbox");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        tasks.spawn(crate::outbox_reader::run(
            outbox.clone(),
            buffer.state().clone(),
            dir,
            Arc::clone(&forwarding.metrics),
            stop.clone(),
        ));
    }
    if let Some(tls) = forwarding.hub.tls() {
        tasks.spawn(Arc::clone(tls).watch(stop.clone()));
    }
    if let Some(s) = &schemas {
        let client = crate::registry_client::RegistryClient::new(
            &config.hub.schema_registry,
            forwarding.hub.tls().cloned(),
            config.hub.request_timeout,
        )?;
        let every = config.hub.schema_refresh;
        tasks.spawn(crate::schemas::refresh(
            Arc::clone(s),
            client,
            every,
            stop.clone(),
        ));
    }
    let http_addr = match &config.http {
        Some(settings) => {
            let ingest = crate::http::Ingest::new(
                buffer.state().clone(),
                settings.clone(),
                Arc::clone(&forwarding.metrics),
                schemas.clone(),
            );
            Some(start_http(&config, settings, ingest, &tasks, &stop).await?)
        }
        None => None,
    };
    tasks.spawn(limits::monitor(
        limits,
        buffer.state().clone(),
        Arc::clone(&forwarding.cursors),
        stop.clone(),
    ));
    tasks.spawn(discover(
        Arc::new(config),
        buffer.state().clone(),
        forwarding,
        tasks.clone(),
        stop.clone(),
    ));
    tracing::info!(
        gateway = %gateway,
        kafka_addr = %buffer.kafka_addr,
        admin = %buffer.admin_addr,
        http = %http_addr.map(|a| a.to_string()).unwrap_or_default(),
        "edge ready"
    );
    Ok(EdgeHandle {
        kafka_addr: buffer.kafka_addr,
        admin_addr: buffer.admin_addr,
        http_addr,
        buffer,
        stop,
        tasks,
    })
}

/// Bind the HTTP ingest's listener (with the buffer's TLS for `SSL`) and serve it.
async fn start_http(
    config: &EdgeConfig,
    settings: &crate::config::HttpSettings,
    ingest: Arc<crate::http::Ingest>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding the HTTP ingest listener {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let tls = match (settings.security, &config.buffer.tls) {
        (tls::SecurityProtocol::Ssl, Some(t)) => {
            let server =
                tls::TlsServer::load(t.clone()).context("loading [buffer.tls] for HTTP")?;
            tasks.spawn(Arc::clone(&server).watch("HTTP ingest [tls]".into(), stop.clone()));
            Some(server)
        }
        _ => None,
    };
    tasks.spawn(crate::http::serve(listener, ingest, tls, stop.clone()));
    Ok(addr)
}

impl EdgeHandle {
    /// The buffer (the embedded broker).
    pub fn buffer(&self) -> &BrokerHandle {
        &self.buffer
    }

    /// Stop forwarding (journals are fsynced as they go: nothing to flush), then the buffer.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.buffer.shutdown().await
    }
}

/// Every `discover_interval`: start a forwarder for each local partition of a forwarded topic
/// that has none, stop those whose partition is gone.
async fn discover(
    config: Arc<EdgeConfig>,
    state: Arc<broker::state::BrokerState>,
    forwarding: Arc<Forwarding>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let mut running: HashMap<(Uuid, i32), CancellationToken> = HashMap::new();
    let mut warned = false;
    loop {
        let partitions: Vec<Arc<Partition>> = state
            .replicas
            .all()
            .into_iter()
            .filter(|p| config.forwards(&p.topic))
            .collect();
        let present: std::collections::HashSet<(Uuid, i32)> =
            partitions.iter().map(|p| (p.topic_id, p.index)).collect();
        running.retain(|key, token| {
            let keep = present.contains(key);
            if !keep {
                token.cancel();
            }
            keep
        });
        for p in partitions {
            let key = (p.topic_id, p.index);
            if running.contains_key(&key) {
                continue;
            }
            if running.len() >= STREAMS_MAX {
                if !warned {
                    tracing::error!(
                        limit = STREAMS_MAX,
                        "too many local partitions to forward; the rest wait"
                    );
                    warned = true;
                }
                break;
            }
            let token = stop.child_token();
            let hub_topic = config.hub_topic(&p.topic).to_string();
            tasks.spawn(forwarder::run(
                Arc::clone(&forwarding),
                p,
                hub_topic,
                token.clone(),
            ));
            running.insert(key, token);
        }
        forwarding.metrics.streams.set(running.len() as i64);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(config.forward.discover_interval) => {}
        }
    }
}
