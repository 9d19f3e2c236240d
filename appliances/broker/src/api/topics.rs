//! CreateTopics, DeleteTopics and CreatePartitions.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{err, text};
use crate::authz::Access;
use crate::state::BrokerState;
use crate::topic_config;
use crate::topics::TopicInfo;
use crate::topics::{NewTopic, TopicError};
use acl::Operation;

fn topic_error(e: &TopicError) -> i16 {
    match e {
        TopicError::AlreadyExists(_) => err(ResponseError::TopicAlreadyExists),
        TopicError::Unknown(_) => err(ResponseError::UnknownTopicOrPartition),
        TopicError::UnknownId(_) => err(ResponseError::UnknownTopicId),
        TopicError::InvalidName(_) => err(ResponseError::InvalidTopicException),
        TopicError::InvalidPartitions(_) => err(ResponseError::InvalidPartitions),
        TopicError::InvalidReplicationFactor(_) => err(ResponseError::InvalidReplicationFactor),
        TopicError::InvalidConfig(_) => err(ResponseError::InvalidConfig),
        TopicError::Storage(_) => err(ResponseError::KafkaStorageError),
        TopicError::NotAuthorized(_) => err(ResponseError::TopicAuthorizationFailed),
    }
}

/// Turn a CreateTopics entry into a [`NewTopic`], checking what only the request can tell.
fn new_topic(s: &BrokerState, t: &CreatableTopic) -> Result<NewTopic, (i16, String)> {
    let mut configs = BTreeMap::new();
    for c in &t.configs {
        let Some(value) = &c.value else {
            return Err((
                err(ResponseError::InvalidConfig),
                format!("config {} has a null value", &*c.name),
            ));
        };
        configs.insert(c.name.to_string(), value.to_string());
    }
    let (mut partitions, mut replication_factor) = (t.num_partitions, t.replication_factor);
    if !t.assignments.is_empty() {
        if partitions != -1 || replication_factor != -1 {
            return Err((
                err(ResponseError::InvalidRequest),
                "with a replica assignment, num_partitions and replication_factor must be -1"
                    .into(),
            ));
        }
        let mut sorted: Vec<_> = t.assignments.iter().map(|a| a.partition_index).collect();
        sorted.sort_unstable();
        if sorted != (0..t.assignments.len() as i32).collect::<Vec<_>>() {
            return Err((
                err(ResponseError::InvalidReplicaAssignment),
                "partitions must be numbered 0..n".into(),
            ));
        }
        for a in &t.assignments {
            if a.broker_ids.iter().any(|b| b.0 != s.node_id) || a.broker_ids.is_empty() {
                return Err((
                    err(ResponseError::InvalidReplicaAssignment),
                    format!(
                        "partition {} is assigned to an unknown broker",
                        a.partition_index
                    ),
                ));
            }
        }
        partitions = t.assignments.len() as i32;
        replication_factor = t.assignments[0].broker_ids.len() as i16;
    }
    Ok(NewTopic {
        name: t.name.0.to_string(),
        partitions,
        replication_factor,
        configs,
    })
}

fn created(s: &BrokerState, version: i16, info: &TopicInfo) -> CreatableTopicResult {
    let mut r = CreatableTopicResult::default()
        .with_name(TopicName(StrBytes::from_string(info.name.to_string())))
        .with_topic_id(info.id);
    if version >= 5 {
        let configs = topic_config::describe(&info.configs, s.topics.defaults())
            .into_iter()
            .map(|e| {
                CreatableTopicConfigs::default()
                    .with_name(StrBytes::from_static_str(e.name))
                    .with_value(text(e.value))
                    .with_read_only(e.read_only)
                    .with_config_source(e.source as i8)
            })
            .collect();
        r = r
            .with_num_partitions(info.partitions)
            .with_replication_factor(info.replication_factor)
            .with_configs(Some(configs));
    }
    r
}

