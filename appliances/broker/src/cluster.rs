//! The broker's membership in the cluster: its quorum node (a voter or a learner of the
//! metadata log), its registration with the controller, the heartbeats that keep its lease,
//! and the reachability probes that let the controller tell a site cut from a dead site.
//!
//! **Lease.** A broker leads partitions only while its last successful heartbeat was sent
//! less than `lease` ago (3/4 of its session timeout). The controller fences a broker only
//! after a full session without hearing from it (the broker's own session timeout, recorded
//! at registration, when it is longer than the controller's), so a broker cut off from the
//! controller majority has stopped taking writes (of every acks level) before its partitions
//! get new leaders elsewhere: no split brain, whatever the network does.
//!
//! **One-node mode.** Without a `[cluster]` section the broker is the only voter of its own
//! quorum (no listener, no witness): the same code runs, every controller call is local.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use kafka_client::Connection;
use kafka_protocol::messages::ApiVersionsRequest;
use parking_lot::Mutex;
use quorum::controller::{
    ControllerError, ControllerRequest, ControllerResponse, Registration, Timing,
};
use quorum::ids::{BrokerEpoch, NodeId, SiteId};
use quorum::metadata::{ClusterState, Endpoints};
use quorum::node::{NodeConfig, QuorumNode, RaftTiming};
use quorum::policy::SitePolicy;
use quorum::raft::log_file::FsFile;
use quorum::raft::network::Transport;
use quorum::rpc::{Request, Response};
use quorum::transport::TcpTransport;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::partition::mono_ms;

/// How long a controller request may take before the caller gives up.
pub const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(30);
/// The site of a one-node cluster without a configured rack.
const DEFAULT_SITE: &str = "default";

pub type Node = QuorumNode<TcpTransport>;

pub struct Cluster {
    pub node: Arc<Node>,
    pub me: NodeId,
    pub site: SiteId,
    endpoints: Mutex<Endpoints>,
    storage_id: Uuid,
    timing: Timing,
    /// This incarnation's epoch; `None` while not registered (starting, or fenced).
    epoch: watch::Sender<Option<BrokerEpoch>>,
    /// Monotonic ms until which this broker may lead.
    lease_until_ms: AtomicU64,
    /// When each other broker last answered a probe.
    reached_ms: Mutex<BTreeMap<NodeId, u64>>,
    /// Whether this is a one-node cluster (every call local).
    pub alone: bool,
    /// Set by a controlled shutdown: heartbeats stop (a fenced answer must not register a
    /// new incarnation of a broker that is leaving).
    leaving: std::sync::atomic::AtomicBool,
    /// Connections for reachability probes.
    probe: TcpTransport,
    /// Kafka connections to other brokers' replication endpoints, for the same probes (at
    /// most one per registered broker).
    replication_probes: Mutex<BTreeMap<NodeId, (String, Arc<Connection>)>>,
    /// How to reach peers' replication endpoints over TLS (`[replication] security = "SSL"`).
    pub peer_tls: Option<Arc<tls::TlsClient>>,
    pub quorum_addr: Option<std::net::SocketAddr>,
}

/// The node configuration and quorum listener for `config`.
async fn quorum_setup(
    config: &BrokerConfig,
    me: NodeId,
    site: &str,
) -> anyhow::Result<(NodeConfig, Option<TcpListener>)> {
    match &config.cluster {
        Some(cluster) => {
            let listener = TcpListener::bind(config.quorum.listen)
                .await
                .with_context(|| format!("binding the quorum listener {}", config.quorum.listen))?;
            let advertised = cluster
                .advertised(me, &config.quorum, listener.local_addr()?)
                .map_err(anyhow::Error::msg)?;
            let node = cluster
                .node_config(me, site, &advertised)
                .map_err(anyhow::Error::msg)?;
            Ok((node, Some(listener)))
        }
        None => {
            let site = SiteId::new(site);
            Ok((
                NodeConfig {
                    node: me,
                    cluster_name: "one-node".into(),
                    site: site.clone(),
                    advertised: "local".into(),
                    voters: [(me, "local".to_string())].into(),
                    policy: SitePolicy::single_site(site),
                    timing: Timing::default(),
                    // Alone, nothing to wait for: a short election after a restart.
                    raft: RaftTiming {
                        heartbeat_ms: 50,
                        election_min_ms: 150,
                        election_max_ms: 300,
                    },
                    formation_cluster_id: None,
                },
                None,
            ))
        }
    }
}

