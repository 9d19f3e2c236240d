//! Topics and the partitions this broker hosts: creation, deletion, growth and
//! reconfiguration (serialized, committed to the catalog first), the reconciliation of
//! partition directories with the catalog at start, and retention.
//!
//! Partition directories are `<data>/topics/<topic>-<partition>` holding a `partition.metadata`
//! file with the topic id, as in Kafka, so that a directory left by a topic deleted just
//! before a crash is recognised and removed instead of being mistaken for a new topic's data.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::catalog::{Catalog, MetadataRecord, TopicInfo};
use crate::config::{Durability, TopicDefaults};
use crate::internal_log::StoreError;
use crate::metrics::Metrics;
use crate::partition::Partition;
use crate::topic_config;

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
}

impl From<StoreError> for TopicError {
    fn from(e: StoreError) -> Self {
        TopicError::Storage(e.to_string())
    }
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

pub struct Topics {
    catalog: Catalog,
    partitions: RwLock<HashMap<Arc<str>, Vec<Arc<Partition>>>>,
    /// Serializes changes so that validation and commit see the same state.
    changes: tokio::sync::Mutex<()>,
    dir: PathBuf,
    defaults: TopicDefaults,
    durability: Durability,
    brokers: i16,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

fn partition_dir(root: &Path, topic: &str, index: i32) -> PathBuf {
    root.join(format!("{topic}-{index}"))
}

fn write_partition_metadata(dir: &Path, id: Uuid) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    durable_log::checkpoint::write_atomic(
        &dir.join("partition.metadata"),
        format!("version: 0\ntopic_id: {id}\n").as_bytes(),
    )
}

fn read_partition_metadata(dir: &Path) -> Option<Uuid> {
    let text = std::fs::read_to_string(dir.join("partition.metadata")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("topic_id: "))
        .and_then(|v| v.trim().parse().ok())
}

impl Topics {
    /// Load the catalog and open every hosted partition, removing stray directories.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        catalog: Catalog,
        data_dir: &Path,
        defaults: TopicDefaults,
        durability: Durability,
        clean_shutdown: bool,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Topics, TopicError> {
        let dir = data_dir.join("topics");
        std::fs::create_dir_all(&dir)
            .map_err(|e| TopicError::Storage(format!("{}: {e}", dir.display())))?;
        let topics = Topics {
            catalog,
            partitions: RwLock::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            dir,
            defaults,
            durability,
            brokers: 1,
            metrics,
            shutdown,
        };
        topics.remove_stray_directories()?;
        for t in topics.catalog.list() {
            topics.open_partitions(&t, 0, clean_shutdown)?;
        }
        Ok(topics)
    }

