//! A member of the controller quorum: the Raft node (voter or learner) with its storage, the
//! server side of the quorum protocol, and the controller service that runs while this node
//! leads. Brokers and the witness each run one; so does every simulated node.
//!
//! The controller service is one task: it waits for leadership, waits until everything of the
//! previous terms is applied, then handles requests and ticks one at a time. Each proposal is
//! computed from the applied state and committed (and applied) before the next is computed, so
//! the controller never reasons from a state that is not the log's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, Config, ServerState};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::controller::{
    Controller, ControllerError, ControllerRequest, ControllerResponse, Registration, Timing,
};
use crate::ids::{NodeId, SiteId};
use crate::metadata::{ClusterState, MetadataRecord};
use crate::policy::SitePolicy;
use crate::raft::log_file::LogFile;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, Transport, TransportError};
use crate::raft::state_machine::StateMachine;
use crate::raft::{Command, Raft, RaftMetrics};
use crate::rpc::{Envelope, PROTOCOL_VERSION, Refusal, Request, Response, admit};

/// At most this many controller requests wait for the controller task.
const CONTROLLER_QUEUE: usize = 1024;
/// How long the Raft leader spends on one voter change (the new voter catching up included).
const CHANGE_VOTERS_TIMEOUT: Duration = Duration::from_secs(50);
/// A new voter counts as caught up once it has matched the leader's log this closely.
const CATCH_UP_SLACK: u64 = 16;
/// How often the controller looks at the clock (fences, sites, elections).
const TICK: Duration = Duration::from_millis(100);

/// Raft timing. Defaults suit a WAN between sites (tens of ms); tests and the failover
/// benchmark tune them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 250,
            election_min_ms: 1000,
            election_max_ms: 2000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: NodeId,
    /// Nodes of another cluster are refused.
    pub cluster_name: String,
    /// This node's site: a data site for brokers, the witness's own site for the witness.
    pub site: SiteId,
    /// Where other nodes reach this one (quorum protocol).
    pub advertised: String,
    /// The voters the cluster starts with (id -> quorum address); every node is configured
    /// with the same set. Nodes outside it join as learners when they register.
    pub voters: BTreeMap<NodeId, String>,
    /// The site policy the cluster is formed with.
    pub policy: SitePolicy,
    pub timing: Timing,
    pub raft: RaftTiming,
    /// The id a cluster formed by this node gets (a one-node broker keeps the id its data
    /// directory already has); `None`: a new random one.
    pub formation_cluster_id: Option<uuid::Uuid>,
}

type Pending = (ControllerRequest, oneshot::Sender<ControllerResponse>);

