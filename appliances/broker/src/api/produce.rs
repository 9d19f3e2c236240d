//! Produce: validate batches, append them as leader (ordered phase), then wait for what the
//! producer asked for (completion phase): acks=1 is answered once the leader wrote it,
//! acks=all once the high watermark passed it, that is once it is on disk on every in-sync
//! replica (in both sites while both are up). A leader whose lease lapsed, or that loses its
//! leadership before the batch commits, answers NOT_LEADER_OR_FOLLOWER: the client refreshes
//! its metadata and retries at the new leader (idempotent producers without duplicates).

use std::sync::Arc;
use std::time::Duration;

use durable_log::producer::ProducerError;
use durable_log::{AppendError, AppendResult, BatchError, RawBatch, TimestampType, split_batches};
use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::{Completion, Reply, err};
use crate::authz::Access;
use crate::partition::{Outcome, Partition, PartitionError, ProduceError, now_ms};
use crate::state::BrokerState;
use acl::Operation;
use quorum::ids::LeaderEpoch;

/// The outcome of the ordered phase for one partition.
enum Appended {
    Failed(i16, String),
    /// INVALID_RECORD naming the records at fault (their index in the request's records).
    InvalidRecords(String, Vec<(i32, String)>),
    Done(Arc<Partition>, AppendResult, LeaderEpoch),
}

fn batch_error(e: &BatchError) -> i16 {
    match e {
        BatchError::UnsupportedMagic(_) => err(ResponseError::UnsupportedForMessageFormat),
        BatchError::Invalid(_) | BatchError::UnknownCompression(_) => {
            err(ResponseError::InvalidRecord)
        }
        BatchError::Truncated(_)
        | BatchError::InvalidLength(_)
        | BatchError::CrcMismatch { .. } => err(ResponseError::CorruptMessage),
    }
}

fn append_error(e: &AppendError) -> i16 {
    match e {
        AppendError::Batch(b) => batch_error(b),
        AppendError::RecordTooLarge { .. } => err(ResponseError::MessageTooLarge),
        AppendError::Producer(ProducerError::FencedEpoch { .. }) => {
            err(ResponseError::InvalidProducerEpoch)
        }
        AppendError::Producer(ProducerError::OutOfOrder { .. }) => {
            err(ResponseError::OutOfOrderSequenceNumber)
        }
        AppendError::InvalidRecord(_) => err(ResponseError::InvalidRecord),
        AppendError::OffsetMismatch { .. } => err(ResponseError::UnknownServerError),
        AppendError::Storage(_) => err(ResponseError::KafkaStorageError),
    }
}

/// A compacted topic keeps the newest record per key, so a record without a key has no
/// place in it: refused, as Kafka refuses it, naming each such record.
fn keyless_records(topic: &str, index: i32, batches: &[RawBatch]) -> Result<(), Appended> {
    let mut keyless = Vec::new();
    let mut at = 0i32;
    for b in batches {
        let refused = |why: String| Appended::Failed(err(ResponseError::CorruptMessage), why);
        let data = durable_log::compaction::record_data(&b.bytes, &b.header).map_err(refused)?;
        let records = durable_log::compaction::split_records(&data, b.header.records_count)
            .map_err(refused)?;
        for r in records {
            if r.key.is_none() {
                keyless.push((
                    at,
                    format!("Compacted topic cannot accept message without key in topic partition {topic}-{index}."),
                ));
            }
            at += 1;
        }
    }
    if keyless.is_empty() {
        return Ok(());
    }
    let message = format!(
        "{} record(s) without a key: {topic} is compacted (cleanup.policy=compact)",
        keyless.len()
    );
    Err(Appended::InvalidRecords(message, keyless))
}

/// The embedding appliance's check of the records (the edge's schema validation).
fn checked_records(
    check: &dyn crate::state::RecordCheck,
    topic: &str,
    batches: &[RawBatch],
) -> Result<(), Appended> {
    let mut records = Vec::new();
    for b in batches {
        let decoded = durable_log::records::decode_records(&b.bytes)
            .map_err(|e| Appended::Failed(err(ResponseError::CorruptMessage), e.to_string()))?;
        records.extend(decoded);
    }
    let refused = check.check(topic, &records);
    if refused.is_empty() {
        return Ok(());
    }
    let message = format!(
        "{} record(s) refused: {}",
        refused.len(),
        refused.first().map_or("", |(_, why)| why.as_str())
    );
    Err(Appended::InvalidRecords(message, refused))
}

