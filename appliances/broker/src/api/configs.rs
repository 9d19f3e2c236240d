//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.
//!
//! Topic configs are real: every key listed has an effect (see [`crate::topic_config`]).
//! Broker configs are described from the appliance's configuration file and are read-only at
//! runtime: an appliance is reconfigured by its image or cloud-init, not by clients.

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{err, text};
use crate::authz::Access;
use crate::config::{BrokerConfig, Durability};
use crate::state::BrokerState;
use crate::topic_config::{self, ConfigSource, ConfigType};
use crate::topics::TopicError;
use acl::Operation;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

fn ms(d: std::time::Duration) -> String {
    d.as_millis().to_string()
}

/// The broker's settings under Kafka's names, as `(name, value, type)`.
fn broker_entries(c: &BrokerConfig) -> Vec<(&'static str, String, ConfigType)> {
    let t = &c.topics;
    let g = &c.groups;
    let (flush_messages, flush_ms) = match c.durability {
        Durability::Sync => ("1".to_string(), "0".to_string()),
        Durability::Interval { interval } => (i64::MAX.to_string(), ms(interval)),
    };
    vec![
        (
            "auto.create.topics.enable",
            t.auto_create.to_string(),
            ConfigType::Boolean,
        ),
        ("broker.id", c.node_id.to_string(), ConfigType::Int),
        (
            "broker.rack",
            c.rack.clone().unwrap_or_default(),
            ConfigType::String,
        ),
        (
            "connections.max.idle.ms",
            ms(c.kafka.idle_timeout),
            ConfigType::Long,
        ),
        (
            "default.replication.factor",
            t.replication_factor.to_string(),
            ConfigType::Int,
        ),
        (
            "group.initial.rebalance.delay.ms",
            ms(g.initial_rebalance_delay),
            ConfigType::Int,
        ),
        (
            "group.max.session.timeout.ms",
            ms(g.max_session_timeout),
            ConfigType::Int,
        ),
        (
            "group.min.session.timeout.ms",
            ms(g.min_session_timeout),
            ConfigType::Int,
        ),
        (
            "log.cleaner.backoff.ms",
            ms(t.cleaner_check_interval),
            ConfigType::Long,
        ),
        (
            "log.dirs",
            c.data_dir.display().to_string(),
            ConfigType::String,
        ),
        (
            "log.flush.interval.messages",
            flush_messages,
            ConfigType::Long,
        ),
        ("log.flush.interval.ms", flush_ms, ConfigType::Long),
        (
            "log.index.interval.bytes",
            t.index_interval_bytes.to_string(),
            ConfigType::Int,
        ),
        (
            "log.retention.bytes",
            t.retention_bytes.map_or("-1".into(), |b| b.to_string()),
            ConfigType::Long,
        ),
        (
            "log.retention.check.interval.ms",
            ms(t.retention_check_interval),
            ConfigType::Long,
        ),
        (
            "log.retention.ms",
            t.retention.map_or("-1".into(), ms),
            ConfigType::Long,
        ),
        ("log.roll.ms", ms(t.segment_age), ConfigType::Long),
        (
            "log.segment.bytes",
            t.segment_bytes.to_string(),
            ConfigType::Int,
        ),
        (
            "message.max.bytes",
            t.max_message_bytes.to_string(),
            ConfigType::Int,
        ),
        (
            "min.insync.replicas",
            t.min_insync_replicas.to_string(),
            ConfigType::Int,
        ),
        ("num.partitions", t.partitions.to_string(), ConfigType::Int),
        (
            "offsets.retention.minutes",
            (g.offsets_retention.as_secs() / 60).to_string(),
            ConfigType::Int,
        ),
        (
            "offsets.topic.num.partitions",
            g.offsets_partitions.to_string(),
            ConfigType::Int,
        ),
        (
            "producer.id.expiration.ms",
            ms(t.producer_id_expiration),
            ConfigType::Int,
        ),
        (
            "socket.request.max.bytes",
            c.kafka.max_request_size.to_string(),
            ConfigType::Int,
        ),
    ]
}

/// Whether `access` may do `op` to a config resource: a topic's, or the broker's (the
/// cluster's, for ACLs).
fn permitted(
    access: &Access,
    op: Operation,
    resource_type: i8,
    name: &str,
) -> Result<(), (i16, String)> {
    match resource_type {
        TOPIC if !access.topic(op, name) => Err((
            err(ResponseError::TopicAuthorizationFailed),
            format!("not authorized for the configs of {name}"),
        )),
        BROKER if !access.cluster(op) => Err((
            err(ResponseError::ClusterAuthorizationFailed),
            "not authorized for the broker's configs".into(),
        )),
        _ => Ok(()),
    }
}

