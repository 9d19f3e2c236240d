//! Writing to the buffer from inside the gateway (the outbox reader, the HTTP ingest): the
//! broker's own produce path ([`broker::api::produce_in_process`]), so that these events pass
//! the same limits, ACLs and fsync as a Kafka client's, and one place that builds the request.

use std::collections::BTreeMap;
use std::sync::Arc;

use broker::authz::Access;
use broker::internal_log::{Headers, encode_records};
use broker::state::BrokerState;
use broker::topics::{NewTopic, TopicError};
use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

/// How long an append may wait for its fsync before it is answered with a timeout.
const APPEND_TIMEOUT_MS: i32 = 30_000;

/// A buffer partition.
pub type TopicPartition = (String, i32);

/// Why the buffer did not take a batch: Kafka's error code and the broker's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: i16,
    pub message: String,
}

impl Refused {
    /// Whether trying again later may succeed (a full buffer, a slow disk).
    pub fn retriable(&self) -> bool {
        ResponseError::try_from_code(self.code).is_some_and(|e| e.is_retriable())
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.code, self.message)
    }
}

/// A record as the gateway writes it: key, value and headers (stamped when encoded).
pub type Entry = (Option<Bytes>, Option<Bytes>, Headers);

/// Bytes of keys, values and headers one batch holds at most: below the buffer's default
/// `max.message.bytes` (1 MiB), so a partition's records go in as several batches when they
/// are more. The split depends only on the records, so the same records are always the same
/// batches (the outbox reader's de-duplication relies on it).
const BATCH_BYTES_MAX: usize = 512 << 10;

/// Append each partition's records (in one request: batches of [`BATCH_BYTES_MAX`]) and wait
/// until they are fsynced (acks=all on the one-node buffer); each partition's first offset,
/// or why it was refused.
pub async fn append(
    state: &Arc<BrokerState>,
    access: &Access,
    batches: BTreeMap<TopicPartition, Vec<Entry>>,
) -> BTreeMap<TopicPartition, Result<i64, Refused>> {
    let mut out = BTreeMap::new();
    let mut topics: IndexMap<String, Vec<PartitionProduceData>> = IndexMap::new();
    for ((topic, partition), records) in batches {
        topics.entry(topic).or_default().push(
            PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(encode(records))),
        );
    }
    let sent: Vec<TopicPartition> = topics
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(|p| (t.clone(), p.index)))
        .collect();
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(APPEND_TIMEOUT_MS)
        .with_topic_data(
            topics
                .into_iter()
                .map(|(t, ps)| {
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(t)))
                        .with_partition_data(ps)
                })
                .collect(),
        );
    let response = broker::api::produce_in_process(state, access, request).await;
    for t in response.responses {
        for p in t.partition_responses {
            let result = if p.error_code == 0 {
                Ok(p.base_offset)
            } else {
                Err(Refused {
                    code: p.error_code,
                    message: p.error_message.map(|m| m.to_string()).unwrap_or_default(),
                })
            };
            out.insert((t.name.0.to_string(), p.index), result);
        }
    }
    for tp in sent {
        out.entry(tp).or_insert_with(|| {
            Err(Refused {
                code: ResponseError::UnknownServerError.code(),
                message: "the buffer did not answer for this partition".into(),
            })
        });
    }
    out
}

/// Records as uncompressed batches of at most [`BATCH_BYTES_MAX`] (one record over it goes
/// alone), one after the other (the forwarder compresses for the WAN).
fn encode(records: Vec<Entry>) -> Bytes {
    let size = |(k, v, h): &Entry| {
        let headers: usize = h
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
            .sum();
        k.as_ref().map_or(0, Bytes::len) + v.as_ref().map_or(0, Bytes::len) + headers
    };
    let mut out = BytesMut::new();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for r in records {
        let n = size(&r);
        if !batch.is_empty() && bytes + n > BATCH_BYTES_MAX {
            out.extend_from_slice(&encode_records(batch.drain(..)));
            bytes = 0;
        }
        bytes += n;
        batch.push(r);
    }
    if !batch.is_empty() {
        out.extend_from_slice(&encode_records(batch.into_iter()));
    }
    out.freeze()
}

/// A record as the log gives it back after it was written as `entry` (tests).
#[cfg(test)]
pub fn decoded(entry: Entry) -> kafka_protocol::records::Record {
    let batch = encode(vec![entry]);
    durable_log::records::decode_records(&batch)
        .expect("a batch just encoded decodes")
        .remove(0)
}

/// Why a topic cannot be written to.
#[derive(Debug, thiserror::Error)]
pub enum TopicRefused {
    #[error("topic {0} does not exist and the buffer does not create topics")]
    Unknown(String),
    #[error("creating topic {0}: {1}")]
    Create(String, TopicError),
}

/// A topic's partition count, the topic created with `configs` if it is missing and `create`.
pub async fn partitions(
    state: &BrokerState,
    topic: &str,
    create: bool,
    configs: &BTreeMap<String, String>,
) -> Result<(i32, BTreeMap<String, String>), TopicRefused> {
    if let Some(t) = state.topics.get(topic) {
        return Ok((t.partitions, t.configs.clone()));
    }
    if !create {
        return Err(TopicRefused::Unknown(topic.into()));
    }
    let new = NewTopic {
        name: topic.to_string(),
        partitions: -1,
        replication_factor: -1,
        configs: configs.clone(),
    };
    match state.topics.create(new, false).await {
        Ok(t) => Ok((t.partitions, t.configs.clone())),
        Err(TopicError::AlreadyExists(_)) => state
            .topics
            .get(topic)
            .map(|t| (t.partitions, t.configs.clone()))
            .ok_or_else(|| TopicRefused::Unknown(topic.into())),
        Err(e) => Err(TopicRefused::Create(topic.into(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(records: Vec<Entry>) -> Vec<usize> {
        let bytes = encode(records);
        durable_log::split_batches(&bytes)
            .expect("batches")
            .iter()
            .map(|b| b.header.records_count as usize)
            .collect()
    }

    #[test]
    fn records_go_in_as_few_batches_as_the_size_limit_allows() {
        let small = |i: usize| (None, Some(Bytes::from(format!("v{i}"))), Headers::default());
        assert_eq!(batches((0..1000).map(small).collect()), vec![1000]);
        let big = || {
            (
                None,
                Some(Bytes::from(vec![0u8; 200 << 10])),
                Headers::default(),
            )
        };
        assert_eq!(batches((0..5).map(|_| big()).collect()), vec![2, 2, 1]);
        let huge = (
            None,
            Some(Bytes::from(vec![0u8; 600 << 10])),
            Headers::default(),
        );
        assert_eq!(batches(vec![small(0), huge, small(1)]), vec![1, 1, 1]);
    }
}
