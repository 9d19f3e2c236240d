//! Upgrading a one-node broker's data directory from before the metadata quorum.
//!
//! Then the topic catalog was a log of its own (`internal/__cluster_metadata-0`), consumer
//! group state lived in `internal/__consumer_offsets-<n>` and producer ids in a file
//! `producer-ids`. On the first start with the quorum, before any partition is opened (which
//! would remove directories no topic owns), the catalog's topics are created in the quorum
//! with their ids (so their directories stay theirs), producer id blocks are allocated past
//! every id ever handed out (a new producer never reuses an old id), and the offsets
//! partitions move under `topics/` as the `__consumer_offsets` topic. Each step is skipped
//! when already done, so a crash during the import only repeats it. The old directory is
//! kept as `internal.imported` for inspection.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use quorum::controller::{ControllerRequest, ControllerResponse};
use serde::Deserialize;
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::replica_manager::OFFSETS_TOPIC;

/// The catalog records of the one-node broker, as it wrote them (JSON).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LegacyRecord {
    TopicCreated {
        name: String,
        id: Uuid,
        partitions: i32,
        #[allow(dead_code)]
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

struct LegacyTopic {
    name: String,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

/// Every record of a legacy internal log, decoded.
fn read_legacy_log(dir: &Path) -> anyhow::Result<Vec<LegacyRecord>> {
    let (log, _) = durable_log::Log::open(dir, durable_log::LogConfig::default(), false, 0)
        .with_context(|| format!("opening {}", dir.display()))?;
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let Some(plan) = log.read_plan(offset, 16 << 20, end, true)? else {
            break;
        };
        let bytes: Bytes = plan.execute()?;
        for b in durable_log::split_stored_batches(&bytes)? {
            for r in durable_log::records::decode_records(&b.bytes)? {
                if r.offset >= offset {
                    let value = r.value.unwrap_or_default();
                    out.push(serde_json::from_slice(&value).with_context(|| {
                        format!("legacy catalog record at offset {}", r.offset)
                    })?);
                }
            }
            offset = b.header.next_offset();
        }
    }
    Ok(out)
}

fn legacy_topics(records: Vec<LegacyRecord>) -> BTreeMap<Uuid, LegacyTopic> {
    let mut topics = BTreeMap::new();
    for r in records {
        match r {
            LegacyRecord::TopicCreated {
                name,
                id,
                partitions,
                configs,
                ..
            } => {
                topics.insert(
                    id,
                    LegacyTopic {
                        name,
                        partitions,
                        configs,
                    },
                );
            }
            LegacyRecord::PartitionsIncreased { id, partitions } => {
                if let Some(t) = topics.get_mut(&id) {
                    t.partitions = t.partitions.max(partitions);
                }
            }
            LegacyRecord::TopicConfigsReplaced { id, configs } => {
                if let Some(t) = topics.get_mut(&id) {
                    t.configs = configs;
                }
            }
            LegacyRecord::TopicDeleted { id } => {
                topics.remove(&id);
            }
        }
    }
    topics
}

/// Create a topic with a given id unless the quorum has it; wait until applied here.
async fn create(
    cluster: &Cluster,
    name: &str,
    id: Option<Uuid>,
    partitions: i32,
    configs: BTreeMap<String, String>,
) -> anyhow::Result<Uuid> {
    if let Some(t) = cluster.state().topic_by_name(name) {
        return Ok(t.id);
    }
    let request = ControllerRequest::CreateTopic {
        name: name.to_string(),
        id,
        partitions: partitions as u32,
        replication_factor: 1,
        configs,
        validate_only: false,
    };
    match cluster.call(request).await {
        Ok(ControllerResponse::TopicCreated { id, index }) => {
            cluster
                .node
                .wait_applied(index, crate::cluster::CONTROLLER_TIMEOUT)
                .await;
            Ok(id)
        }
        other => anyhow::bail!("importing topic {name}: the controller answered {other:?}"),
    }
}

/// Import a legacy one-node data directory into the quorum (see the module documentation).
pub async fn import_legacy(
    root: &Path,
    cluster: &Cluster,
    offsets_configs: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let internal = root.join("internal");
    let catalog = internal.join("__cluster_metadata-0");
    if !internal.exists() {
        return Ok(());
    }
    tracing::warn!(dir = %internal.display(), "importing a data directory from before the metadata quorum");
    if catalog.exists() {
        let dir = catalog.clone();
        let records = tokio::task::spawn_blocking(move || read_legacy_log(&dir)).await??;
        for (id, t) in legacy_topics(records) {
            create(cluster, &t.name, Some(id), t.partitions, t.configs).await?;
            tracing::info!(topic = %t.name, %id, "imported topic");
        }
    }
    import_producer_ids(root, cluster).await?;
    import_offsets(root, &internal, cluster, offsets_configs).await?;
    let kept = root.join("internal.imported");
    std::fs::rename(&internal, &kept)
        .with_context(|| format!("renaming {}", internal.display()))?;
    durable_log::checkpoint::sync_dir(root)?;
    tracing::warn!(kept = %kept.display(), "import finished");
    Ok(())
}

/// Allocate producer id blocks until every id the old file reserved is behind us.
async fn import_producer_ids(root: &Path, cluster: &Cluster) -> anyhow::Result<()> {
    let path = root.join("producer-ids");
    let Some(bytes) = durable_log::checkpoint::read_optional(&path)? else {
        return Ok(());
    };
    let reserved: i64 = String::from_utf8_lossy(&bytes)
        .trim()
        .parse()
        .with_context(|| format!("{}: not a number", path.display()))?;
    while cluster.state().next_producer_id < reserved {
        let epoch = cluster.epoch().context("not registered")?;
        cluster
            .call(ControllerRequest::AllocateProducerIds {
                node: cluster.me,
                epoch,
            })
            .await
            .context("reserving producer ids past the imported ones")?;
    }
    std::fs::remove_file(&path)?;
    Ok(())
}

/// Move `internal/__consumer_offsets-<n>` under `topics/` as the offsets topic.
async fn import_offsets(
    root: &Path,
    internal: &Path,
    cluster: &Cluster,
    configs: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let mut old: Vec<i32> = std::fs::read_dir(internal)?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(&format!("{OFFSETS_TOPIC}-"))?
                .parse()
                .ok()
        })
        .collect();
    if old.is_empty() {
        return Ok(());
    }
    old.sort();
    let count = old.last().copied().unwrap_or(0) + 1;
    let id = create(cluster, OFFSETS_TOPIC, None, count, configs).await?;
    let topics = root.join("topics");
    std::fs::create_dir_all(&topics)?;
    for i in old {
        let from = internal.join(format!("{OFFSETS_TOPIC}-{i}"));
        let to = topics.join(format!("{OFFSETS_TOPIC}-{i}"));
        if to.exists() {
            continue;
        }
        durable_log::checkpoint::write_atomic(
            &from.join("partition.metadata"),
            format!("version: 0\ntopic_id: {id}\n").as_bytes(),
        )?;
        std::fs::rename(&from, &to).with_context(|| format!("moving {}", from.display()))?;
    }
    durable_log::checkpoint::sync_dir(&topics)?;
    Ok(())
}