/// CreateTime timestamps must lie within the topic's allowed window around now.
fn check_timestamps(
    batches: &[RawBatch],
    before_max: i64,
    after_max: i64,
    now: i64,
) -> Result<(), String> {
    for b in batches {
        let h = &b.header;
        if h.timestamp_type() != TimestampType::CreateTime {
            continue;
        }
        if h.max_timestamp.saturating_sub(now) > after_max {
            return Err(format!(
                "timestamp {} is too far in the future",
                h.max_timestamp
            ));
        }
        if now.saturating_sub(h.base_timestamp) > before_max {
            return Err(format!(
                "timestamp {} is too far in the past",
                h.base_timestamp
            ));
        }
    }
    Ok(())
}

async fn append_one(
    s: &BrokerState,
    topic: &str,
    data: PartitionProduceData,
    acks: i16,
) -> Appended {
    let Some(partition) = s.topics.partition(topic, data.index) else {
        return Appended::Failed(
            err(ResponseError::UnknownTopicOrPartition),
            format!("unknown partition {topic}-{}", data.index),
        );
    };
    let Some(records) = data.records else {
        return Appended::Failed(err(ResponseError::CorruptMessage), "no records".into());
    };
    let batches = match split_batches(&records) {
        Ok(b) => b,
        Err(e) => return Appended::Failed(batch_error(&e), e.to_string()),
    };
    if !(partition.is_leader() && s.cluster.lease_valid()) {
        return Appended::Failed(
            err(ResponseError::NotLeaderOrFollower),
            format!("this broker does not lead {topic}-{} now", data.index),
        );
    }
    if let Some(gate) = &s.ingest
        && let Err(why) = gate.admit(topic)
    {
        return Appended::Failed(err(ResponseError::KafkaStorageError), why);
    }
    let policy = partition.policy();
    if acks == -1
        && let Some((needed, in_sync)) = insync_shortfall(s, &partition, policy.min_insync_replicas)
    {
        return Appended::Failed(
            err(ResponseError::NotEnoughReplicas),
            format!("min.insync.replicas is {needed} but {in_sync} replica(s) are in sync"),
        );
    }
    if let Err(m) = check_timestamps(
        &batches,
        policy.timestamp_before_max_ms,
        policy.timestamp_after_max_ms,
        now_ms(),
    ) {
        return Appended::Failed(err(ResponseError::InvalidTimestamp), m);
    }
    if policy.compacted
        && let Err(refused) = keyless_records(topic, data.index, &batches)
    {
        return refused;
    }
    if let Some(check) = &s.record_check
        && check.checks(topic)
        && let Err(refused) = checked_records(check.as_ref(), topic, &batches)
    {
        return refused;
    }
    match partition.append(batches).await {
        Ok((result, epoch)) => {
            if result.duplicate {
                s.metrics.produce_duplicates.inc();
            } else {
                let label = s.metrics.topic(topic);
                s.metrics
                    .bytes_in
                    .get_or_create(&label)
                    .inc_by(result.bytes);
                s.metrics
                    .records_in
                    .get_or_create(&label)
                    .inc_by(result.records);
            }
            Appended::Done(partition, result, epoch)
        }
        Err(ProduceError::NotLeader) => Appended::Failed(
            err(ResponseError::NotLeaderOrFollower),
            format!("this broker does not lead {topic}-{} now", data.index),
        ),
        Err(ProduceError::Append(e)) => {
            if !matches!(e, AppendError::Producer(_)) {
                tracing::debug!(topic, partition = data.index, error = %e, "produce refused");
            }
            Appended::Failed(append_error(&e), e.to_string())
        }
    }
}

/// The in-sync minimum for acks=all and the in-sync count, when the partition falls short.
/// The minimum is the topic's, lowered in degraded mode to what the surviving site holds
/// (the site policy).
fn insync_shortfall(
    s: &BrokerState,
    partition: &Partition,
    min_insync: i32,
) -> Option<(usize, usize)> {
    let state = s.metadata();
    let p = state.partition(partition.key())?;
    let policy = state.policy.as_ref()?;
    let views: std::collections::BTreeMap<_, _> = state
        .broker_views()
        .into_iter()
        .filter(|(n, _)| p.replicas.contains(n))
        .collect();
    let needed = policy.effective_min_insync(
        min_insync.max(1) as usize,
        &p.replicas,
        &state.fenced_sites,
        &views,
    );
    (p.isr.len() < needed).then_some((needed, p.isr.len()))
}

