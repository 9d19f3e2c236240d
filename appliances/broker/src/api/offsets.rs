//! Offset queries and moves: ListOffsets (earliest, latest, max timestamp, by timestamp),
//! OffsetForLeaderEpoch (where an epoch ended, for truncation) and DeleteRecords.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use super::{check_leader_epoch, err, leader_partition};
use crate::authz::Access;
use crate::partition::{Partition, PartitionError};
use crate::state::BrokerState;
use acl::Operation::{self, ClusterAction, Delete, Describe};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// [`leader_partition`] for a client allowed `op` on the topic (TOPIC_AUTHORIZATION_FAILED
/// otherwise, whether the topic exists or not).
fn allowed_leader(
    s: &BrokerState,
    access: &Access,
    op: Operation,
    topic: &str,
    index: i32,
) -> Result<Arc<Partition>, i16> {
    if !access.topic(op, topic) {
        return Err(err(ResponseError::TopicAuthorizationFailed));
    }
    leader_partition(s, topic, index)
}

fn storage_error(e: &PartitionError) -> i16 {
    match e {
        PartitionError::Deleted => err(ResponseError::UnknownTopicOrPartition),
        PartitionError::Log(durable_log::LogError::OffsetOutOfRange { .. }) => {
            err(ResponseError::OffsetOutOfRange)
        }
        _ => err(ResponseError::KafkaStorageError),
    }
}

/// `(offset, timestamp)` answering `spec`, or `None` when no record matches.
async fn lookup(p: &Arc<Partition>, spec: i64, version: i16) -> Result<Option<(i64, i64)>, i16> {
    let offsets = p.offsets();
    match spec {
        LATEST => Ok(Some((offsets.high_watermark, -1))),
        EARLIEST => Ok(Some((offsets.log_start, -1))),
        // No tiered storage: the earliest local offset is the earliest offset.
        EARLIEST_LOCAL if version >= 8 => Ok(Some((offsets.log_start, -1))),
        MAX_TIMESTAMP if version >= 7 => p
            .offset_of_max_timestamp()
            .await
            .map_err(|e| storage_error(&e)),
        ts if ts >= 0 => p
            .offset_for_timestamp(ts)
            .await
            .map_err(|e| storage_error(&e)),
        _ => Err(err(ResponseError::InvalidRequest)),
    }
}

pub async fn list_offsets(
    s: &BrokerState,
    access: &Access,
    version: i16,
    r: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let partition = match allowed_leader(s, access, Describe, &t.name.0, p.partition_index)
            {
                Ok(p) => p,
                Err(code) => {
                    partitions.push(resp.with_error_code(code));
                    continue;
                }
            };
            if let Err(code) =
                check_leader_epoch(p.current_leader_epoch, partition.leader_epoch().0)
            {
                partitions.push(resp.with_error_code(code));
                continue;
            }
            let resp = match lookup(&partition, p.timestamp, version).await {
                Err(code) => resp.with_error_code(code),
                Ok(None) => resp,
                Ok(Some((offset, timestamp))) => {
                    let resp = resp.with_offset(offset).with_timestamp(timestamp);
                    if version >= 4 {
                        let epoch = if p.timestamp == LATEST {
                            Some(partition.leader_epoch().0)
                        } else {
                            partition.epoch_for_offset(offset).ok().flatten()
                        };
                        resp.with_leader_epoch(epoch.unwrap_or(-1))
                    } else {
                        resp
                    }
                }
            };
            partitions.push(resp);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

pub async fn offset_for_leader_epoch(
    s: &BrokerState,
    access: &Access,
    r: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    // A follower (replica id set) may ask about every partition with CLUSTER_ACTION.
    let follower = r.replica_id.0 >= 0 && access.cluster(ClusterAction);
    let access = if follower {
        &Access::everything()
    } else {
        access
    };
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            let partition = match allowed_leader(s, access, Describe, &t.topic.0, p.partition) {
                Ok(p) => p,
                Err(code) => {
                    partitions.push(resp.with_error_code(code));
                    continue;
                }
            };
            if let Err(code) =
                check_leader_epoch(p.current_leader_epoch, partition.leader_epoch().0)
            {
                partitions.push(resp.with_error_code(code));
                continue;
            }
            partitions.push(match partition.epoch_end_offset(p.leader_epoch) {
                Ok((epoch, end)) => resp.with_leader_epoch(epoch).with_end_offset(end),
                Err(e) => resp.with_error_code(storage_error(&e)),
            });
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

pub async fn delete_records(
    s: &BrokerState,
    access: &Access,
    r: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let partition = match allowed_leader(s, access, Delete, &t.name.0, p.partition_index) {
                Ok(p) => p,
                Err(code) => {
                    partitions.push(resp.with_error_code(code));
                    continue;
                }
            };
            let hw = partition.high_watermark();
            // -1 means "up to the high watermark"; nothing above it may be deleted.
            let target = if p.offset == -1 { hw } else { p.offset };
            if target < 0 || target > hw {
                partitions.push(resp.with_error_code(err(ResponseError::OffsetOutOfRange)));
                continue;
            }
            partitions.push(match partition.delete_records(target).await {
                Ok(low) => resp.with_low_watermark(low),
                Err(e) => resp.with_error_code(storage_error(&e)),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
