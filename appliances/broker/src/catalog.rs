//! The topic catalog: which topics exist, their ids, partition counts and config overrides.
//!
//! Changes are metadata records appended durably to the `__cluster_metadata` internal log
//! before they take effect, and the catalog is the state machine that applies them (the KRaft
//! model). Today this broker is the only writer; with replication the same records will be
//! ordered by the quorum that includes the witness.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::internal_log::{InternalLog, StoreError};
use crate::partition::Partition;

/// Compact the metadata log when it grows past this.
const COMPACT_AFTER_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataRecord {
    TopicCreated {
        name: String,
        id: Uuid,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    },
    PartitionsIncreased {
        id: Uuid,
        partitions: i32,
    },
    TopicConfigsReplaced {
        id: Uuid,
        configs: BTreeMap<String, String>,
    },
    TopicDeleted {
        id: Uuid,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopicInfo {
    pub name: Arc<str>,
    pub id: Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Overrides of the broker's topic defaults, under Kafka's names.
    pub configs: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    by_name: BTreeMap<Arc<str>, Arc<TopicInfo>>,
    by_id: HashMap<Uuid, Arc<TopicInfo>>,
}

impl State {
    fn apply(&mut self, record: &MetadataRecord) {
        match record {
            MetadataRecord::TopicCreated {
                name,
                id,
                partitions,
                replication_factor,
                configs,
            } => {
                let info = Arc::new(TopicInfo {
                    name: name.as_str().into(),
                    id: *id,
                    partitions: *partitions,
                    replication_factor: *replication_factor,
                    configs: configs.clone(),
                });
                self.insert(info);
            }
            MetadataRecord::PartitionsIncreased { id, partitions } => {
                self.update(id, |t| t.partitions = (*partitions).max(t.partitions));
            }
            MetadataRecord::TopicConfigsReplaced { id, configs } => {
                self.update(id, |t| t.configs = configs.clone());
            }
            MetadataRecord::TopicDeleted { id } => {
                if let Some(t) = self.by_id.remove(id) {
                    self.by_name.remove(&t.name);
                }
            }
        }
    }

    fn insert(&mut self, info: Arc<TopicInfo>) {
        if let Some(old) = self
            .by_name
            .insert(Arc::clone(&info.name), Arc::clone(&info))
            && old.id != info.id
        {
            self.by_id.remove(&old.id);
        }
        self.by_id.insert(info.id, info);
    }

    fn update(&mut self, id: &Uuid, f: impl FnOnce(&mut TopicInfo)) {
        if let Some(t) = self.by_id.get(id) {
            let mut t = (**t).clone();
            f(&mut t);
            self.insert(Arc::new(t));
        }
    }

    fn snapshot(&self) -> Vec<MetadataRecord> {
        self.by_name
            .values()
            .map(|t| MetadataRecord::TopicCreated {
                name: t.name.to_string(),
                id: t.id,
                partitions: t.partitions,
                replication_factor: t.replication_factor,
                configs: t.configs.clone(),
            })
            .collect()
    }
}

pub struct Catalog {
    state: RwLock<State>,
    store: InternalLog<MetadataRecord>,
}

impl Catalog {
    /// Rebuild the catalog from its log.
    pub async fn open(partition: Arc<Partition>) -> Result<Catalog, StoreError> {
        let store = InternalLog::new(partition);
        let mut state = State::default();
        for record in store.replay().await? {
            state.apply(&record);
        }
        Ok(Catalog {
            state: RwLock::new(state),
            store,
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<TopicInfo>> {
        self.state.read().by_name.get(name).cloned()
    }

    pub fn get_by_id(&self, id: &Uuid) -> Option<Arc<TopicInfo>> {
        self.state.read().by_id.get(id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<TopicInfo>> {
        self.state.read().by_name.values().cloned().collect()
    }

    /// Make `records` durable, then apply them. Callers serialize changes (see
    /// [`crate::topics::Topics`]), so validation done before calling still holds.
    pub async fn commit(&self, records: Vec<MetadataRecord>) -> Result<(), StoreError> {
        self.store.append(&records).await?;
        {
            let mut state = self.state.write();
            for r in &records {
                state.apply(r);
            }
        }
        if self.store.size_bytes().await? > COMPACT_AFTER_BYTES {
            let snapshot = self.state.read().snapshot();
            self.store.compact(&snapshot).await?;
        }
        Ok(())
    }

    pub fn partition(&self) -> &Arc<Partition> {
        self.store.partition()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_applies_records() {
        let mut s = State::default();
        let id = Uuid::new_v4();
        s.apply(&MetadataRecord::TopicCreated {
            name: "a".into(),
            id,
            partitions: 1,
            replication_factor: 1,
            configs: BTreeMap::new(),
        });
        s.apply(&MetadataRecord::PartitionsIncreased { id, partitions: 4 });
        let mut c = BTreeMap::new();
        c.insert("retention.ms".into(), "5".into());
        s.apply(&MetadataRecord::TopicConfigsReplaced {
            id,
            configs: c.clone(),
        });
        let t = s.by_name.get("a").unwrap();
        assert_eq!((t.partitions, &t.configs), (4, &c));
        assert_eq!(s.snapshot().len(), 1);
        s.apply(&MetadataRecord::TopicDeleted { id });
        assert!(s.by_name.is_empty() && s.by_id.is_empty());
    }

    #[test]
    fn records_are_stable_json() {
        let r = MetadataRecord::TopicDeleted { id: Uuid::nil() };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"type":"topic_deleted","id":"00000000-0000-0000-0000-000000000000"}"#
        );
    }
}
