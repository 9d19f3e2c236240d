//! AlterPartitionReassignments and ListPartitionReassignments (KIP-455): move a partition's
//! replicas to other brokers while it goes on serving. Each partition's change is one
//! controller request ([`ControllerRequest::Reassign`]); the controller checks the target
//! against the site policy, the new replicas copy from the leader as followers, and the
//! controller completes the move once all of them are in sync. Both need Alter / Describe on
//! the cluster (checked at the dispatch point, [`super::authorize`]).

use std::collections::HashSet;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use kafka_protocol::protocol::StrBytes;
use quorum::controller::{ControllerError, ControllerRequest, ControllerResponse};
use quorum::ids::{NodeId, PartitionKey};
use quorum::metadata::PartitionState;

use super::{err, text};
use crate::state::BrokerState;

/// At most this many partitions in one request (each is a metadata commit).
const PARTITIONS_PER_REQUEST_MAX: usize = 10_000;
/// How long to wait for this broker to apply a committed change before answering.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The protocol's error for a refused reassignment.
fn code_of(e: &ControllerError) -> i16 {
    err(match e {
        ControllerError::NoReassignment(_) => ResponseError::NoReassignmentInProgress,
        ControllerError::UnknownTopic => ResponseError::UnknownTopicOrPartition,
        ControllerError::Policy(_) | ControllerError::Invalid(_) => {
            ResponseError::InvalidReplicaAssignment
        }
        ControllerError::NotCommitted(_) => ResponseError::RequestTimedOut,
        _ => ResponseError::UnknownServerError,
    })
}

pub async fn alter(
    s: &BrokerState,
    r: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let count: usize = r.topics.iter().map(|t| t.partitions.len()).sum();
    if count > PARTITIONS_PER_REQUEST_MAX {
        return AlterPartitionReassignmentsResponse::default()
            .with_error_code(err(ResponseError::InvalidRequest))
            .with_error_message(text(format!(
                "{count} partitions in one request, at most {PARTITIONS_PER_REQUEST_MAX}"
            )));
    }
    let mut seen = HashSet::new();
    let mut responses = Vec::with_capacity(r.topics.len());
    for t in &r.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let result = if seen.insert((t.name.0.clone(), p.partition_index)) {
                let target = p
                    .replicas
                    .as_ref()
                    .map(|ids| ids.iter().map(|b| b.0).collect::<Vec<i32>>());
                let rf_fixed = !r.allow_replication_factor_change;
                reassign(s, &t.name.0, p.partition_index, target, rf_fixed).await
            } else {
                Err((
                    err(ResponseError::InvalidRequest),
                    "partition appears more than once in the request".into(),
                ))
            };
            let (code, message) = result.err().map_or((0, None), |(c, m)| (c, text(m)));
            partitions.push(
                ReassignablePartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(code)
                    .with_error_message(message),
            );
        }
        responses.push(
            ReassignableTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions),
        );
    }
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(r.allow_replication_factor_change)
        .with_responses(responses)
}

/// Start (or with `None`, cancel) one partition's move; answered once this broker has
/// applied it, so that a List right after sees it.
async fn reassign(
    s: &BrokerState,
    topic: &str,
    index: i32,
    target: Option<Vec<i32>>,
    rf_fixed: bool,
) -> Result<(), (i16, String)> {
    let state = s.metadata();
    let unknown = || {
        (
            err(ResponseError::UnknownTopicOrPartition),
            format!("no partition {topic}-{index}"),
        )
    };
    let t = state.topic_by_name(topic).ok_or_else(unknown)?;
    let key = PartitionKey { topic: t.id, index };
    let p = state.partition(key).ok_or_else(unknown)?;
    let target = match target {
        None => None,
        Some(ids) => Some(node_ids(&ids).ok_or((
            err(ResponseError::InvalidReplicaAssignment),
            format!("{ids:?} are not all broker ids"),
        ))?),
    };
    if let Some(target) = &target
        && rf_fixed
        && target.len() != p.original().len()
    {
        return Err((
            err(ResponseError::InvalidReplicationFactor),
            format!(
                "{} replicas would change the replication factor {} (allow_replication_factor_change is false)",
                target.len(),
                p.original().len()
            ),
        ));
    }
    let request = ControllerRequest::Reassign {
        partition: key,
        target,
    };
    match s.cluster.call(request).await {
        Ok(ControllerResponse::Applied { index }) => {
            // Committed: a slow local apply does not make it fail.
            if !s.replicas.wait_reconciled(index, APPLY_TIMEOUT).await {
                tracing::warn!(
                    topic,
                    partition = index,
                    "a reassignment is not applied here yet"
                );
            }
            tracing::info!(topic, partition = index, "reassignment changed");
            Ok(())
        }
        Ok(other) => Err((
            err(ResponseError::UnknownServerError),
            format!("unexpected controller answer {other:?}"),
        )),
        Err(e) => Err((code_of(&e), e.to_string())),
    }
}

fn node_ids(ids: &[i32]) -> Option<Vec<NodeId>> {
    ids.iter().map(|id| NodeId::from_kafka(*id)).collect()
}

fn kafka_ids(nodes: &[NodeId]) -> Vec<BrokerId> {
    nodes.iter().map(|n| BrokerId(n.kafka())).collect()
}

fn ongoing(index: usize, p: &PartitionState) -> OngoingPartitionReassignment {
    OngoingPartitionReassignment::default()
        .with_partition_index(index as i32)
        .with_replicas(kafka_ids(&p.replicas))
        .with_adding_replicas(kafka_ids(&p.adding))
        .with_removing_replicas(kafka_ids(&p.removing))
}

/// The moves in progress: every one, or those of the partitions asked for (an unknown one
/// is left out, as Kafka does).
pub fn list(
    s: &BrokerState,
    r: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let state = s.metadata();
    let mut topics = Vec::new();
    let wanted: Option<Vec<(String, Vec<i32>)>> = r.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    for t in state.topics.values() {
        let asked: Option<&Vec<i32>> = match &wanted {
            None => None,
            Some(w) => match w.iter().find(|(n, _)| **n == *t.name) {
                Some((_, indexes)) => Some(indexes),
                None => continue,
            },
        };
        let partitions: Vec<OngoingPartitionReassignment> = t
            .partitions
            .iter()
            .enumerate()
            .filter(|(i, p)| p.reassigning() && asked.is_none_or(|a| a.contains(&(*i as i32))))
            .map(|(i, p)| ongoing(i, p))
            .collect();
        if !partitions.is_empty() {
            topics.push(
                OngoingTopicReassignment::default()
                    .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(
                        t.name.to_string(),
                    )))
                    .with_partitions(partitions),
            );
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