pub async fn handle(
    s: &Arc<BrokerState>,
    access: &Access,
    version: i16,
    r: ProduceRequest,
) -> Completion {
    let acks = r.acks;
    let timeout = Duration::from_millis(r.timeout_ms.max(0) as u64);
    // Transactional batches are refused by the log (INVALID_RECORD): no transactions here.
    let refuse_all = (!matches!(acks, -1..=1)).then(|| {
        (
            err(ResponseError::InvalidRequiredAcks),
            format!("acks={acks} is not -1, 0 or 1"),
        )
    });
    // Counted from before the appends until answered (see `ProduceWaits`).
    let waiting = (acks == -1).then(|| s.produce_waits.enter());
    // Ordered phase: all appends of this request, partitions in parallel.
    let mut topics = Vec::with_capacity(r.topic_data.len());
    for t in r.topic_data {
        let name = t.name.0.to_string();
        let denied = (!access.topic(Operation::Write, &name)).then(|| {
            let e = ResponseError::TopicAuthorizationFailed;
            (err(e), format!("not authorized to write to {name}"))
        });
        let appends = t.partition_data.into_iter().map(|p| {
            let index = p.index;
            let refuse = refuse_all.clone().or_else(|| denied.clone());
            let name = &name;
            async move {
                let outcome = match refuse {
                    Some((code, msg)) => Appended::Failed(code, msg),
                    None => append_one(s, name, p, acks).await,
                };
                (index, outcome)
            }
        });
        let outcomes = join_all(appends).await;
        topics.push((name, outcomes));
    }
    if acks == 0 {
        let failed = topics
            .iter()
            .flat_map(|(_, ps)| ps)
            .any(|(_, o)| matches!(o, Appended::Failed(..)));
        return Box::pin(std::future::ready(if failed {
            Reply::Close
        } else {
            Reply::Nothing
        }));
    }
    let s = Arc::clone(s);
    Box::pin(async move {
        let mut responses = Vec::with_capacity(topics.len());
        for (name, partitions) in topics {
            let mut out = Vec::with_capacity(partitions.len());
            for (index, outcome) in partitions {
                out.push(complete(&s, version, index, outcome, acks, timeout).await);
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_partition_responses(out),
            );
        }
        drop(waiting);
        Reply::Send(ResponseKind::Produce(
            ProduceResponse::default().with_responses(responses),
        ))
    })
}

/// Completion phase for one partition: wait for durability if acks=all, then answer.
async fn complete(
    s: &BrokerState,
    version: i16,
    index: i32,
    outcome: Appended,
    acks: i16,
    timeout: Duration,
) -> PartitionProduceResponse {
    let resp = PartitionProduceResponse::default().with_index(index);
    let (partition, result, epoch) = match outcome {
        Appended::Done(p, r, e) => (p, r, e),
        Appended::Failed(code, message) => {
            s.metrics.note_error("Produce", code);
            let resp = resp.with_error_code(code).with_base_offset(-1);
            return if version >= 8 {
                resp.with_error_message(Some(StrBytes::from_string(message)))
            } else {
                resp
            };
        }
        Appended::InvalidRecords(message, records) => {
            let code = err(ResponseError::InvalidRecord);
            s.metrics.note_error("Produce", code);
            let resp = resp.with_error_code(code).with_base_offset(-1);
            return if version >= 8 {
                let errors = records
                    .into_iter()
                    .map(|(i, m)| {
                        BatchIndexAndErrorMessage::default()
                            .with_batch_index(i)
                            .with_batch_index_error_message(Some(StrBytes::from_string(m)))
                    })
                    .collect();
                resp.with_error_message(Some(StrBytes::from_string(message)))
                    .with_record_errors(errors)
            } else {
                resp
            };
        }
    };
    if acks == -1 {
        let started = std::time::Instant::now();
        let written = partition.written(&result, epoch);
        let waited = tokio::time::timeout(timeout, partition.wait_outcome(written)).await;
        s.metrics.observe_commit_wait(started.elapsed());
        // Errors say what a client may assume: NOT_LEADER that the records were not written
        // (librdkafka may re-send them as new ones), a timeout that they may have been.
        let code = match waited {
            Ok(Ok(Outcome::Committed)) => None,
            Ok(Ok(Outcome::Lost)) => Some(err(ResponseError::NotLeaderOrFollower)),
            // This replica was removed (or its topic deleted): whether a new leader holds the
            // records is not known here.
            Ok(Err(PartitionError::Deleted)) => Some(err(ResponseError::RequestTimedOut)),
            Ok(Err(e)) => {
                tracing::warn!(topic = %partition.topic, partition = index, error = %e, "acks=all failed");
                Some(err(ResponseError::KafkaStorageError))
            }
            Err(_) => Some(err(ResponseError::RequestTimedOut)),
        };
        if let Some(code) = code {
            s.metrics.note_error("Produce", code);
            return resp.with_error_code(code).with_base_offset(-1);
        }
    }
    let resp = resp
        .with_base_offset(result.first_offset)
        .with_log_append_time_ms(result.log_append_time.unwrap_or(-1));
    if version >= 5 {
        resp.with_log_start_offset(partition.offsets().log_start)
    } else {
        resp
    }
}
