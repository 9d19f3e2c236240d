//! The witness's data directory: who owns it, and the quorum's files.
//!
//! ```text
//! <data_dir>/.lock             flock held for the life of the process
//! <data_dir>/meta.json         {"version":1,"node_id":100,"cluster":"clickceler-hub"}
//! <data_dir>/quorum/log        the quorum log (votes, entries), fsynced before answering
//! <data_dir>/quorum/snapshot   the latest metadata snapshot, replaced atomically
//! ```
//!
//! A second witness on the same directory would answer votes from a log the first one is
//! writing; the lock refuses it. A directory of another node or cluster holds votes and entries
//! that mean nothing here (or worse, a vote this node never cast): `meta.json` refuses it.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use durable_log::checkpoint;
use nix::fcntl::{Flock, FlockArg};
use quorum::raft::log_file::FsFile;
use serde::{Deserialize, Serialize};

const LOCK: &str = ".lock";
const META: &str = "meta.json";
const META_VERSION: u32 = 1;
const QUORUM_DIR: &str = "quorum";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("data directory {0} is in use by another witness process")]
    Locked(PathBuf),
    #[error("data directory {path} belongs to node {found}, this witness is node {configured}")]
    WrongNode {
        path: PathBuf,
        found: u32,
        configured: u32,
    },
    #[error(
        "data directory {path} belongs to cluster {found:?}, this witness is configured for \
         cluster {configured:?}"
    )]
    WrongCluster {
        path: PathBuf,
        found: String,
        configured: String,
    },
    #[error("data directory {0}: meta.json is unreadable: {1}")]
    BadMeta(PathBuf, String),
}

/// What `meta.json` records.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    version: u32,
    node_id: u32,
    cluster: String,
}

/// An open data directory; the lock is held until this is dropped.
pub struct DataDir {
    root: PathBuf,
    _lock: Flock<File>,
}

/// The quorum's two files.
pub struct QuorumFiles {
    pub log: FsFile,
    pub snapshot: FsFile,
}

impl DataDir {
    /// Create (if needed), lock and check the directory for node `node_id` of `cluster`;
    /// a new directory is stamped with both.
    pub fn open(root: &Path, node_id: u32, cluster: &str) -> Result<DataDir, DataDirError> {
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
        check_or_stamp(root, node_id, cluster)?;
        Ok(DataDir {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Open (creating on first start) the quorum log and snapshot files.
    pub fn quorum_files(&self) -> Result<QuorumFiles, DataDirError> {
        let dir = self.root.join(QUORUM_DIR);
        let io = |e| DataDirError::Io(dir.clone(), e);
        std::fs::create_dir_all(&dir).map_err(io)?;
        let files = QuorumFiles {
            log: FsFile::open(&dir.join("log")).map_err(io)?,
            snapshot: FsFile::open(&dir.join("snapshot")).map_err(io)?,
        };
        // The log's first fsync makes its content durable, not its name: without this a
        // crash could lose the file with the vote it held.
        checkpoint::sync_dir(&dir).map_err(io)?;
        checkpoint::sync_dir(&self.root).map_err(io)?;
        Ok(files)
    }
}

fn check_or_stamp(root: &Path, node_id: u32, cluster: &str) -> Result<(), DataDirError> {
    let path = root.join(META);
    let bad = |why: String| DataDirError::BadMeta(root.to_owned(), why);
    let Some(bytes) =
        checkpoint::read_optional(&path).map_err(|e| DataDirError::Io(root.to_owned(), e))?
    else {
        let meta = Meta {
            version: META_VERSION,
            node_id,
            cluster: cluster.to_string(),
        };
        let text = serde_json::to_vec(&meta).expect("meta serializes");
        return checkpoint::write_atomic(&path, &text)
            .map_err(|e| DataDirError::Io(root.to_owned(), e));
    };
    let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if meta.version != META_VERSION {
        return Err(bad(format!(
            "version {} (this witness knows {META_VERSION})",
            meta.version
        )));
    }
    if meta.node_id != node_id {
        return Err(DataDirError::WrongNode {
            path: root.to_owned(),
            found: meta.node_id,
            configured: node_id,
        });
    }
    if meta.cluster != cluster {
        return Err(DataDirError::WrongCluster {
            path: root.to_owned(),
            found: meta.cluster,
            configured: cluster.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path(), 100, "hub").unwrap();
        assert!(matches!(
            DataDir::open(dir.path(), 100, "hub"),
            Err(DataDirError::Locked(_))
        ));
        d.quorum_files().unwrap();
        drop(d);
        drop(DataDir::open(dir.path(), 100, "hub").unwrap());
        let e = DataDir::open(dir.path(), 100, "other").err().unwrap();
        assert!(e.to_string().contains("cluster \"hub\""), "{e}");
        assert!(matches!(
            DataDir::open(dir.path(), 101, "hub"),
            Err(DataDirError::WrongNode { .. })
        ));
        std::fs::write(dir.path().join(META), b"{").unwrap();
        assert!(matches!(
            DataDir::open(dir.path(), 100, "hub"),
            Err(DataDirError::BadMeta(..))
        ));
    }
}