pub async fn create(
    s: &BrokerState,
    access: &Access,
    version: i16,
    r: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut seen = HashSet::new();
    let duplicates: HashSet<String> = r
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.0.to_string()))
        .map(|t| t.name.0.to_string())
        .collect();
    let mut results = Vec::with_capacity(r.topics.len());
    for t in &r.topics {
        let failed = |code: i16, message: String| {
            CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(code)
                .with_error_message(text(message))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
        };
        if duplicates.contains(&*t.name.0) {
            results.push(failed(
                err(ResponseError::InvalidRequest),
                "topic appears more than once in the request".into(),
            ));
            continue;
        }
        if !access.create_topic(&t.name) {
            let e = err(ResponseError::TopicAuthorizationFailed);
            results.push(failed(
                e,
                format!("not authorized to create {}", &*t.name.0),
            ));
            continue;
        }
        let new = match new_topic(s, t) {
            Ok(n) => n,
            Err((code, message)) => {
                results.push(failed(code, message));
                continue;
            }
        };
        results.push(match s.topics.create(new, r.validate_only).await {
            Ok(info) => created(s, version, &info),
            Err(e) => failed(topic_error(&e), e.to_string()),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete(
    s: &BrokerState,
    access: &Access,
    version: i16,
    r: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v6 names topics by name or id; earlier versions by name only.
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        r.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        r.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let mut results = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let result = DeletableTopicResult::default()
            .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))))
            .with_topic_id(id);
        let info = match (&name, id.is_nil()) {
            (Some(_), false) => Err(TopicError::InvalidName(
                "give a topic name or an id, not both".into(),
            )),
            (Some(n), true) => s
                .topics
                .get(n)
                .ok_or_else(|| TopicError::Unknown(n.clone())),
            (None, false) => s.topics.get_by_id(&id).ok_or(TopicError::UnknownId(id)),
            (None, true) => Err(TopicError::UnknownId(id)),
        };
        let outcome = match info {
            Ok(info) if !access.topic(Operation::Delete, &info.name) => {
                Err(TopicError::NotAuthorized(format!("delete {}", info.name)))
            }
            Ok(info) => s.topics.delete(info.id).await,
            Err(e) => Err(e),
        };
        results.push(match outcome {
            Ok(info) => {
                s.groups.remove_topic_offsets(&info.name).await;
                result
                    .with_name(Some(TopicName(StrBytes::from_string(
                        info.name.to_string(),
                    ))))
                    .with_topic_id(if version >= 6 { info.id } else { Uuid::nil() })
            }
            Err(e) => {
                let code = match &e {
                    TopicError::InvalidName(_) => err(ResponseError::InvalidRequest),
                    other => topic_error(other),
                };
                let r = result.with_error_code(code);
                if version >= 5 {
                    r.with_error_message(text(e.to_string()))
                } else {
                    r
                }
            }
        });
    }
    DeleteTopicsResponse::default().with_responses(results)
}

pub async fn create_partitions(
    s: &BrokerState,
    access: &Access,
    r: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut seen = HashSet::new();
    let mut results = Vec::with_capacity(r.topics.len());
    for t in &r.topics {
        let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        if !seen.insert(t.name.0.to_string()) {
            results.push(
                result
                    .with_error_code(err(ResponseError::InvalidRequest))
                    .with_error_message(text("topic appears more than once in the request")),
            );
            continue;
        }
        if !access.topic(Operation::Alter, &t.name) {
            results.push(
                result
                    .with_error_code(err(ResponseError::TopicAuthorizationFailed))
                    .with_error_message(text(format!("not authorized to alter {}", &*t.name.0))),
            );
            continue;
        }
        if let Some(assignments) = &t.assignments {
            let bad = assignments
                .iter()
                .any(|a| a.broker_ids.is_empty() || a.broker_ids.iter().any(|b| b.0 != s.node_id));
            if bad {
                results.push(
                    result
                        .with_error_code(err(ResponseError::InvalidReplicaAssignment))
                        .with_error_message(text("assignment names an unknown broker")),
                );
                continue;
            }
        }
        results.push(
            match s
                .topics
                .add_partitions(&t.name.0, t.count, r.validate_only)
                .await
            {
                Ok(()) => result,
                Err(e) => result
                    .with_error_code(topic_error(&e))
                    .with_error_message(text(e.to_string())),
            },
        );
    }
    CreatePartitionsResponse::default().with_results(results)
}
