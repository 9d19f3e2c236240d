//! Starting and stopping a broker. [`start`] opens the data directory, joins the cluster
//! (a one-node cluster without a `[cluster]` section), registers with the controller, opens
//! the partitions the metadata assigns here, and serves; [`BrokerHandle::shutdown`] stops
//! accepting, drains connections, flushes and closes every log, and only then marks the
//! shutdown clean.
//!
//! The admin server (metrics, health) starts first so that an operator can watch a long
//! recovery or a wait for the quorum; `/ready` turns 200 once the Kafka listener serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use quorum::metadata::Endpoints;
use telemetry::{DiskCollector, Health, ProcessCollector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, cluster_uuid, kafka_cluster_id};
use crate::config::BrokerConfig;
use crate::connection::RequestMemory;
use crate::data_dir::DataDir;
use crate::groups::{self, GroupCoordinator};
use crate::metrics::Metrics;
use crate::producer_ids::ProducerIds;
use crate::replica_manager::{ManagerSettings, OFFSETS_TOPIC, ReplicaManager};
use crate::session::ListenerRole;
use crate::state::BrokerState;
use crate::topics::Topics;

/// How long a shutdown waits for the controller to move this broker's leaderships.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits for connections to finish their in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the start waits for this broker's partitions to open after registration.
const OPEN_TIMEOUT: Duration = Duration::from_secs(600);

/// A running broker.
pub struct BrokerHandle {
    pub kafka_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The quorum listener, in a real cluster.
    pub quorum_addr: Option<SocketAddr>,
    /// The replication listener, when one is configured apart from the Kafka listener.
    pub replication_addr: Option<SocketAddr>,
    /// Every Kafka listener's bound address by name (`clients`, named ones, `replication`).
    pub listener_addrs: BTreeMap<String, SocketAddr>,
    /// The Schema Registry's listener, when configured.
    pub registry_addr: Option<SocketAddr>,
    state: Arc<BrokerState>,
    data_dir: DataDir,
    shutdown: CancellationToken,
    connections: TaskTracker,
    health: Arc<Health>,
}

