//! Per-topic configuration under Kafka's names (`retention.ms`, `max.message.bytes`...):
//! which keys exist, how values are validated, what the defaults are (the broker's
//! [`TopicDefaults`]), and how a topic's overrides turn into a [`LogConfig`].
//!
//! A topic stores only its overrides; everything else follows the broker defaults, so a change
//! of the broker default applies to every topic that did not override it, as in Kafka.

use std::collections::BTreeMap;

use durable_log::{CompactionConfig, LogConfig, TimestampType};

use crate::config::{MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES, TopicDefaults};

/// Kafka `ConfigType` codes (DescribeConfigs v3+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// Kafka `ConfigSource` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    TopicConfig = 1,
    StaticBrokerConfig = 4,
    DefaultConfig = 5,
}

/// One key a topic may set.
pub struct TopicKey {
    pub name: &'static str,
    pub kind: ConfigType,
    /// The broker setting it defaults to (shown as a synonym).
    pub broker_synonym: &'static str,
    pub doc: &'static str,
    /// Accepted for compatibility but not settable (the broker decides).
    pub read_only: bool,
    default: fn(&TopicDefaults) -> String,
    validate: fn(&str) -> Result<(), String>,
}

fn long_in(v: &str, min: i64, max: i64) -> Result<(), String> {
    match v.trim().parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(()),
        Ok(n) => Err(format!("{n} is outside [{min}, {max}]")),
        Err(_) => Err(format!("{v:?} is not an integer")),
    }
}

fn ms(d: Option<std::time::Duration>) -> String {
    d.map_or("-1".to_string(), |d| d.as_millis().to_string())
}

fn any(_: &str) -> Result<(), String> {
    Ok(())
}

