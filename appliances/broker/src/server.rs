//! Starting and stopping a broker. [`start`] opens the data directory, recovers every log,
//! and serves; [`BrokerHandle::shutdown`] stops accepting, drains connections, flushes and
//! closes every log, and only then marks the shutdown clean.
//!
//! The admin server (metrics, health) starts first so that an operator can watch a long
//! recovery; `/ready` turns 200 once the Kafka listener serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use telemetry::{DiskCollector, Health, ProcessCollector};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::config::{BrokerConfig, Durability};
use crate::data_dir::DataDir;
use crate::groups::{self, GroupCoordinator};
use crate::internal_log::internal_log_config;
use crate::metrics::Metrics;
use crate::partition::Partition;
use crate::producer_ids::ProducerIds;
use crate::state::BrokerState;
use crate::topic_config::TopicPolicy;
use crate::topics::Topics;

/// How long a shutdown waits for connections to finish their in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running broker.
pub struct BrokerHandle {
    pub kafka_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    state: Arc<BrokerState>,
    data_dir: DataDir,
    shutdown: CancellationToken,
    connections: TaskTracker,
    health: Arc<Health>,
}

/// A broker-internal partition. Broker state is always written synchronously, whatever the
/// durability mode chosen for user data.
fn internal_partition(
    data_dir: &std::path::Path,
    name: &str,
    index: i32,
    clean: bool,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Partition>> {
    let dir = data_dir.join("internal").join(format!("{name}-{index}"));
    let policy = TopicPolicy {
        min_insync_replicas: 1,
        timestamp_before_max_ms: i64::MAX,
        timestamp_after_max_ms: i64::MAX,
    };
    Partition::open(
        &dir,
        name.into(),
        Uuid::nil(),
        index,
        internal_log_config(),
        policy,
        Durability::Sync,
        clean,
        Arc::clone(metrics),
        shutdown.child_token(),
    )
    .with_context(|| format!("opening {}", dir.display()))
}

/// Start a broker: recover storage, then serve Kafka and admin HTTP.
pub async fn start(config: BrokerConfig) -> anyhow::Result<BrokerHandle> {
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    registry.register_collector(Box::new(ProcessCollector));
    registry.register_collector(Box::new(DiskCollector::new(&config.data_dir)));
    let health = Arc::new(Health::new());
    health.require("storage", "recovering logs");
    health.require("kafka_listener", "not listening yet");
    let admin = telemetry::serve_admin(
        config.admin.listen,
        Arc::new(registry),
        Arc::clone(&health),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("binding the admin listener {}", config.admin.listen))?;

    let data_dir = DataDir::open(
        &config.data_dir,
        config.node_id,
        config.cluster_id.as_deref(),
    )?;
    let clean = data_dir.clean_shutdown;
    tracing::info!(
        data_dir = %config.data_dir.display(), cluster_id = %data_dir.cluster_id, node_id = config.node_id,
        clean_shutdown = clean, "opening storage"
    );
    let root = data_dir.root().to_owned();
    let meta = internal_partition(&root, "__cluster_metadata", 0, clean, &metrics, &shutdown)?;
    let catalog = Catalog::open(meta)
        .await
        .context("loading the topic catalog")?;
    let topics = Topics::open(
        catalog,
        &root,
        config.topics.clone(),
        config.durability,
        clean,
        Arc::clone(&metrics),
        shutdown.clone(),
    )
    .await
    .context("opening topics")?;
    let offsets = (0..config.groups.offsets_partitions)
        .map(|i| internal_partition(&root, "__consumer_offsets", i, clean, &metrics, &shutdown))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let settings = groups::Settings {
        group: groups::group::GroupConfig {
            initial_rebalance_delay: config.groups.initial_rebalance_delay,
            min_session_timeout: config.groups.min_session_timeout,
            max_session_timeout: config.groups.max_session_timeout,
            max_size: config.groups.max_size,
        },
        offsets_retention: config.groups.offsets_retention,
    };
    let groups = GroupCoordinator::open(offsets, settings, Arc::clone(&metrics), shutdown.clone())
        .await
        .context("loading consumer groups")?;
    let producer_ids =
        ProducerIds::open(root.join("producer-ids")).context("opening producer ids")?;
    health.set_ok("storage");

    let listener = TcpListener::bind(config.kafka.listen)
        .await
        .with_context(|| format!("binding the Kafka listener {}", config.kafka.listen))?;
    let kafka_addr = listener.local_addr()?;
    let advertised = config.advertised_endpoint(kafka_addr);
    let memory = Arc::new(Semaphore::new(
        config.kafka.max_inflight_request_bytes as usize,
    ));
    let retention_every = config.topics.retention_check_interval;
    let state = Arc::new(BrokerState {
        node_id: config.node_id,
        cluster_id: data_dir.cluster_id.clone(),
        advertised,
        config,
        topics,
        groups,
        producer_ids,
        metrics,
    });
    let connections = TaskTracker::new();
    tokio::spawn(accept_loop(
        listener,
        Arc::clone(&state),
        memory,
        connections.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(retention_loop(
        Arc::clone(&state),
        retention_every,
        shutdown.clone(),
    ));
    health.set_ok("kafka_listener");
    tracing::info!(%kafka_addr, advertised = ?state.advertised, admin = %admin.local_addr, "broker ready");
    Ok(BrokerHandle {
        kafka_addr,
        admin_addr: admin.local_addr,
        state,
        data_dir,
        shutdown,
        connections,
        health,
    })
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<BrokerState>,
    memory: Arc<Semaphore>,
    connections: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let conn = crate::connection::serve(
                    Arc::clone(&state),
                    stream,
                    peer,
                    Arc::clone(&memory),
                    shutdown.clone(),
                );
                connections.spawn(conn);
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn retention_loop(state: Arc<BrokerState>, every: Duration, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => state.topics.enforce_retention().await,
        }
    }
}

impl BrokerHandle {
    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Stop serving and close storage cleanly.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        self.health.set_failing("kafka_listener", "shutting down");
        self.shutdown.cancel();
        self.connections.close();
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, self.connections.wait())
            .await
            .is_ok();
        let closed = self.state.topics.close_all().await;
        let internal_ok = self.state.groups.close().await;
        if drained && closed && internal_ok {
            self.data_dir
                .mark_clean_shutdown()
                .context("marking the shutdown clean")?;
            tracing::info!("clean shutdown");
        } else {
            tracing::warn!(
                drained,
                closed,
                "shutdown was not clean: the next start recovers from the logs"
            );
        }
        Ok(())
    }
}