    fn remove_stray_directories(&self) -> Result<(), TopicError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| TopicError::Storage(e.to_string()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = name.rsplit_once('-').and_then(|(topic, index)| {
                let index: i32 = index.parse().ok()?;
                let t = self.catalog.get(topic)?;
                (index < t.partitions && read_partition_metadata(&entry.path()) == Some(t.id))
                    .then_some(())
            });
            if keep.is_none() {
                tracing::info!(dir = %entry.path().display(), "removing partition directory of a deleted topic");
                std::fs::remove_dir_all(entry.path())
                    .map_err(|e| TopicError::Storage(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Open partitions `from..` of `topic` and register them.
    fn open_partitions(
        &self,
        topic: &TopicInfo,
        from: i32,
        clean_shutdown: bool,
    ) -> Result<(), TopicError> {
        let (log_config, policy) = topic_config::resolve(&topic.configs, &self.defaults);
        let mut opened = Vec::new();
        for index in from..topic.partitions {
            let dir = partition_dir(&self.dir, &topic.name, index);
            write_partition_metadata(&dir, topic.id)
                .map_err(|e| TopicError::Storage(e.to_string()))?;
            let p = Partition::open(
                &dir,
                Arc::clone(&topic.name),
                topic.id,
                index,
                log_config.clone(),
                policy,
                self.durability,
                clean_shutdown,
                Arc::clone(&self.metrics),
                self.shutdown.child_token(),
            )
            .map_err(|e| TopicError::Storage(e.to_string()))?;
            opened.push(p);
        }
        let mut map = self.partitions.write();
        let list = map.entry(Arc::clone(&topic.name)).or_default();
        list.extend(opened);
        self.metrics
            .partitions
            .set(map.values().map(|v| v.len() as i64).sum());
        Ok(())
    }

    pub fn defaults(&self) -> &TopicDefaults {
        &self.defaults
    }

    pub fn get(&self, name: &str) -> Option<Arc<TopicInfo>> {
        self.catalog.get(name)
    }

    pub fn get_by_id(&self, id: &Uuid) -> Option<Arc<TopicInfo>> {
        self.catalog.get_by_id(id)
    }

    pub fn list(&self) -> Vec<Arc<TopicInfo>> {
        self.catalog.list()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        let map = self.partitions.read();
        usize::try_from(index)
            .ok()
            .and_then(|i| map.get(topic)?.get(i).cloned())
    }

    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().values().flatten().cloned().collect()
    }

    /// Check a topic request against the rules and fill in defaults.
    fn resolve_new(&self, t: &NewTopic) -> Result<(i32, i16), TopicError> {
        validate_name(&t.name)?;
        let lower = t.name.replace('.', "_");
        if let Some(other) = self
            .catalog
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
        if rf < 1 || rf > self.brokers {
            return Err(TopicError::InvalidReplicationFactor(format!(
                "replication factor {rf} is larger than the {} available broker(s)",
                self.brokers
            )));
        }
        for (k, v) in &t.configs {
            topic_config::validate(k, v).map_err(TopicError::InvalidConfig)?;
        }
        Ok((partitions, rf))
    }

    /// Create a topic (or only validate the request).
    pub async fn create(
        &self,
        t: NewTopic,
        validate_only: bool,
    ) -> Result<Arc<TopicInfo>, TopicError> {
        let _guard = self.changes.lock().await;
        if self.catalog.get(&t.name).is_some() {
            return Err(TopicError::AlreadyExists(t.name));
        }
        let (partitions, replication_factor) = self.resolve_new(&t)?;
        let info = TopicInfo {
            name: t.name.as_str().into(),
            id: Uuid::new_v4(),
            partitions,
            replication_factor,
            configs: t.configs,
        };
        if validate_only {
            return Ok(Arc::new(info));
        }
        self.catalog
            .commit(vec![MetadataRecord::TopicCreated {
                name: t.name.clone(),
                id: info.id,
                partitions,
                replication_factor,
                configs: info.configs.clone(),
            }])
            .await?;
        let info = self.catalog.get(&t.name).expect("just committed");
        self.open_partitions(&info, 0, true)?;
        tracing::info!(topic = %info.name, id = %info.id, partitions, "created topic");
        Ok(info)
    }

    /// Delete a topic and its data.
    pub async fn delete(&self, id: Uuid) -> Result<Arc<TopicInfo>, TopicError> {
        let _guard = self.changes.lock().await;
        let info = self
            .catalog
            .get_by_id(&id)
            .ok_or(TopicError::UnknownId(id))?;
        self.catalog
            .commit(vec![MetadataRecord::TopicDeleted { id }])
            .await?;
        let removed = self
            .partitions
            .write()
            .remove(&info.name)
            .unwrap_or_default();
        for p in removed {
            if let Err(e) = p.delete().await {
                tracing::warn!(topic = %info.name, partition = p.index, error = %e, "removing partition data failed");
            }
        }
        self.metrics.partitions.set(
            self.partitions
                .read()
                .values()
                .map(|v| v.len() as i64)
                .sum(),
        );
        tracing::info!(topic = %info.name, id = %info.id, "deleted topic");
        Ok(info)
    }

    /// Grow a topic to `count` partitions.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _guard = self.changes.lock().await;
        let info = self
            .catalog
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
        if validate_only {
            return Ok(());
        }
        self.catalog
            .commit(vec![MetadataRecord::PartitionsIncreased {
                id: info.id,
                partitions: count,
            }])
            .await?;
        let updated = self.catalog.get(name).expect("still exists");
        self.open_partitions(&updated, info.partitions, true)
    }

    /// Replace a topic's overrides with `configs` (already validated by the caller against
    /// the operation it implements).
    pub async fn set_configs(
        &self,
        name: &str,
        change: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, TopicError>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _guard = self.changes.lock().await;
        let info = self
            .catalog
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let configs = change(&info.configs)?;
        for (k, v) in &configs {
            topic_config::validate(k, v).map_err(TopicError::InvalidConfig)?;
        }
        if validate_only {
            return Ok(());
        }
        self.catalog
            .commit(vec![MetadataRecord::TopicConfigsReplaced {
                id: info.id,
                configs: configs.clone(),
            }])
            .await?;
        let (log_config, policy) = topic_config::resolve(&configs, &self.defaults);
        let parts = self
            .partitions
            .read()
            .get(name)
            .cloned()
            .unwrap_or_default();
        for p in parts {
            p.reconfigure(log_config.clone(), policy)
                .await
                .map_err(|e| TopicError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// Apply retention to every partition.
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
        let offline = self
            .all_partitions()
            .iter()
            .filter(|p| p.is_offline())
            .count();
        self.metrics.offline_partitions.set(offline as i64);
    }

    /// Flush and close every partition (for a clean shutdown). Returns false if one failed.
    pub async fn close_all(&self) -> bool {
        let mut ok = true;
        for p in self
            .all_partitions()
            .into_iter()
            .chain([Arc::clone(self.catalog.partition())])
        {
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
