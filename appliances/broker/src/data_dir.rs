//! The broker's data directory: who owns it and how the last process left it.
//!
//! - `.lock` is held with `flock` for the life of the process: a second broker on the same
//!   directory refuses to start instead of corrupting the first one's logs.
//! - `meta.properties` records the node id, the cluster id and this directory's own id
//!   (Kafka's format, `directory.id`) so that a disk moved to the wrong node, or a node
//!   pointed at another cluster's disk, is refused, and the controller can tell a broker that
//!   came back with a new (empty) disk from one that kept its data. A broker joining a
//!   cluster learns the cluster id from the quorum and binds the directory to it then.
//! - `.clean_shutdown` exists only between a clean shutdown and the next start. It is removed
//!   (durably) before anything else happens, so a crash at any later point means recovery.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use base64::Engine;
use durable_log::checkpoint;
use nix::fcntl::{Flock, FlockArg};

const LOCK: &str = ".lock";
const META: &str = "meta.properties";
const CLEAN: &str = ".clean_shutdown";
/// The cluster name recorded for a broker that runs alone (no `[cluster]` section).
pub const ONE_NODE: &str = "(one node)";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("data directory {0} is in use by another broker process")]
    Locked(PathBuf),
    #[error("data directory {path} belongs to node {found}, this broker is node {configured}")]
    WrongNode {
        path: PathBuf,
        found: i32,
        configured: i32,
    },
    #[error("data directory {path} belongs to cluster {found}, configuration says {configured}")]
    WrongCluster {
        path: PathBuf,
        found: String,
        configured: String,
    },
    #[error(
        "data directory {path} belongs to a node of the hub named {found:?}, configuration says cluster.name = {configured:?}"
    )]
    WrongClusterName {
        path: PathBuf,
        found: String,
        configured: String,
    },
    #[error(
        "data directory {0} holds the quorum log of a broker that ran alone (or of a hub it does not name): a hub's broker starts from an empty directory"
    )]
    UnnamedQuorumLog(PathBuf),
    #[error("data directory {0}: meta.properties is unreadable: {1}")]
    BadMeta(PathBuf, String),
}

pub struct DataDir {
    root: PathBuf,
    _lock: Flock<File>,
    node_id: i32,
    /// `None` until the directory is bound to a cluster.
    pub cluster_id: Option<String>,
    /// This directory's identity (Kafka's `directory.id`).
    pub storage_id: uuid::Uuid,
    /// The `cluster.name` of the stretched hub it belongs to, once it has joined one.
    cluster_name: Option<String>,
    /// The previous process shut down cleanly (logs were flushed and closed).
    pub clean_shutdown: bool,
}

/// A Kafka-style cluster id: 22 characters of URL-safe base64 of a random UUID.
pub fn new_cluster_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

struct Meta {
    node_id: i32,
    cluster_id: Option<String>,
    storage_id: Option<uuid::Uuid>,
    cluster_name: Option<String>,
}

fn parse_meta(text: &str) -> Option<Meta> {
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
    };
    Some(Meta {
        node_id: get("node.id")?.parse().ok()?,
        cluster_id: get("cluster.id").filter(|c| !c.is_empty()),
        storage_id: get("directory.id").and_then(|d| d.parse().ok()),
        cluster_name: get("clickceler.cluster.name").filter(|c| !c.is_empty()),
    })
}

fn write_meta(
    path: &Path,
    node_id: i32,
    cluster: Option<&str>,
    storage: uuid::Uuid,
    cluster_name: Option<&str>,
) -> std::io::Result<()> {
    let mut text = format!(
        "version=1\nnode.id={node_id}\ncluster.id={}\ndirectory.id={storage}\n",
        cluster.unwrap_or_default()
    );
    if let Some(name) = cluster_name {
        text.push_str(&format!("clickceler.cluster.name={name}\n"));
    }
    checkpoint::write_atomic(path, text.as_bytes())
}