impl Cluster {
    /// Open the quorum storage under `data_dir/quorum` and start the quorum node (and its
    /// listener in a real cluster). `cluster_id` forms a new cluster with this id.
    pub async fn start(
        config: &BrokerConfig,
        data_dir: &std::path::Path,
        storage_id: Uuid,
        cluster_id: Option<Uuid>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Arc<Cluster>> {
        let me = NodeId(u32::try_from(config.node_id).context("node_id")?);
        let site = config.rack.clone().unwrap_or_else(|| DEFAULT_SITE.into());
        let peer_tls = match (&config.tls, config.replication.security) {
            (Some(settings), crate::config::SecurityProtocol::Ssl) => {
                let client = tls::TlsClient::load(settings.clone())
                    .context("loading [tls] for connections to other brokers")?;
                tokio::spawn(Arc::clone(&client).watch(shutdown.clone()));
                Some(client)
            }
            _ => None,
        };
        let (mut node_config, listener) = quorum_setup(config, me, &site).await?;
        node_config.formation_cluster_id = cluster_id;
        let dir = data_dir.join("quorum");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let log = FsFile::open(&dir.join("log")).context("opening the quorum log")?;
        let snapshot =
            FsFile::open(&dir.join("snapshot")).context("opening the quorum snapshot")?;
        let cluster_name = node_config.cluster_name.clone();
        let quorum_tls = quorum::config::QuorumTls::load(&config.quorum, config.tls.as_ref())
            .map_err(anyhow::Error::msg)?;
        if let Some(t) = &quorum_tls {
            t.watch(shutdown);
        }
        let tls_client = quorum_tls.as_ref().map(|t| Arc::clone(&t.client));
        let transport = Arc::new(TcpTransport::new(&cluster_name, me).with_tls(tls_client.clone()));
        let timing = node_config.timing;
        let node = QuorumNode::start(node_config, Box::new(log), Box::new(snapshot), transport)
            .await
            .context("starting the quorum node")?;
        let quorum_addr = match listener {
            Some(l) => {
                let addr = l.local_addr()?;
                tokio::spawn(quorum::transport::serve(
                    l,
                    Arc::clone(&node),
                    quorum_tls.as_ref().map(|t| Arc::clone(&t.server)),
                    shutdown.clone(),
                ));
                Some(addr)
            }
            None => None,
        };
        Ok(Arc::new(Cluster {
            node,
            me,
            site: SiteId::new(&site),
            endpoints: Mutex::new(Endpoints {
                kafka: String::new(),
                replication: String::new(),
                quorum: String::new(),
                listeners: Default::default(),
            }),
            storage_id,
            timing,
            epoch: watch::Sender::new(None),
            lease_until_ms: AtomicU64::new(0),
            reached_ms: Mutex::new(BTreeMap::new()),
            alone: config.cluster.is_none(),
            leaving: std::sync::atomic::AtomicBool::new(false),
            probe: TcpTransport::new(&cluster_name, me).with_tls(tls_client),
            replication_probes: Mutex::new(BTreeMap::new()),
            peer_tls,
            quorum_addr,
        }))
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn state(&self) -> Arc<ClusterState> {
        self.node.state()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.node.subscribe()
    }

    /// This incarnation's epoch, if registered.
    pub fn epoch(&self) -> Option<BrokerEpoch> {
        *self.epoch.borrow()
    }

    /// Whether this broker may act as a leader now: registered, heard by the controller
    /// within the lease, and not fenced (a broker of a fenced site keeps heartbeating to learn
    /// when its site is restored, but leads nothing meanwhile).
    pub fn lease_valid(&self) -> bool {
        self.epoch().is_some()
            && mono_ms() < self.lease_until_ms.load(Ordering::Acquire)
            && self
                .state()
                .brokers
                .get(&self.me)
                .is_some_and(|b| !b.fenced && Some(b.epoch) == self.epoch())
    }

    /// Before stopping: have the controller fence this incarnation and wait (up to
    /// `timeout`) until no partition names this broker its leader, so clients and followers
    /// move to the new leaders at once. Skipped when no other broker is live (nothing to hand
    /// over to). Returns whether the leaderships moved.
    pub async fn controlled_shutdown(&self, timeout: Duration) -> bool {
        self.leaving.store(true, Ordering::Release);
        let Some(epoch) = self.epoch() else {
            return false;
        };
        let others = self
            .state()
            .brokers
            .values()
            .any(|b| b.node != self.me && !b.fenced);
        if self.alone || !others {
            return false;
        }
        let me = self.me;
        let handed_over = async {
            let index = match self
                .call(ControllerRequest::ControlledShutdown { node: me, epoch })
                .await
            {
                Ok(ControllerResponse::Applied { index }) => index,
                other => {
                    tracing::warn!(answer = ?other, "controlled shutdown refused: stopping without it");
                    return false;
                }
            };
            let mut states = self.subscribe();
            states
                .wait_for(|s| {
                    s.applied_index >= index
                        && s.topics
                            .values()
                            .flat_map(|t| &t.partitions)
                            .all(|p| p.leader != Some(me))
                })
                .await
                .is_ok()
        };
        match tokio::time::timeout(timeout, handed_over).await {
            Ok(true) => {
                tracing::info!("controlled shutdown: leaderships handed over");
                true
            }
            _ => {
                tracing::warn!("controlled shutdown: leaderships not handed over in time");
                false
            }
        }
    }

    /// Ask the controller (wherever it is).
    pub async fn call(
        &self,
        request: ControllerRequest,
    ) -> Result<ControllerResponse, ControllerError> {
        match self.node.controller_call(request, CONTROLLER_TIMEOUT).await {
            Ok(ControllerResponse::Failed(e)) => Err(e),
            Ok(r) => Ok(r),
            Err(e) => Err(ControllerError::NotCommitted(e.to_string())),
        }
    }

    /// A metadata change through the controller, waited for until this broker has applied it
    /// (so that the next request here sees it). `Err` says why, for the client.
    pub async fn change(
        &self,
        request: ControllerRequest,
        timeout: Duration,
    ) -> Result<(), String> {
        let index = match self.call(request).await.map_err(|e| e.to_string())? {
            ControllerResponse::Applied { index } => index,
            other => return Err(format!("unexpected answer {other:?}")),
        };
        if self.node.wait_applied(index, timeout).await {
            Ok(())
        } else {
            Err(format!("committed but not applied here within {timeout:?}"))
        }
    }

    /// Register this incarnation (retrying until the controller answers) and wait until the
    /// registration is applied here. Returns the new epoch.
    pub async fn register(&self, endpoints: Endpoints) -> anyhow::Result<BrokerEpoch> {
        *self.endpoints.lock() = endpoints.clone();
        let request = ControllerRequest::Register(Registration {
            node: self.me,
            site: self.site.clone(),
            endpoints,
            storage_id: self.storage_id,
            session_timeout_ms: self.timing.session_timeout_ms,
        });
        loop {
            if self.leaving.load(Ordering::Acquire) {
                anyhow::bail!("not registering: this broker is stopping");
            }
            // The lease runs from when the request was sent (the controller counts the
            // session from when it handled it, later), and only on the registration's metadata.
            let sent = mono_ms();
            match self.call(request.clone()).await {
                Ok(ControllerResponse::Registered { epoch, index }) => {
                    if !self.node.wait_applied(index, CONTROLLER_TIMEOUT).await {
                        tracing::info!(
                            index,
                            "registration not applied here in time; registering again"
                        );
                        continue;
                    }
                    self.lease_until_ms
                        .store(sent + self.timing.lease_ms(), Ordering::Release);
                    self.epoch.send_replace(Some(epoch));
                    tracing::info!(node = %self.me, %epoch, "registered with the controller");
                    return Ok(epoch);
                }
                Ok(other) => {
                    anyhow::bail!("unexpected controller answer to a registration: {other:?}")
                }
                Err(e @ (ControllerError::DuplicateNode(_) | ControllerError::UnknownSite(_))) => {
                    return Err(e).context("the controller refused this broker");
                }
                Err(ControllerError::Invalid(why)) => {
                    anyhow::bail!("the controller refused this broker: {why}")
                }
                Err(e) => {
                    tracing::info!(error = %e, "registration not answered yet; retrying");
                    tokio::time::sleep(Duration::from_millis(self.timing.heartbeat_ms)).await;
                }
            }
        }
    }

    /// Announce `services` for every incarnation of this broker (after each registration),
    /// until they are in the applied metadata, so that other brokers know where to send what
    /// only this one can answer (Schema Registry writes while it leads `_schemas`).
    pub async fn announce_services(
        self: Arc<Self>,
        services: quorum::metadata::Services,
        shutdown: CancellationToken,
    ) {
        let mut epochs = self.epoch.subscribe();
        loop {
            let epoch = *epochs.borrow_and_update();
            let announced = self.state().services.get(&self.me) == Some(&services);
            if let (Some(epoch), false) = (epoch, announced) {
                let request = ControllerRequest::AnnounceServices {
                    node: self.me,
                    epoch,
                    services: services.clone(),
                };
                match self.call(request).await {
                    Ok(ControllerResponse::Applied { index }) => {
                        self.node.wait_applied(index, CONTROLLER_TIMEOUT).await;
                        tracing::info!(?services, "services announced");
                    }
                    Ok(other) => {
                        tracing::warn!(?other, "unexpected answer to a services announcement")
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "services not announced yet; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(self.timing.heartbeat_ms)) => {}
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = epochs.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Keep the lease: a heartbeat every `heartbeat_ms` (with who this broker could not reach
    /// lately); a fenced answer ends this incarnation, and a new registration starts another.
    pub async fn heartbeats(self: Arc<Self>, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.timing.heartbeat_ms);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.leaving.load(Ordering::Acquire) {
                return;
            }
            let Some(epoch) = self.epoch() else { continue };
            let sent = mono_ms();
            let request = ControllerRequest::Heartbeat {
                node: self.me,
                epoch,
                unreachable: self.unreachable(sent),
            };
            let answer = self
                .node
                .controller_call(request, Duration::from_millis(self.timing.lease_ms()))
                .await;
            match answer {
                Ok(ControllerResponse::Heartbeat {
                    fenced: false,
                    index,
                }) => {
                    // The lease runs from when the heartbeat was sent, and only on metadata
                    // at least as new as the controller's answer.
                    let left_ms = (sent + self.timing.lease_ms()).saturating_sub(mono_ms());
                    if self
                        .node
                        .wait_applied(index, Duration::from_millis(left_ms))
                        .await
                    {
                        self.lease_until_ms
                            .fetch_max(sent + self.timing.lease_ms(), Ordering::AcqRel);
                    }
                }
                // A broker leaving stays fenced: no new incarnation while it stops.
                Ok(ControllerResponse::Heartbeat { fenced: true, .. })
                    if self.leaving.load(Ordering::Acquire) =>
                {
                    self.lease_until_ms.store(0, Ordering::Release);
                    return;
                }
                Ok(ControllerResponse::Heartbeat { fenced: true, .. }) => {
                    tracing::warn!(node = %self.me, %epoch, "fenced by the controller: registering again");
                    self.epoch.send_replace(None);
                    self.lease_until_ms.store(0, Ordering::Release);
                    let endpoints = self.endpoints.lock().clone();
                    if let Err(e) = self.register(endpoints).await {
                        tracing::error!(error = %e, "registering again failed");
                    }
                }
                other => tracing::debug!(answer = ?other, "heartbeat not answered"),
            }
        }
    }

    /// Brokers not answering probes for more than half a session.
    fn unreachable(&self, now: u64) -> Vec<NodeId> {
        let limit = self.timing.session_timeout_ms / 2;
        let state = self.state();
        let reached = self.reached_ms.lock();
        state
            .brokers
            .keys()
            .filter(|n| **n != self.me)
            .filter(|n| {
                reached
                    .get(n)
                    .is_none_or(|t| now.saturating_sub(*t) > limit)
            })
            .copied()
            .collect()
    }

    /// Probe every other broker each heartbeat, on its quorum endpoint (a Ping) and on its
    /// replication endpoint (see [`Cluster::replication_reachable`]): what the controller
    /// needs to tell a cut between sites from a lost site. A broker counts as reached only when both answer: followers
    /// fetch on the replication endpoint, so a cut of that link alone (a separate
    /// inter-site network, a firewall rule) stalls acks=all writes exactly as a full cut
    /// does, and must be resolved the same way (one site fenced by the policy).
    pub async fn probes(self: Arc<Self>, shutdown: CancellationToken) {
        if self.alone {
            return;
        }
        let every = Duration::from_millis(self.timing.heartbeat_ms);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let state = self.state();
            let targets: Vec<(NodeId, Endpoints)> = state
                .brokers
                .values()
                .filter(|b| b.node != self.me)
                .map(|b| (b.node, b.endpoints.clone()))
                .collect();
            self.replication_probes
                .lock()
                .retain(|n, _| targets.iter().any(|(t, _)| t == n));
            let probes = targets.into_iter().map(|(n, endpoints)| {
                let me = Arc::clone(&self);
                async move {
                    let (quorum, replication) = tokio::join!(
                        me.probe.call(n, &endpoints.quorum, Request::Ping, every),
                        me.replication_reachable(n, &endpoints.replication, every),
                    );
                    if matches!(quorum, Ok(Response::Pong)) && replication {
                        me.reached_ms.lock().insert(n, mono_ms());
                    }
                }
            });
            futures::future::join_all(probes).await;
        }
    }

    /// Whether the network path to `n`'s replication listener works: an ApiVersions answered
    /// within `within` on a connection kept from probe to probe, or else a new connection's
    /// TCP handshake completed. The second case counts because a broker without a lease (a
    /// fenced site's) closes Kafka connections as soon as it accepts them, yet must be seen
    /// as reachable to have its site restored. A TLS handshake that fails on a certificate
    /// does not count: followers could not fetch either.
    async fn replication_reachable(&self, n: NodeId, addr: &str, within: Duration) -> bool {
        let kept = self
            .replication_probes
            .lock()
            .get(&n)
            .filter(|(a, _)| a == addr)
            .map(|(_, c)| Arc::clone(c));
        let attempt = async {
            if let Some(c) = kept
                && c.request(ApiVersionsRequest::default(), 3).await.is_ok()
            {
                return (true, Some(c));
            }
            let id = format!("probe-{}", self.me);
            match Connection::connect_with(addr, &id, self.peer_tls.as_deref()).await {
                Ok(c) => (true, Some(Arc::new(c))),
                Err(kafka_client::Error::Connect { .. }) => (false, None),
                Err(kafka_client::Error::Tls(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    (false, None)
                }
                // Connected, then closed or refused at the Kafka level.
                Err(_) => (true, None),
            }
        };
        let (reached, keep) = tokio::time::timeout(within, attempt)
            .await
            .unwrap_or((false, None));
        let mut probes = self.replication_probes.lock();
        match keep {
            Some(c) => probes.insert(n, (addr.to_string(), c)),
            None => probes.remove(&n),
        };
        reached
    }
}

/// A Kafka cluster id (22 characters of URL-safe base64) for a quorum cluster id.
pub fn kafka_cluster_id(id: Uuid) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// The quorum cluster id of a Kafka cluster id, when it is one.
pub fn cluster_uuid(kafka_id: &str) -> Option<Uuid> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(kafka_id)
        .ok()?;
    Uuid::from_slice(&bytes).ok()
}
