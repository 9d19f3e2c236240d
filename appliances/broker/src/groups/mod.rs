//! The group coordinator: consumer groups (classic protocol) and their committed offsets.
//!
//! - [`group::Group`] is the state machine of one group; this module owns the groups, parks
//!   and wakes requests, and runs a ticker for session expiry and rebalance deadlines.
//! - Everything durable (offsets, group membership after a rebalance, deletions) goes through
//!   one writer task per `__consumer_offsets-<n>` partition. A writer takes every record
//!   queued, appends them as one batch, waits for the fsync, and only then applies offsets to
//!   memory and answers: an OffsetFetch never sees an offset a crash could take back, and
//!   concurrent commits share fsyncs.

pub mod group;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::internal_log::{InternalLog, StoreError};
use crate::metrics::Metrics;
use crate::partition::{Partition, now_ms};
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

struct Inner {
    groups: Mutex<HashMap<String, SharedGroup>>,
    partitions: Vec<Arc<Partition>>,
    writers: Vec<mpsc::Sender<WriteRequest>>,
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
    /// Rebuild every group from the offsets partitions and start the writers and the ticker.
    pub async fn open(
        partitions: Vec<Arc<Partition>>,
        settings: Settings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<GroupCoordinator, StoreError> {
        let now = Instant::now();
        let mut groups = HashMap::new();
        let mut stores = Vec::new();
        for p in &partitions {
            let store = InternalLog::<GroupRecord>::new(Arc::clone(p));
            for record in store.replay().await? {
                apply_record(&mut groups, &record, now);
            }
            stores.push(store);
        }
        metrics.groups.set(groups.len() as i64);
        let mut writers = Vec::new();
        let mut receivers = Vec::new();
        for _ in &stores {
            let (tx, rx) = mpsc::channel(1024);
            writers.push(tx);
            receivers.push(rx);
        }
        let coordinator = GroupCoordinator {
            inner: Arc::new(Inner {
                groups: Mutex::new(groups),
                partitions,
                writers,
                settings,
                metrics,
            }),
        };
        for (index, (store, rx)) in stores.into_iter().zip(receivers).enumerate() {
            tokio::spawn(coordinator.clone().writer(index as i32, store, rx));
        }
        tokio::spawn(coordinator.clone().ticker(shutdown));
        Ok(coordinator)
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
        let index = partition_for(group, self.inner.writers.len() as i32) as usize;
        let (done, rx) = oneshot::channel();
        self.inner.writers[index]
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
        let n = self.inner.writers.len() as i32;
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
    ) -> CommittedOffsets {
        let offsets = self
            .group(group_id)
            .map(|g| g.lock().offsets.clone())
            .unwrap_or_default();
        match wanted {
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
        }
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let g = self.group(group_id)?;
        let g = g.lock();
        Some(GroupDescription {
            state: g.state(),
            protocol_type: g.protocol_type().unwrap_or_default().to_string(),
            protocol: g.protocol().unwrap_or_default().to_string(),
            members: g.describe_members(),
        })
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

    /// Persist pending group records, then flush and close the offsets partitions. Returns
    /// false if something failed.
    pub async fn close(&self) -> bool {
        let groups: Vec<SharedGroup> = self.inner.groups.lock().values().cloned().collect();
        for g in &groups {
            self.persist_if_needed(g).await;
        }
        let mut ok = groups.iter().all(|g| !g.lock().needs_persist);
        for p in &self.inner.partitions {
            if let Err(e) = p.close().await {
                tracing::error!(partition = p.index, error = %e, "closing an offsets partition failed");
                ok = false;
            }
        }
        ok
    }
}
