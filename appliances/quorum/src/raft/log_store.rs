//! The quorum log on disk: openraft's [`RaftLogStorage`] over a [`LogFile`].
//!
//! Every change is a framed record appended to one file: a vote, a batch of entries, a
//! truncation, a purge, the committed position. Nothing is acknowledged to openraft before it
//! is synced: a voter persists its term, vote and log before it answers (a voter that forgot
//! them could elect a stale leader and lose committed entries). At open the records are
//! replayed in order and a torn tail is cut. When the file holds mostly purged history it is
//! rewritten (atomically) with what is live.
//!
//! Entries are also kept in memory (the metadata log is small and snapshots keep it short),
//! so reads never touch the disk.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use super::frames;
use super::log_file::LogFile;
use crate::ids::NodeId;

/// Rewrite the file when it exceeds this and holds four times what is live.
const COMPACT_AFTER_BYTES: u64 = 4 << 20;

#[derive(Serialize, Deserialize)]
enum Record {
    Vote(Vote<NodeId>),
    Entries(Vec<Entry<TypeConfig>>),
    /// Remove entries at and after this index (a new leader's log differs).
    TruncateFrom(u64),
    Purge(LogId<NodeId>),
    Committed(Option<LogId<NodeId>>),
}

struct Inner {
    file: Box<dyn LogFile>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    file_bytes: u64,
}

/// The log store; clones share it (openraft's reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    blocks: bool,
}

fn encode(record: &Record) -> Vec<u8> {
    frames::encode(&postcard::to_stdvec(record).expect("log records serialize"))
}

impl Inner {
    fn replay(&mut self, record: Record) {
        match record {
            Record::Vote(v) => self.vote = Some(v),
            Record::Entries(es) => {
                for e in es {
                    self.entries.insert(e.log_id.index, e);
                }
            }
            Record::TruncateFrom(i) => {
                self.entries.split_off(&i);
            }
            Record::Purge(id) => self.purge(id),
            Record::Committed(c) => self.committed = c,
        }
    }

    fn purge(&mut self, upto: LogId<NodeId>) {
        self.entries = self.entries.split_off(&(upto.index + 1));
        if self.last_purged.is_none_or(|p| p.index < upto.index) {
            self.last_purged = Some(upto);
        }
    }

    fn write(&mut self, record: &Record, sync: bool) -> io::Result<()> {
        let bytes = encode(record);
        self.file.append(&bytes)?;
        self.file_bytes += bytes.len() as u64;
        if sync {
            self.file.sync()?;
        }
        Ok(())
    }

    /// Rewrite the file with only what is live when purged history dominates it.
    fn compact_if_worth_it(&mut self) -> io::Result<()> {
        if self.file_bytes < COMPACT_AFTER_BYTES {
            return Ok(());
        }
        let mut live = Vec::new();
        if let Some(v) = &self.vote {
            live.extend(encode(&Record::Vote(*v)));
        }
        if let Some(p) = self.last_purged {
            live.extend(encode(&Record::Purge(p)));
        }
        live.extend(encode(&Record::Committed(self.committed)));
        live.extend(encode(&Record::Entries(
            self.entries.values().cloned().collect(),
        )));
        if (live.len() as u64) * 4 > self.file_bytes {
            return Ok(());
        }
        self.file.replace(&live)?;
        self.file_bytes = live.len() as u64;
        Ok(())
    }
}

impl LogStore {
    /// Open the log in `file`: replay its records and cut a torn tail.
    pub fn open(mut file: Box<dyn LogFile>) -> io::Result<LogStore> {
        let bytes = file.read_all()?;
        let (records, valid) = frames::decode_prefix(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                cut_bytes = bytes.len() - valid,
                "quorum log: cutting a torn tail left by a crash"
            );
            file.truncate(valid as u64)?;
        }
        let blocks = file.blocks();
        let mut inner = Inner {
            file,
            vote: None,
            committed: None,
            last_purged: None,
            entries: BTreeMap::new(),
            file_bytes: valid as u64,
        };
        for r in records {
            let record: Record = postcard::from_bytes(r).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("quorum log record that passed its CRC does not decode: {e}"),
                )
            })?;
            inner.replay(record);
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            blocks,
        })
    }

    /// Run `f` on the store: on a blocking thread when the file is on a disk.
    async fn io<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Inner) -> io::Result<T> + Send + 'static,
    {
        if !self.blocks {
            return f(&mut self.inner.lock());
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&mut inner.lock()))
            .await
            .map_err(io::Error::other)?
    }

    /// The last log id present (or purged), for metrics and tests.
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        let inner = self.inner.lock();
        inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged)
    }
}

fn write_err(e: io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.io(move |i| {
            i.write(&Record::Vote(vote), true)?;
            i.vote = Some(vote);
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().vote)
    }

    /// Not synced: a committed position lost in a crash is learned again from the leader.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.io(move |i| {
            i.write(&Record::Committed(committed), false)?;
            i.committed = committed;
            Ok(())
        })
        .await
        .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let result = self
            .io(move |i| {
                if let (Some(first), Some(last)) = (entries.first(), i.entries.keys().next_back()) {
                    assert!(
                        first.log_id.index == last + 1,
                        "quorum log append at {} after {last}",
                        first.log_id.index
                    );
                }
                i.write(&Record::Entries(entries.clone()), true)?;
                for e in entries {
                    i.entries.insert(e.log_id.index, e);
                }
                Ok(())
            })
            .await;
        let failed = result
            .as_ref()
            .err()
            .map(|e| io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(write_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let from = log_id.index;
        self.io(move |i| {
            i.write(&Record::TruncateFrom(from), true)?;
            i.entries.split_off(&from);
            Ok(())
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.io(move |i| {
            i.write(&Record::Purge(log_id), true)?;
            i.purge(log_id);
            i.compact_if_worth_it()
        })
        .await
        .map_err(write_err)
    }
}
