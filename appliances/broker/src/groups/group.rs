//! One consumer group under the classic rebalance protocol: a synchronous state machine with
//! explicit time (`now`), following Kafka's `ClassicGroup` rules. Requests that must wait (a
//! JoinGroup until the rebalance completes, a SyncGroup until the leader's assignment is
//! durable) are parked as oneshot senders inside the member and answered by later events.
//!
//! States: Empty -> PreparingRebalance -> CompletingRebalance -> Stable, and back to
//! PreparingRebalance whenever membership or subscriptions change.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

use super::store::{GroupRecord, StoredMember, StoredOffset};

const NONE: i16 = 0;

fn code(e: ResponseError) -> i16 {
    e.code()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka tools print.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Coordinator-wide group settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    pub max_size: usize,
}

#[derive(Debug, Clone)]
pub struct JoinParams {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: an unknown member first gets an id with MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    pub members: Vec<JoinedMember>,
    /// The leader should not compute a new assignment (static leader replaced, JoinGroup v9).
    pub skip_assignment: bool,
}

impl JoinResponse {
    pub fn error(error: i16, member_id: &str) -> Self {
        JoinResponse {
            error,
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncParams {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    pub fn error(error: i16) -> Self {
        SyncResponse {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

pub enum JoinOutcome {
    Ready(JoinResponse),
    Parked(oneshot::Receiver<JoinResponse>),
}

pub enum SyncOutcome {
    Ready(SyncResponse),
    Parked(oneshot::Receiver<SyncResponse>),
    /// The leader's assignment: persist `record`, then call [`Group::complete_sync`].
    Persist {
        reply: oneshot::Receiver<SyncResponse>,
        record: GroupRecord,
        generation: i32,
        assignments: HashMap<String, Bytes>,
    },
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinResponse>>,
    sync_waiter: Option<oneshot::Sender<SyncResponse>>,
    /// Session expiry, pushed forward by heartbeats and other requests.
    deadline: Instant,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    /// Awaiting members are answered by the rebalance, not expired by the session timer.
    fn is_awaiting(&self) -> bool {
        self.join_waiter.is_some() || self.sync_waiter.is_some()
    }
}

struct Rebalance {
    deadline: Instant,
    /// While set, an empty group waits for more members before completing the join.
    initial_delay_until: Option<Instant>,
    initial_delay_limit: Instant,
}

/// A group's description for DescribeGroups.
#[derive(Debug, Clone)]
pub struct DescribedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

pub struct Group {
    pub id: String,
    state: GroupState,
    protocol_type: Option<String>,
    protocol: Option<String>,
    generation: i32,
    leader: Option<String>,
    /// Insertion order matters: the first member becomes leader.
    members: IndexMap<String, Member>,
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their expiry.
    pending: HashMap<String, Instant>,
    rebalance: Option<Rebalance>,
    sync_deadline: Option<Instant>,
    pub offsets: HashMap<(String, i32), StoredOffset>,
    pub empty_since_ms: Option<i64>,
    /// The group became empty: its record should be persisted.
    pub needs_persist: bool,
}

fn wall_ms() -> i64 {
    crate::partition::now_ms()
}

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: IndexMap::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            rebalance: None,
            sync_deadline: None,
            offsets: HashMap::new(),
            empty_since_ms: Some(wall_ms()),
            needs_persist: false,
        }
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn mark_dead(&mut self) {
        self.state = GroupState::Dead;
    }

    /// Protocols every current member supports, in the first member's preference order.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut iter = self.members.values();
        let Some(first) = iter.next() else {
            return Vec::new();
        };
        let mut names: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in iter {
            names.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        names
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(n, _)| candidates.contains(n))
    }

    /// Each member votes for its most preferred candidate; the most voted wins.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<(String, usize)> = candidates.iter().map(|c| (c.clone(), 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n))
                && let Some(v) = votes.iter_mut().find(|(c, _)| c == name)
            {
                v.1 += 1;
            }
        }
        // max_by_key keeps the last maximum; scan in reverse to keep the first (preference).
        votes
            .into_iter()
            .rev()
            .max_by_key(|(_, n)| *n)
            .map(|(c, _)| c)
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60))
    }

    /// Kafka's `validateMember`: a static instance must be known and belong to this member id
    /// (else it was replaced: fenced); a dynamic member must be known.
    fn validate_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), i16> {
        match instance_id {
            Some(inst) => match self.static_members.get(inst) {
                None => Err(code(ResponseError::UnknownMemberId)),
                Some(m) if m != member_id => Err(code(ResponseError::FencedInstanceId)),
                Some(_) => Ok(()),
            },
            None if self.members.contains_key(member_id) => Ok(()),
            None => Err(code(ResponseError::UnknownMemberId)),
        }
    }

    fn current_join_response(&self, member_id: &str) -> JoinResponse {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinResponse {
            error: NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.member_list(&protocol)
            } else {
                Vec::new()
            },
            skip_assignment: false,
        }
    }

    fn member_list(&self, protocol: &str) -> Vec<JoinedMember> {
        self.members
            .iter()
            .map(|(id, m)| JoinedMember {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(protocol),
            })
            .collect()
    }

    pub fn join(
        &mut self,
        p: JoinParams,
        now: Instant,
        cfg: &GroupConfig,
        new_member_id: impl FnOnce() -> String,
    ) -> JoinOutcome {
        if self.state == GroupState::Dead {
            return JoinOutcome::Ready(JoinResponse::error(
                code(ResponseError::CoordinatorNotAvailable),
                &p.member_id,
            ));
        }
        if !self.supports(&p.protocol_type, &p.protocols) {
            return JoinOutcome::Ready(JoinResponse::error(
                code(ResponseError::InconsistentGroupProtocol),
                &p.member_id,
            ));
        }
        let is_new = p.member_id.is_empty() || self.pending.contains_key(&p.member_id);
        let known_static = p
            .instance_id
            .as_ref()
            .is_some_and(|i| self.static_members.contains_key(i));
        if is_new && !known_static && cfg.max_size > 0 && self.members.len() >= cfg.max_size {
            return JoinOutcome::Ready(JoinResponse::error(
                code(ResponseError::GroupMaxSizeReached),
                &p.member_id,
            ));
        }
        if p.member_id.is_empty() {
            if p.instance_id.is_some() {
                let id = new_member_id();
                return self.join_static(p, id, now, cfg);
            }
            let id = new_member_id();
            if p.require_known_member_id {
                self.pending.insert(id.clone(), now + p.session_timeout);
                return JoinOutcome::Ready(JoinResponse::error(
                    code(ResponseError::MemberIdRequired),
                    &id,
                ));
            }
            return self.add_member(id, p, now, cfg);
        }
        if self.pending.remove(&p.member_id).is_some() {
            let id = p.member_id.clone();
            return self.add_member(id, p, now, cfg);
        }
        if let Err(e) = self.validate_member(&p.member_id, p.instance_id.as_deref()) {
            return JoinOutcome::Ready(JoinResponse::error(e, &p.member_id));
        }
        let member_id = p.member_id.clone();
        let unchanged = self.members[&member_id].same_protocols(&p.protocols);
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        match self.state {
            GroupState::PreparingRebalance => self.rejoin(p, now, cfg),
            GroupState::CompletingRebalance if unchanged => {
                JoinOutcome::Ready(self.current_join_response(&member_id))
            }
            GroupState::Stable if unchanged && !is_leader => {
                self.touch(&member_id, now);
                JoinOutcome::Ready(self.current_join_response(&member_id))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                let out = self.park_join(p, now);
                self.prepare_rebalance(now, cfg);
                self.try_complete_join(now);
                out
            }
            GroupState::Empty | GroupState::Dead => JoinOutcome::Ready(JoinResponse::error(
                code(ResponseError::UnknownMemberId),
                &member_id,
            )),
        }
    }

    /// A static member joining without a member id: new, or replacing its old incarnation.
    fn join_static(
        &mut self,
        p: JoinParams,
        new_id: String,
        now: Instant,
        cfg: &GroupConfig,
    ) -> JoinOutcome {
        let instance = p
            .instance_id
            .clone()
            .expect("static join has an instance id");
        let Some(old_id) = self.static_members.get(&instance).cloned() else {
            return self.add_member(new_id, p, now, cfg);
        };
        // Fence the old incarnation and give its place (and assignment) to the new id.
        let mut old = self
            .members
            .shift_remove(&old_id)
            .expect("static member is a member");
        if let Some(tx) = old.join_waiter.take() {
            let _ = tx.send(JoinResponse::error(
                code(ResponseError::FencedInstanceId),
                &old_id,
            ));
        }
        if let Some(tx) = old.sync_waiter.take() {
            let _ = tx.send(SyncResponse::error(code(ResponseError::FencedInstanceId)));
        }
        let selected_still_supported = self
            .protocol
            .as_ref()
            .is_none_or(|sel| p.protocols.iter().any(|(n, _)| n == sel));
        let old_protocols = std::mem::replace(&mut old.protocols, p.protocols.clone());
        old.client_id = p.client_id.clone();
        old.client_host = p.client_host.clone();
        old.session_timeout = p.session_timeout;
        old.rebalance_timeout = p.rebalance_timeout;
        old.deadline = now + p.session_timeout;
        self.members.insert(new_id.clone(), old);
        self.static_members.insert(instance, new_id.clone());
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        match self.state {
            GroupState::Stable if selected_still_supported => {
                let is_leader = self.leader.as_deref() == Some(new_id.as_str());
                let mut resp = self.current_join_response(&new_id);
                resp.skip_assignment = is_leader;
                if is_leader {
                    let protocol = self.protocol.clone().unwrap_or_default();
                    resp.members = self.member_list(&protocol);
                }
                let _ = old_protocols;
                JoinOutcome::Ready(resp)
            }
            GroupState::PreparingRebalance => {
                let out = self.park_join_existing(&new_id);
                self.try_complete_join(now);
                out
            }
            _ => {
                let out = self.park_join_existing(&new_id);
                self.prepare_rebalance(now, cfg);
                self.try_complete_join(now);
                out
            }
        }
    }

    fn add_member(
        &mut self,
        id: String,
        p: JoinParams,
        now: Instant,
        cfg: &GroupConfig,
    ) -> JoinOutcome {
        if self.members.is_empty() {
            self.protocol_type = Some(p.protocol_type.clone());
        }
        if let Some(inst) = &p.instance_id {
            self.static_members.insert(inst.clone(), id.clone());
        }
        let (tx, rx) = oneshot::channel();
        self.members.insert(
            id,
            Member {
                instance_id: p.instance_id,
                client_id: p.client_id,
                client_host: p.client_host,
                session_timeout: p.session_timeout,
                rebalance_timeout: p.rebalance_timeout,
                protocols: p.protocols,
                assignment: Bytes::new(),
                join_waiter: Some(tx),
                sync_waiter: None,
                deadline: now + p.session_timeout,
            },
        );
        match self.state {
            GroupState::PreparingRebalance => {
                // A member joining during the initial delay extends it (up to its limit).
                if let Some(r) = &mut self.rebalance {
                    if r.initial_delay_until.is_some() {
                        r.initial_delay_until =
                            Some((now + cfg.initial_rebalance_delay).min(r.initial_delay_limit));
                    }
                    r.deadline = r.deadline.max(
                        now + self
                            .members
                            .values()
                            .map(|m| m.rebalance_timeout)
                            .max()
                            .unwrap_or_default(),
                    );
                }
            }
            _ => self.prepare_rebalance(now, cfg),
        }
        self.try_complete_join(now);
        JoinOutcome::Parked(rx)
    }

    fn rejoin(&mut self, p: JoinParams, now: Instant, _cfg: &GroupConfig) -> JoinOutcome {
        let out = self.park_join(p, now);
        self.try_complete_join(now);
        out
    }

    /// Update a known member from its JoinGroup and park the request.
    fn park_join(&mut self, p: JoinParams, now: Instant) -> JoinOutcome {
        let m = self.members.get_mut(&p.member_id).expect("known member");
        m.protocols = p.protocols;
        m.client_id = p.client_id;
        m.client_host = p.client_host;
        m.session_timeout = p.session_timeout;
        m.rebalance_timeout = p.rebalance_timeout;
        m.deadline = now + p.session_timeout;
        let id = p.member_id;
        self.park_join_existing(&id)
    }

    fn park_join_existing(&mut self, id: &str) -> JoinOutcome {
        let (tx, rx) = oneshot::channel();
        let m = self.members.get_mut(id).expect("known member");
        if let Some(old) = m.join_waiter.replace(tx) {
            // A second JoinGroup from the same member supersedes the first.
            let _ = old.send(JoinResponse::error(
                code(ResponseError::RebalanceInProgress),
                id,
            ));
        }
        JoinOutcome::Parked(rx)
    }

    fn touch(&mut self, member_id: &str, now: Instant) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.deadline = now + m.session_timeout;
        }
    }

    fn prepare_rebalance(&mut self, now: Instant, cfg: &GroupConfig) {
        if self.state == GroupState::CompletingRebalance {
            // The assignment being synced is obsolete.
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(tx) = m.sync_waiter.take() {
                    let _ = tx.send(SyncResponse::error(code(
                        ResponseError::RebalanceInProgress,
                    )));
                }
            }
        }
        let deadline = now + self.max_rebalance_timeout();
        let from_empty = self.state == GroupState::Empty;
        self.rebalance = Some(Rebalance {
            deadline,
            initial_delay_until: from_empty
                .then(|| (now + cfg.initial_rebalance_delay).min(deadline)),
            initial_delay_limit: deadline,
        });
        self.sync_deadline = None;
        self.state = GroupState::PreparingRebalance;
    }

    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let Some(r) = &self.rebalance else { return };
        if r.initial_delay_until.is_some_and(|until| now < until) && now < r.deadline {
            return;
        }
        let all_joined =
            self.pending.is_empty() && self.members.values().all(|m| m.join_waiter.is_some());
        if all_joined || now >= r.deadline {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        self.rebalance = None;
        // Dynamic members that did not rejoin are gone; static members keep their place.
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none() && m.instance_id.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.members.shift_remove(&id);
        }
        self.pending.retain(|_, deadline| *deadline > now);
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.empty_since_ms = Some(wall_ms());
            self.needs_persist = true;
            return;
        }
        self.empty_since_ms = None;
        self.protocol = self.select_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        self.sync_deadline = Some(now + self.max_rebalance_timeout());
        let protocol = self.protocol.clone().unwrap_or_default();
        let list = self.member_list(&protocol);
        let leader = self.leader.clone().unwrap_or_default();
        let (generation, protocol_type, protocol_name) = (
            self.generation,
            self.protocol_type.clone(),
            self.protocol.clone(),
        );
        for (id, m) in self.members.iter_mut() {
            m.deadline = now + m.session_timeout;
            if let Some(tx) = m.join_waiter.take() {
                let _ = tx.send(JoinResponse {
                    error: NONE,
                    generation,
                    protocol_type: protocol_type.clone(),
                    protocol_name: protocol_name.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        list.clone()
                    } else {
                        Vec::new()
                    },
                    skip_assignment: false,
                });
            }
        }
    }

    pub fn sync(&mut self, p: SyncParams, now: Instant) -> SyncOutcome {
        let ready = |e: ResponseError| SyncOutcome::Ready(SyncResponse::error(code(e)));
        if self.state == GroupState::Dead {
            return ready(ResponseError::CoordinatorNotAvailable);
        }
        if let Err(e) = self.validate_member(&p.member_id, p.instance_id.as_deref()) {
            return SyncOutcome::Ready(SyncResponse::error(e));
        }
        if p.generation != self.generation {
            return ready(ResponseError::IllegalGeneration);
        }
        let type_mismatch = p.protocol_type.is_some() && p.protocol_type != self.protocol_type;
        let name_mismatch = p.protocol_name.is_some() && p.protocol_name != self.protocol;
        if type_mismatch || name_mismatch {
            return ready(ResponseError::InconsistentGroupProtocol);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => ready(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => ready(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                self.touch(&p.member_id, now);
                SyncOutcome::Ready(self.sync_response(&p.member_id))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let m = self.members.get_mut(&p.member_id).expect("known member");
                m.deadline = now + m.session_timeout;
                if let Some(old) = m.sync_waiter.replace(tx) {
                    let _ = old.send(SyncResponse::error(code(
                        ResponseError::RebalanceInProgress,
                    )));
                }
                if self.leader.as_deref() != Some(p.member_id.as_str()) {
                    return SyncOutcome::Parked(rx);
                }
                let assignments: HashMap<String, Bytes> = p.assignments.into_iter().collect();
                let record = self.record_with(Some(&assignments));
                SyncOutcome::Persist {
                    reply: rx,
                    record,
                    generation: self.generation,
                    assignments,
                }
            }
        }
    }

    fn sync_response(&self, member_id: &str) -> SyncResponse {
        SyncResponse {
            error: NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// The leader's assignment was persisted (or not): answer every parked SyncGroup.
    pub fn complete_sync(
        &mut self,
        generation: i32,
        assignments: HashMap<String, Bytes>,
        persisted: bool,
        now: Instant,
        cfg: &GroupConfig,
    ) {
        if self.state != GroupState::CompletingRebalance || self.generation != generation {
            return;
        }
        if !persisted {
            for m in self.members.values_mut() {
                if let Some(tx) = m.sync_waiter.take() {
                    let _ = tx.send(SyncResponse::error(code(
                        ResponseError::CoordinatorNotAvailable,
                    )));
                }
            }
            self.prepare_rebalance(now, cfg);
            return;
        }
        for (id, m) in self.members.iter_mut() {
            m.assignment = assignments.get(id).cloned().unwrap_or_default();
        }
        self.state = GroupState::Stable;
        self.sync_deadline = None;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let resp = self.sync_response(&id);
            if let Some(tx) = self.members.get_mut(&id).and_then(|m| m.sync_waiter.take()) {
                let _ = tx.send(resp);
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        match self.state {
            GroupState::Dead => return code(ResponseError::CoordinatorNotAvailable),
            GroupState::Empty => return code(ResponseError::UnknownMemberId),
            _ => {}
        }
        if let Err(e) = self.validate_member(member_id, instance_id) {
            return e;
        }
        if generation != self.generation {
            return code(ResponseError::IllegalGeneration);
        }
        self.touch(member_id, now);
        if self.state == GroupState::PreparingRebalance {
            return code(ResponseError::RebalanceInProgress);
        }
        NONE
    }

    /// LeaveGroup for one member identity.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
        cfg: &GroupConfig,
    ) -> i16 {
        if self.state == GroupState::Dead {
            return code(ResponseError::CoordinatorNotAvailable);
        }
        let target = match instance_id {
            Some(inst) => match self.static_members.get(inst) {
                None => return code(ResponseError::UnknownMemberId),
                Some(found) if !member_id.is_empty() && member_id != found => {
                    return code(ResponseError::FencedInstanceId);
                }
                Some(found) => found.clone(),
            },
            None => {
                if self.pending.remove(member_id).is_some() {
                    return NONE;
                }
                if !self.members.contains_key(member_id) {
                    return code(ResponseError::UnknownMemberId);
                }
                member_id.to_string()
            }
        };
        self.remove_member(&target, now, cfg);
        NONE
    }

    fn remove_member(&mut self, id: &str, now: Instant, cfg: &GroupConfig) {
        let Some(mut m) = self.members.shift_remove(id) else {
            return;
        };
        if let Some(inst) = &m.instance_id
            && self.static_members.get(inst).is_some_and(|x| x == id)
        {
            self.static_members.remove(inst);
        }
        if let Some(tx) = m.join_waiter.take() {
            let _ = tx.send(JoinResponse::error(
                code(ResponseError::UnknownMemberId),
                id,
            ));
        }
        if let Some(tx) = m.sync_waiter.take() {
            let _ = tx.send(SyncResponse::error(code(ResponseError::UnknownMemberId)));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.keys().next().cloned();
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, cfg);
                self.try_complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Time passes: expire sessions and forgotten member ids, finish rebalances whose wait
    /// is over. Returns the ids of members removed by session expiry.
    pub fn tick(&mut self, now: Instant, cfg: &GroupConfig) -> Vec<String> {
        let before = self.pending.len();
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.is_awaiting() && m.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.remove_member(id, now, cfg);
        }
        if self.state == GroupState::CompletingRebalance
            && self.sync_deadline.is_some_and(|d| now >= d)
        {
            // Members that never sent SyncGroup are dropped; the rest rebalance again.
            let lagging: Vec<String> = self
                .members
                .iter()
                .filter(|(_, m)| m.sync_waiter.is_none())
                .map(|(id, _)| id.clone())
                .collect();
            for id in lagging {
                self.remove_member(&id, now, cfg);
            }
        }
        if before != self.pending.len() || self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now);
        }
        expired
    }

    /// OffsetCommit's membership check (Kafka's `validateOffsetCommit`).
    pub fn validate_commit(
        &mut self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Result<(), i16> {
        if self.state == GroupState::Dead {
            return Err(code(ResponseError::CoordinatorNotAvailable));
        }
        if generation < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            self.validate_member(member_id, instance_id)?;
            if generation != self.generation {
                return Err(code(ResponseError::IllegalGeneration));
            }
        } else if self.state != GroupState::Empty {
            return Err(code(ResponseError::UnknownMemberId));
        }
        if self.state == GroupState::CompletingRebalance {
            return Err(code(ResponseError::RebalanceInProgress));
        }
        self.touch(member_id, now);
        Ok(())
    }

    pub fn describe_members(&self) -> Vec<DescribedMember> {
        let protocol = self.protocol.clone().unwrap_or_default();
        self.members
            .iter()
            .map(|(id, m)| DescribedMember {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: m.metadata_for(&protocol),
                assignment: m.assignment.clone(),
            })
            .collect()
    }

    /// The group's membership record, with `assignments` if given (else the current ones).
    pub fn record_with(&self, assignments: Option<&HashMap<String, Bytes>>) -> GroupRecord {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupRecord::Group {
            group: self.id.clone(),
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            generation: self.generation,
            leader: self.leader.clone(),
            members: self
                .members
                .iter()
                .map(|(id, m)| StoredMember {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    subscription: m.metadata_for(&protocol),
                    assignment: match assignments {
                        Some(a) => a.get(id).cloned().unwrap_or_default(),
                        None => m.assignment.clone(),
                    },
                })
                .collect(),
            empty_since_ms: self.empty_since_ms,
        }
    }

    /// Restore membership from a persisted record (at start-up): a group that was stable is
    /// stable again, with fresh session deadlines.
    pub fn restore(&mut self, record: &GroupRecord, now: Instant) {
        let GroupRecord::Group {
            protocol_type,
            protocol,
            generation,
            leader,
            members,
            empty_since_ms,
            ..
        } = record
        else {
            return;
        };
        self.protocol_type = protocol_type.clone();
        self.protocol = protocol.clone();
        self.generation = *generation;
        self.leader = leader.clone();
        self.empty_since_ms = *empty_since_ms;
        self.members.clear();
        self.static_members.clear();
        for m in members {
            if let Some(inst) = &m.instance_id {
                self.static_members
                    .insert(inst.clone(), m.member_id.clone());
            }
            let session_timeout = Duration::from_millis(m.session_timeout_ms);
            self.members.insert(
                m.member_id.clone(),
                Member {
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout,
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                    protocols: vec![(protocol.clone().unwrap_or_default(), m.subscription.clone())],
                    assignment: m.assignment.clone(),
                    join_waiter: None,
                    sync_waiter: None,
                    deadline: now + session_timeout,
                },
            );
        }
        self.state = if self.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GroupConfig {
        GroupConfig {
            initial_rebalance_delay: Duration::from_secs(3),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(1800),
            max_size: 0,
        }
    }

    fn params(member_id: &str, protocols: &[&str]) -> JoinParams {
        JoinParams {
            member_id: member_id.into(),
            instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
                .collect(),
            require_known_member_id: true,
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("m{n}")
        }
    }

    fn parked(o: JoinOutcome) -> oneshot::Receiver<JoinResponse> {
        match o {
            JoinOutcome::Parked(rx) => rx,
            JoinOutcome::Ready(r) => panic!("expected parked join, got {r:?}"),
        }
    }

    fn ready(o: JoinOutcome) -> JoinResponse {
        match o {
            JoinOutcome::Ready(r) => r,
            JoinOutcome::Parked(_) => panic!("expected an immediate answer"),
        }
    }

    /// Two members join an empty group; returns their member ids (leader first).
    fn two_member_group(
        g: &mut Group,
        t0: Instant,
        next: &mut impl FnMut() -> String,
    ) -> (String, String) {
        let c = cfg();
        let r = ready(g.join(params("", &["range"]), t0, &c, &mut *next));
        assert_eq!(r.error, ResponseError::MemberIdRequired.code());
        let a = r.member_id;
        let mut rx_a = parked(g.join(params(&a, &["range", "roundrobin"]), t0, &c, &mut *next));
        let b = ready(g.join(params("", &["roundrobin", "range"]), t0, &c, &mut *next)).member_id;
        let mut rx_b = parked(g.join(params(&b, &["roundrobin", "range"]), t0, &c, &mut *next));
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        g.tick(t0 + Duration::from_secs(1), &c);
        assert!(
            rx_a.try_recv().is_err(),
            "initial delay holds the first join"
        );
        g.tick(t0 + Duration::from_secs(4), &c);
        let ra = rx_a.try_recv().unwrap();
        let rb = rx_b.try_recv().unwrap();
        assert_eq!((ra.generation, rb.generation), (1, 1));
        assert_eq!(ra.leader, a);
        assert_eq!(ra.members.len(), 2);
        assert!(rb.members.is_empty());
        assert_eq!(g.state(), GroupState::CompletingRebalance);
        (a, b)
    }

    fn sync_all(g: &mut Group, leader: &str, follower: &str, now: Instant) {
        let c = cfg();
        let generation = g.generation();
        let sp = |m: &str, a: Vec<(String, Bytes)>| SyncParams {
            member_id: m.into(),
            instance_id: None,
            generation,
            protocol_type: None,
            protocol_name: None,
            assignments: a,
        };
        let follower_rx = match g.sync(sp(follower, vec![]), now) {
            SyncOutcome::Parked(rx) => rx,
            _ => panic!("follower waits for the leader"),
        };
        let assignments = vec![
            (leader.to_string(), Bytes::from("A")),
            (follower.to_string(), Bytes::from("B")),
        ];
        let SyncOutcome::Persist {
            mut reply,
            generation,
            assignments,
            ..
        } = g.sync(sp(leader, assignments), now)
        else {
            panic!("leader's sync persists");
        };
        g.complete_sync(generation, assignments, true, now, &c);
        assert_eq!(reply.try_recv().unwrap().assignment, Bytes::from("A"));
        let mut follower_rx = follower_rx;
        assert_eq!(follower_rx.try_recv().unwrap().assignment, Bytes::from("B"));
        assert_eq!(g.state(), GroupState::Stable);
    }

    #[test]
    fn join_sync_heartbeat_cycle() {
        let mut g = Group::new("g");
        let t0 = Instant::now();
        let mut next = ids();
        let (a, b) = two_member_group(&mut g, t0, &mut next);
        // "range" is first for a and second for b; "roundrobin" the reverse: tie -> leader's order.
        assert_eq!(g.protocol(), Some("range"));
        sync_all(&mut g, &a, &b, t0 + Duration::from_secs(5));
        assert_eq!(g.heartbeat(&b, None, 1, t0 + Duration::from_secs(6)), 0);
        assert_eq!(
            g.heartbeat(&b, None, 0, t0),
            ResponseError::IllegalGeneration.code()
        );
        assert_eq!(
            g.heartbeat("nobody", None, 1, t0),
            ResponseError::UnknownMemberId.code()
        );
    }

    #[test]
    fn leave_triggers_rebalance_and_survivor_rejoins() {
        let c = cfg();
        let mut g = Group::new("g");
        let t0 = Instant::now();
        let mut next = ids();
        let (a, b) = two_member_group(&mut g, t0, &mut next);
        sync_all(&mut g, &a, &b, t0 + Duration::from_secs(5));
        let t = t0 + Duration::from_secs(6);
        assert_eq!(g.leave(&a, None, t, &c), 0);
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        assert_eq!(
            g.heartbeat(&b, None, 1, t),
            ResponseError::RebalanceInProgress.code()
        );
        let mut rx = parked(g.join(params(&b, &["roundrobin", "range"]), t, &c, &mut next));
        let r = rx
            .try_recv()
            .expect("the only member rejoined: no initial delay for a non-empty group");
        assert_eq!((r.generation, r.leader.as_str()), (2, b.as_str()));
        assert_eq!(g.protocol(), Some("roundrobin"));
    }

    #[test]
    fn session_expiry_removes_a_silent_member() {
        let c = cfg();
        let mut g = Group::new("g");
        let t0 = Instant::now();
        let mut next = ids();
        let (a, b) = two_member_group(&mut g, t0, &mut next);
        sync_all(&mut g, &a, &b, t0 + Duration::from_secs(5));
        // a keeps heartbeating, b goes silent.
        for s in [8, 12, 14] {
            g.heartbeat(&a, None, 1, t0 + Duration::from_secs(s));
        }
        let expired = g.tick(t0 + Duration::from_secs(16), &c);
        assert_eq!(expired, vec![b.clone()]);
        assert_eq!(g.state(), GroupState::PreparingRebalance);
    }

    #[test]
    fn static_member_replaced_without_rebalance() {
        let c = cfg();
        let mut g = Group::new("g");
        let t0 = Instant::now();
        let mut next = ids();
        let mut p = params("", &["range"]);
        p.instance_id = Some("node-1".into());
        let mut rx = parked(g.join(p.clone(), t0, &c, &mut next));
        g.tick(t0 + Duration::from_secs(4), &c);
        let first = rx.try_recv().unwrap();
        let SyncOutcome::Persist {
            generation,
            assignments,
            ..
        } = g.sync(
            SyncParams {
                member_id: first.member_id.clone(),
                instance_id: Some("node-1".into()),
                generation: 1,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![(first.member_id.clone(), Bytes::from("X"))],
            },
            t0 + Duration::from_secs(4),
        )
        else {
            panic!()
        };
        g.complete_sync(generation, assignments, true, t0, &c);
        // The same instance restarts: new member id, same generation, old id fenced.
        let r = ready(g.join(p, t0 + Duration::from_secs(5), &c, &mut next));
        assert_eq!((r.error, r.generation), (0, 1));
        assert_ne!(r.member_id, first.member_id);
        assert_eq!(g.state(), GroupState::Stable);
        assert_eq!(
            g.heartbeat(&first.member_id, Some("node-1"), 1, t0),
            ResponseError::FencedInstanceId.code()
        );
    }

    #[test]
    fn commits_follow_kafka_rules() {
        let mut g = Group::new("g");
        let t0 = Instant::now();
        assert!(
            g.validate_commit(-1, "", None, t0).is_ok(),
            "admin commit to an empty group"
        );
        let mut next = ids();
        let (a, b) = two_member_group(&mut g, t0, &mut next);
        assert_eq!(
            g.validate_commit(1, &a, None, t0),
            Err(ResponseError::RebalanceInProgress.code())
        );
        sync_all(&mut g, &a, &b, t0);
        assert!(g.validate_commit(1, &a, None, t0).is_ok());
        assert_eq!(
            g.validate_commit(0, &a, None, t0),
            Err(ResponseError::IllegalGeneration.code())
        );
        assert_eq!(
            g.validate_commit(-1, "", None, t0),
            Err(ResponseError::UnknownMemberId.code())
        );
    }

    #[test]
    fn inconsistent_protocols_are_refused() {
        let c = cfg();
        let mut g = Group::new("g");
        let t0 = Instant::now();
        let mut next = ids();
        two_member_group(&mut g, t0, &mut next);
        let r = ready(g.join(params("", &["sticky-only"]), t0, &c, &mut next));
        assert_eq!(r.error, ResponseError::InconsistentGroupProtocol.code());
    }

    #[test]
    fn restore_keeps_a_stable_group_stable() {
        let mut g = Group::new("g");
        let t0 = Instant::now();
        let mut next = ids();
        let (a, b) = two_member_group(&mut g, t0, &mut next);
        sync_all(&mut g, &a, &b, t0);
        let record = g.record_with(None);
        let mut restored = Group::new("g");
        restored.restore(&record, t0);
        assert_eq!(restored.state(), GroupState::Stable);
        assert_eq!(restored.heartbeat(&b, None, 1, t0), 0);
        let s = restored.sync(
            SyncParams {
                member_id: b.clone(),
                instance_id: None,
                generation: 1,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![],
            },
            t0,
        );
        match s {
            SyncOutcome::Ready(r) => assert_eq!(r.assignment, Bytes::from("B")),
            _ => panic!(),
        }
    }
}