fn wanted(keys: &Option<Vec<StrBytes>>, name: &str) -> bool {
    keys.as_ref()
        .is_none_or(|k| k.is_empty() || k.iter().any(|x| &**x == name))
}

pub fn describe(
    s: &BrokerState,
    access: &Access,
    version: i16,
    r: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(r.resources.len());
    for res in r.resources {
        let result = DescribeConfigsResult::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let fail = |code, message: String| {
            result
                .clone()
                .with_error_code(code)
                .with_error_message(text(message))
        };
        let permitted = permitted(
            access,
            Operation::DescribeConfigs,
            res.resource_type,
            &res.resource_name,
        );
        if let Err((code, message)) = permitted {
            results.push(fail(code, message));
            continue;
        }
        let entries = match res.resource_type {
            TOPIC => match s.topics.get(&res.resource_name) {
                None => {
                    results.push(fail(
                        err(ResponseError::UnknownTopicOrPartition),
                        format!("unknown topic '{}'", &*res.resource_name),
                    ));
                    continue;
                }
                Some(info) => topic_config::describe(&info.configs, s.topics.defaults())
                    .into_iter()
                    .filter(|e| wanted(&res.configuration_keys, e.name))
                    .map(|e| {
                        let mut synonyms = Vec::new();
                        if r.include_synonyms {
                            if e.source == ConfigSource::TopicConfig {
                                synonyms.push(
                                    DescribeConfigsSynonym::default()
                                        .with_name(StrBytes::from_static_str(e.name))
                                        .with_value(text(e.value.clone()))
                                        .with_source(ConfigSource::TopicConfig as i8),
                                );
                            }
                            synonyms.push(
                                DescribeConfigsSynonym::default()
                                    .with_name(StrBytes::from_static_str(e.broker_synonym))
                                    .with_value(text(e.default.clone()))
                                    .with_source(ConfigSource::DefaultConfig as i8),
                            );
                        }
                        let entry = DescribeConfigsResourceResult::default()
                            .with_name(StrBytes::from_static_str(e.name))
                            .with_value(text(e.value))
                            .with_read_only(e.read_only)
                            .with_config_source(e.source as i8)
                            .with_synonyms(synonyms);
                        if version >= 3 {
                            let doc = r
                                .include_documentation
                                .then(|| StrBytes::from_static_str(e.doc));
                            entry.with_config_type(e.kind as i8).with_documentation(doc)
                        } else {
                            entry
                        }
                    })
                    .collect(),
            },
            BROKER => {
                let name = &*res.resource_name;
                if !name.is_empty() && name != s.node_id.to_string() {
                    results.push(fail(
                        err(ResponseError::InvalidRequest),
                        format!("this is broker {}, not {name}", s.node_id),
                    ));
                    continue;
                }
                broker_entries(&s.config)
                    .into_iter()
                    .filter(|(n, _, _)| wanted(&res.configuration_keys, n))
                    .map(|(n, v, kind)| {
                        let entry = DescribeConfigsResourceResult::default()
                            .with_name(StrBytes::from_static_str(n))
                            .with_value(text(v))
                            .with_read_only(true)
                            .with_config_source(ConfigSource::StaticBrokerConfig as i8);
                        if version >= 3 {
                            entry.with_config_type(kind as i8).with_documentation(None)
                        } else {
                            entry
                        }
                    })
                    .collect()
            }
            other => {
                results.push(fail(
                    err(ResponseError::InvalidRequest),
                    format!("resource type {other} is not supported"),
                ));
                continue;
            }
        };
        results.push(result.with_configs(entries));
    }
    DescribeConfigsResponse::default().with_results(results)
}

fn topic_error(e: &TopicError) -> i16 {
    match e {
        TopicError::Unknown(_) | TopicError::UnknownId(_) => {
            err(ResponseError::UnknownTopicOrPartition)
        }
        TopicError::Storage(_) => err(ResponseError::KafkaStorageError),
        _ => err(ResponseError::InvalidConfig),
    }
}

const BROKER_READ_ONLY: &str = "broker settings are read-only at runtime: change the appliance configuration (image or cloud-init)";