/// Every topic key, in Kafka's alphabetical order.
pub static TOPIC_KEYS: &[TopicKey] = &[
    TopicKey {
        name: "cleanup.policy",
        kind: ConfigType::List,
        broker_synonym: "log.cleanup.policy",
        doc: "\"delete\" removes old segments by retention. \"compact\" keeps the newest record \
              of every key (the log cleaner); both may be set.",
        read_only: false,
        default: |_| "delete".into(),
        validate: |v| {
            let ok = v
                .split(',')
                .map(str::trim)
                .all(|p| p == "delete" || p == "compact");
            if ok && !v.trim().is_empty() {
                Ok(())
            } else {
                Err(format!("{v:?} is not a list of delete, compact"))
            }
        },
    },
    TopicKey {
        name: "clk.stream.dedup",
        kind: ConfigType::Boolean,
        broker_synonym: "clk.stream.dedup",
        doc: "Recognise batches an edge gateway sends again by their clk-stream and clk-seq \
              headers, even after the producer's state expired (topics branches forward to).",
        read_only: false,
        default: |d| d.stream_dedup.to_string(),
        validate: |v| match v {
            "true" | "false" => Ok(()),
            _ => Err(format!("{v:?} is not true or false")),
        },
    },
    TopicKey {
        name: "compression.type",
        kind: ConfigType::String,
        broker_synonym: "compression.type",
        doc: "Batches are stored as the producer compressed them; recompression is not offered.",
        read_only: false,
        default: |_| "producer".into(),
        validate: |v| {
            if v == "producer" {
                Ok(())
            } else {
                Err(format!(
                    "{v:?}: only \"producer\" is supported (no recompression)"
                ))
            }
        },
    },
    TopicKey {
        name: "delete.retention.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.cleaner.delete.retention.ms",
        doc: "How long a tombstone of a compacted topic is kept after its segment was written.",
        read_only: false,
        default: |_| (24 * 3600 * 1000).to_string(),
        validate: |v| long_in(v, 0, i64::MAX),
    },
    TopicKey {
        name: "flush.messages",
        kind: ConfigType::Long,
        broker_synonym: "log.flush.interval.messages",
        doc: "Set by the broker's durability mode.",
        read_only: true,
        default: |_| "1".into(),
        validate: any,
    },
    TopicKey {
        name: "index.interval.bytes",
        kind: ConfigType::Int,
        broker_synonym: "log.index.interval.bytes",
        doc: "Bytes between entries of the offset and time indexes.",
        read_only: false,
        default: |d| d.index_interval_bytes.to_string(),
        validate: |v| long_in(v, 1, i32::MAX as i64),
    },
    TopicKey {
        name: "max.message.bytes",
        kind: ConfigType::Int,
        broker_synonym: "message.max.bytes",
        doc: "Largest record batch accepted.",
        read_only: false,
        default: |d| d.max_message_bytes.to_string(),
        validate: |v| long_in(v, 0, i32::MAX as i64),
    },
    TopicKey {
        name: "max.compaction.lag.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.cleaner.max.compaction.lag.ms",
        doc: "A record stays uncompacted at most this long, whatever the dirty ratio.",
        read_only: false,
        default: |_| i64::MAX.to_string(),
        validate: |v| long_in(v, 1, i64::MAX),
    },
    TopicKey {
        name: "message.timestamp.after.max.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.message.timestamp.after.max.ms",
        doc: "How far in the future a CreateTime timestamp may be.",
        read_only: false,
        default: |_| i64::MAX.to_string(),
        validate: |v| long_in(v, 0, i64::MAX),
    },
    TopicKey {
        name: "message.timestamp.before.max.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.message.timestamp.before.max.ms",
        doc: "How far in the past a CreateTime timestamp may be.",
        read_only: false,
        default: |_| i64::MAX.to_string(),
        validate: |v| long_in(v, 0, i64::MAX),
    },
    TopicKey {
        name: "message.timestamp.type",
        kind: ConfigType::String,
        broker_synonym: "log.message.timestamp.type",
        doc: "CreateTime (producer's clock) or LogAppendTime (broker's clock).",
        read_only: false,
        default: |d| match d.timestamp_type {
            TimestampType::CreateTime => "CreateTime".into(),
            TimestampType::LogAppendTime => "LogAppendTime".into(),
        },
        validate: |v| match v {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(format!("{v:?} is not CreateTime or LogAppendTime")),
        },
    },
    TopicKey {
        name: "min.cleanable.dirty.ratio",
        kind: ConfigType::Double,
        broker_synonym: "log.cleaner.min.cleanable.ratio",
        doc: "Compact when this share of the cleanable log is dirty (not compacted yet).",
        read_only: false,
        default: |_| "0.5".into(),
        validate: |v| match v.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(()),
            _ => Err(format!("{v:?} is not a number in [0, 1]")),
        },
    },
    TopicKey {
        name: "min.compaction.lag.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.cleaner.min.compaction.lag.ms",
        doc: "A record stays uncompacted at least this long.",
        read_only: false,
        default: |_| "0".into(),
        validate: |v| long_in(v, 0, i64::MAX),
    },
    TopicKey {
        name: "min.insync.replicas",
        kind: ConfigType::Int,
        broker_synonym: "min.insync.replicas",
        doc: "Replicas that must hold a batch before acks=all is answered.",
        read_only: false,
        default: |d| d.min_insync_replicas.to_string(),
        validate: |v| long_in(v, 1, i32::MAX as i64),
    },
    TopicKey {
        name: "retention.bytes",
        kind: ConfigType::Long,
        broker_synonym: "log.retention.bytes",
        doc: "Delete oldest segments while a partition is larger (-1: no limit).",
        read_only: false,
        default: |d| d.retention_bytes.map_or("-1".into(), |b| b.to_string()),
        validate: |v| long_in(v, -1, i64::MAX),
    },
    TopicKey {
        name: "retention.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.retention.ms",
        doc: "Delete segments whose newest record is older (-1: keep forever).",
        read_only: false,
        default: |d| ms(d.retention),
        validate: |v| long_in(v, -1, i64::MAX),
    },
    TopicKey {
        name: "segment.bytes",
        kind: ConfigType::Int,
        broker_synonym: "log.segment.bytes",
        doc: "Size at which a new segment file is started.",
        read_only: false,
        default: |d| d.segment_bytes.to_string(),
        validate: |v| long_in(v, MIN_SEGMENT_BYTES as i64, MAX_SEGMENT_BYTES as i64),
    },
    TopicKey {
        name: "segment.ms",
        kind: ConfigType::Long,
        broker_synonym: "log.roll.ms",
        doc: "Age at which a new segment file is started.",
        read_only: false,
        default: |d| d.segment_age.as_millis().to_string(),
        validate: |v| long_in(v, 1, i64::MAX),
    },
    TopicKey {
        name: "unclean.leader.election.enable",
        kind: ConfigType::Boolean,
        broker_synonym: "unclean.leader.election.enable",
        doc: "Never: a replica that missed acknowledged data is not elected.",
        read_only: true,
        default: |_| "false".into(),
        validate: any,
    },
];

