//! The controller: the logic the quorum's leader runs to turn what brokers report into
//! metadata records. Pure: it reads the applied [`ClusterState`], keeps the liveness of brokers
//! in memory, takes the time as an explicit `now_ms`, and returns the records to propose (the
//! service in [`crate::node`] proposes them one command at a time, each computed from the
//! state after the previous one applied). Tested without I/O, and driven by the simulation.
//!
//! What it decides:
//! - **Registration.** A broker (re)starting registers a new incarnation; partitions it led
//!   get a new leader epoch (another in-sync replica, or itself again), because its previous
//!   life may have served records it had not yet made durable. A second live process claiming
//!   the same id is refused, and so is a node of another cluster (checked by the transport).
//! - **Fencing.** An incarnation the controller has not heard from for `session_timeout_ms` is
//!   fenced. Brokers stop leading on their own after their lease, which is shorter, so a fenced
//!   broker has already stopped when others take over.
//! - **Sites.** When every broker of a data site is fenced, the site is fenced (degraded mode).
//!   When the two data sites both reach the controller but one does not reach the other (its
//!   quorum or replication endpoints, as brokers probe them) for `site_cut_timeout_ms`, one
//!   of them is fenced: the controller's own site if it is a data site, else the policy's
//!   preferred site goes on. A fenced site is restored when one of its brokers is alive
//!   again and the two sites reach each other both ways.
//! - **Leaders and in-sync sets.** Fenced brokers leave in-sync sets (the policy allows it);
//!   a partition whose leader is fenced gets a new leader among its unfenced in-sync replicas,
//!   or stays offline until one returns: never an unclean election. A leader's request to
//!   change its in-sync set is checked against the policy and the partition's version.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{BrokerEpoch, LeaderEpoch, NodeId, PartitionEpoch, PartitionKey, SiteId};
use crate::metadata::{
    BrokerInfo, ClusterState, Endpoints, MAX_BROKERS, MetadataRecord, PRODUCER_ID_BLOCK,
    PartitionState, REPLICAS_MAX,
};
use crate::policy::{PolicyError, SitePolicy};

/// Timing of the controller; brokers derive their lease from the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Brokers send a heartbeat this often.
    pub heartbeat_ms: u64,
    /// An incarnation not heard from for this long is fenced.
    pub session_timeout_ms: u64,
    /// Data sites that reach the controller but not each other for this long: one is fenced.
    pub site_cut_timeout_ms: u64,
}

impl Timing {
    /// A broker leads only while its last successful heartbeat was sent less than this ago:
    /// shorter than the session timeout by a margin for clock rate differences and delivery,
    /// so a broker has stopped before the controller fences it.
    pub fn lease_ms(&self) -> u64 {
        self.session_timeout_ms * 3 / 4
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_ms: 500,
            session_timeout_ms: 6000,
            site_cut_timeout_ms: 6000,
        }
    }
}

