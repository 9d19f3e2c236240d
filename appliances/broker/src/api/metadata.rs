//! Metadata: every live broker with its rack (site), every partition's leader, replicas,
//! in-sync set and leader epoch, as the metadata quorum decided them; creates missing topics
//! when allowed. Replicas on fenced brokers are listed as offline.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use quorum::ids::NodeId;
use quorum::metadata::ClusterState;

use super::err;
use crate::authz::Access;
use crate::replica_manager::OFFSETS_TOPIC;
use crate::state::{BrokerState, client_endpoint};
use crate::topics::{NewTopic, TopicError, TopicInfo};
use acl::Operation;

fn ids(nodes: &[NodeId]) -> Vec<BrokerId> {
    nodes.iter().map(|n| BrokerId(n.kafka())).collect()
}

/// A topic as the metadata has it. `stale`: this broker has lost the controller (its lease
/// expired), so what it knows of leaders may be out of date: it names no leader, and clients
/// ask another broker (their metadata refresh goes to any broker they know).
fn topic_entry(
    state: &ClusterState,
    t: &TopicInfo,
    ops: Option<&Access>,
    stale: bool,
) -> MetadataResponseTopic {
    let partitions = state
        .topics
        .get(&t.id)
        .map(|topic| {
            topic
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let offline: Vec<NodeId> = p
                        .replicas
                        .iter()
                        .copied()
                        .filter(|n| state.brokers.get(n).is_none_or(|b| b.fenced))
                        .collect();
                    let leader = p.leader.filter(|_| !stale);
                    let entry = MetadataResponsePartition::default()
                        .with_partition_index(i as i32)
                        .with_leader_id(BrokerId(leader.map_or(-1, |l| l.kafka())))
                        .with_leader_epoch(if stale { -1 } else { p.leader_epoch.0 })
                        .with_replica_nodes(ids(&p.replicas))
                        .with_isr_nodes(ids(&p.isr))
                        .with_offline_replicas(ids(&offline));
                    match leader {
                        Some(_) => entry,
                        None => entry.with_error_code(err(ResponseError::LeaderNotAvailable)),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let mut entry = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.to_string()))))
        .with_topic_id(t.id)
        .with_is_internal(&*t.name == OFFSETS_TOPIC)
        .with_partitions(partitions);
    if let Some(access) = ops {
        entry = entry.with_topic_authorized_operations(access.topic_operations(&t.name));
    }
    entry
}

fn error_entry(name: Option<&str>, id: Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(name.map(|n| TopicName(StrBytes::from_string(n.to_string()))))
        .with_topic_id(id)
}

pub async fn handle(
    s: &Arc<BrokerState>,
    access: &Access,
    listener: &str,
    version: i16,
    r: MetadataRequest,
) -> MetadataResponse {
    let ops = (version >= 8 && r.include_topic_authorized_operations).then_some(access);
    // v0 asks for all topics with an empty list; later versions with null.
    let requested = match r.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(list),
    };
    let allow_create = s.config.topics.auto_create && (version < 4 || r.allow_auto_topic_creation);
    let topics = match requested {
        None => {
            let state = s.metadata();
            let stale = !s.cluster.lease_valid();
            // Topics the client may not describe are left out, as if they did not exist.
            s.topics
                .list()
                .iter()
                .filter(|t| access.topic(Operation::Describe, &t.name))
                .map(|t| topic_entry(&state, t, ops, stale))
                .collect()
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for wanted in list {
                let denied = err(ResponseError::TopicAuthorizationFailed);
                let entry = match wanted.name {
                    Some(name) if !access.topic(Operation::Describe, &name) => {
                        error_entry(Some(&name), Uuid::nil(), denied)
                    }
                    Some(name) => {
                        let create = allow_create && access.create_topic(&name);
                        lookup_or_create(s, &name, create, ops).await
                    }
                    None => match s.topics.get_by_id(&wanted.topic_id) {
                        Some(t) if !access.topic(Operation::Describe, &t.name) => {
                            error_entry(None, wanted.topic_id, denied)
                        }
                        Some(t) => topic_entry(&s.metadata(), &t, ops, !s.cluster.lease_valid()),
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
    let state = s.metadata();
    MetadataResponse::default()
        .with_brokers(brokers(s, &state, listener))
        .with_cluster_id(Some(StrBytes::from_string(s.cluster_id.clone())))
        .with_controller_id(BrokerId(controller_id(s)))
        .with_topics(topics)
}

/// Live brokers with their endpoint on `listener` and their site.
pub fn brokers(
    s: &BrokerState,
    state: &ClusterState,
    listener: &str,
) -> Vec<MetadataResponseBroker> {
    s.live_brokers(state)
        .into_iter()
        .map(|b| {
            let (host, port) = client_endpoint(&b, listener);
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node.kafka()))
                .with_host(StrBytes::from_string(host))
                .with_port(port)
                .with_rack(Some(StrBytes::from_string(b.site.to_string())))
        })
        .collect()
}

/// The controller as clients see it: the quorum's leader when it is a broker, else this
/// broker (clients send controller requests to any broker, which forwards them).
pub fn controller_id(s: &BrokerState) -> i32 {
    let state = s.metadata();
    s.cluster
        .node
        .leader()
        .map(|(id, _)| id)
        .filter(|id| state.brokers.get(id).is_some_and(|b| !b.fenced))
        .map_or(s.node_id, |id| id.kafka())
}

async fn lookup_or_create(
    s: &BrokerState,
    name: &str,
    allow_create: bool,
    ops: Option<&Access>,
) -> MetadataResponseTopic {
    if let Some(t) = s.topics.get(name) {
        return topic_entry(&s.metadata(), &t, ops, !s.cluster.lease_valid());
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
        Ok(t) => topic_entry(&s.metadata(), &t, ops, !s.cluster.lease_valid()),
        // Created concurrently by another request.
        Err(TopicError::AlreadyExists(_)) => match s.topics.get(name) {
            Some(t) => topic_entry(&s.metadata(), &t, ops, !s.cluster.lease_valid()),
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