/// The offsets topic's settings: kept forever (compacted by the coordinator itself), large
/// batches allowed (group snapshots).
fn offsets_topic_configs() -> BTreeMap<String, String> {
    [
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
        ("segment.bytes", "67108864"),
        ("max.message.bytes", "268435456"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Make sure the offsets topic exists: created by whichever broker gets there first, as soon
/// as enough brokers have registered for its replication factor.
async fn ensure_offsets_topic(state: Arc<BrokerState>, shutdown: CancellationToken) {
    let partitions = state.config.groups.offsets_partitions;
    ensure_topic(
        &state,
        OFFSETS_TOPIC,
        partitions,
        offsets_topic_configs(),
        shutdown,
    )
    .await
}

/// The Schema Registry's topic: one partition (one writer, one order), compacted (the newest
/// record per key is kept forever, as Confluent's `_schemas`).
async fn ensure_schemas_topic(state: Arc<BrokerState>, shutdown: CancellationToken) {
    // Small segments (16 MiB, or the broker's default when smaller): only closed segments
    // are compacted, and registry records are small.
    let segment_bytes = state.config.topics.segment_bytes.min(16 << 20).to_string();
    let configs = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", segment_bytes.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ensure_topic(&state, crate::schemas::SCHEMAS_TOPIC, 1, configs, shutdown).await
}

/// Create an internal topic unless it exists, retrying until enough brokers have registered
/// for the replication factor.
async fn ensure_topic(
    state: &BrokerState,
    name: &str,
    partitions: i32,
    configs: BTreeMap<String, String>,
    shutdown: CancellationToken,
) {
    let rf = state.config.topics.replication_factor;
    loop {
        if state.topics.get(name).is_some() {
            return;
        }
        let created = state
            .topics
            .create_unchecked(name, None, partitions, rf, configs.clone(), false)
            .await;
        match created {
            Ok(_) => return,
            Err(crate::topics::TopicError::AlreadyExists(_)) => return,
            Err(e) => {
                tracing::info!(topic = name, error = %e, "an internal topic cannot be created yet; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A collector the registry owns while the server keeps a handle to it.
#[derive(Debug)]
struct SharedCollector(Arc<crate::cluster_metrics::ClusterCollector>);

impl prometheus_client::collector::Collector for SharedCollector {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// The quorum's metrics, once the quorum node runs.
#[derive(Debug)]
struct LateQuorumCollector(Arc<std::sync::OnceLock<quorum::metrics::QuorumCollector>>);

impl prometheus_client::collector::Collector for LateQuorumCollector {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        match self.0.get() {
            Some(c) => c.encode(encoder),
            None => Ok(()),
        }
    }
}

/// Start a broker: recover storage, join the cluster, then serve Kafka and admin HTTP.
pub async fn start(config: BrokerConfig) -> anyhow::Result<BrokerHandle> {
    start_with(config, Embedding::default()).await
}

/// Adds an embedding appliance's metrics to the admin port's registry.
pub type RegisterMetrics = Box<dyn FnOnce(&mut Registry) + Send>;

/// What an appliance that embeds the broker (the edge gateway, its buffer) adds to it.
#[derive(Default)]
pub struct Embedding {
    pub register: Option<RegisterMetrics>,
    /// Asked before every produce append.
    pub ingest: Option<Arc<dyn crate::state::IngestGate>>,
    /// Checks records of the topics it names before they are appended.
    pub record_check: Option<Arc<dyn crate::state::RecordCheck>>,
    /// The embedding appliance's own routes on the admin port.
    pub admin_routes: Option<Arc<dyn telemetry::AdminRoutes>>,
}

/// [`start`], embedded in another appliance.
pub async fn start_with(
    mut config: BrokerConfig,
    embedding: Embedding,
) -> anyhow::Result<BrokerHandle> {
    // Settings left for the topology resolved, however the configuration was built (a file
    // goes through this already; a test or fuzz harness may deserialize it directly).
    appconfig::Validate::complete(&mut config);
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    registry.register_collector(Box::new(ProcessCollector));
    let memory = RequestMemory::new(config.kafka.max_inflight_request_bytes as usize);
    registry.register_collector(Box::new(crate::connection::MemoryCollector(Arc::clone(
        &memory,
    ))));
    registry.register_collector(Box::new(DiskCollector::new(&config.data_dir)));
    let cluster_metrics = Arc::new(crate::cluster_metrics::ClusterCollector::default());
    registry.register_collector(Box::new(SharedCollector(Arc::clone(&cluster_metrics))));
    let quorum_metrics = Arc::new(std::sync::OnceLock::new());
    registry.register_collector(Box::new(LateQuorumCollector(Arc::clone(&quorum_metrics))));
    let registry_metrics = config.schema_registry.is_some().then(|| {
        Arc::new(schema_registry::metrics::RegistryMetrics::register(
            &mut registry,
        ))
    });
    if let Some(register) = embedding.register {
        register(&mut registry);
    }
    let health = Arc::new(Health::new());
    health.require("quorum", "joining the cluster");
    health.require("storage", "recovering logs");
    health.require("kafka_listener", "not listening yet");
    let cluster_routes =
        Arc::new(quorum::admin::QuorumAdmin::<quorum::transport::TcpTransport>::default());
    let admin = telemetry::serve_admin_with(
        config.admin.listen,
        Arc::new(registry),
        Arc::clone(&health),
        Some(admin_routes(
            Arc::clone(&cluster_routes) as Arc<dyn telemetry::AdminRoutes>,
            config.tls.as_ref(),
            embedding.admin_routes,
        )),
        config.admin.access(config.tls.as_ref())?,
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("binding the admin listener {}", config.admin.listen))?;

    let alone = config.cluster.is_none();
    let mut data_dir = DataDir::open(
        &config.data_dir,
        config.node_id,
        config.cluster_id.as_deref(),
        alone,
    )?;
    let cluster_name = config
        .cluster
        .as_ref()
        .map_or(crate::data_dir::ONE_NODE, |c| &c.name);
    data_dir.check_cluster_name(cluster_name)?;
    let clean = data_dir.clean_shutdown;
    tracing::info!(
        data_dir = %config.data_dir.display(), cluster_id = ?data_dir.cluster_id, node_id = config.node_id,
        clean_shutdown = clean, "opening storage"
    );
    let root = data_dir.root().to_owned();
    let formation = data_dir.cluster_id.as_deref().and_then(cluster_uuid);
    let cluster = Cluster::start(&config, &root, data_dir.storage_id, formation, &shutdown).await?;
    let _ = quorum_metrics.set(quorum::metrics::QuorumCollector::new(
        cluster.node.raft.metrics(),
    ));
    cluster_routes.attach(Arc::clone(&cluster.node));

    let bound = crate::listeners::bind_all(&config).await?;
    let kafka_addr = bound[0].addr;
    let listener_addrs: BTreeMap<String, SocketAddr> = bound
        .iter()
        .map(|b| (b.info.name.to_string(), b.addr))
        .collect();
    let replication_addr = listener_addrs.get("replication").copied();
    let advertised = config.advertised_endpoint(kafka_addr);
    let replication = bound
        .iter()
        .find(|b| b.info.role == ListenerRole::Replication)
        .map_or_else(|| bound[0].advertised.clone(), |b| b.advertised.clone());
    let endpoints = Endpoints {
        kafka: bound[0].advertised.clone(),
        listeners: crate::listeners::advertised(&bound),
        replication,
        quorum: cluster.node.config().advertised.clone(),
    };
    cluster.register(endpoints).await?;
    let cluster_id = cluster
        .state()
        .cluster_id
        .map(kafka_cluster_id)
        .context("the cluster has no id")?;
    data_dir
        .bind_cluster(&cluster_id)
        .context("this data directory belongs to another cluster")?;
    health.set_ok("quorum");
    if alone {
        crate::migrate::import_legacy(&root, &cluster, offsets_topic_configs())
            .await
            .context("importing the data directory of an earlier version")?;
    }
    // Taken after the import: directories the metadata does not know are removed below.
    let quorum_state = cluster.state();

    let (leadership_tx, leadership_rx) = ReplicaManager::leadership_queue();
    let replicas = ReplicaManager::new(
        Arc::clone(&cluster),
        ManagerSettings {
            data_dir: root.clone(),
            defaults: config.topics.clone(),
            durability: config.durability,
            lag_time: config.replication.lag_time,
            fetch_wait: config.replication.fetch_wait,
            fetch_max_bytes: config.replication.fetch_max_bytes as usize,
            clean_start: clean,
        },
        Arc::clone(&metrics),
        leadership_tx,
        shutdown.clone(),
    )
    .context("opening the topics directory")?;
    replicas.remove_stray_directories(&quorum_state);
    let settings = groups::Settings {
        group: groups::group::GroupConfig {
            initial_rebalance_delay: config.groups.initial_rebalance_delay,
            min_session_timeout: config.groups.min_session_timeout,
            max_session_timeout: config.groups.max_session_timeout,
            max_size: config.groups.max_size,
        },
        offsets_retention: config.groups.offsets_retention,
    };
    let groups = GroupCoordinator::new(
        Arc::clone(&cluster),
        config.groups.offsets_partitions,
        settings,
        Arc::clone(&metrics),
        shutdown.clone(),
    );
    tokio::spawn(groups.clone().follow(leadership_rx));
    tokio::spawn(Arc::clone(&replicas).run());
    anyhow::ensure!(
        replicas
            .wait_reconciled(quorum_state.applied_index, OPEN_TIMEOUT)
            .await,
        "this broker's partitions did not open within {OPEN_TIMEOUT:?}"
    );
    health.set_ok("storage");
    cluster_metrics.attach(
        Arc::clone(&cluster),
        Arc::clone(&replicas),
        config.topics.clone(),
    );

    let retention_every = config.topics.retention_check_interval;
    let topics = Topics::new(
        Arc::clone(&cluster),
        Arc::clone(&replicas),
        config.topics.clone(),
    );
    let bearer = match &config.sasl.oauthbearer {
        Some(b) => {
            let verifier = Arc::new(
                sasl::oauthbearer::Verifier::load(b.clone())
                    .map_err(|e| anyhow::anyhow!("[sasl.oauthbearer]: {e}"))?,
            );
            tokio::spawn(telemetry::jwks::refresh(
                Arc::clone(&verifier),
                shutdown.clone(),
            ));
            Some(verifier)
        }
        None => None,
    };
    let state = Arc::new(BrokerState {
        node_id: config.node_id,
        cluster_id,
        advertised,
        producer_ids: ProducerIds::new(Arc::clone(&cluster)),
        cluster: Arc::clone(&cluster),
        replicas,
        topics,
        groups,
        metrics,
        authorizer: Arc::new(config.authorization.clone()),
        bearer,
        principals: admission::Principals::new(config.kafka.principal_limits()),
        ingest: embedding.ingest,
        record_check: embedding.record_check,
        produce_waits: Default::default(),
        config,
    });
    tokio::spawn(Arc::clone(&cluster).heartbeats(shutdown.clone()));
    tokio::spawn(Arc::clone(&cluster).probes(shutdown.clone()));
    if alone {
        // Alone, the offsets topic can be made now: groups work from the first request.
        ensure_offsets_topic(Arc::clone(&state), shutdown.clone()).await;
    } else {
        tokio::spawn(ensure_offsets_topic(Arc::clone(&state), shutdown.clone()));
    }
    let connections = TaskTracker::new();
    let gate = Gate::new();
    // Open at once when the lease already holds (it does right after registering).
    if cluster.lease_valid() {
        *gate.open.lock() = Some(shutdown.child_token());
    }
    tokio::spawn(Arc::clone(&gate).follow(Arc::clone(&cluster), shutdown.clone()));
    crate::listeners::serve_all(
        bound,
        Arc::new(crate::listeners::Serving {
            state: Arc::clone(&state),
            memory: Arc::clone(&memory),
            connections: connections.clone(),
            gate: Arc::clone(&gate),
            shutdown: shutdown.clone(),
        }),
    );
    let st = Arc::clone(&state);
    tokio::spawn(every(retention_every, shutdown.clone(), move || {
        let st = Arc::clone(&st);
        async move { st.topics.enforce_retention().await }
    }));
    let st = Arc::clone(&state);
    let cleaner_every = state.config.topics.cleaner_check_interval;
    tokio::spawn(every(cleaner_every, shutdown.clone(), move || {
        let st = Arc::clone(&st);
        async move { st.topics.compact_all(&st.metrics).await }
    }));
    let registry_addr = match (state.config.schema_registry.clone(), registry_metrics) {
        (Some(l), Some(m)) => {
            Some(serve_schema_registry(&state, &l, m, Arc::clone(&health), &shutdown).await?)
        }
        _ => None,
    };
    health.set_ok("kafka_listener");
    tracing::info!(
        %kafka_addr, advertised = ?state.advertised, admin = %admin.local_addr,
        quorum = ?cluster.quorum_addr, replication = ?replication_addr,
        node_id = state.node_id, "broker ready"
    );
    Ok(BrokerHandle {
        kafka_addr,
        admin_addr: admin.local_addr,
        quorum_addr: cluster.quorum_addr,
        replication_addr,
        listener_addrs,
        registry_addr,
        state,
        data_dir,
        shutdown,
        connections,
        health,
    })
}

/// Start the Schema Registry: its topic, the tail that keeps this broker's copy of the state,
/// and the HTTP listener. Returns the listener's address.
async fn serve_schema_registry(
    state: &Arc<BrokerState>,
    config: &crate::config::SchemaRegistryListener,
    metrics: Arc<schema_registry::metrics::RegistryMetrics>,
    health: Arc<Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    use schema_registry::server::{RegistryTls, ServerLimits, serve};
    tokio::spawn(ensure_schemas_topic(Arc::clone(state), shutdown.clone()));
    let store = Arc::new(parking_lot::RwLock::new(
        schema_registry::store::Store::new(config.limits()),
    ));
    let log = crate::schemas::SchemasLog::new(Arc::clone(state), Arc::clone(&store));
    tokio::spawn(Arc::clone(&log).tail(shutdown.clone()));
    health.require("schema_registry", "reading _schemas");
    tokio::spawn(Arc::clone(&log).readiness(health, shutdown.clone()));
    let registry = Arc::new(schema_registry::api::Registry::new(store, log).with_metrics(metrics));
    let listen = config.listen;
    // A registration's body is the schema escaped into JSON, with its references.
    let body_bytes_max = (4 << 20).max(2 * config.schema_bytes_max as usize + (64 << 10));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the schema registry listener {listen}"))?;
    let addr = listener.local_addr()?;
    let advertised = config
        .advertised
        .clone()
        .unwrap_or_else(|| format!("{}:{}", state.advertised.0, addr.port()));
    let tls = match (config.security, &state.config.tls) {
        (crate::config::SecurityProtocol::Ssl, Some(settings)) => Some(RegistryTls {
            server: tls::TlsServer::load(settings.clone())
                .context("loading [tls] for the schema registry")?,
            // Forwarding checks the writer's certificate; without a CA it cannot.
            client: tls::TlsClient::load(settings.clone()).ok(),
        }),
        _ => None,
    };
    if let Some(t) = &tls {
        let what = "schema registry [tls]".to_string();
        tokio::spawn(Arc::clone(&t.server).watch(what, shutdown.clone()));
        if let Some(c) = &t.client {
            tokio::spawn(Arc::clone(c).watch(shutdown.clone()));
        }
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let services = quorum::metadata::Services {
        schema_registry: Some(format!("{scheme}://{advertised}")),
    };
    tokio::spawn(Arc::clone(&state.cluster).announce_services(services, shutdown.clone()));
    let shutdown = shutdown.clone();
    let gate = Arc::new(crate::authz::RegistryGate {
        state: Arc::clone(state),
    });
    tokio::spawn(async move {
        let stop = shutdown.cancelled();
        serve(
            listener,
            registry,
            gate,
            ServerLimits {
                body_bytes_max,
                ..ServerLimits::default()
            },
            tls,
            stop,
        )
        .await
    });
    tracing::info!(%addr, "schema registry listening");
    Ok(addr)
}

/// Whether this broker serves Kafka clients now: only while its lease is valid. A broker cut
/// off from the controller (or of a fenced site) closes its Kafka connections and refuses new
/// ones, so that clients ask the brokers that can still act, instead of being told stale
/// leaders, or none, again and again by one they happen to be connected to.
pub struct Gate {
    open: parking_lot::Mutex<Option<CancellationToken>>,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: parking_lot::Mutex::new(None),
        })
    }

    /// The token connections accepted now hold: cancelled when the gate closes.
    pub fn current(&self) -> Option<CancellationToken> {
        self.open.lock().clone()
    }

    /// Follow the lease, checking every 100 ms, until shutdown.
    async fn follow(self: Arc<Self>, cluster: Arc<Cluster>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let valid = cluster.lease_valid();
            let mut open = self.open.lock();
            match (valid, open.is_some()) {
                (true, false) => {
                    tracing::info!("lease valid: serving Kafka clients");
                    *open = Some(shutdown.child_token());
                }
                (false, true) => {
                    tracing::warn!(
                        "lease lost (cut off from the controller, or fenced): closing Kafka connections until it is back"
                    );
                    if let Some(t) = open.take() {
                        t.cancel();
                    }
                }
                _ => {}
            }
        }
    }
}

/// Run `round` every `period` until shutdown, one round at a time (a round that overruns
/// delays the next). Retention and the log cleaner (compaction passes, one partition at a
/// time, their I/O on blocking threads outside the partitions' locks) run this way.
async fn every<F, Fut>(period: Duration, shutdown: CancellationToken, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    // The first round one period after the start, as Kafka's log manager waits before its
    // first retention and cleaner passes: a starting broker recovers and serves first.
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => round().await,
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
        // Leaderships move first (the Gate then closes client connections as the lease ends,
        // once their requests are answered), and this broker's partitions take their follower
        // roles before anything stops. A produce waiting here for its records learns from the
        // new leader, while the fetchers still run, whether they survived: it is answered
        // with their offsets, or NOT_LEADER if the new leader's history cut them, instead of
        // a dropped connection that leaves the client guessing.
        if self
            .state
            .cluster
            .controlled_shutdown(HANDOVER_TIMEOUT)
            .await
        {
            let index = self.state.cluster.state().applied_index;
            self.state
                .replicas
                .wait_reconciled(index, HANDOVER_TIMEOUT)
                .await;
            if !self.state.produce_waits.settled(HANDOVER_TIMEOUT).await {
                tracing::warn!(
                    "controlled shutdown: produce requests still wait for their records' outcome"
                );
            }
        }
        self.shutdown.cancel();
        self.connections.close();
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, self.connections.wait())
            .await
            .is_ok();
        let internal_ok = self.state.groups.close().await;
        let closed = self.state.topics.close_all().await;
        self.state.cluster.node.shutdown().await;
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

/// The admin port's own routes: the quorum's, and with `[tls]` the renewal of its files.
pub(crate) fn admin_routes(
    cluster: Arc<dyn telemetry::AdminRoutes>,
    tls: Option<&tls::TlsSettings>,
    embedded: Option<Arc<dyn telemetry::AdminRoutes>>,
) -> Arc<dyn telemetry::AdminRoutes> {
    let mut routes = vec![cluster];
    routes.extend(
        tls.map(|t| {
            Arc::new(telemetry::TlsFilesRoute(t.clone())) as Arc<dyn telemetry::AdminRoutes>
        }),
    );
    routes.extend(embedded);
    match routes.len() {
        1 => routes.pop().expect("one route set"),
        _ => Arc::new(telemetry::Routes(routes)),
    }
}