/// A broker's request to the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerRequest {
    Register(Registration),
    /// Alive; `unreachable` are the brokers it could not reach lately.
    Heartbeat {
        node: NodeId,
        epoch: BrokerEpoch,
        unreachable: Vec<NodeId>,
    },
    /// A partition leader changes the in-sync set (a follower fell behind, or caught up).
    AlterIsr {
        node: NodeId,
        epoch: BrokerEpoch,
        partition: PartitionKey,
        leader_epoch: LeaderEpoch,
        partition_epoch: PartitionEpoch,
        isr: Vec<NodeId>,
    },
    CreateTopic {
        name: String,
        /// A given id (a one-node broker importing its topics on upgrade); usually `None`.
        id: Option<Uuid>,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    },
    CreatePartitions {
        topic: Uuid,
        count: u32,
        validate_only: bool,
    },
    DeleteTopic {
        topic: Uuid,
    },
    ReplaceTopicConfigs {
        topic: Uuid,
        configs: BTreeMap<String, String>,
    },
    AllocateProducerIds {
        node: NodeId,
        epoch: BrokerEpoch,
    },
    /// A broker stopping on purpose: fence this incarnation now, so its leaderships move at
    /// once instead of after a session timeout (Kafka's controlled shutdown).
    ControlledShutdown {
        node: NodeId,
        epoch: BrokerEpoch,
    },
    /// An operator replaces the voters (a dead voter for a new one). Served by the Raft
    /// leader beside the controller service, which goes on answering heartbeats while the
    /// membership change commits.
    ChangeVoters {
        voters: BTreeMap<NodeId, String>,
    },
    /// A registered incarnation announces its services (after each registration).
    AnnounceServices {
        node: NodeId,
        epoch: BrokerEpoch,
        services: crate::metadata::Services,
    },
    /// Set and remove SCRAM credentials, all or none (checked by the broker that asks, for
    /// Kafka's per-user errors, and again here).
    AlterScramCredentials {
        upserts: Vec<(String, sasl::Credential)>,
        deletions: Vec<(String, sasl::Mechanism)>,
    },
    /// Add ACL bindings (each checked by the broker that asks, and again here).
    CreateAcls {
        bindings: Vec<acl::AclBinding>,
    },
    /// Remove ACL bindings.
    DeleteAcls {
        bindings: Vec<acl::AclBinding>,
    },
    /// Move a partition to `target` replicas (the first is its preferred leader), or with
    /// `None` cancel the reassignment in progress (Kafka's AlterPartitionReassignments).
    Reassign {
        partition: PartitionKey,
        target: Option<Vec<NodeId>>,
    },
}

/// A broker (re)starting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub node: NodeId,
    pub site: SiteId,
    pub endpoints: Endpoints,
    pub storage_id: Uuid,
    /// The broker's own session timeout, from which it derives its lease.
    pub session_timeout_ms: u64,
}

/// At most this many voters (each one more is a copy of every metadata write to wait for).
pub const VOTERS_MAX: usize = 7;