impl DataDir {
    /// Open and lock the directory. With `generate`, a directory not bound to a cluster yet
    /// gets a new cluster id (a one-node broker forms its own cluster); otherwise it stays
    /// unbound until [`DataDir::bind_cluster`].
    pub fn open(
        root: &Path,
        node_id: i32,
        configured_cluster: Option<&str>,
        generate: bool,
    ) -> Result<DataDir, DataDirError> {
        let io = |e| DataDirError::Io(root.to_owned(), e);
        std::fs::create_dir_all(root).map_err(io)?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(LOCK))
            .map_err(io)?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| DataDirError::Locked(root.to_owned()))?;
        let meta_path = root.join(META);
        let meta = match checkpoint::read_optional(&meta_path).map_err(io)? {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                parse_meta(&text).ok_or_else(|| {
                    DataDirError::BadMeta(root.to_owned(), "missing node.id".into())
                })?
            }
            None => Meta {
                node_id,
                cluster_id: None,
                storage_id: None,
                cluster_name: None,
            },
        };
        if meta.node_id != node_id {
            return Err(DataDirError::WrongNode {
                path: root.to_owned(),
                found: meta.node_id,
                configured: node_id,
            });
        }
        if let (Some(found), Some(c)) = (&meta.cluster_id, configured_cluster)
            && found != c
        {
            return Err(DataDirError::WrongCluster {
                path: root.to_owned(),
                found: found.clone(),
                configured: c.to_string(),
            });
        }
        let cluster_id = meta
            .cluster_id
            .clone()
            .or_else(|| configured_cluster.map(str::to_string))
            .or_else(|| generate.then(new_cluster_id));
        let storage_id = meta.storage_id.unwrap_or_else(uuid::Uuid::new_v4);
        if meta.cluster_id != cluster_id || meta.storage_id != Some(storage_id) {
            write_meta(
                &meta_path,
                node_id,
                cluster_id.as_deref(),
                storage_id,
                meta.cluster_name.as_deref(),
            )
            .map_err(io)?;
        }
        let clean_path = root.join(CLEAN);
        let clean_shutdown = clean_path.exists();
        if clean_shutdown {
            std::fs::remove_file(&clean_path).map_err(io)?;
            checkpoint::sync_dir(root).map_err(io)?;
        }
        Ok(DataDir {
            root: root.to_owned(),
            _lock: lock,
            node_id,
            cluster_id,
            storage_id,
            cluster_name: meta.cluster_name,
            clean_shutdown,
        })
    }

    /// Check, before the broker joins anything, that the directory belongs to the hub named
    /// `name` (its `[cluster] name`, or [`ONE_NODE`] for a broker alone), and record the name
    /// if it belongs to none yet. A disk moved from another hub, or from a broker that ran
    /// alone (its quorum log names only itself as voter), is refused here, before its quorum
    /// log meets this hub's.
    pub fn check_cluster_name(&mut self, name: &str) -> Result<(), DataDirError> {
        match &self.cluster_name {
            Some(found) if found != name => Err(DataDirError::WrongClusterName {
                path: self.root.clone(),
                found: found.clone(),
                configured: name.to_string(),
            }),
            Some(_) => Ok(()),
            None if name != ONE_NODE && self.has_quorum_log() => {
                Err(DataDirError::UnnamedQuorumLog(self.root.clone()))
            }
            None => {
                write_meta(
                    &self.root.join(META),
                    self.node_id,
                    self.cluster_id.as_deref(),
                    self.storage_id,
                    Some(name),
                )
                .map_err(|e| DataDirError::Io(self.root.clone(), e))?;
                self.cluster_name = Some(name.to_string());
                Ok(())
            }
        }
    }

    /// Bind the directory to the cluster the quorum says it joined; refused when it belongs
    /// to another cluster already.
    pub fn bind_cluster(&mut self, cluster: &str) -> Result<(), DataDirError> {
        match &self.cluster_id {
            Some(found) if found != cluster => Err(DataDirError::WrongCluster {
                path: self.root.clone(),
                found: found.clone(),
                configured: cluster.to_string(),
            }),
            Some(_) => Ok(()),
            None => {
                write_meta(
                    &self.root.join(META),
                    self.node_id,
                    Some(cluster),
                    self.storage_id,
                    self.cluster_name.as_deref(),
                )
                .map_err(|e| DataDirError::Io(self.root.clone(), e))?;
                self.cluster_id = Some(cluster.to_string());
                Ok(())
            }
        }
    }

    /// Whether a quorum log with anything in it is here already.
    fn has_quorum_log(&self) -> bool {
        std::fs::read_dir(self.root.join("quorum")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Record that every log was flushed and closed.
    pub fn mark_clean_shutdown(&self) -> std::io::Result<()> {
        checkpoint::write_atomic(&self.root.join(CLEAN), b"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_lock_and_clean_marker() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path(), 1, None, true).unwrap();
        assert!(!d.clean_shutdown);
        assert_eq!(d.cluster_id.as_ref().unwrap().len(), 22);
        assert!(matches!(
            DataDir::open(dir.path(), 1, None, true),
            Err(DataDirError::Locked(_))
        ));
        d.mark_clean_shutdown().unwrap();
        let (cluster, storage) = (d.cluster_id.clone(), d.storage_id);
        drop(d);
        let d = DataDir::open(dir.path(), 1, None, true).unwrap();
        assert!(d.clean_shutdown);
        assert_eq!((d.cluster_id.clone(), d.storage_id), (cluster, storage));
        drop(d);
        assert!(
            !DataDir::open(dir.path(), 1, None, true)
                .unwrap()
                .clean_shutdown,
            "the marker is consumed"
        );
        assert!(matches!(
            DataDir::open(dir.path(), 2, None, true),
            Err(DataDirError::WrongNode { .. })
        ));
        assert!(matches!(
            DataDir::open(dir.path(), 1, Some("other"), true),
            Err(DataDirError::WrongCluster { .. })
        ));
    }

    #[test]
    fn a_joining_broker_binds_its_directory_to_the_quorums_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DataDir::open(dir.path(), 3, None, false).unwrap();
        assert_eq!(d.cluster_id, None);
        d.bind_cluster("abc").unwrap();
        assert!(matches!(
            d.bind_cluster("xyz"),
            Err(DataDirError::WrongCluster { .. })
        ));
        drop(d);
        let d = DataDir::open(dir.path(), 3, None, false).unwrap();
        assert_eq!(d.cluster_id.as_deref(), Some("abc"));
    }

    #[test]
    fn a_disk_of_another_hub_is_refused_before_joining() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DataDir::open(dir.path(), 3, None, false).unwrap();
        d.check_cluster_name("hub-north").unwrap();
        d.bind_cluster("abc").unwrap();
        drop(d);
        let mut d = DataDir::open(dir.path(), 3, None, false).unwrap();
        d.check_cluster_name("hub-north").unwrap();
        assert_eq!(
            d.cluster_id.as_deref(),
            Some("abc"),
            "the name is kept beside the id"
        );
        let e = d.check_cluster_name("hub-south").unwrap_err();
        assert!(e.to_string().contains("hub-north"), "{e}");
    }

    #[test]
    fn a_disk_that_ran_alone_is_refused_by_a_hub() {
        // Named as a one-node broker: refused by name.
        let dir = tempfile::tempdir().unwrap();
        let mut d = DataDir::open(dir.path(), 1, None, true).unwrap();
        d.check_cluster_name(ONE_NODE).unwrap();
        assert!(d.check_cluster_name("hub").is_err());
        // From before names were recorded: refused by its quorum log.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("quorum")).unwrap();
        std::fs::write(dir.path().join("quorum/log"), b"entries").unwrap();
        let mut d = DataDir::open(dir.path(), 1, None, true).unwrap();
        let e = d.check_cluster_name("hub").unwrap_err();
        assert!(matches!(e, DataDirError::UnnamedQuorumLog(_)), "{e}");
        d.check_cluster_name(ONE_NODE).unwrap();
    }
}