pub async fn alter(
    s: &BrokerState,
    access: &Access,
    r: AlterConfigsRequest,
) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let mut out = Vec::with_capacity(r.resources.len());
    for res in r.resources {
        let resp = AlterConfigsResourceResponse::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let permitted = permitted(
            access,
            Operation::AlterConfigs,
            res.resource_type,
            &res.resource_name,
        );
        let outcome: Result<(), (i16, String)> = match res.resource_type {
            _ if permitted.is_err() => permitted,
            TOPIC => {
                let mut configs = BTreeMap::new();
                let mut problem = None;
                for c in &res.configs {
                    match &c.value {
                        Some(v) => {
                            configs.insert(c.name.to_string(), v.to_string());
                        }
                        None => problem = Some(format!("config {} has a null value", &*c.name)),
                    }
                }
                match problem {
                    Some(p) => Err((err(ResponseError::InvalidConfig), p)),
                    None => s
                        .topics
                        .set_configs(&res.resource_name, |_| Ok(configs), r.validate_only)
                        .await
                        .map_err(|e| (topic_error(&e), e.to_string())),
                }
            }
            BROKER => Err((err(ResponseError::InvalidConfig), BROKER_READ_ONLY.into())),
            other => Err((
                err(ResponseError::InvalidRequest),
                format!("resource type {other} is not supported"),
            )),
        };
        out.push(match outcome {
            Ok(()) => resp,
            Err((code, m)) => resp.with_error_code(code).with_error_message(text(m)),
        });
    }
    AlterConfigsResponse::default().with_responses(out)
}

/// Apply one incremental operation to a topic's overrides.
fn apply_op(
    configs: &mut BTreeMap<String, String>,
    name: &str,
    op: i8,
    value: Option<&str>,
    defaults: &crate::config::TopicDefaults,
) -> Result<(), TopicError> {
    let bad = |m: String| Err(TopicError::InvalidConfig(m));
    let key = topic_config::key(name)
        .ok_or_else(|| TopicError::InvalidConfig(format!("unknown topic config {name:?}")))?;
    match op {
        SET => match value {
            Some(v) => {
                configs.insert(name.to_string(), v.to_string());
                Ok(())
            }
            None => bad(format!("SET {name} needs a value")),
        },
        DELETE => {
            configs.remove(name);
            Ok(())
        }
        APPEND | SUBTRACT => {
            if key.kind != ConfigType::List {
                return bad(format!(
                    "{name} is not a list: APPEND and SUBTRACT do not apply"
                ));
            }
            let Some(v) = value else {
                return bad(format!("{name} needs a value"));
            };
            let current = configs.get(name).cloned().unwrap_or_else(|| {
                topic_config::describe(&BTreeMap::new(), defaults)
                    .into_iter()
                    .find(|e| e.name == name)
                    .map(|e| e.value)
                    .unwrap_or_default()
            });
            let mut items: Vec<String> = current
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect();
            for item in v.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                if op == APPEND {
                    if !items.iter().any(|i| i == item) {
                        items.push(item.to_string());
                    }
                } else {
                    items.retain(|i| i != item);
                }
            }
            configs.insert(name.to_string(), items.join(","));
            Ok(())
        }
        other => bad(format!("unknown operation {other}")),
    }
}

pub async fn incremental_alter(
    s: &BrokerState,
    access: &Access,
    r: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let mut out = Vec::with_capacity(r.resources.len());
    for res in r.resources {
        let resp = AlterConfigsResourceResponse::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let mut names = HashSet::new();
        let duplicate = res
            .configs
            .iter()
            .find(|c| !names.insert(c.name.to_string()))
            .map(|c| c.name.to_string());
        let permitted = permitted(
            access,
            Operation::AlterConfigs,
            res.resource_type,
            &res.resource_name,
        );
        let outcome: Result<(), (i16, String)> = match (res.resource_type, duplicate) {
            _ if permitted.is_err() => permitted,
            (_, Some(d)) => Err((
                err(ResponseError::InvalidRequest),
                format!("config {d} appears more than once"),
            )),
            (TOPIC, None) => {
                let ops: Vec<(String, i8, Option<String>)> = res
                    .configs
                    .iter()
                    .map(|c| {
                        (
                            c.name.to_string(),
                            c.config_operation,
                            c.value.as_ref().map(|v| v.to_string()),
                        )
                    })
                    .collect();
                let defaults = s.topics.defaults().clone();
                s.topics
                    .set_configs(
                        &res.resource_name,
                        move |current| {
                            let mut configs = current.clone();
                            for (name, op, value) in &ops {
                                apply_op(&mut configs, name, *op, value.as_deref(), &defaults)?;
                            }
                            Ok(configs)
                        },
                        r.validate_only,
                    )
                    .await
                    .map_err(|e| (topic_error(&e), e.to_string()))
            }
            (BROKER, None) => Err((err(ResponseError::InvalidConfig), BROKER_READ_ONLY.into())),
            (other, None) => Err((
                err(ResponseError::InvalidRequest),
                format!("resource type {other} is not supported"),
            )),
        };
        out.push(match outcome {
            Ok(()) => resp,
            Err((code, m)) => resp.with_error_code(code).with_error_message(text(m)),
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(out)
}
