//! Topics as the cluster's metadata has them, and this broker's replicas of their
//! partitions. Changes (create, delete, grow, reconfigure) are checked here with Kafka's rules,
//! then decided by the controller through the metadata quorum; each call returns once the
//! change is applied on this broker (its local partitions opened or removed by the replica
//! manager), so a client that created a topic can produce to it at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quorum::controller::{ControllerError, ControllerRequest, ControllerResponse};
use quorum::ids::PartitionKey;
use quorum::metadata::{ClusterState, TopicState};
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::config::TopicDefaults;
use crate::partition::Partition;
use crate::replica_manager::ReplicaManager;
use crate::topic_config;

/// How long a change waits for this broker to apply it after the controller committed it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest topic name (Kafka's limit, so that `<name>-<partition>` fits a file name).
pub const MAX_NAME_LEN: usize = 249;
/// Names the broker keeps for its internal logs.
pub const RESERVED_NAMES: &[&str] = &["__consumer_offsets", "__cluster_metadata"];
/// More partitions than this in one topic is refused (directory names, memory).
pub const MAX_PARTITIONS: i32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic '{0}' already exists")]
    AlreadyExists(String),
    #[error("unknown topic '{0}'")]
    Unknown(String),
    #[error("unknown topic id {0}")]
    UnknownId(Uuid),
    #[error("invalid topic name: {0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("storage error: {0}")]
    Storage(String),
    /// The client may not do this to the topic (ACLs).
    #[error("not authorized to {0}")]
    NotAuthorized(String),
}

