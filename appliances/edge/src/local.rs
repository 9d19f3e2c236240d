//! Writing to the buffer from inside the gateway (the outbox reader, the HTTP ingest): the
//! broker's own produce path ([`broker::api::produce_in_process`]), so that these events pass
//! the same limits, ACLs and fsync as a Kafka client's, and one place that builds the request.

use std::collections::BTreeMap;
use std::sync::Arc;

use broker::authz::Access;
use broker::state::BrokerState;
use broker::topics::{NewTopic, TopicError};
use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

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

/// A record as the gateway writes it: its index in its batch, now as its time.
pub fn record(
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: IndexMap<StrBytes, Option<Bytes>>,
    index: usize,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: index as i64,
        sequence: -1,
        timestamp: broker::partition::now_ms(),
        key,
        value,
        headers,
    }
}

/// Append one batch per partition and wait until each is fsynced (acks=all on the one-node
/// buffer); each partition's first offset, or why it was refused.
pub async fn append(
    state: &Arc<BrokerState>,
    access: &Access,
    batches: BTreeMap<TopicPartition, Vec<Record>>,
) -> BTreeMap<TopicPartition, Result<i64, Refused>> {
    let mut out = BTreeMap::new();
    let mut topics: IndexMap<String, Vec<PartitionProduceData>> = IndexMap::new();
    for ((topic, partition), records) in batches {
        match encode(&records) {
            Ok(bytes) => topics.entry(topic).or_default().push(
                PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(bytes)),
            ),
            Err(message) => {
                let code = ResponseError::CorruptMessage.code();
                out.insert((topic, partition), Err(Refused { code, message }));
            }
        }
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

/// Encode records as one uncompressed batch (the forwarder compresses for the WAN).
fn encode(records: &[Record]) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, records, &options)
        .map_err(|e| format!("encoding records: {e}"))?;
    Ok(buf.freeze())
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
