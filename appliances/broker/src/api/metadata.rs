//! Metadata: brokers, topics and partition leaders; creates missing topics when allowed.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::err;
use crate::catalog::TopicInfo;
use crate::state::BrokerState;
use crate::topics::{NewTopic, TopicError};

/// Every operation, for clients that ask for authorized operations (no ACLs yet).
const ALL_TOPIC_OPERATIONS: i32 = 0b1_1111_1111_1000;

fn topic_entry(s: &BrokerState, t: &TopicInfo, with_ops: bool) -> MetadataResponseTopic {
    let node = BrokerId(s.node_id);
    let partitions = (0..t.partitions)
        .map(|i| {
            let epoch = s
                .topics
                .partition(&t.name, i)
                .map_or(0, |p| p.leader_epoch());
            MetadataResponsePartition::default()
                .with_partition_index(i)
                .with_leader_id(node)
                .with_leader_epoch(epoch)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    let mut entry = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.to_string()))))
        .with_topic_id(t.id)
        .with_partitions(partitions);
    if with_ops {
        entry = entry.with_topic_authorized_operations(ALL_TOPIC_OPERATIONS);
    }
    entry
}

fn error_entry(name: Option<&str>, id: Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(name.map(|n| TopicName(StrBytes::from_string(n.to_string()))))
        .with_topic_id(id)
}

pub async fn handle(s: &Arc<BrokerState>, version: i16, r: MetadataRequest) -> MetadataResponse {
    let with_ops = version >= 8 && r.include_topic_authorized_operations;
    // v0 asks for all topics with an empty list; later versions with null.
    let requested = match r.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(list),
    };
    let allow_create = s.config.topics.auto_create && (version < 4 || r.allow_auto_topic_creation);
    let topics = match requested {
        None => s
            .topics
            .list()
            .iter()
            .map(|t| topic_entry(s, t, with_ops))
            .collect(),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for wanted in list {
                let entry = match wanted.name {
                    Some(name) => lookup_or_create(s, &name, allow_create, with_ops).await,
                    None => match s.topics.get_by_id(&wanted.topic_id) {
                        Some(t) => topic_entry(s, &t, with_ops),
                        None => {
                            error_entry(None, wanted.topic_id, err(ResponseError::UnknownTopicId))
                        }
                    },
                };
                out.push(entry);
            }
            out
        }
    };
    let (host, port) = &s.advertised;
    let broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(s.node_id))
        .with_host(StrBytes::from_string(host.clone()))
        .with_port(i32::from(*port))
        .with_rack(s.config.rack.clone().map(StrBytes::from_string));
    MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(Some(StrBytes::from_string(s.cluster_id.clone())))
        .with_controller_id(BrokerId(s.node_id))
        .with_topics(topics)
}

async fn lookup_or_create(
    s: &BrokerState,
    name: &str,
    allow_create: bool,
    with_ops: bool,
) -> MetadataResponseTopic {
    if let Some(t) = s.topics.get(name) {
        return topic_entry(s, &t, with_ops);
    }
    if let Err(e) = crate::topics::validate_name(name) {
        tracing::debug!(topic = name, error = %e, "metadata for an invalid topic name");
        return error_entry(
            Some(name),
            Uuid::nil(),
            err(ResponseError::InvalidTopicException),
        );
    }
    if !allow_create {
        return error_entry(
            Some(name),
            Uuid::nil(),
            err(ResponseError::UnknownTopicOrPartition),
        );
    }
    let new = NewTopic {
        name: name.to_string(),
        partitions: -1,
        replication_factor: -1,
        configs: Default::default(),
    };
    match s.topics.create(new, false).await {
        Ok(t) => topic_entry(s, &t, with_ops),
        // Created concurrently by another request.
        Err(TopicError::AlreadyExists(_)) => match s.topics.get(name) {
            Some(t) => topic_entry(s, &t, with_ops),
            None => error_entry(
                Some(name),
                Uuid::nil(),
                err(ResponseError::LeaderNotAvailable),
            ),
        },
        Err(e) => {
            tracing::warn!(topic = name, error = %e, "auto-creating a topic failed");
            error_entry(
                Some(name),
                Uuid::nil(),
                err(ResponseError::LeaderNotAvailable),
            )
        }
    }
}
