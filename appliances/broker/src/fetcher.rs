//! Follower fetchers: one task per leader broker, fetching every partition this broker
//! follows from it with Kafka's own Fetch (v15: a replica id and this broker's epoch, topic
//! ids, diverging epochs) on the leader's replication listener.
//!
//! The durability contract: a follower asks for offset N only once everything below N is
//! fsynced here, so its fetch offset is what it holds durably, and the leader's high
//! watermark (the smallest such offset among the in-sync replicas) means "on disk in every
//! in-sync replica". Each response is appended, flushed, and only then fetched past.
//!
//! Divergence (KIP-101/KIP-279 via KIP-320's diverging epoch in Fetch): the follower sends
//! the epoch of its last record; a leader whose history of that epoch ends earlier answers
//! where, and the follower truncates there before fetching again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_client::Connection;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ReplicaState};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{BrokerId, FetchRequest};
use parking_lot::Mutex;
use quorum::ids::{LeaderEpoch, NodeId, PartitionKey};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::partition::Partition;

/// The Fetch version followers use (replica state with the broker epoch).
const FETCH_VERSION: i16 = 15;
/// Back-off after a failed connection or request.
const RETRY: Duration = Duration::from_millis(200);

struct Followed {
    partition: Arc<Partition>,
    epoch: LeaderEpoch,
}

#[derive(Default)]
struct Set {
    partitions: Mutex<BTreeMap<PartitionKey, Followed>>,
    changed: Notify,
}

struct Running {
    set: Arc<Set>,
    stop: CancellationToken,
}

/// The fetchers of this broker, by leader.
pub struct Fetchers {
    cluster: Arc<Cluster>,
    by_leader: Mutex<BTreeMap<NodeId, Running>>,
    wait: Duration,
    max_bytes: usize,
    shutdown: CancellationToken,
}

impl Fetchers {
    pub fn new(
        cluster: Arc<Cluster>,
        wait: Duration,
        max_bytes: usize,
        shutdown: CancellationToken,
    ) -> Fetchers {
        Fetchers {
            cluster,
            by_leader: Mutex::new(BTreeMap::new()),
            wait,
            max_bytes,
            shutdown,
        }
    }

    /// Follow `partition` from `leader` in `epoch`.
    pub fn add(&self, leader: NodeId, partition: Arc<Partition>, epoch: LeaderEpoch) {
        let mut by_leader = self.by_leader.lock();
        let running = by_leader.entry(leader).or_insert_with(|| {
            let set = Arc::new(Set::default());
            let stop = self.shutdown.child_token();
            let fetcher = Fetcher {
                leader,
                set: Arc::clone(&set),
                cluster: Arc::clone(&self.cluster),
                wait: self.wait,
                max_bytes: self.max_bytes,
            };
            tokio::spawn(fetcher.run(stop.clone()));
            Running { set, stop }
        });
        running
            .set
            .partitions
            .lock()
            .insert(partition.key(), Followed { partition, epoch });
        running.set.changed.notify_one();
    }

    /// Stop following `key` (from whichever leader).
    pub fn remove(&self, key: PartitionKey) {
        let mut by_leader = self.by_leader.lock();
        let mut empty = vec![];
        for (leader, running) in by_leader.iter() {
            let mut parts = running.set.partitions.lock();
            if parts.remove(&key).is_some() && parts.is_empty() {
                empty.push(*leader);
            }
        }
        for leader in empty {
            if let Some(r) = by_leader.remove(&leader) {
                r.stop.cancel();
            }
        }
    }
}

/// What a fetcher does after a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    SameConnection,
    NewConnection,
}

struct Fetcher {
    leader: NodeId,
    set: Arc<Set>,
    cluster: Arc<Cluster>,
    wait: Duration,
    max_bytes: usize,
}