pub fn key(name: &str) -> Option<&'static TopicKey> {
    TOPIC_KEYS.iter().find(|k| k.name == name)
}

/// Check one `name = value` override.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let k = key(name).ok_or_else(|| format!("unknown topic config {name:?}"))?;
    if k.read_only {
        return Err(format!("{name} is read-only on this broker"));
    }
    (k.validate)(value).map_err(|e| format!("invalid value for {name}: {e}"))
}

/// A resolved entry for DescribeConfigs and CreateTopics responses.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: &'static str,
    pub value: String,
    pub source: ConfigSource,
    pub read_only: bool,
    pub kind: ConfigType,
    pub doc: &'static str,
    pub broker_synonym: &'static str,
    pub default: String,
}

/// Every key with its effective value for a topic with `overrides`.
pub fn describe(overrides: &BTreeMap<String, String>, defaults: &TopicDefaults) -> Vec<Entry> {
    TOPIC_KEYS
        .iter()
        .map(|k| {
            let default = (k.default)(defaults);
            let (value, source) = match overrides.get(k.name) {
                Some(v) => (v.clone(), ConfigSource::TopicConfig),
                None => (default.clone(), ConfigSource::DefaultConfig),
            };
            Entry {
                name: k.name,
                value,
                source,
                read_only: k.read_only,
                kind: k.kind,
                doc: k.doc,
                broker_synonym: k.broker_synonym,
                default,
            }
        })
        .collect()
}

fn effective(overrides: &BTreeMap<String, String>, defaults: &TopicDefaults, name: &str) -> String {
    overrides
        .get(name)
        .cloned()
        .unwrap_or_else(|| (key(name).expect("known key").default)(defaults))
}

fn effective_i64(
    overrides: &BTreeMap<String, String>,
    defaults: &TopicDefaults,
    name: &str,
) -> i64 {
    effective(overrides, defaults, name)
        .trim()
        .parse()
        .unwrap_or(-1)
}

/// Settings of one topic that the broker enforces outside the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPolicy {
    pub min_insync_replicas: i32,
    /// `cleanup.policy` includes `compact`: records without a key are refused.
    pub compacted: bool,
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
}

