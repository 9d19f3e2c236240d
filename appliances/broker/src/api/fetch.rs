//! Fetch: read whole batches below the high watermark (consumers) or the log end (followers),
//! long-polling until `min_bytes` are available or `max_wait_ms` passes.
//!
//! A follower's fetch (a replica id and its broker epoch) is served only by the leader, in
//! the follower's current incarnation and the partition's current epoch; its fetch offset is
//! what it holds durably, which the replica counts towards the high watermark. Consumers may
//! fetch from a follower (KIP-392, v11+): a leader answers a consumer in another site with
//! the in-sync replica of the consumer's rack as its preferred read replica.
//!
//! Incremental fetch sessions (KIP-227) are declined by answering session id 0, which the
//! protocol allows: clients then send full fetch requests, which this broker serves directly.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::fetch_response::{
    EpochEndOffset, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use quorum::ids::{LeaderEpoch, NodeId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{check_leader_epoch, err};
use crate::authz::Access;
use crate::partition::{Partition, PartitionError, ReadBound};
use crate::state::BrokerState;
use acl::Operation;

/// Who is fetching.
#[derive(Debug, Clone)]
enum Fetcher {
    Consumer { rack: String },
    Replica { id: NodeId, broker_epoch: i64 },
}

impl Fetcher {
    fn of(version: i16, r: &FetchRequest) -> Fetcher {
        if is_replica_fetch(version, r) {
            let (id, broker_epoch) = if version >= 15 {
                (r.replica_state.replica_id.0, r.replica_state.replica_epoch)
            } else {
                (r.replica_id.0, -1)
            };
            Fetcher::Replica {
                id: NodeId(id as u32),
                broker_epoch,
            }
        } else {
            Fetcher::Consumer {
                rack: r.rack_id.to_string(),
            }
        }
    }

    fn is_replica(&self) -> bool {
        matches!(self, Fetcher::Replica { .. })
    }
}

/// Upper bound on a long poll, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(300);

struct Wanted {
    topic: String,
    topic_id: Uuid,
    index: i32,
    partition: Result<Arc<Partition>, i16>,
    fetch_offset: i64,
    max_bytes: usize,
    current_leader_epoch: i32,
    last_fetched_epoch: i32,
}

fn count_records(bytes: &[u8]) -> u64 {
    let (_, headers) = durable_log::batch::whole_batches_prefix(bytes);
    headers.iter().map(|h| h.records_count.max(0) as u64).sum()
}

/// Whether a Fetch comes from a follower (a replica id) rather than a consumer.
pub fn is_replica_fetch(version: i16, r: &FetchRequest) -> bool {
    if version >= 15 {
        r.replica_state.replica_id.0 >= 0
    } else {
        r.replica_id.0 >= 0
    }
}

/// `peer_gone`: the connection's peer closed it; a long poll stops at once (its answer
/// goes nowhere), as a follower's fetch does when the follower moved to a new connection.
pub async fn handle(
    s: &Arc<BrokerState>,
    access: &Access,
    version: i16,
    r: FetchRequest,
    peer_gone: CancellationToken,
) -> FetchResponse {
    if version >= 7 {
        if r.session_id != 0 {
            return FetchResponse::default()
                .with_error_code(err(ResponseError::FetchSessionIdNotFound));
        }
        if r.session_epoch > 0 {
            return FetchResponse::default()
                .with_error_code(err(ResponseError::InvalidFetchSessionEpoch));
        }
    }
    let fetcher = Fetcher::of(version, &r);
    if let Fetcher::Replica { id, broker_epoch } = &fetcher
        && !current_incarnation(s, *id, *broker_epoch)
    {
        tracing::info!(replica = %id, broker_epoch, "refusing a fetch from an earlier incarnation of a broker");
        return FetchResponse::default().with_error_code(err(ResponseError::StaleBrokerEpoch));
    }
    let wanted = resolve(s, access, &fetcher, version, &r);
    let min_bytes = r.min_bytes.max(0) as usize;
    let max_bytes = if r.max_bytes <= 0 {
        usize::MAX
    } else {
        r.max_bytes as usize
    };
    let parked = Instant::now();
    let deadline = parked + Duration::from_millis(r.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    loop {
        // Subscribe before reading, so that data arriving in between wakes the wait below.
        let mut watchers: Vec<_> = wanted
            .iter()
            .filter_map(|w| w.partition.as_ref().ok().map(|p| p.watch()))
            .collect();
        let (results, bytes, any_error) = read_all(s, version, &wanted, max_bytes, &fetcher).await;
        let now = Instant::now();
        // A follower with no data to fetch still needs the moved high watermark, or the
        // consumers reading from it (KIP-392) wait up to its whole fetch wait.
        let news_at =
            high_watermark_news(&fetcher, &wanted).then_some(parked + HIGH_WATERMARK_NEWS_WAIT);
        if bytes >= min_bytes
            || any_error
            || now >= deadline
            || watchers.is_empty()
            || news_at.is_some_and(|t| now >= t)
        {
            return answer(version, &wanted, results, &fetcher);
        }
        let wake_at = news_at.map_or(deadline, |t| t.min(deadline));
        let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        let woken = tokio::select! {
            r = tokio::time::timeout_at(wake_at, changed) => r.is_ok(),
            _ = peer_gone.cancelled() => return build(version, &wanted, results),
        };
        if !woken {
            let (results, _, _) = read_all(s, version, &wanted, max_bytes, &fetcher).await;
            return answer(version, &wanted, results, &fetcher);
        }
    }
}

/// How long a follower's fetch with nothing to read is held, at most, once the high
/// watermark of one of its partitions moved past what it was told. Under load an answer
/// with data comes sooner and carries the news; when the load stops, the last records reach
/// the follower's consumers this much later, not a whole fetch wait (500 ms by default).
/// Answering at once instead would add an empty round trip per commit under load.
const HIGH_WATERMARK_NEWS_WAIT: Duration = Duration::from_millis(50);

/// Whether a follower's fetch has a partition whose high watermark it has not been told.
fn high_watermark_news(fetcher: &Fetcher, wanted: &[Wanted]) -> bool {
    let Fetcher::Replica { id, .. } = fetcher else {
        return false;
    };
    wanted
        .iter()
        .filter_map(|w| w.partition.as_ref().ok())
        .any(|p| p.high_watermark_news(*id))
}

/// Build the answer; a leader notes the high watermarks it tells a follower.
fn answer(
    version: i16,
    wanted: &[Wanted],
    results: Vec<PartitionData>,
    fetcher: &Fetcher,
) -> FetchResponse {
    if let Fetcher::Replica { id, .. } = fetcher {
        for (w, data) in wanted.iter().zip(&results) {
            if let Ok(p) = &w.partition
                && data.error_code == 0
                && data.high_watermark >= 0
            {
                p.high_watermark_sent(*id, data.high_watermark);
            }
        }
    }
    build(version, wanted, results)
}

fn resolve(
    s: &BrokerState,
    access: &Access,
    fetcher: &Fetcher,
    version: i16,
    r: &FetchRequest,
) -> Vec<Wanted> {
    let mut out = Vec::new();
    for t in &r.topics {
        let info = if version >= 13 {
            s.topics.get_by_id(&t.topic_id)
        } else {
            s.topics.get(&t.topic.0)
        };
        let (topic, topic_id) = match &info {
            Some(i) => (i.name.to_string(), i.id),
            None => (t.topic.0.to_string(), t.topic_id),
        };
        let unknown = if version >= 13 {
            err(ResponseError::UnknownTopicId)
        } else {
            err(ResponseError::UnknownTopicOrPartition)
        };
        // Followers were checked at the dispatch point (CLUSTER_ACTION).
        let readable = fetcher.is_replica() || access.topic(Operation::Read, &topic);
        for p in &t.partitions {
            let partition = match &info {
                _ if !readable => Err(err(ResponseError::TopicAuthorizationFailed)),
                Some(_) => s
                    .topics
                    .partition(&topic, p.partition)
                    .ok_or(err(ResponseError::UnknownTopicOrPartition)),
                None => Err(unknown),
            };
            out.push(Wanted {
                topic: topic.clone(),
                topic_id,
                index: p.partition,
                partition,
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                current_leader_epoch: p.current_leader_epoch,
                last_fetched_epoch: p.last_fetched_epoch,
            });
        }
    }
    out
}

/// Whether `epoch` is the broker epoch the metadata has for replica `id` (followers of a
/// previous life of a broker are refused). Fetches below v15 carry no epoch: accepted.
fn current_incarnation(s: &BrokerState, id: NodeId, epoch: i64) -> bool {
    epoch < 0
        || s.metadata()
            .brokers
            .get(&id)
            .is_some_and(|b| b.epoch.0 as i64 == epoch)
}

async fn read_all(
    s: &BrokerState,
    version: i16,
    wanted: &[Wanted],
    max_bytes: usize,
    fetcher: &Fetcher,
) -> (Vec<PartitionData>, usize, bool) {
    let mut total = 0usize;
    let mut any_error = false;
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let remaining = max_bytes.saturating_sub(total);
        let data = read_one(
            s,
            version,
            w,
            remaining.min(w.max_bytes),
            total == 0,
            fetcher,
        )
        .await;
        if data.error_code != 0 {
            any_error = true;
            s.metrics.note_error("Fetch", data.error_code);
        }
        let n = data.records.as_ref().map_or(0, Bytes::len);
        if n > 0 {
            let label = s.metrics.topic(&w.topic);
            s.metrics.bytes_out.get_or_create(&label).inc_by(n as u64);
            s.metrics
                .records_out
                .get_or_create(&label)
                .inc_by(count_records(data.records.as_deref().unwrap_or_default()));
        }
        total += n;
        out.push(data);
    }
    (out, total, any_error)
}

async fn read_one(
    s: &BrokerState,
    version: i16,
    w: &Wanted,
    max_bytes: usize,
    first: bool,
    fetcher: &Fetcher,
) -> PartitionData {
    let base = PartitionData::default()
        .with_partition_index(w.index)
        .with_high_watermark(-1);
    let failed = |code: i16| {
        base.clone()
            .with_error_code(code)
            .with_records(Some(Bytes::new()))
    };
    let partition = match &w.partition {
        Ok(p) => p,
        Err(code) => return failed(*code),
    };
    let visible = partition.visible();
    if visible.offline {
        return failed(err(ResponseError::KafkaStorageError));
    }
    // Followers and old clients read from the leader only; consumers of v11+ from any replica.
    let leader_only = fetcher.is_replica() || version < 11;
    if leader_only && !(visible.leader && s.cluster.lease_valid()) {
        return failed(err(ResponseError::NotLeaderOrFollower));
    }
    if let Err(code) = check_leader_epoch(w.current_leader_epoch, visible.leader_epoch.0) {
        return failed(code);
    }
    let offsets = partition.offsets();
    let with_offsets = |d: PartitionData| {
        d.with_high_watermark(offsets.high_watermark)
            .with_last_stable_offset(offsets.high_watermark)
            .with_log_start_offset(offsets.log_start)
    };
    if w.last_fetched_epoch >= 0 {
        match partition.epoch_end_offset(w.last_fetched_epoch) {
            Ok((epoch, end)) if epoch < 0 || end < 0 => {
                return with_offsets(failed(err(ResponseError::OffsetOutOfRange)));
            }
            Ok((epoch, end)) if epoch < w.last_fetched_epoch || end < w.fetch_offset => {
                // The fetcher's log diverged: tell it where our history of its epoch ends.
                let diverging = EpochEndOffset::default()
                    .with_epoch(epoch)
                    .with_end_offset(end);
                return with_offsets(
                    base.clone()
                        .with_diverging_epoch(diverging)
                        .with_records(Some(Bytes::new())),
                );
            }
            Ok(_) => {}
            Err(e) => return failed(partition_error(&e)),
        }
    }
    let bound = match fetcher {
        Fetcher::Replica { id, .. } => {
            let epoch = LeaderEpoch(w.current_leader_epoch.max(visible.leader_epoch.0));
            if let Err(e) = partition.follower_fetched(*id, w.fetch_offset, epoch).await {
                return with_offsets(failed(partition_error(&e)));
            }
            ReadBound::LogEnd
        }
        Fetcher::Consumer { rack } => {
            if let Some(preferred) = preferred_replica(s, partition, rack, visible.leader) {
                return with_offsets(
                    base.clone()
                        .with_preferred_read_replica(BrokerId(preferred.kafka()))
                        .with_records(Some(Bytes::new())),
                );
            }
            ReadBound::HighWatermark
        }
    };
    match partition
        .read(w.fetch_offset, max_bytes, first, bound)
        .await
    {
        Ok(read) => base
            .with_high_watermark(read.offsets.high_watermark)
            .with_last_stable_offset(read.offsets.high_watermark)
            .with_log_start_offset(read.offsets.log_start)
            .with_records(Some(read.records)),
        Err(e) => with_offsets(failed(partition_error(&e))),
    }
}

/// KIP-392: the leader points a consumer of another site at an in-sync replica in the
/// consumer's site (its `client.rack`), so each site reads locally.
fn preferred_replica(
    s: &BrokerState,
    partition: &Partition,
    rack: &str,
    leader: bool,
) -> Option<NodeId> {
    if !leader || rack.is_empty() || rack == s.cluster.site.as_str() {
        return None;
    }
    let state = s.metadata();
    let p = state.partition(partition.key())?;
    p.isr.iter().copied().find(|n| {
        state
            .brokers
            .get(n)
            .is_some_and(|b| !b.fenced && b.site.as_str() == rack)
    })
}

fn partition_error(e: &PartitionError) -> i16 {
    match e {
        PartitionError::Deleted => err(ResponseError::UnknownTopicOrPartition),
        PartitionError::Log(durable_log::LogError::OffsetOutOfRange { .. }) => {
            err(ResponseError::OffsetOutOfRange)
        }
        PartitionError::Fetch(crate::replica::FetchRefusal::PastEnd { .. }) => {
            err(ResponseError::OffsetOutOfRange)
        }
        PartitionError::NotLeader(_) | PartitionError::Fetch(_) => {
            err(ResponseError::NotLeaderOrFollower)
        }
        PartitionError::NotFollower => err(ResponseError::NotLeaderOrFollower),
        PartitionError::Log(_) | PartitionError::Task(_) => err(ResponseError::KafkaStorageError),
    }
}

fn build(version: i16, wanted: &[Wanted], results: Vec<PartitionData>) -> FetchResponse {
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for (w, data) in wanted.iter().zip(results) {
        let same = topics.last().is_some_and(|t| {
            if version >= 13 {
                t.topic_id == w.topic_id
            } else {
                *t.topic.0 == *w.topic
            }
        });
        if !same {
            let mut t = FetchableTopicResponse::default();
            if version >= 13 {
                t = t.with_topic_id(w.topic_id);
            } else {
                t = t.with_topic(TopicName(StrBytes::from_string(w.topic.clone())));
            }
            topics.push(t);
        }
        topics
            .last_mut()
            .expect("pushed above")
            .partitions
            .push(data);
    }
    FetchResponse::default().with_responses(topics)
}
