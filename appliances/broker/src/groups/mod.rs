//! The group coordinator: consumer groups (classic protocol) and their committed offsets.
//!
//! - [`group::Group`] is the state machine of one group; this module owns the groups, parks
//!   and wakes requests, and runs a ticker for session expiry and rebalance deadlines.
//! - A group lives in partition `hash(group) % n` of the `__consumer_offsets` topic, and its
//!   coordinator is whichever broker leads that partition: this broker loads a partition's
//!   groups when it starts leading it (replaying the log; requests meanwhile get
//!   COORDINATOR_LOAD_IN_PROGRESS) and drops them when it stops (NOT_COORDINATOR: clients
//!   find the new coordinator).
//! - Everything durable (offsets, group membership after a rebalance, deletions) goes through
//!   one writer task per led partition. A writer takes every record queued, appends them as
//!   one batch, waits until it is committed (on disk on every in-sync replica), and only then
//!   applies offsets to memory and answers: an OffsetFetch never sees an offset a crash or a
//!   failover could take back, and concurrent commits share one replication round.

pub mod group;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::internal_log::InternalLog;
use crate::metrics::Metrics;
use crate::partition::{Partition, now_ms};
use crate::replica_manager::{Leadership, OFFSETS_TOPIC};
use group::{
    Group, GroupConfig, GroupState, JoinOutcome, JoinParams, JoinResponse, SyncOutcome, SyncParams,
    SyncResponse,
};
use store::{GroupRecord, StoredOffset, partition_for};

/// A group's committed offsets by topic and partition (`None`: nothing committed).
pub type CommittedOffsets = Vec<(String, Vec<(i32, Option<StoredOffset>)>)>;

/// Kafka's `offset.metadata.max.bytes`.
pub const MAX_OFFSET_METADATA: usize = 4096;
/// Compact an offsets partition when it grows past this.
const COMPACT_AFTER_BYTES: u64 = 64 << 20;
const TICK: Duration = Duration::from_millis(100);

pub struct Settings {
    pub group: GroupConfig,
    pub offsets_retention: Duration,
}

type SharedGroup = Arc<Mutex<Group>>;

struct WriteRequest {
    records: Vec<GroupRecord>,
    done: oneshot::Sender<Result<(), String>>,
}

/// An offsets partition as this coordinator holds it.
enum Slot {
    NotLeading,
    Loading,
    Ready(mpsc::Sender<WriteRequest>),
}

/// Offsets partitions a coordinator can hold (the configuration's upper bound).
const MAX_OFFSETS_PARTITIONS: usize = 1024;

struct Inner {
    groups: Mutex<HashMap<String, SharedGroup>>,
    slots: Vec<Mutex<Slot>>,
    cluster: Arc<Cluster>,
    /// The partition count to create the offsets topic with; once it exists, its actual
    /// count decides where a group lives.
    configured: i32,
    settings: Settings,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct GroupCoordinator {
    inner: Arc<Inner>,
}

/// One committed offset to store.
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<group::DescribedMember>,
}

fn apply_record(groups: &mut HashMap<String, SharedGroup>, record: &GroupRecord, now: Instant) {
    let entry = |groups: &mut HashMap<String, SharedGroup>, id: &str| {
        Arc::clone(
            groups
                .entry(id.to_string())
                .or_insert_with(|| Arc::new(Mutex::new(Group::new(id)))),
        )
    };
    match record {
        GroupRecord::Offset {
            group,
            topic,
            partition,
            value,
        } => {
            entry(groups, group)
                .lock()
                .offsets
                .insert((topic.clone(), *partition), value.clone());
        }
        GroupRecord::OffsetDeleted {
            group,
            topic,
            partition,
        } => {
            if let Some(g) = groups.get(group) {
                g.lock().offsets.remove(&(topic.clone(), *partition));
            }
        }
        GroupRecord::Group { group, .. } => entry(groups, group).lock().restore(record, now),
        GroupRecord::GroupDeleted { group } => {
            if let Some(g) = groups.remove(group) {
                g.lock().mark_dead();
            }
        }
    }
}