/// A running quorum member.
pub struct QuorumNode<T: Transport> {
    pub raft: Raft,
    state_machine: StateMachine,
    config: Arc<NodeConfig>,
    transport: Arc<T>,
    requests: mpsc::Sender<Pending>,
    shutdown: CancellationToken,
    /// Where this node learned the controller is (kept across calls).
    leader_hint: parking_lot::Mutex<Option<(NodeId, String)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("quorum storage: {0}")]
    Storage(#[from] std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("no controller answered within {0:?}")]
    NoController(Duration),
    #[error("controller: {0}")]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl<T: Transport> QuorumNode<T> {
    /// Open storage and start the node. A configured voter with an empty log initialises the
    /// cluster's membership (every voter does, with the same set: openraft allows it).
    pub async fn start(
        config: NodeConfig,
        log: Box<dyn LogFile>,
        snapshot: Box<dyn LogFile>,
        transport: Arc<T>,
    ) -> Result<Arc<QuorumNode<T>>, NodeError> {
        let raft_config = Config {
            cluster_name: config.cluster_name.clone(),
            heartbeat_interval: config.raft.heartbeat_ms,
            election_timeout_min: config.raft.election_min_ms,
            election_timeout_max: config.raft.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2000),
            max_in_snapshot_log_to_keep: 200,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let log_store = LogStore::open(log)?;
        let state_machine = StateMachine::open(snapshot)?;
        let network = Network {
            transport: Arc::clone(&transport),
        };
        let raft = Raft::new(
            config.node,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        if config.voters.contains_key(&config.node)
            && !raft
                .is_initialized()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?
        {
            let members: BTreeMap<NodeId, BasicNode> = config
                .voters
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            // Another voter may have initialised first: then this is refused, which is fine.
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "quorum already initialised");
            }
        }
        let (requests, queue) = mpsc::channel(CONTROLLER_QUEUE);
        let node = Arc::new(QuorumNode {
            raft,
            state_machine,
            config: Arc::new(config),
            transport,
            requests,
            shutdown: CancellationToken::new(),
            leader_hint: parking_lot::Mutex::new(None),
        });
        tokio::spawn(controller_service(Arc::clone(&node), queue));
        tokio::spawn(warn_of_another_policy(Arc::clone(&node)));
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.config.node
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Every metadata state as it is applied on this node.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state_machine.subscribe()
    }

    pub fn state(&self) -> Arc<ClusterState> {
        self.state_machine.current()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The current Raft leader and its address, as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .or_else(|| self.config.voters.get(&id).cloned())?;
        Some((id, addr))
    }

    /// Whether this node, leading, heard from a quorum recently enough to grant leases: within
    /// 3/4 of the shortest election timeout, less how stale openraft's metrics may be (they
    /// are refreshed at least every 1.5 Raft heartbeats), so no other leader can have been
    /// elected since (followers wait at least the election timeout before they campaign). A
    /// lone voter always has.
    fn quorum_contact_fresh(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.membership_config.membership().voter_ids().count() <= 1 {
            return true;
        }
        let raft = &self.config.raft;
        let limit_ms = (raft.election_min_ms * 3 / 4).saturating_sub(raft.heartbeat_ms * 3 / 2);
        m.millis_since_quorum_ack.is_some_and(|ms| ms <= limit_ms)
    }

    /// The cluster as this node sees it (for operators).
    pub fn status(&self) -> crate::status::ClusterStatus {
        let quorum = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let addr = |id: NodeId| {
                membership
                    .get_node(&id)
                    .map_or_else(String::new, |n| n.addr.clone())
            };
            crate::status::QuorumStatus {
                leader: m.current_leader,
                term: m.current_term,
                voters: membership.voter_ids().map(|id| (id, addr(id))).collect(),
                learners: membership.learner_ids().map(|id| (id, addr(id))).collect(),
            }
        };
        crate::status::ClusterStatus::of(
            &self.config.cluster_name,
            self.config.node,
            &self.state(),
            quorum,
            &self.config.policy,
        )
    }

    /// Cancelled when this node shuts down (servers of its protocol stop with it).
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// Serve one request from another node (the server side of the quorum protocol).
    pub async fn handle(&self, envelope: Envelope<Request>) -> Response {
        if let Err(refusal) = admit(&envelope, &self.config.cluster_name) {
            tracing::warn!(from = %envelope.from, %refusal, "refused a quorum message");
            return Response::Refused(refusal);
        }
        if self.shutdown.is_cancelled() {
            return Response::Refused(Refusal::ShuttingDown);
        }
        match envelope.body {
            Request::AppendEntries(r) => Response::AppendEntries(self.raft.append_entries(r).await),
            Request::Vote(r) => Response::Vote(self.raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                Response::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
            Request::Controller(r) => Response::Controller(self.controller_local(r).await),
            Request::Ping => Response::Pong,
        }
    }

    /// A controller request handled here: by the controller service if this node leads,
    /// otherwise answered with where the leader is.
    async fn controller_local(&self, request: ControllerRequest) -> ControllerResponse {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return ControllerResponse::NotController {
                leader: self.leader(),
            };
        }
        if let ControllerRequest::ChangeVoters { voters } = request {
            if let Err(e) = crate::controller::check_voters(&voters) {
                return ControllerResponse::Failed(e);
            }
            let changed = tokio::time::timeout(CHANGE_VOTERS_TIMEOUT, self.change_voters(voters));
            return match changed.await {
                Ok(Ok(index)) => ControllerResponse::Applied { index },
                Ok(Err(e)) => ControllerResponse::Failed(ControllerError::Invalid(e.to_string())),
                Err(_) => ControllerResponse::Failed(ControllerError::NotCommitted(format!(
                    "the voter change did not complete within {CHANGE_VOTERS_TIMEOUT:?}"
                ))),
            };
        }
        let (tx, rx) = oneshot::channel();
        if self.requests.try_send((request, tx)).is_err() {
            return ControllerResponse::Failed(ControllerError::NotCommitted(
                "controller queue full".into(),
            ));
        }
        rx.await
            .unwrap_or(ControllerResponse::NotController { leader: None })
    }

    /// Send a controller request to whichever node leads, following redirections, until
    /// `timeout`. Answers other than "not the controller" are returned as they are.
    pub async fn controller_call(
        &self,
        request: ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, NodeError> {
        let deadline = Instant::now() + timeout;
        let mut voters = self.config.voters.iter().cycle();
        loop {
            let target = self
                .leader()
                .or_else(|| self.leader_hint.lock().clone())
                .or_else(|| voters.next().map(|(id, a)| (*id, a.clone())));
            let Some((to, addr)) = target else {
                return Err(NodeError::NoController(timeout));
            };
            let answer = if to == self.config.node {
                Ok(self.controller_local(request.clone()).await)
            } else {
                let envelope_request = Request::Controller(request.clone());
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .transport
                    .call(to, &addr, envelope_request, per_attempt(&request, left))
                    .await
                {
                    Ok(Response::Controller(r)) => Ok(r),
                    Ok(other) => Err(TransportError::Protocol(to, format!("{other:?}"))),
                    Err(e) => Err(e),
                }
            };
            match answer {
                Ok(ControllerResponse::NotController { leader }) => {
                    *self.leader_hint.lock() = leader.filter(|(id, _)| *id != to);
                }
                Ok(r) => {
                    *self.leader_hint.lock() = Some((to, addr));
                    return Ok(r);
                }
                Err(e) => {
                    tracing::debug!(%to, error = %e, "controller call failed");
                    *self.leader_hint.lock() = None;
                }
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NoController(timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until this node has applied the metadata log up to `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.applied_index >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Replace voters (an operator's command: a dead voter for a new one), on the Raft
    /// leader. One voter out and one in at most, so a mistyped set cannot take the quorum
    /// away. New voters are added as learners first, and the change waits until the leader
    /// sees them caught up (openraft 0.9 checks no lag itself: a voter that cannot keep up
    /// would leave the quorum one failure from stopping). Returns the membership's log index.
    pub async fn change_voters(&self, voters: BTreeMap<NodeId, String>) -> Result<u64, NodeError> {
        let current: std::collections::BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let wanted: std::collections::BTreeSet<NodeId> = voters.keys().copied().collect();
        let removed: Vec<NodeId> = current.difference(&wanted).copied().collect();
        let added: Vec<NodeId> = wanted.difference(&current).copied().collect();
        if removed.len() > 1 || added.len() > 1 || removed.len() + added.len() == 0 {
            return Err(NodeError::Raft(format!(
                "replace one voter at a time: voters are {current:?}, the change removes {removed:?} and adds {added:?}"
            )));
        }
        for id in &added {
            let known = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(id)
                .is_some();
            if !known {
                let node = BasicNode {
                    addr: voters[id].clone(),
                };
                self.raft
                    .add_learner(*id, node, false)
                    .await
                    .map_err(|e| NodeError::Raft(e.to_string()))?;
            }
        }
        let caught_up = |m: &RaftMetrics| {
            let end = m.last_log_index.unwrap_or(0);
            added.iter().all(|id| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .is_some_and(|matched| matched.index + CATCH_UP_SLACK >= end)
            })
        };
        let mut metrics = self.raft.metrics();
        metrics
            .wait_for(caught_up)
            .await
            .map_err(|_| NodeError::Raft("raft stopped".into()))?;
        let changed = self
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(wanted), false)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        tracing::warn!(
            ?removed,
            ?added,
            index = changed.log_id.index,
            "quorum voters replaced"
        );
        Ok(changed.log_id.index)
    }
}

/// How long one forwarded controller request may take: a voter change its whole deadline (a
/// retry after a cut-short attempt would find the new voter known and skip its catch-up),
/// anything else 10 s.
fn per_attempt(request: &ControllerRequest, left: Duration) -> Duration {
    match request {
        ControllerRequest::ChangeVoters { .. } => left,
        _ => left.min(Duration::from_secs(10)),
    }
}

/// Monotonic milliseconds for the controller (tokio's clock, which the simulation drives).
fn now_ms(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

/// The controller service: idle until this node leads, then serve requests and ticks.
async fn controller_service<T: Transport>(
    node: Arc<QuorumNode<T>>,
    mut queue: mpsc::Receiver<Pending>,
) {
    let base = Instant::now();
    let mut metrics = node.raft.metrics();
    loop {
        // Wait for leadership (answering queued requests with a redirection meanwhile).
        loop {
            if metrics.borrow().state == ServerState::Leader {
                break;
            }
            tokio::select! {
                _ = node.shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
                Some((_, reply)) = queue.recv() => {
                    let _ = reply.send(ControllerResponse::NotController { leader: node.leader() });
                }
            }
        }
        let term = metrics.borrow().current_term;
        // Everything committed by earlier leaders is applied before deciding anything.
        if let Err(e) = node.raft.ensure_linearizable().await {
            tracing::debug!(error = %e, "leadership not confirmed");
            tokio::select! {
                _ = node.shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            continue;
        }
        // The controller must reason from everything already in this leader's log (entries
        // of earlier leaders, and its own from before a restart: a leader that restarts with
        // its vote resumes in the same term, without a new blank entry). All of them commit
        // under this leadership; wait until they are applied here.
        let target = metrics.borrow().last_log_index.unwrap_or(0);
        let caught_up = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            m = metrics.wait_for(|m| {
                m.state != ServerState::Leader
                    || m.current_term != term
                    || m.last_applied.is_some_and(|l| l.index >= target)
            }) => m.map(|m| m.state == ServerState::Leader && m.current_term == term),
        };
        match caught_up {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        tracing::info!(node = %node.id(), term, "controller active");
        lead(&node, &mut queue, base, term).await;
        tracing::info!(node = %node.id(), term, "controller inactive");
        if node.shutdown.is_cancelled() {
            return;
        }
    }
}

/// Serve as the controller until leadership of `term` is lost.
async fn lead<T: Transport>(
    node: &Arc<QuorumNode<T>>,
    queue: &mut mpsc::Receiver<Pending>,
    base: Instant,
    term: u64,
) {
    let mut metrics = node.raft.metrics();
    let state = node.state();
    let mut ctl = Controller::new(
        node.config.timing,
        node.config.site.clone(),
        &state,
        now_ms(base),
    );
    if state.cluster_id.is_none() {
        let id = node
            .config
            .formation_cluster_id
            .unwrap_or_else(crate::raft::runtime::new_uuid);
        let records = Controller::formation(id, node.config.policy.clone());
        if propose(node, records).await.is_err() {
            return;
        }
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let still_leader = {
            let m = metrics.borrow();
            m.state == ServerState::Leader && m.current_term == term
        };
        if !still_leader {
            return;
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {
                let records = ctl.tick(&node.state(), now_ms(base));
                if !records.is_empty() && propose(node, records).await.is_err() {
                    return;
                }
            }
            Some((request, reply)) = queue.recv() => {
                let answer = serve(node, &mut ctl, request, now_ms(base)).await;
                let _ = reply.send(answer);
            }
        }
    }
}

/// Commit `records` as one command; returns the applied outcome.
async fn propose<T: Transport>(
    node: &QuorumNode<T>,
    records: Vec<crate::metadata::MetadataRecord>,
) -> Result<crate::raft::Applied, ControllerError> {
    tracing::debug!(node = %node.id(), ?records, "proposing");
    match node.raft.client_write(Command { records }).await {
        Ok(r) => {
            tracing::debug!(node = %node.id(), log_id = %r.log_id, "committed");
            Ok(r.data)
        }
        Err(e) => {
            tracing::info!(error = %e, "proposal not committed");
            Err(ControllerError::NotCommitted(e.to_string()))
        }
    }
}

async fn serve<T: Transport>(
    node: &Arc<QuorumNode<T>>,
    ctl: &mut Controller,
    request: ControllerRequest,
    now: u64,
) -> ControllerResponse {
    let state = node.state();
    let result = match request {
        ControllerRequest::Heartbeat {
            node: n,
            epoch,
            unreachable,
        } => {
            // A leader cut off from its quorum does not know it yet (openraft 0.9 leaders do
            // not step down): renewing leases then would let a cut-off site keep serving
            // while the others elect a controller and move its partitions' leadership.
            if !node.quorum_contact_fresh() {
                return ControllerResponse::NotController { leader: None };
            }
            let fenced = ctl.heartbeat(&state, now, n, epoch, &unreachable);
            return ControllerResponse::Heartbeat {
                fenced,
                index: state.applied_index,
            };
        }
        ControllerRequest::Register(r) => register(node, ctl, &state, now, r).await,
        ControllerRequest::AlterIsr {
            node: n,
            epoch,
            partition,
            leader_epoch,
            partition_epoch,
            isr,
        } => match ctl.alter_isr(
            &state,
            n,
            epoch,
            partition,
            leader_epoch,
            partition_epoch,
            &isr,
        ) {
            Ok(records) => applied(node, records).await,
            Err(e) => Err(e),
        },
        ControllerRequest::CreateTopic {
            name,
            id,
            partitions,
            replication_factor,
            configs,
            validate_only,
        } => {
            let id = id.unwrap_or_else(crate::raft::runtime::new_uuid);
            match ctl.create_topic(&state, id, &name, partitions, replication_factor, &configs) {
                Ok(_) if validate_only => Ok(ControllerResponse::TopicCreated { id, index: 0 }),
                Ok(records) => match propose(node, records).await {
                    Ok(a) if a.skipped.iter().all(Option::is_none) => {
                        Ok(ControllerResponse::TopicCreated { id, index: a.index })
                    }
                    Ok(_) => Err(ControllerError::TopicExists(name)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
        ControllerRequest::CreatePartitions {
            topic,
            count,
            validate_only,
        } => match ctl.create_partitions(&state, topic, count) {
            Ok(_) if validate_only => Ok(ControllerResponse::Applied { index: 0 }),
            Ok(records) => applied(node, records).await,
            Err(e) => Err(e),
        },
        ControllerRequest::DeleteTopic { topic } => {
            if !state.topics.contains_key(&topic) {
                Err(ControllerError::UnknownTopic)
            } else {
                applied(
                    node,
                    vec![crate::metadata::MetadataRecord::TopicDeleted { topic }],
                )
                .await
            }
        }
        ControllerRequest::ReplaceTopicConfigs { topic, configs } => {
            if !state.topics.contains_key(&topic) {
                Err(ControllerError::UnknownTopic)
            } else {
                applied(
                    node,
                    vec![crate::metadata::MetadataRecord::TopicConfigsReplaced { topic, configs }],
                )
                .await
            }
        }
        ControllerRequest::ControlledShutdown { node: n, epoch } => {
            match ctl.controlled_shutdown(&state, n, epoch) {
                Ok(records) => applied(node, records).await,
                Err(e) => Err(e),
            }
        }
        ControllerRequest::ChangeVoters { .. } => Err(ControllerError::Invalid(
            "voter changes are served beside the controller service".into(),
        )),
        ControllerRequest::AnnounceServices {
            node: n,
            epoch,
            services,
        } => {
            // Checked again when applied; refused here so that a stale incarnation learns it.
            if state.brokers.get(&n).is_none_or(|b| b.epoch != epoch) {
                Err(ControllerError::Invalid(format!(
                    "broker {n} is not registered in epoch {epoch}"
                )))
            } else {
                applied(
                    node,
                    vec![crate::metadata::MetadataRecord::BrokerServices {
                        node: n,
                        epoch,
                        services,
                    }],
                )
                .await
            }
        }
        ControllerRequest::AlterScramCredentials { upserts, deletions } => {
            match scram_alteration(&state, upserts, deletions) {
                Ok(record) => applied(node, vec![record]).await,
                Err(e) => Err(e),
            }
        }
        ControllerRequest::CreateAcls { bindings } => {
            match bindings.iter().find_map(|b| b.check().err()) {
                Some(why) => Err(ControllerError::Invalid(why.to_string())),
                None => applied(node, vec![MetadataRecord::AclsCreated { bindings }]).await,
            }
        }
        ControllerRequest::DeleteAcls { bindings } => {
            applied(node, vec![MetadataRecord::AclsDeleted { bindings }]).await
        }
        ControllerRequest::Reassign { partition, target } => {
            match ctl.reassign(&state, partition, target.as_deref()) {
                Ok(records) if records.is_empty() => Ok(ControllerResponse::Applied {
                    index: state.applied_index,
                }),
                Ok(records) => applied(node, records).await,
                Err(e) => Err(e),
            }
        }
        ControllerRequest::AllocateProducerIds { node: n, epoch } => {
            match ctl.allocate_producer_ids(&state, n, epoch) {
                Ok(records) => match propose(node, records).await {
                    Ok(a) => {
                        // The block just applied is the one before the new high-water mark.
                        let next = node.state().next_producer_id;
                        Ok(ControllerResponse::ProducerIds {
                            first: next - crate::metadata::PRODUCER_ID_BLOCK,
                            count: crate::metadata::PRODUCER_ID_BLOCK,
                            index: a.index,
                        })
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
    };
    result.unwrap_or_else(ControllerResponse::Failed)
}

/// The record for a SCRAM credential change, if it is acceptable: names within bounds,
/// credentials Kafka would accept, and a decoy secret with the cluster's first credential.
fn scram_alteration(
    state: &ClusterState,
    upserts: Vec<(String, sasl::Credential)>,
    deletions: Vec<(String, sasl::Mechanism)>,
) -> Result<crate::metadata::MetadataRecord, ControllerError> {
    use crate::metadata::SCRAM_USER_BYTES_MAX;
    let names = upserts
        .iter()
        .map(|(u, _)| u)
        .chain(deletions.iter().map(|(u, _)| u));
    for user in names {
        if user.is_empty() || user.len() > SCRAM_USER_BYTES_MAX {
            return Err(ControllerError::Invalid(format!(
                "a user name has 1 to {SCRAM_USER_BYTES_MAX} bytes"
            )));
        }
    }
    for (user, c) in &upserts {
        let iterations = sasl::ITERATIONS_MIN..=sasl::ITERATIONS_MAX;
        if !iterations.contains(&c.iterations) || c.salt.is_empty() {
            return Err(ControllerError::Invalid(format!(
                "the credential of {user:?} needs a salt and {} to {} iterations",
                sasl::ITERATIONS_MIN,
                sasl::ITERATIONS_MAX
            )));
        }
    }
    let decoy_secret = state.scram_decoy_secret.is_none().then(|| {
        let (a, b) = (
            crate::raft::runtime::new_uuid(),
            crate::raft::runtime::new_uuid(),
        );
        [a.as_bytes().as_slice(), b.as_bytes()].concat()
    });
    Ok(crate::metadata::MetadataRecord::ScramCredentialsAltered {
        upserts,
        deletions,
        decoy_secret,
    })
}

async fn applied<T: Transport>(
    node: &QuorumNode<T>,
    records: Vec<crate::metadata::MetadataRecord>,
) -> Result<ControllerResponse, ControllerError> {
    let a = propose(node, records).await?;
    match a.skipped.iter().flatten().next() {
        Some(why) => Err(ControllerError::Invalid(why.to_string())),
        None => Ok(ControllerResponse::Applied { index: a.index }),
    }
}

#[allow(clippy::too_many_arguments)]
async fn register<T: Transport>(
    node: &QuorumNode<T>,
    ctl: &mut Controller,
    state: &ClusterState,
    now: u64,
    r: Registration,
) -> Result<ControllerResponse, ControllerError> {
    let records = ctl.register(state, now, &r)?;
    let (n, endpoints) = (r.node, r.endpoints);
    let a = propose(node, records).await?;
    if let Some(why) = a.skipped.first().cloned().flatten() {
        return Err(ControllerError::Invalid(why.to_string()));
    }
    // The new incarnation is alive from now (its registration is its first heartbeat).
    let epoch = node
        .state()
        .brokers
        .get(&n)
        .map(|b| b.epoch)
        .unwrap_or_default();
    ctl.heartbeat(&node.state(), now, n, epoch, &[]);
    // Brokers that are not voters follow the metadata log as learners.
    let member = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&n)
        .is_some();
    if !member
        && let Err(e) = node
            .raft
            .add_learner(
                n,
                BasicNode {
                    addr: endpoints.quorum.clone(),
                },
                false,
            )
            .await
    {
        tracing::warn!(node = %n, error = %e, "adding a learner failed");
    }
    Ok(ControllerResponse::Registered {
        epoch,
        index: a.index,
    })
}

/// The site policy is fixed when the cluster forms (`ClusterFormed`, from the configuration of
/// the voter that formed it); a node's `[cluster]` `data_sites` and `preferred_site` matter
/// only then. A node configured otherwise says so in its log, once per policy it sees, and in
/// its status: an operator who edits them expecting a change would otherwise see nothing.
async fn warn_of_another_policy<T: Transport>(node: Arc<QuorumNode<T>>) {
    let mut states = node.subscribe();
    let mut told: Option<SitePolicy> = None;
    loop {
        let formed = states.borrow_and_update().policy.clone();
        if let Some(formed) = formed
            && formed != node.config.policy
            && told.as_ref() != Some(&formed)
        {
            tracing::warn!(
                configured = ?node.config.policy,
                cluster = ?formed,
                "this node's [cluster] data_sites / preferred_site differ from the site policy the cluster was formed with; the cluster's policy applies"
            );
            told = Some(formed);
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            changed = states.changed() => if changed.is_err() { return },
        }
    }
}

/// The envelope this node puts around its requests.
pub fn envelope<B>(config: &NodeConfig, body: B) -> Envelope<B> {
    Envelope {
        version: PROTOCOL_VERSION,
        cluster: config.cluster_name.clone(),
        from: config.node,
        body,
    }
}
