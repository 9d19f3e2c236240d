//! The broker's data directory: who owns it and how the last process left it.
//!
//! - `.lock` is held with `flock` for the life of the process: a second broker on the same
//!   directory refuses to start instead of corrupting the first one's logs.
//! - `meta.properties` records the node id and cluster id (Kafka's format) so that a disk
//!   moved to the wrong node, or a node pointed at another cluster's disk, is refused.
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
    #[error("data directory {0}: meta.properties is unreadable: {1}")]
    BadMeta(PathBuf, String),
}

pub struct DataDir {
    root: PathBuf,
    _lock: Flock<File>,
    pub cluster_id: String,
    /// The previous process shut down cleanly (logs were flushed and closed).
    pub clean_shutdown: bool,
}

/// A Kafka-style cluster id: 22 characters of URL-safe base64 of a random UUID.
pub fn new_cluster_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

fn parse_meta(text: &str) -> Option<(i32, String)> {
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
    };
    Some((get("node.id")?.parse().ok()?, get("cluster.id")?))
}

impl DataDir {
    pub fn open(
        root: &Path,
        node_id: i32,
        configured_cluster: Option<&str>,
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
        let cluster_id = match checkpoint::read_optional(&meta_path).map_err(io)? {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let (found_node, found_cluster) = parse_meta(&text).ok_or_else(|| {
                    DataDirError::BadMeta(root.to_owned(), "missing node.id or cluster.id".into())
                })?;
                if found_node != node_id {
                    return Err(DataDirError::WrongNode {
                        path: root.to_owned(),
                        found: found_node,
                        configured: node_id,
                    });
                }
                if let Some(c) = configured_cluster.filter(|c| *c != found_cluster) {
                    return Err(DataDirError::WrongCluster {
                        path: root.to_owned(),
                        found: found_cluster,
                        configured: c.to_string(),
                    });
                }
                found_cluster
            }
            None => {
                let id = configured_cluster.map_or_else(new_cluster_id, str::to_string);
                let text = format!("version=1\nnode.id={node_id}\ncluster.id={id}\n");
                checkpoint::write_atomic(&meta_path, text.as_bytes()).map_err(io)?;
                id
            }
        };

        let clean_path = root.join(CLEAN);
        let clean_shutdown = clean_path.exists();
        if clean_shutdown {
            std::fs::remove_file(&clean_path).map_err(io)?;
            checkpoint::sync_dir(root).map_err(io)?;
        }
        Ok(DataDir {
            root: root.to_owned(),
            _lock: lock,
            cluster_id,
            clean_shutdown,
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
        let d = DataDir::open(dir.path(), 1, None).unwrap();
        assert!(!d.clean_shutdown);
        assert_eq!(d.cluster_id.len(), 22);
        assert!(matches!(
            DataDir::open(dir.path(), 1, None),
            Err(DataDirError::Locked(_))
        ));
        d.mark_clean_shutdown().unwrap();
        let cluster = d.cluster_id.clone();
        drop(d);
        let d = DataDir::open(dir.path(), 1, None).unwrap();
        assert!(d.clean_shutdown);
        assert_eq!(d.cluster_id, cluster);
        drop(d);
        assert!(
            !DataDir::open(dir.path(), 1, None).unwrap().clean_shutdown,
            "the marker is consumed"
        );
        assert!(matches!(
            DataDir::open(dir.path(), 2, None),
            Err(DataDirError::WrongNode { .. })
        ));
        assert!(matches!(
            DataDir::open(dir.path(), 1, Some("other")),
            Err(DataDirError::WrongCluster { .. })
        ));
    }
}