impl Fetcher {
    async fn run(self, stop: CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            let session = async {
                let conn = self.connect().await?;
                while self.fetch_once(&conn).await? == Next::SameConnection {}
                Ok::<(), String>(())
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = session => match r {
                    // The followed set changed while a fetch waited at the leader: a fresh
                    // connection at once (the waiting fetch would hold up every answer
                    // behind it on this one, for up to the whole fetch wait).
                    Ok(()) => continue,
                    Err(e) => tracing::debug!(leader = %self.leader, error = %e, "fetching from the leader failed; retrying"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    async fn connect(&self) -> Result<Connection, String> {
        let state = self.cluster.state();
        let addr = state
            .brokers
            .get(&self.leader)
            .map(|b| b.endpoints.replication.clone())
            .ok_or_else(|| format!("leader {} is not registered", self.leader))?;
        let id = format!("replica-{}", self.cluster.me);
        Connection::connect_with(&addr, &id, self.cluster.peer_tls.as_deref())
            .await
            .map_err(|e| e.to_string())
    }

    /// One fetch for every followed partition, then apply the answers.
    async fn fetch_once(&self, conn: &Connection) -> Result<Next, String> {
        let Some(epoch) = self.cluster.epoch() else {
            tokio::time::sleep(RETRY).await;
            return Ok(Next::SameConnection);
        };
        // A partition whose log went offline (a storage error) is left out, as Kafka's fetcher
        // marks it failed: its appends would fail the whole answer, and with it the
        // replication of every other partition this leader serves.
        let followed: Vec<(Arc<Partition>, LeaderEpoch)> = self
            .set
            .partitions
            .lock()
            .values()
            .filter(|f| !f.partition.is_offline())
            .map(|f| (Arc::clone(&f.partition), f.epoch))
            .collect();
        if followed.is_empty() {
            self.set.changed.notified().await;
            return Ok(Next::SameConnection);
        }
        let mut topics: BTreeMap<uuid::Uuid, Vec<FetchPartition>> = BTreeMap::new();
        for (p, leader_epoch) in &followed {
            let offsets = p.offsets();
            let last_epoch = p.last_epoch().map_err(|e| e.to_string())?;
            topics.entry(p.topic_id).or_default().push(
                FetchPartition::default()
                    .with_partition(p.index)
                    .with_current_leader_epoch(leader_epoch.0)
                    .with_fetch_offset(offsets.log_end)
                    .with_last_fetched_epoch(last_epoch.unwrap_or(-1))
                    .with_log_start_offset(offsets.log_start)
                    .with_partition_max_bytes(self.max_bytes as i32),
            );
        }
        let request = FetchRequest::default()
            .with_replica_state(
                ReplicaState::default()
                    .with_replica_id(BrokerId(self.cluster.me.kafka()))
                    .with_replica_epoch(epoch.0 as i64),
            )
            .with_max_wait_ms(self.wait.as_millis() as i32)
            .with_min_bytes(1)
            .with_max_bytes(self.max_bytes as i32)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(id, partitions)| {
                        FetchTopic::default()
                            .with_topic_id(id)
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let send = conn
            .send_at(request, FETCH_VERSION)
            .await
            .map_err(|e| e.to_string())?;
        let response = tokio::select! {
            r = tokio::time::timeout(self.wait + Duration::from_secs(10), send) => {
                r.map_err(|_| "fetch timed out".to_string())?.map_err(|e| e.to_string())?
            }
            // A partition was added or removed: this answer is dropped (the request is
            // abandoned, with its connection) and the next one covers the new set.
            _ = self.set.changed.notified() => return Ok(Next::NewConnection),
        };
        if response.error_code != 0 {
            return Err(format!("leader answered error {}", response.error_code));
        }
        let by_key: BTreeMap<PartitionKey, (Arc<Partition>, LeaderEpoch)> = followed
            .into_iter()
            .map(|(p, e)| (p.key(), (p, e)))
            .collect();
        let mut appended = Vec::with_capacity(by_key.len());
        for t in response.responses {
            for data in t.partitions {
                let key = PartitionKey {
                    topic: t.topic_id,
                    index: data.partition_index,
                };
                let Some((p, e)) = by_key.get(&key) else {
                    continue;
                };
                match self.apply(p, *e, data).await {
                    Ok(Some(a)) => appended.push(a),
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(topic = %p.topic, partition = p.index, error = %err, "applying fetched data failed")
                    }
                }
            }
        }
        // Every partition's flusher fsyncs its own segment, so the answers' fsyncs run side by
        // side: a round costs about one fsync, not one per partition, and acks=all waits on
        // the slowest follower's round.
        let finished = futures::future::join_all(appended.iter().map(Appended::finish)).await;
        for (a, r) in appended.iter().zip(finished) {
            if let Err(err) = r {
                tracing::warn!(topic = %a.partition.topic, partition = a.partition.index, error = %err, "finishing fetched data failed");
            }
        }
        Ok(Next::SameConnection)
    }

    /// Apply one partition's answer: truncate on divergence or append. What is appended is
    /// made durable, and the leader's high watermark taken, by [`Appended::finish`].
    async fn apply(
        &self,
        p: &Arc<Partition>,
        epoch: LeaderEpoch,
        data: PartitionData,
    ) -> Result<Option<Appended>, String> {
        let code = data.error_code;
        if code == ResponseError::OffsetOutOfRange.code() {
            // Only a leader whose log starts after ours ends (retention, DeleteRecords) makes
            // us start over. Anything else is left to the epoch comparison: truncating to the
            // leader's high watermark could cut records it has committed (a new leader's high
            // watermark lags until its followers fetch).
            let offsets = p.offsets();
            if offsets.log_end < data.log_start_offset {
                tracing::info!(topic = %p.topic, partition = p.index, start = data.log_start_offset, "the leader's log starts after ours ends: starting over there");
                p.restart_at(data.log_start_offset)
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                tracing::warn!(topic = %p.topic, partition = p.index, fetch_offset = offsets.log_end, "the leader answered offset out of range; retrying");
                tokio::time::sleep(RETRY).await;
            }
            return Ok(None);
        }
        if code != 0 {
            // Not leader, fenced or unknown epoch: the metadata will tell us the new leader.
            tracing::debug!(topic = %p.topic, partition = p.index, code, "leader refused the fetch");
            tokio::time::sleep(RETRY).await;
            return Ok(None);
        }
        if data.diverging_epoch.epoch >= 0 {
            // The leader's history of that epoch ends at `end_offset`; ours may end earlier
            // (a later epoch of ours starts there, with records the leader never had). The
            // largest common prefix ends at the smaller of the two (KIP-279): cutting only at
            // the leader's end would keep our records of the later epoch under the leader's
            // offsets, and meet the same divergence at every fetch.
            let theirs = (data.diverging_epoch.epoch, data.diverging_epoch.end_offset);
            let (_, ours_end) = p.epoch_end_offset(theirs.0).map_err(|e| e.to_string())?;
            let cut = if ours_end >= 0 {
                theirs.1.min(ours_end)
            } else {
                theirs.1
            };
            tracing::info!(topic = %p.topic, partition = p.index, epoch = theirs.0, leader_end = theirs.1, at = cut, "log diverged from the leader's: truncating");
            p.truncate_to(cut).await.map_err(|e| e.to_string())?;
            return Ok(None);
        }
        let mut end = None;
        if let Some(records) = data.records.filter(|r| !r.is_empty()) {
            let batches = durable_log::split_stored_batches(&records).map_err(|e| e.to_string())?;
            if !batches.is_empty() {
                end = Some(
                    p.append_as_follower(batches, epoch)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
        }
        Ok(Some(Appended {
            partition: Arc::clone(p),
            end,
            high_watermark: data.high_watermark,
            log_start: data.log_start_offset,
        }))
    }
}

/// One partition's fetched answer, appended and not yet known durable.
struct Appended {
    partition: Arc<Partition>,
    /// The log end after the append; `None` when the answer carried no records.
    end: Option<i64>,
    high_watermark: i64,
    log_start: i64,
}

impl Appended {
    /// Wait until the append is fsynced (the next fetch offset must be durable), then take the
    /// leader's high watermark and log start.
    async fn finish(&self) -> Result<(), String> {
        let p = &self.partition;
        if let Some(end) = self.end {
            p.wait_durable(end).await.map_err(|e| e.to_string())?;
        }
        if self.high_watermark >= 0 {
            p.leader_high_watermark(self.high_watermark);
        }
        // DeleteRecords and retention on the leader move its log start: follow it (never past
        // what this replica has).
        let local = p.offsets();
        if self.log_start > local.log_start && self.log_start <= local.log_end {
            p.delete_records(self.log_start)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
