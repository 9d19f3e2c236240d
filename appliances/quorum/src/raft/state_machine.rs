//! openraft's state machine: [`ClusterState`] with its snapshots. Every applied entry is
//! published on a `watch` channel, which is how a broker's replica manager (and the
//! controller) learn what the quorum decided.
//!
//! The state itself is not persisted entry by entry: a snapshot (JSON, replaced atomically)
//! holds it as of some index, and at start openraft applies the log entries after it again.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_file::LogFile;
use super::{Applied, TypeConfig};
use crate::ids::NodeId;
use crate::metadata::ClusterState;

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    meta: SnapshotMeta<NodeId, BasicNode>,
    state: ClusterState,
}

struct Inner {
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// The newest snapshot, as stored.
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// The state machine; clones share it (the snapshot builder is a clone). The state is under
/// `inner`; the snapshot file under its own lock, written with `inner` released.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    file: Arc<Mutex<Box<dyn LogFile>>>,
    blocks: bool,
    published: watch::Sender<Arc<ClusterState>>,
}

impl StateMachine {
    /// Load the last snapshot from `file` (empty: a new node).
    pub fn open(mut file: Box<dyn LogFile>) -> std::io::Result<StateMachine> {
        let bytes = file.read_all()?;
        let blocks = file.blocks();
        let mut inner = Inner {
            state: ClusterState::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        if !bytes.is_empty() {
            let body: SnapshotBody = serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("quorum snapshot does not decode: {e}"),
                )
            })?;
            inner.state = body.state;
            inner.last_applied = body.meta.last_log_id;
            inner.membership = body.meta.last_membership.clone();
            inner.snapshot = Some((body.meta, bytes));
        }
        let published = watch::Sender::new(Arc::new(inner.state.clone()));
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(inner)),
            file: Arc::new(Mutex::new(file)),
            blocks,
            published,
        })
    }

    /// Replace the snapshot file with `bytes`: on a blocking thread when it is on a disk.
    async fn store(&self, bytes: Vec<u8>) -> Result<(), StorageError<NodeId>> {
        let file = Arc::clone(&self.file);
        let write = move || file.lock().replace(&bytes);
        let done = if self.blocks {
            tokio::task::spawn_blocking(write)
                .await
                .map_err(snapshot_err)?
        } else {
            write()
        };
        done.map_err(snapshot_err)
    }

    /// Every state the quorum reaches, as it is applied here.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.published.subscribe()
    }

    pub fn current(&self) -> Arc<ClusterState> {
        Arc::clone(&self.published.borrow())
    }

    fn publish(&self, state: &ClusterState) {
        self.published.send_replace(Arc::new(state.clone()));
    }
}

fn snapshot_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, bytes) = {
            let mut inner = self.inner.lock();
            inner.snapshots_built += 1;
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    inner.last_applied.map_or(0, |l| l.index),
                    inner.snapshots_built
                ),
            };
            let body = SnapshotBody {
                meta: meta.clone(),
                state: inner.state.clone(),
            };
            let bytes = serde_json::to_vec(&body).map_err(snapshot_err)?;
            (meta, bytes)
        };
        self.store(bytes.clone()).await?;
        self.inner.lock().snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let inner = self.inner.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut inner = self.inner.lock();
        for entry in entries {
            let index = entry.log_id.index;
            inner.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {
                    inner.state.advance(index);
                    out.push(Applied::default());
                }
                EntryPayload::Normal(command) => {
                    tracing::trace!(log_id = %entry.log_id, records = ?command.records, "applying");
                    let results = inner.state.apply(index, &command.records);
                    for (r, skipped) in command.records.iter().zip(&results) {
                        if let Err(why) = skipped {
                            tracing::info!(index, record = ?r, %why, "metadata record skipped");
                        }
                    }
                    out.push(Applied {
                        index,
                        skipped: results.into_iter().map(|r| r.err()).collect(),
                    });
                }
                EntryPayload::Membership(m) => {
                    inner.state.advance(index);
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(Applied::default());
                }
            }
        }
        self.publish(&inner.state);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(e))
        })?;
        self.store(bytes.clone()).await?;
        let mut inner = self.inner.lock();
        inner.state = body.state;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), bytes));
        self.publish(&inner.state);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        Ok(inner.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}