/// The log settings and broker policy of a topic.
pub fn resolve(
    overrides: &BTreeMap<String, String>,
    defaults: &TopicDefaults,
) -> (LogConfig, TopicPolicy) {
    let get = |n| effective_i64(overrides, defaults, n);
    let positive = |v: i64| (v >= 0).then_some(v);
    let cleanup = effective(overrides, defaults, "cleanup.policy");
    let compact_only = !cleanup.split(',').any(|p| p.trim() == "delete");
    let compacted = cleanup.split(',').any(|p| p.trim() == "compact");
    let compaction = compacted.then(|| CompactionConfig {
        min_cleanable_dirty_ratio: effective(overrides, defaults, "min.cleanable.dirty.ratio")
            .trim()
            .parse()
            .unwrap_or(0.5),
        min_compaction_lag_ms: get("min.compaction.lag.ms").max(0),
        max_compaction_lag_ms: positive(get("max.compaction.lag.ms")).filter(|v| *v < i64::MAX),
        delete_retention_ms: get("delete.retention.ms").max(0),
        ..CompactionConfig::default()
    });
    let log = LogConfig {
        segment_bytes: get("segment.bytes") as u64,
        segment_ms: positive(get("segment.ms")),
        index_interval_bytes: get("index.interval.bytes") as u64,
        retention_ms: if compact_only {
            None
        } else {
            positive(get("retention.ms"))
        },
        retention_bytes: if compact_only {
            None
        } else {
            positive(get("retention.bytes")).map(|b| b as u64)
        },
        max_message_bytes: get("max.message.bytes") as usize,
        timestamp_type: match effective(overrides, defaults, "message.timestamp.type").as_str() {
            "LogAppendTime" => TimestampType::LogAppendTime,
            _ => TimestampType::CreateTime,
        },
        producer_id_expiration_ms: defaults.producer_id_expiration.as_millis() as i64,
        compaction,
        stream_dedup: effective(overrides, defaults, "clk.stream.dedup") == "true",
    };
    let policy = TopicPolicy {
        min_insync_replicas: get("min.insync.replicas") as i32,
        compacted,
        timestamp_before_max_ms: get("message.timestamp.before.max.ms"),
        timestamp_after_max_ms: get("message.timestamp.after.max.ms"),
    };
    (log, policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides_resolve() {
        let d = TopicDefaults::default();
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "1000".to_string());
        o.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        let (log, policy) = resolve(&o, &d);
        assert_eq!(log.retention_ms, Some(1000));
        assert_eq!(log.segment_bytes, 1 << 30);
        assert_eq!(log.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(policy.min_insync_replicas, 1);
        let entries = describe(&o, &d);
        let r = entries.iter().find(|e| e.name == "retention.ms").unwrap();
        assert_eq!(
            (r.value.as_str(), r.source),
            ("1000", ConfigSource::TopicConfig)
        );
        let s = entries.iter().find(|e| e.name == "segment.bytes").unwrap();
        assert_eq!(s.source, ConfigSource::DefaultConfig);
    }

    #[test]
    fn compact_topics_are_never_deleted_by_retention() {
        let mut o = BTreeMap::new();
        o.insert("cleanup.policy".to_string(), "compact".to_string());
        o.insert("min.cleanable.dirty.ratio".to_string(), "0.1".to_string());
        let (log, policy) = resolve(&o, &TopicDefaults::default());
        assert_eq!((log.retention_ms, log.retention_bytes), (None, None));
        assert!(policy.compacted);
        let c = log.compaction.expect("compacted");
        assert_eq!(c.min_cleanable_dirty_ratio, 0.1);
        assert_eq!(c.delete_retention_ms, 24 * 3600 * 1000);
        assert_eq!(c.max_compaction_lag_ms, None);
        let (log, policy) = resolve(&BTreeMap::new(), &TopicDefaults::default());
        assert!(log.compaction.is_none() && !policy.compacted);
        assert!(validate("min.cleanable.dirty.ratio", "1.5").is_err());
    }

    #[test]
    fn validation_messages() {
        assert!(validate("retention.ms", "-1").is_ok());
        assert_eq!(
            validate("retention.ms", "soon").unwrap_err(),
            "invalid value for retention.ms: \"soon\" is not an integer"
        );
        assert!(
            validate("segment.bytes", "10")
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            validate("nope", "1")
                .unwrap_err()
                .contains("unknown topic config")
        );
        assert!(
            validate("unclean.leader.election.enable", "true")
                .unwrap_err()
                .contains("read-only")
        );
        assert!(validate("compression.type", "gzip").is_err());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
    }
}