impl GroupCoordinator {
    /// A coordinator of `partitions` offsets partitions, none led yet: [`Self::follow`]
    /// loads and drops them as leadership comes and goes.
    pub fn new(
        cluster: Arc<Cluster>,
        partitions: i32,
        settings: Settings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> GroupCoordinator {
        let coordinator = GroupCoordinator {
            inner: Arc::new(Inner {
                groups: Mutex::new(HashMap::new()),
                slots: (0..MAX_OFFSETS_PARTITIONS)
                    .map(|_| Mutex::new(Slot::NotLeading))
                    .collect(),
                cluster,
                configured: partitions,
                settings,
                metrics,
            }),
        };
        tokio::spawn(coordinator.clone().ticker(shutdown));
        coordinator
    }

    /// Load or drop offsets partitions as this broker starts or stops leading them.
    pub async fn follow(self, mut events: mpsc::Receiver<Leadership>) {
        while let Some(event) = events.recv().await {
            match event {
                Leadership::Leading(p) => self.load(p).await,
                Leadership::NotLeading(index) => self.unload(index),
            }
        }
    }

    /// How many partitions the offsets topic has (where groups live).
    fn partitions(&self) -> i32 {
        self.inner
            .cluster
            .state()
            .topic_by_name(OFFSETS_TOPIC)
            .map_or(self.inner.configured, |t| t.partitions.len() as i32)
    }

    fn slot(&self, index: i32) -> Option<&Mutex<Slot>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.inner.slots.get(i))
    }

    async fn load(&self, partition: Arc<Partition>) {
        let index = partition.index;
        let Some(slot) = self.slot(index) else {
            tracing::warn!(
                partition = index,
                "offsets partition beyond the configured count"
            );
            return;
        };
        *slot.lock() = Slot::Loading;
        let store = InternalLog::<GroupRecord>::new(Arc::clone(&partition));
        let records = match store.replay().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(partition = index, error = %e, "loading consumer groups failed");
                *slot.lock() = Slot::NotLeading;
                return;
            }
        };
        let now = Instant::now();
        {
            let mut groups = self.inner.groups.lock();
            for record in &records {
                apply_record(&mut groups, record, now);
            }
            self.inner.metrics.groups.set(groups.len() as i64);
        }
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(self.clone().writer(index, store, rx));
        *slot.lock() = Slot::Ready(tx);
        tracing::info!(
            partition = index,
            records = records.len(),
            "coordinating the groups of an offsets partition"
        );
    }

    fn unload(&self, index: i32) {
        let Some(slot) = self.slot(index) else { return };
        let was = std::mem::replace(&mut *slot.lock(), Slot::NotLeading);
        if matches!(was, Slot::NotLeading) {
            return;
        }
        let n = self.partitions();
        let mut groups = self.inner.groups.lock();
        groups.retain(|id, _| partition_for(id, n) != index);
        self.inner.metrics.groups.set(groups.len() as i64);
        tracing::info!(
            partition = index,
            "no longer coordinating the groups of an offsets partition"
        );
    }

    /// Whether this broker coordinates `group` now: NOT_COORDINATOR (the client looks the
    /// coordinator up again) or COORDINATOR_LOAD_IN_PROGRESS (it retries).
    pub fn check(&self, group: &str) -> Result<(), i16> {
        let n = self.partitions();
        match self
            .slot(partition_for(group, n))
            .map(|s| matches!(&*s.lock(), Slot::Ready(_)))
        {
            Some(true) => Ok(()),
            _ if self.loading(group) => Err(ResponseError::CoordinatorLoadInProgress.code()),
            _ => Err(ResponseError::NotCoordinator.code()),
        }
    }

    fn loading(&self, group: &str) -> bool {
        let n = self.partitions();
        self.slot(partition_for(group, n))
            .is_some_and(|s| matches!(&*s.lock(), Slot::Loading))
    }

    /// The offsets partition of `group` (for FindCoordinator).
    pub fn partition_of(&self, group: &str) -> i32 {
        partition_for(group, self.partitions())
    }

    fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn group(&self, id: &str) -> Option<SharedGroup> {
        self.inner.groups.lock().get(id).cloned()
    }

    fn group_or_create(&self, id: &str) -> SharedGroup {
        let mut groups = self.inner.groups.lock();
        let g = Arc::clone(
            groups
                .entry(id.to_string())
                .or_insert_with(|| Arc::new(Mutex::new(Group::new(id)))),
        );
        self.inner.metrics.groups.set(groups.len() as i64);
        g
    }

    /// Make `records` (all of one group) durable through that group's writer.
    async fn persist(&self, group: &str, records: Vec<GroupRecord>) -> Result<(), String> {
        let index = partition_for(group, self.partitions());
        let writer = match self.slot(index).map(|s| match &*s.lock() {
            Slot::Ready(w) => Some(w.clone()),
            _ => None,
        }) {
            Some(Some(w)) => w,
            _ => return Err("this broker no longer coordinates the group".into()),
        };
        let (done, rx) = oneshot::channel();
        writer
            .send(WriteRequest { records, done })
            .await
            .map_err(|_| "the group coordinator is shutting down".to_string())?;
        rx.await
            .map_err(|_| "the offsets writer stopped".to_string())?
    }

    /// One offsets partition's writer: batch, append, fsync, apply, answer.
    async fn writer(
        self,
        index: i32,
        store: InternalLog<GroupRecord>,
        mut rx: mpsc::Receiver<WriteRequest>,
    ) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let records: Vec<GroupRecord> = batch
                .iter()
                .flat_map(|r| r.records.iter().cloned())
                .collect();
            let result = store
                .append(&records)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            if result.is_ok() {
                let now = Instant::now();
                let mut groups = self.inner.groups.lock();
                for r in records.iter().filter(|r| {
                    matches!(
                        r,
                        GroupRecord::Offset { .. } | GroupRecord::OffsetDeleted { .. }
                    )
                }) {
                    apply_record(&mut groups, r, now);
                }
            } else if let Err(e) = &result {
                tracing::error!(partition = index, error = %e, "persisting group records failed");
            }
            for req in batch {
                let _ = req.done.send(result.clone());
            }
            if result.is_ok() && store.size_bytes().await.unwrap_or(0) > COMPACT_AFTER_BYTES {
                let snapshot = self.snapshot_of_partition(index);
                if let Err(e) = store.compact(&snapshot).await {
                    tracing::warn!(partition = index, error = %e, "compacting group records failed");
                }
            }
        }
    }

    /// The complete state of the groups stored in offsets partition `index`.
    fn snapshot_of_partition(&self, index: i32) -> Vec<GroupRecord> {
        let n = self.partitions();
        let groups: Vec<SharedGroup> = self
            .inner
            .groups
            .lock()
            .iter()
            .filter(|(id, _)| partition_for(id, n) == index)
            .map(|(_, g)| Arc::clone(g))
            .collect();
        let mut out = Vec::new();
        for g in groups {
            let g = g.lock();
            out.push(g.record_with(None));
            for ((topic, partition), value) in &g.offsets {
                out.push(GroupRecord::Offset {
                    group: g.id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: value.clone(),
                });
            }
        }
        out
    }

    async fn ticker(self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_expiry = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let now = Instant::now();
            let groups: Vec<SharedGroup> = self.inner.groups.lock().values().cloned().collect();
            for g in groups {
                let due = {
                    let mut g = g.lock();
                    let before = g.generation();
                    let expired = g.tick(now, &self.settings().group);
                    for m in expired {
                        tracing::info!(group = %g.id, member = %m, "member session expired");
                    }
                    if g.generation() != before {
                        self.inner.metrics.rebalances.inc();
                    }
                    g.needs_persist
                };
                if due {
                    let me = self.clone();
                    tokio::spawn(async move { me.persist_if_needed(&g).await });
                }
            }
            if now.duration_since(last_expiry) > Duration::from_secs(60) {
                last_expiry = now;
                self.expire_offsets().await;
            }
        }
    }

    /// Delete empty groups whose offsets outlived `offsets_retention`.
    async fn expire_offsets(&self) {
        let retention = self.settings().offsets_retention.as_millis() as i64;
        let now = now_ms();
        let expired: Vec<String> = self
            .inner
            .groups
            .lock()
            .iter()
            .filter(|(_, g)| {
                let g = g.lock();
                g.state() == GroupState::Empty
                    && g.empty_since_ms.is_some_and(|t| now - t > retention)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %id, "offsets expired: deleting empty group");
            let _ = self.delete(&id).await;
        }
    }

    pub async fn join(&self, group_id: &str, p: JoinParams) -> JoinResponse {
        let cfg = &self.settings().group;
        if group_id.is_empty() {
            return JoinResponse::error(ResponseError::InvalidGroupId.code(), &p.member_id);
        }
        if let Err(code) = self.check(group_id) {
            return JoinResponse::error(code, &p.member_id);
        }
        if p.session_timeout < cfg.min_session_timeout
            || p.session_timeout > cfg.max_session_timeout
        {
            return JoinResponse::error(ResponseError::InvalidSessionTimeout.code(), &p.member_id);
        }
        let client_id = p.client_id.clone();
        let outcome = {
            let g = self.group_or_create(group_id);
            let mut g = g.lock();
            g.join(p, Instant::now(), cfg, || {
                format!("{client_id}-{}", uuid::Uuid::new_v4())
            })
        };
        let response = match outcome {
            JoinOutcome::Ready(r) => r,
            JoinOutcome::Parked(rx) => rx.await.unwrap_or_else(|_| {
                JoinResponse::error(ResponseError::RebalanceInProgress.code(), "")
            }),
        };
        if response.error == 0 {
            tracing::debug!(group = group_id, member = %response.member_id, generation = response.generation, "joined");
        }
        response
    }

    pub async fn sync(&self, group_id: &str, p: SyncParams) -> SyncResponse {
        if let Err(code) = self.check(group_id) {
            return SyncResponse::error(code);
        }
        let Some(g) = self.group(group_id) else {
            return SyncResponse::error(ResponseError::UnknownMemberId.code());
        };
        let outcome = g.lock().sync(p, Instant::now());
        match outcome {
            SyncOutcome::Ready(r) => r,
            SyncOutcome::Parked(rx) => rx
                .await
                .unwrap_or_else(|_| SyncResponse::error(ResponseError::RebalanceInProgress.code())),
            SyncOutcome::Persist {
                reply,
                record,
                generation,
                assignments,
            } => {
                let persisted = self.persist(group_id, vec![record]).await;
                if let Err(e) = &persisted {
                    tracing::warn!(group = group_id, error = %e, "could not persist the group assignment");
                }
                g.lock().complete_sync(
                    generation,
                    assignments,
                    persisted.is_ok(),
                    Instant::now(),
                    &self.settings().group,
                );
                self.inner.metrics.rebalances.inc();
                reply.await.unwrap_or_else(|_| {
                    SyncResponse::error(ResponseError::RebalanceInProgress.code())
                })
            }
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if let Err(code) = self.check(group_id) {
            return code;
        }
        match self.group(group_id) {
            Some(g) => g
                .lock()
                .heartbeat(member_id, instance_id, generation, Instant::now()),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// LeaveGroup for each `(member_id, instance_id)`; per-member error codes. If the group
    /// became empty, that is durable before the answer (a restart must not resurrect members).
    pub async fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        if let Err(code) = self.check(group_id) {
            return vec![code; members.len()];
        }
        let Some(g) = self.group(group_id) else {
            return vec![ResponseError::UnknownMemberId.code(); members.len()];
        };
        let codes = {
            let mut g = g.lock();
            members
                .iter()
                .map(|(m, i)| g.leave(m, i.as_deref(), Instant::now(), &self.settings().group))
                .collect()
        };
        self.persist_if_needed(&g).await;
        codes
    }

    /// Persist a group whose membership record is due (it became empty).
    async fn persist_if_needed(&self, g: &SharedGroup) {
        let due = {
            let mut g = g.lock();
            std::mem::take(&mut g.needs_persist).then(|| (g.id.clone(), g.record_with(None)))
        };
        if let Some((id, record)) = due
            && let Err(e) = self.persist(&id, vec![record]).await
        {
            tracing::warn!(group = %id, error = %e, "persisting the group failed");
            g.lock().needs_persist = true;
        }
    }

    /// OffsetCommit: check membership, then store every offset durably. A request-level
    /// error applies to every partition.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: Vec<OffsetCommit>,
    ) -> Result<(), i16> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId.code());
        }
        self.check(group_id)?;
        let g = self.group_or_create(group_id);
        g.lock()
            .validate_commit(generation, member_id, instance_id, Instant::now())?;
        let now = now_ms();
        let records = offsets
            .into_iter()
            .map(|o| GroupRecord::Offset {
                group: group_id.to_string(),
                topic: o.topic,
                partition: o.partition,
                value: StoredOffset {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata: o.metadata,
                    commit_timestamp_ms: now,
                },
            })
            .collect();
        self.persist(group_id, records)
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable.code())
    }

    /// Committed offsets of a group: all of them, or those asked for (`None` when absent).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<CommittedOffsets, i16> {
        self.check(group_id)?;
        let offsets = self
            .group(group_id)
            .map(|g| g.lock().offsets.clone())
            .unwrap_or_default();
        Ok(match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(t, parts)| {
                    let found = parts
                        .into_iter()
                        .map(|p| (p, offsets.get(&(t.clone(), p)).cloned()))
                        .collect();
                    (t, found)
                })
                .collect(),
            None => {
                let mut by_topic: std::collections::BTreeMap<
                    String,
                    Vec<(i32, Option<StoredOffset>)>,
                > = Default::default();
                for ((t, p), o) in offsets {
                    by_topic.entry(t).or_default().push((p, Some(o)));
                }
                by_topic
                    .into_iter()
                    .map(|(t, mut ps)| {
                        ps.sort_by_key(|(p, _)| *p);
                        (t, ps)
                    })
                    .collect()
            }
        })
    }

    pub fn describe(&self, group_id: &str) -> Result<Option<GroupDescription>, i16> {
        self.check(group_id)?;
        let Some(g) = self.group(group_id) else {
            return Ok(None);
        };
        let g = g.lock();
        Ok(Some(GroupDescription {
            state: g.state(),
            protocol_type: g.protocol_type().unwrap_or_default().to_string(),
            protocol: g.protocol().unwrap_or_default().to_string(),
            members: g.describe_members(),
        }))
    }

    /// `(group id, protocol type, state)` of every group.
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        let groups: Vec<SharedGroup> = self.inner.groups.lock().values().cloned().collect();
        let mut out: Vec<_> = groups
            .iter()
            .map(|g| {
                let g = g.lock();
                (
                    g.id.clone(),
                    g.protocol_type().unwrap_or_default().to_string(),
                    g.state(),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// DeleteGroups: only empty groups, with their offsets.
    pub async fn delete(&self, group_id: &str) -> i16 {
        if let Err(code) = self.check(group_id) {
            return code;
        }
        let Some(g) = self.group(group_id) else {
            return ResponseError::GroupIdNotFound.code();
        };
        {
            let mut g = g.lock();
            match g.state() {
                GroupState::Empty => g.mark_dead(),
                GroupState::Dead => return ResponseError::GroupIdNotFound.code(),
                _ => return ResponseError::NonEmptyGroup.code(),
            }
        }
        let result = self
            .persist(
                group_id,
                vec![GroupRecord::GroupDeleted {
                    group: group_id.to_string(),
                }],
            )
            .await;
        let mut groups = self.inner.groups.lock();
        match result {
            Ok(()) => {
                groups.remove(group_id);
                self.inner.metrics.groups.set(groups.len() as i64);
                0
            }
            Err(_) => {
                // Not durable: the group stays (it was empty, nothing else changed).
                if let Some(g) = groups.get(group_id) {
                    let mut g = g.lock();
                    let restored = g.record_with(None);
                    g.restore(&restored, Instant::now());
                }
                ResponseError::CoordinatorNotAvailable.code()
            }
        }
    }

    /// Forget committed offsets of a deleted topic.
    pub async fn remove_topic_offsets(&self, topic: &str) {
        let groups: Vec<SharedGroup> = self.inner.groups.lock().values().cloned().collect();
        for g in groups {
            let (id, records): (String, Vec<GroupRecord>) = {
                let g = g.lock();
                let records = g
                    .offsets
                    .keys()
                    .filter(|(t, _)| t == topic)
                    .map(|(t, p)| GroupRecord::OffsetDeleted {
                        group: g.id.clone(),
                        topic: t.clone(),
                        partition: *p,
                    })
                    .collect();
                (g.id.clone(), records)
            };
            if !records.is_empty()
                && let Err(e) = self.persist(&id, records).await
            {
                tracing::warn!(group = %id, topic, error = %e, "removing offsets of a deleted topic failed");
            }
        }
    }

    /// Persist pending group records (the offsets partitions are closed with the other
    /// partitions). Returns false if something failed.
    pub async fn close(&self) -> bool {
        let groups: Vec<SharedGroup> = self.inner.groups.lock().values().cloned().collect();
        for g in &groups {
            self.persist_if_needed(g).await;
        }
        groups.iter().all(|g| !g.lock().needs_persist)
    }
}