/// Kafka's topic name rules.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::InvalidName("the name is empty".into()));
    }
    if name == "." || name == ".." {
        return Err(TopicError::InvalidName(format!("'{name}' is not allowed")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(TopicError::InvalidName(format!(
            "'{name}' is longer than {MAX_NAME_LEN} characters"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(TopicError::InvalidName(format!(
            "'{name}' contains '{c}'; only ASCII letters, digits, '.', '_' and '-' are allowed"
        )));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(TopicError::InvalidName(format!(
            "'{name}' is reserved for the broker"
        )));
    }
    Ok(())
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    /// -1 for the broker default.
    pub partitions: i32,
    /// -1 for the broker default.
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

/// A topic as handlers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicInfo {
    pub name: Arc<str>,
    pub id: Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Overrides of the broker's topic defaults, under Kafka's names.
    pub configs: BTreeMap<String, String>,
}

impl TopicInfo {
    fn of(t: &TopicState) -> Arc<TopicInfo> {
        Arc::new(TopicInfo {
            name: Arc::clone(&t.name),
            id: t.id,
            partitions: t.partitions.len() as i32,
            replication_factor: t.replication_factor() as i16,
            configs: t.configs.clone(),
        })
    }
}

pub struct Topics {
    cluster: Arc<Cluster>,
    replicas: Arc<ReplicaManager>,
    defaults: TopicDefaults,
}

fn controller_error(e: ControllerError) -> TopicError {
    match e {
        ControllerError::TopicExists(n) => TopicError::AlreadyExists(n),
        ControllerError::UnknownTopic => TopicError::Storage("unknown topic".into()),
        ControllerError::Policy(m) => TopicError::InvalidReplicationFactor(m),
        ControllerError::Invalid(m) => TopicError::InvalidPartitions(m),
        other => TopicError::Storage(other.to_string()),
    }
}

impl Topics {
    pub fn new(
        cluster: Arc<Cluster>,
        replicas: Arc<ReplicaManager>,
        defaults: TopicDefaults,
    ) -> Topics {
        Topics {
            cluster,
            replicas,
            defaults,
        }
    }

    pub fn defaults(&self) -> &TopicDefaults {
        &self.defaults
    }

    pub fn state(&self) -> Arc<ClusterState> {
        self.cluster.state()
    }

    pub fn get(&self, name: &str) -> Option<Arc<TopicInfo>> {
        self.state().topic_by_name(name).map(|t| TopicInfo::of(t))
    }

    pub fn get_by_id(&self, id: &Uuid) -> Option<Arc<TopicInfo>> {
        self.state().topics.get(id).map(|t| TopicInfo::of(t))
    }

    /// Every topic, internal ones included.
    pub fn list(&self) -> Vec<Arc<TopicInfo>> {
        self.state()
            .topics
            .values()
            .map(|t| TopicInfo::of(t))
            .collect()
    }

    /// This broker's replica of partition `index` of `topic`.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        self.replicas.by_name(&self.state(), topic, index)
    }

    pub fn partition_by_key(&self, key: PartitionKey) -> Option<Arc<Partition>> {
        self.replicas.partition(key)
    }

    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.replicas.all()
    }

    /// Check a topic request against the rules and fill in defaults.
    fn resolve_new(&self, t: &NewTopic) -> Result<(i32, i16), TopicError> {
        validate_name(&t.name)?;
        let lower = t.name.replace('.', "_");
        if let Some(other) = self
            .list()
            .into_iter()
            .find(|o| *o.name != *t.name && o.name.replace('.', "_") == lower)
        {
            return Err(TopicError::InvalidName(format!(
                "'{}' collides with existing topic '{}' ('.' and '_' are equivalent in metric names)",
                t.name, other.name
            )));
        }
        let partitions = if t.partitions == -1 {
            self.defaults.partitions
        } else {
            t.partitions
        };
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(TopicError::InvalidPartitions(format!(
                "number of partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"
            )));
        }
        let rf = if t.replication_factor == -1 {
            self.defaults.replication_factor
        } else {
            t.replication_factor
        };
        let brokers = self.state().brokers.values().filter(|b| !b.fenced).count();
        if rf < 1 || rf as usize > brokers {
            return Err(TopicError::InvalidReplicationFactor(format!(
                "replication factor {rf} is larger than the {brokers} available broker(s)"
            )));
        }
        for (k, v) in &t.configs {
            topic_config::validate(k, v).map_err(TopicError::InvalidConfig)?;
        }
        Ok((partitions, rf))
    }

    /// Wait until this broker applied (and reconciled) the metadata up to `index`.
    async fn applied(&self, index: u64) -> Result<(), TopicError> {
        if self.replicas.wait_reconciled(index, APPLY_TIMEOUT).await {
            Ok(())
        } else {
            Err(TopicError::Storage(format!(
                "the change was committed but is not applied here after {APPLY_TIMEOUT:?}"
            )))
        }
    }

    /// Create a topic (or only validate the request).
    pub async fn create(
        &self,
        t: NewTopic,
        validate_only: bool,
    ) -> Result<Arc<TopicInfo>, TopicError> {
        if self.get(&t.name).is_some() {
            return Err(TopicError::AlreadyExists(t.name));
        }
        let (partitions, replication_factor) = self.resolve_new(&t)?;
        self.create_unchecked(
            &t.name,
            None,
            partitions,
            replication_factor,
            t.configs,
            validate_only,
        )
        .await
    }

    /// Create a topic without the name rules (the broker's own internal topics).
    pub async fn create_unchecked(
        &self,
        name: &str,
        id: Option<Uuid>,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<TopicInfo>, TopicError> {
        let request = ControllerRequest::CreateTopic {
            name: name.to_string(),
            id,
            partitions: partitions as u32,
            replication_factor: replication_factor as u16,
            configs: configs.clone(),
            validate_only,
        };
        match self.cluster.call(request).await.map_err(controller_error)? {
            ControllerResponse::TopicCreated { id, index } => {
                if validate_only {
                    return Ok(Arc::new(TopicInfo {
                        name: name.into(),
                        id,
                        partitions,
                        replication_factor,
                        configs,
                    }));
                }
                self.applied(index).await?;
                tracing::info!(topic = name, %id, partitions, replication_factor, "created topic");
                self.get_by_id(&id)
                    .ok_or_else(|| TopicError::Storage("created topic vanished".into()))
            }
            other => Err(TopicError::Storage(format!("unexpected answer {other:?}"))),
        }
    }

    /// Delete a topic and its data.
    pub async fn delete(&self, id: Uuid) -> Result<Arc<TopicInfo>, TopicError> {
        let info = self.get_by_id(&id).ok_or(TopicError::UnknownId(id))?;
        let index = self
            .applied_index(ControllerRequest::DeleteTopic { topic: id })
            .await?;
        self.applied(index).await?;
        tracing::info!(topic = %info.name, %id, "deleted topic");
        Ok(info)
    }

    async fn applied_index(&self, request: ControllerRequest) -> Result<u64, TopicError> {
        match self.cluster.call(request).await.map_err(controller_error)? {
            ControllerResponse::Applied { index } => Ok(index),
            other => Err(TopicError::Storage(format!("unexpected answer {other:?}"))),
        }
    }

    /// Grow a topic to `count` partitions.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let info = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        if count <= info.partitions {
            return Err(TopicError::InvalidPartitions(format!(
                "topic currently has {} partitions, {count} would not be an increase",
                info.partitions
            )));
        }
        if count > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions(format!(
                "at most {MAX_PARTITIONS} partitions"
            )));
        }
        let index = self
            .applied_index(ControllerRequest::CreatePartitions {
                topic: info.id,
                count: count as u32,
                validate_only,
            })
            .await?;
        if !validate_only {
            self.applied(index).await?;
        }
        Ok(())
    }

    /// Replace a topic's overrides with what `change` makes of the current ones.
    pub async fn set_configs(
        &self,
        name: &str,
        change: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, TopicError>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let info = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let configs = change(&info.configs)?;
        for (k, v) in &configs {
            topic_config::validate(k, v).map_err(TopicError::InvalidConfig)?;
        }
        if validate_only {
            return Ok(());
        }
        let index = self
            .applied_index(ControllerRequest::ReplaceTopicConfigs {
                topic: info.id,
                configs,
            })
            .await?;
        self.applied(index).await
    }

    /// Apply retention to every local partition (each replica applies it to its own log).
    pub async fn enforce_retention(&self) {
        for p in self.all_partitions() {
            match p.enforce_retention().await {
                Ok(r) if r.deleted_segments > 0 => tracing::info!(
                    topic = %p.topic, partition = p.index,
                    segments = r.deleted_segments, bytes = r.deleted_bytes,
                    "retention deleted segments"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "retention failed")
                }
            }
        }
    }

    /// One log-cleaner round: a compaction pass over every local replica of a compacted
    /// topic that is dirty enough, one partition at a time (each replica compacts its own
    /// log, below its own high watermark).
    pub async fn compact_all(&self, metrics: &crate::metrics::Metrics) {
        for p in self
            .all_partitions()
            .into_iter()
            .filter(|p| p.policy().compacted)
        {
            match p.compact().await {
                Ok(Some(r)) => {
                    let removed = r.records_removed + r.tombstones_removed + r.keyless_removed;
                    metrics.cleaner_passes.inc();
                    metrics.cleaner_records_removed.inc_by(removed);
                    metrics
                        .cleaner_bytes_reclaimed
                        .inc_by(r.bytes_before.saturating_sub(r.bytes_after));
                    tracing::info!(
                        topic = %p.topic, partition = p.index, segments = r.segments_rewritten,
                        records_removed = removed, tombstones = r.tombstones_removed,
                        bytes_before = r.bytes_before, bytes_after = r.bytes_after,
                        "compacted"
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    metrics.cleaner_failures.inc();
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "compaction failed");
                }
            }
        }
    }

    /// Flush and close every partition (for a clean shutdown). Returns false if one failed.
    pub async fn close_all(&self) -> bool {
        let mut ok = true;
        for p in self.all_partitions() {
            if let Err(e) = p.close().await {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "closing partition failed");
                ok = false;
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_name("orders.v1_EU-2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("..").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(250)).is_err());
        assert!(validate_name("__consumer_offsets").is_err());
    }
}