/// Whether `voters` may become the quorum's voters.
pub fn check_voters(voters: &BTreeMap<NodeId, String>) -> Result<(), ControllerError> {
    if voters.is_empty() || voters.len() > VOTERS_MAX {
        return Err(ControllerError::Invalid(format!(
            "a quorum needs 1 to {VOTERS_MAX} voters, not {}",
            voters.len()
        )));
    }
    if let Some((id, _)) = voters.iter().find(|(_, a)| a.trim().is_empty()) {
        return Err(ControllerError::Invalid(format!(
            "voter {id} has no address"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerResponse {
    /// Done: applied at this metadata log index (wait for it before acting on the result).
    Applied {
        index: u64,
    },
    Registered {
        epoch: BrokerEpoch,
        index: u64,
    },
    /// `fenced`: this incarnation is over, register again. `index`: the metadata the
    /// controller had applied when it answered; a lease granted by this answer counts only
    /// once the broker has applied as much (else a broker just back from a cut would act,
    /// for a moment, on its stale view that it is unfenced).
    Heartbeat {
        fenced: bool,
        index: u64,
    },
    TopicCreated {
        id: Uuid,
        index: u64,
    },
    ProducerIds {
        first: i64,
        count: i64,
        index: u64,
    },
    /// Ask the leader instead.
    NotController {
        leader: Option<(NodeId, String)>,
    },
    Failed(ControllerError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControllerError {
    #[error("the cluster is not formed yet")]
    NotFormed,
    #[error("broker {0} is not registered with that epoch (fenced or restarted): register again")]
    StaleBroker(NodeId),
    #[error("node {0} is already registered by a live process with another data directory")]
    DuplicateNode(NodeId),
    #[error("site {0} is not one of the cluster's data sites")]
    UnknownSite(SiteId),
    #[error("{0}")]
    Policy(String),
    #[error("partition {0} changed since (epoch or leader): refresh and retry")]
    StaleChange(PartitionKey),
    #[error("unknown topic or partition")]
    UnknownTopic,
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("too many brokers (at most {MAX_BROKERS})")]
    TooManyBrokers,
    #[error("the quorum could not commit: {0}")]
    NotCommitted(String),
    #[error("no reassignment is in progress for partition {0}")]
    NoReassignment(PartitionKey),
}

impl From<PolicyError> for ControllerError {
    fn from(e: PolicyError) -> Self {
        ControllerError::Policy(e.to_string())
    }
}

/// What the controller knows of a broker incarnation beyond the metadata.
#[derive(Debug, Clone)]
struct Liveness {
    epoch: BrokerEpoch,
    storage_id: Uuid,
    last_heard_ms: u64,
    unreachable: BTreeSet<NodeId>,
}

pub struct Controller {
    timing: Timing,
    /// The site of the node running this controller (a data site, or the witness's).
    own_site: SiteId,
    started_ms: u64,
    liveness: BTreeMap<NodeId, Liveness>,
    /// Since when each (from, to) pair of data sites has looked cut.
    cut_since_ms: BTreeMap<(SiteId, SiteId), u64>,
    /// Since when each partition being moved has had its current leader epoch (one entry per
    /// such partition: bounded by the partition count).
    led_since_ms: BTreeMap<PartitionKey, (LeaderEpoch, u64)>,
}

/// How long a partition's leader must have led in its epoch before a move removes replicas.
/// A move first hands the leadership to a target replica (the preferred one); the old leader,
/// a follower then, needs a few fetches to learn what became of the writes it was still
/// waiting on and answer them with their offsets (`broker::partition::wait_outcome`).
/// Removed at once, it could only answer "maybe written", and a client that re-sends under a
/// new producer epoch (librdkafka does) would store such writes twice.
pub const MOVE_SETTLE_MS: u64 = 2_000;

impl Controller {
    /// A controller that just became leader at `now_ms`: every registered broker gets a full
    /// session from now (it may have been heartbeating the previous leader).
    pub fn new(timing: Timing, own_site: SiteId, state: &ClusterState, now_ms: u64) -> Controller {
        let liveness = state
            .brokers
            .values()
            .map(|b| {
                (
                    b.node,
                    Liveness {
                        epoch: b.epoch,
                        storage_id: b.storage_id,
                        last_heard_ms: now_ms,
                        unreachable: BTreeSet::new(),
                    },
                )
            })
            .collect();
        Controller {
            timing,
            own_site,
            started_ms: now_ms,
            liveness,
            cut_since_ms: BTreeMap::new(),
            led_since_ms: BTreeMap::new(),
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// How long `b` may go unheard before it is fenced: its own session timeout when that is
    /// longer than the controller's. A broker leads for at most [`Timing::lease_ms`] of its
    /// own session after a heartbeat, so waiting out the longer of the two ends its lease
    /// before anyone takes over, whatever either configuration says (and whichever voter
    /// is the controller: the broker's value is in the replicated metadata).
    fn session_ms(&self, b: &BrokerInfo) -> u64 {
        self.timing.session_timeout_ms.max(b.session_timeout_ms)
    }

    fn alive(&self, b: &BrokerInfo, now_ms: u64) -> bool {
        self.liveness
            .get(&b.node)
            .is_some_and(|l| now_ms.saturating_sub(l.last_heard_ms) < self.session_ms(b))
    }

    /// The first records of a cluster, when the quorum has none.
    pub fn formation(cluster_id: Uuid, policy: SitePolicy) -> Vec<MetadataRecord> {
        vec![MetadataRecord::ClusterFormed { cluster_id, policy }]
    }

    /// A broker (re)starts. Returns the records to propose.
    pub fn register(
        &mut self,
        state: &ClusterState,
        now_ms: u64,
        r: &Registration,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let (node, site, storage_id) = (r.node, &r.site, r.storage_id);
        let policy = state.policy.as_ref().ok_or(ControllerError::NotFormed)?;
        if !policy.is_data_site(site) {
            return Err(ControllerError::UnknownSite(site.clone()));
        }
        if node.0 > NodeId::MAX {
            return Err(ControllerError::Invalid(format!(
                "node id {node} is too large"
            )));
        }
        let previous = state.brokers.get(&node);
        if previous.is_none() && state.brokers.len() >= MAX_BROKERS {
            return Err(ControllerError::TooManyBrokers);
        }
        if let Some(p) = previous
            && p.storage_id != storage_id
            && self.alive(p, now_ms)
            && self.liveness.get(&node).is_some_and(|l| l.epoch == p.epoch)
        {
            return Err(ControllerError::DuplicateNode(node));
        }
        if r.session_timeout_ms == 0 {
            return Err(ControllerError::Invalid("a session timeout of 0".into()));
        }
        if r.session_timeout_ms != self.timing.session_timeout_ms {
            tracing::warn!(
                %node,
                broker_session_timeout_ms = r.session_timeout_ms,
                controller_session_timeout_ms = self.timing.session_timeout_ms,
                "cluster.timing.session_timeout differs between this broker and the \
                 controller: fencing waits for the longer one; configure every node alike"
            );
        }
        let mut records = vec![MetadataRecord::BrokerRegistered {
            node,
            site: site.clone(),
            endpoints: r.endpoints.clone(),
            storage_id,
            session_timeout_ms: r.session_timeout_ms,
        }];
        let new_disk = previous.is_some_and(|p| p.storage_id != storage_id);
        records.extend(self.restarted(state, node, new_disk)?);
        Ok(records)
    }

    /// Partitions of a node that restarted: those it led get a new epoch (a new leader, or the
    /// same one again); with a new disk it also leaves every in-sync set, since it no longer
    /// holds what it reported.
    fn restarted(
        &self,
        state: &ClusterState,
        node: NodeId,
        new_disk: bool,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let policy = state.policy.as_ref().ok_or(ControllerError::NotFormed)?;
        let mut views = state.broker_views();
        // The old incarnation is over: treat it as fenced for these decisions.
        if let Some(v) = views.get_mut(&node) {
            v.fenced = true;
        }
        let mut out = Vec::new();
        for (key, p) in state.partitions_of(node) {
            let mut isr = p.isr.clone();
            if new_disk && isr.contains(&node) {
                isr.retain(|n| *n != node);
                if isr.is_empty() {
                    return Err(ControllerError::Invalid(format!(
                        "node {node} has a new data directory but held the only in-sync copy of \
                         {key}: recover its disk or delete the topic"
                    )));
                }
            }
            if p.leader != Some(node) && isr == p.isr {
                continue;
            }
            let mut candidates = policy.eligible_leaders(&p.replicas, &isr, &views);
            if !new_disk && isr.contains(&node) {
                // Its durable log holds everything it acknowledged: it may lead again.
                candidates.push(node);
            }
            if p.leader == Some(node) {
                // A new epoch even when it leads again: its previous life may have served
                // records it had not made durable, which followers must truncate.
                out.push(change(key, p, candidates.first().copied(), isr, true));
            } else {
                out.push(change(key, p, p.leader, isr, false));
            }
        }
        Ok(out)
    }

    /// A heartbeat from `node`: refreshes its session. Answers whether this incarnation is
    /// fenced (it must register again).
    pub fn heartbeat(
        &mut self,
        state: &ClusterState,
        now_ms: u64,
        node: NodeId,
        epoch: BrokerEpoch,
        unreachable: &[NodeId],
    ) -> bool {
        let Some(b) = state.brokers.get(&node).filter(|b| b.epoch == epoch) else {
            return true;
        };
        if b.fenced && !state.fenced_sites.contains(&b.site) {
            return true;
        }
        self.liveness.insert(
            node,
            Liveness {
                epoch,
                storage_id: b.storage_id,
                last_heard_ms: now_ms,
                unreachable: unreachable.iter().copied().collect(),
            },
        );
        // A broker of a fenced site stays registered and keeps its lease only to learn when
        // its site is restored: it leads nothing (its broker record is fenced).
        false
    }

    /// What time alone decides: fences, site changes, leader elections. At most one kind of
    /// change per call, so that each is computed from the state after the previous applied.
    pub fn tick(&mut self, state: &ClusterState, now_ms: u64) -> Vec<MetadataRecord> {
        let Some(policy) = state.policy.clone() else {
            return vec![];
        };
        let fences = self.expired_sessions(state, now_ms);
        if !fences.is_empty() {
            return fences;
        }
        if let Some(r) = self.site_changes(state, &policy, now_ms) {
            return vec![r];
        }
        let elections = self.elections(state, &policy);
        if !elections.is_empty() {
            return elections;
        }
        self.completed_reassignments(state, &policy, now_ms)
    }

    /// Reassignments whose target replicas are all in sync now complete: the removed replicas
    /// leave (they delete their copies when they apply it), leadership moves into the target
    /// if it was outside, among in-sync replicas only. When replicas leave, only once the
    /// leader has led in its epoch for [`MOVE_SETTLE_MS`].
    fn completed_reassignments(
        &mut self,
        state: &ClusterState,
        policy: &SitePolicy,
        now_ms: u64,
    ) -> Vec<MetadataRecord> {
        self.led_since_ms
            .retain(|k, _| state.partition(*k).is_some_and(PartitionState::reassigning));
        let views = state.broker_views();
        let mut out = Vec::new();
        for (key, p) in state.partitions().filter(|(_, p)| p.reassigning()) {
            let since = self
                .led_since_ms
                .entry(key)
                .or_insert((p.leader_epoch, now_ms));
            if since.0 != p.leader_epoch {
                *since = (p.leader_epoch, now_ms);
            }
            let settled = p.removing.is_empty() || now_ms.saturating_sub(since.1) >= MOVE_SETTLE_MS;
            let target = p.target();
            if !settled || !target.iter().all(|n| p.isr.contains(n)) {
                continue;
            }
            let isr = target.clone();
            match replicas_changed(key, p, policy, &views, target, vec![], vec![], isr) {
                Ok(r) => out.push(r),
                Err(e) => tracing::debug!(%key, error = %e, "reassignment not completed yet"),
            }
        }
        out
    }

    fn expired_sessions(&self, state: &ClusterState, now_ms: u64) -> Vec<MetadataRecord> {
        state
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter(|b| {
                let last = self
                    .liveness
                    .get(&b.node)
                    .filter(|l| l.epoch == b.epoch)
                    .map_or(self.started_ms, |l| l.last_heard_ms);
                now_ms.saturating_sub(last) >= self.session_ms(b)
            })
            .map(|b| MetadataRecord::BrokerFenced {
                node: b.node,
                epoch: b.epoch,
            })
            .collect()
    }

    /// Live (heard from, current incarnation) brokers of `site`.
    fn live_in(&self, state: &ClusterState, site: &SiteId, now_ms: u64) -> Vec<NodeId> {
        state
            .brokers
            .values()
            .filter(|b| &b.site == site)
            .filter(|b| {
                self.liveness
                    .get(&b.node)
                    .is_some_and(|l| l.epoch == b.epoch)
            })
            .filter(|b| self.alive(b, now_ms))
            .map(|b| b.node)
            .collect()
    }

    fn site_changes(
        &mut self,
        state: &ClusterState,
        policy: &SitePolicy,
        now_ms: u64,
    ) -> Option<MetadataRecord> {
        for site in &policy.data_sites {
            let registered = state.brokers.values().any(|b| &b.site == site);
            let all_fenced = state
                .brokers
                .values()
                .filter(|b| &b.site == site)
                .all(|b| b.fenced);
            if registered && all_fenced && !state.fenced_sites.contains(site) {
                return Some(MetadataRecord::SiteFenced {
                    site: site.clone(),
                    reason: "every broker of the site is fenced".into(),
                });
            }
        }
        if let Some(r) = self.site_cut(state, policy, now_ms) {
            return Some(r);
        }
        for site in &state.fenced_sites {
            let live = self.live_in(state, site, now_ms);
            let others_fine = policy
                .data_sites
                .iter()
                .filter(|s| *s != site)
                .all(|other| {
                    !self.looks_cut(state, site, other, now_ms)
                        && !self.looks_cut(state, other, site, now_ms)
                });
            if !live.is_empty() && others_fine {
                let live = live
                    .into_iter()
                    .filter_map(|n| state.brokers.get(&n).map(|b| (n, b.epoch)))
                    .collect();
                return Some(MetadataRecord::SiteRestored {
                    site: site.clone(),
                    live,
                });
            }
        }
        None
    }

    /// Whether every live broker of `from` reports every live broker of `to` unreachable.
    fn looks_cut(&self, state: &ClusterState, from: &SiteId, to: &SiteId, now_ms: u64) -> bool {
        let senders = self.live_in(state, from, now_ms);
        let targets = self.live_in(state, to, now_ms);
        !senders.is_empty()
            && !targets.is_empty()
            && senders.iter().all(|s| {
                self.liveness
                    .get(s)
                    .is_some_and(|l| targets.iter().all(|t| l.unreachable.contains(t)))
            })
    }

    /// Two unfenced data sites that both reach the controller while one of them has not
    /// reached the other for `site_cut_timeout_ms`: fence the one that does not go on. One
    /// way is enough: followers of the site that cannot reach the other stop copying its
    /// leaders' writes, and acks=all waits for a copy in each site (a firewall that lets
    /// connections through only one way is a cut too).
    fn site_cut(
        &mut self,
        state: &ClusterState,
        policy: &SitePolicy,
        now_ms: u64,
    ) -> Option<MetadataRecord> {
        let sites: Vec<&SiteId> = policy
            .data_sites
            .iter()
            .filter(|s| !state.fenced_sites.contains(*s))
            .collect();
        for (i, a) in sites.iter().enumerate() {
            for b in &sites[i + 1..] {
                let key = ((*a).clone(), (*b).clone());
                let cut =
                    self.looks_cut(state, a, b, now_ms) || self.looks_cut(state, b, a, now_ms);
                if !cut {
                    self.cut_since_ms.remove(&key);
                    continue;
                }
                let since = *self.cut_since_ms.entry(key).or_insert(now_ms);
                if now_ms.saturating_sub(since) < self.timing.site_cut_timeout_ms {
                    continue;
                }
                let survivor = if policy.is_data_site(&self.own_site) {
                    &self.own_site
                } else {
                    &policy.preferred_site
                };
                let loser = if survivor == *a { *b } else { *a };
                return Some(MetadataRecord::SiteFenced {
                    site: loser.clone(),
                    reason: format!("cut off from site {survivor}, which goes on"),
                });
            }
        }
        None
    }

    /// Fenced brokers leave in-sync sets; partitions without a live leader get one.
    fn elections(&self, state: &ClusterState, policy: &SitePolicy) -> Vec<MetadataRecord> {
        let views = state.broker_views();
        let fenced = |n: &NodeId| views.get(n).is_none_or(|b| b.fenced);
        let mut out = Vec::new();
        for (key, p) in state.partitions() {
            let mut isr: Vec<NodeId> = p.isr.iter().copied().filter(|n| !fenced(n)).collect();
            if isr.is_empty() {
                // Keep the last in-sync set: one of them must come back to lead.
                isr = p.isr.clone();
            }
            let leader_ok = p.leader.is_some_and(|l| !fenced(&l));
            let leader = if leader_ok {
                p.leader
            } else {
                policy
                    .eligible_leaders(&p.replicas, &isr, &views)
                    .first()
                    .copied()
            };
            // The preferred (first) replica leads whenever it can, so that leadership
            // returns to a site that came back and load spreads over both sites.
            let preferred = p.replicas[0];
            let leader =
                if leader != Some(preferred) && isr.contains(&preferred) && !fenced(&preferred) {
                    Some(preferred)
                } else {
                    leader
                };
            if leader != p.leader || isr != p.isr {
                out.push(change(key, p, leader, isr, false));
            }
        }
        out
    }

    /// A broker stops on purpose: its incarnation is fenced now (the next tick elects new
    /// leaders for what it led, among the other in-sync replicas only, as after a crash).
    pub fn controlled_shutdown(
        &mut self,
        state: &ClusterState,
        node: NodeId,
        epoch: BrokerEpoch,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        live_incarnation(state, node, epoch)?;
        self.liveness.remove(&node);
        Ok(vec![MetadataRecord::BrokerFenced { node, epoch }])
    }

    /// A leader asks to change its partition's in-sync set.
    #[allow(clippy::too_many_arguments)]
    pub fn alter_isr(
        &self,
        state: &ClusterState,
        node: NodeId,
        epoch: BrokerEpoch,
        key: PartitionKey,
        leader_epoch: LeaderEpoch,
        partition_epoch: PartitionEpoch,
        isr: &[NodeId],
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let policy = state.policy.as_ref().ok_or(ControllerError::NotFormed)?;
        live_incarnation(state, node, epoch)?;
        let p = state.partition(key).ok_or(ControllerError::UnknownTopic)?;
        if p.leader != Some(node)
            || p.leader_epoch != leader_epoch
            || p.partition_epoch != partition_epoch
        {
            return Err(ControllerError::StaleChange(key));
        }
        let mut isr = isr.to_vec();
        isr.sort();
        isr.dedup();
        policy.check_isr_change(&p.replicas, p.leader, &p.isr, &isr, &state.broker_views())?;
        Ok(vec![change(key, p, p.leader, isr, false)])
    }

    /// Start moving partition `key` to `target` replicas (retargeting one in progress), or
    /// with `None` cancel the reassignment in progress. Nothing is copied here: the new
    /// replicas fetch from the leader as followers, and the tick completes the move once
    /// every target replica is in sync ([`Controller::completed_reassignments`]). Empty when the
    /// partition already has exactly these replicas.
    pub fn reassign(
        &self,
        state: &ClusterState,
        key: PartitionKey,
        target: Option<&[NodeId]>,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let policy = state.policy.as_ref().ok_or(ControllerError::NotFormed)?;
        let p = state.partition(key).ok_or(ControllerError::UnknownTopic)?;
        let views = state.broker_views();
        let original = p.original();
        let (replicas, adding, removing) = match target {
            None if !p.reassigning() => return Err(ControllerError::NoReassignment(key)),
            None => (original, vec![], vec![]),
            Some(target) => {
                policy.check_assignment(target, REPLICAS_MAX / 2, &views)?;
                let removing: Vec<NodeId> = original
                    .iter()
                    .filter(|n| !target.contains(n))
                    .copied()
                    .collect();
                let adding: Vec<NodeId> = target
                    .iter()
                    .filter(|n| !original.contains(n))
                    .copied()
                    .collect();
                let replicas = [target, &removing].concat();
                (replicas, adding, removing)
            }
        };
        if replicas == p.replicas && adding == p.adding && removing == p.removing {
            return Ok(vec![]);
        }
        let isr: Vec<NodeId> = p
            .isr
            .iter()
            .filter(|n| replicas.contains(n))
            .copied()
            .collect();
        let record = replicas_changed(key, p, policy, &views, replicas, adding, removing, isr)?;
        Ok(vec![record])
    }

    /// A topic with replicas placed by the site policy over the unfenced brokers.
    pub fn create_topic(
        &self,
        state: &ClusterState,
        id: Uuid,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: &BTreeMap<String, String>,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let policy = state.policy.as_ref().ok_or(ControllerError::NotFormed)?;
        if state.topic_by_name(name).is_some() {
            return Err(ControllerError::TopicExists(name.to_string()));
        }
        let assignment = self.place(state, policy, id, 0..partitions, replication_factor)?;
        Ok(vec![MetadataRecord::TopicCreated {
            name: name.to_string(),
            id,
            configs: configs.clone(),
            assignment,
        }])
    }

    pub fn create_partitions(
        &self,
        state: &ClusterState,
        topic: Uuid,
        count: u32,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let policy = state.policy.as_ref().ok_or(ControllerError::NotFormed)?;
        let t = state
            .topics
            .get(&topic)
            .ok_or(ControllerError::UnknownTopic)?;
        let have = t.partitions.len() as u32;
        if count <= have {
            return Err(ControllerError::Invalid(format!(
                "topic has {have} partitions, {count} would not be an increase"
            )));
        }
        let rf = t.replication_factor() as u16;
        let assignment = self.place(state, policy, topic, have..count, rf)?;
        Ok(vec![MetadataRecord::PartitionsCreated {
            topic,
            assignment,
        }])
    }

    fn place(
        &self,
        state: &ClusterState,
        policy: &SitePolicy,
        topic: Uuid,
        indexes: std::ops::Range<u32>,
        rf: u16,
    ) -> Result<Vec<Vec<NodeId>>, ControllerError> {
        let views = state.broker_views();
        let seed = topic.as_u128() as u32;
        indexes
            .map(|i| {
                policy
                    .place(rf as usize, i, seed, &views)
                    .map_err(ControllerError::from)
            })
            .collect()
    }

    pub fn allocate_producer_ids(
        &self,
        state: &ClusterState,
        node: NodeId,
        epoch: BrokerEpoch,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        state
            .brokers
            .get(&node)
            .filter(|b| b.epoch == epoch)
            .ok_or(ControllerError::StaleBroker(node))?;
        Ok(vec![MetadataRecord::ProducerIdsAllocated {
            node,
            first: state.next_producer_id,
            count: PRODUCER_ID_BLOCK,
        }])
    }

    /// Forget a node's liveness (after it was removed).
    pub fn forget(&mut self, node: NodeId) {
        self.liveness.remove(&node);
    }

    /// Whether a node's storage id is the one the controller last heard with.
    pub fn storage_of(&self, node: NodeId) -> Option<Uuid> {
        self.liveness.get(&node).map(|l| l.storage_id)
    }
}

/// A [`MetadataRecord::PartitionChanged`] from `p` to `leader` and `isr`: a new leader (or
/// `bump`) gets the next epoch.
/// `node`'s registration in `state` if it is incarnation `epoch` and not fenced.
fn live_incarnation(
    state: &ClusterState,
    node: NodeId,
    epoch: BrokerEpoch,
) -> Result<&crate::metadata::BrokerInfo, ControllerError> {
    state
        .brokers
        .get(&node)
        .filter(|b| b.epoch == epoch && !b.fenced)
        .ok_or(ControllerError::StaleBroker(node))
}

/// A [`MetadataRecord::ReplicasChanged`] from `p`, if the site policy allows its in-sync
/// set, with a leader among the new in-sync replicas (the current one when it stays).
#[allow(clippy::too_many_arguments)]
fn replicas_changed(
    key: PartitionKey,
    p: &PartitionState,
    policy: &SitePolicy,
    views: &BTreeMap<NodeId, crate::policy::BrokerView<'_>>,
    replicas: Vec<NodeId>,
    adding: Vec<NodeId>,
    removing: Vec<NodeId>,
    isr: Vec<NodeId>,
) -> Result<MetadataRecord, ControllerError> {
    if replicas.len() > REPLICAS_MAX {
        return Err(ControllerError::Invalid(format!(
            "the partition would have {} replicas during the move, at most {REPLICAS_MAX}",
            replicas.len()
        )));
    }
    let leader = match p.leader.filter(|l| isr.contains(l)) {
        Some(l) => Some(l),
        None => match policy.eligible_leaders(&replicas, &isr, views).first() {
            Some(l) => Some(*l),
            None => {
                return Err(ControllerError::Policy(
                    "no in-sync replica of the new set could lead: it would lose acknowledged \
                     writes"
                        .into(),
                ));
            }
        },
    };
    policy.check_isr_change(&replicas, leader, &p.isr, &isr, views)?;
    let leader_epoch = if leader != p.leader {
        p.leader_epoch.next()
    } else {
        p.leader_epoch
    };
    Ok(MetadataRecord::ReplicasChanged {
        partition: key,
        expected: p.partition_epoch,
        replicas,
        adding,
        removing,
        leader,
        leader_epoch,
        isr,
    })
}

fn change(
    key: PartitionKey,
    p: &PartitionState,
    leader: Option<NodeId>,
    isr: Vec<NodeId>,
    bump: bool,
) -> MetadataRecord {
    let leader_epoch = if bump || leader != p.leader {
        p.leader_epoch.next()
    } else {
        p.leader_epoch
    };
    MetadataRecord::PartitionChanged {
        partition: key,
        expected: p.partition_epoch,
        leader,
        leader_epoch,
        isr,
    }
}

#[cfg(test)]
mod tests;
