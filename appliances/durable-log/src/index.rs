//! Sparse indexes of one segment, in Kafka's on-disk formats:
//! - offset index: 8-byte entries (offset relative to the segment base u32, file position u32);
//! - time index: 12-byte entries (max timestamp seen so far i64, relative offset u32).
//!
//! The active segment keeps its entries in memory and appends them to the file as they are
//! made (without fsync: after a crash they are rebuilt from the log). A sealed segment's index
//! is searched on disk with `pread`, so memory does not grow with the number of segments.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A fixed-size index entry.
pub trait Entry: Copy {
    const SIZE: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(b: &[u8]) -> Self;
    /// The value entries are sorted by.
    fn key(&self) -> i64;
}

/// Offset index entry: the batch starting at `relative_offset` (or the first batch after it)
/// begins at byte `position` of the segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

impl Entry for OffsetEntry {
    const SIZE: usize = 8;
    fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        out[4..8].copy_from_slice(&self.position.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_be_bytes(b[0..4].try_into().expect("4 bytes")),
            position: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
        }
    }
    fn key(&self) -> i64 {
        i64::from(self.relative_offset)
    }
}

/// Time index entry: `timestamp` is the largest timestamp in the segment up to and including
/// the batch that starts at `relative_offset`. Entries only grow, so the first entry with
/// `timestamp >= t` bounds where a record of time `t` can first appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

impl Entry for TimeEntry {
    const SIZE: usize = 12;
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.relative_offset.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        TimeEntry {
            timestamp: i64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
            relative_offset: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
        }
    }
    fn key(&self) -> i64 {
        self.timestamp
    }
}

enum Store<E> {
    /// Entries of the active segment, mirrored in memory.
    Memory(Vec<E>),
    /// Entries of a sealed segment, read from the file on demand.
    Disk { len: usize },
}

/// One index file.
pub struct Index<E: Entry> {
    path: PathBuf,
    file: Arc<File>,
    store: Store<E>,
}

impl<E: Entry> Index<E> {
    /// Create an empty index for a new active segment, replacing any file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Index {
            path: path.to_owned(),
            file: Arc::new(file),
            store: Store::Memory(Vec::new()),
        })
    }

    /// Open the index of a sealed segment. Returns `Ok(None)` when the file is missing or not
    /// a whole number of entries, so that the caller rebuilds it from the log.
    pub fn open_sealed(path: &Path) -> io::Result<Option<Self>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len() as usize;
        if !size.is_multiple_of(E::SIZE) {
            return Ok(None);
        }
        Ok(Some(Index {
            path: path.to_owned(),
            file: Arc::new(file),
            store: Store::Disk {
                len: size / E::SIZE,
            },
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file was renamed to `path` (the handle stays valid).
    pub fn relocate(&mut self, path: PathBuf) {
        self.path = path;
    }

    /// A handle on the file, to fsync it without holding the log.
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    pub fn len(&self) -> usize {
        match &self.store {
            Store::Memory(v) => v.len(),
            Store::Disk { len } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> io::Result<E> {
        match &self.store {
            Store::Memory(v) => Ok(v[i]),
            Store::Disk { .. } => {
                let mut b = [0u8; 16];
                let b = &mut b[..E::SIZE];
                self.file.read_exact_at(b, (i * E::SIZE) as u64)?;
                Ok(E::decode(b))
            }
        }
    }

    pub fn last(&self) -> io::Result<Option<E>> {
        match self.len() {
            0 => Ok(None),
            n => self.get(n - 1).map(Some),
        }
    }

    /// The last entry whose key is `<= key`, if any.
    pub fn floor(&self, key: i64) -> io::Result<Option<E>> {
        let (mut lo, mut hi) = (0usize, self.len());
        // Invariant: entries before `lo` have key <= target; entries from `hi` have key > target.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.get(mid)?.key() <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            Ok(None)
        } else {
            self.get(lo - 1).map(Some)
        }
    }

    /// Append an entry to an active index. Entries must come in key order.
    pub fn push(&mut self, e: E) -> io::Result<()> {
        let Store::Memory(v) = &mut self.store else {
            return Err(io::Error::other("append to a sealed index"));
        };
        let mut b = [0u8; 16];
        e.encode(&mut b[..E::SIZE]);
        self.file
            .write_all_at(&b[..E::SIZE], (v.len() * E::SIZE) as u64)?;
        v.push(e);
        Ok(())
    }

    /// Keep only the entries for which `keep` holds (a prefix, as entries are sorted), e.g.
    /// after the log was truncated.
    pub fn truncate_while(&mut self, keep: impl Fn(&E) -> bool) -> io::Result<()> {
        let mut n = self.len();
        while n > 0 && !keep(&self.get(n - 1)?) {
            n -= 1;
        }
        self.file.set_len((n * E::SIZE) as u64)?;
        match &mut self.store {
            Store::Memory(v) => v.truncate(n),
            Store::Disk { len } => *len = n,
        }
        Ok(())
    }

    /// Stop mirroring in memory: the segment is no longer active.
    pub fn seal(&mut self) {
        let len = self.len();
        self.store = Store::Disk { len };
    }

    /// Load entries into memory again: a sealed segment became active (truncation).
    pub fn unseal(&mut self) -> io::Result<()> {
        if let Store::Disk { len } = self.store {
            let mut v = Vec::with_capacity(len);
            for i in 0..len {
                v.push(self.get(i)?);
            }
            self.store = Store::Memory(v);
        }
        Ok(())
    }
}

pub type OffsetIndex = Index<OffsetEntry>;
pub type TimeIndex = Index<TimeEntry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_lookup_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.index");
        let mut idx = OffsetIndex::create(&p).unwrap();
        for i in 0..100u32 {
            idx.push(OffsetEntry {
                relative_offset: i * 10,
                position: i * 1000,
            })
            .unwrap();
        }
        let check = |idx: &OffsetIndex| {
            assert_eq!(idx.floor(-1).unwrap(), None);
            assert_eq!(idx.floor(0).unwrap().unwrap().position, 0);
            assert_eq!(idx.floor(15).unwrap().unwrap().position, 1000);
            assert_eq!(idx.floor(20).unwrap().unwrap().position, 2000);
            assert_eq!(idx.floor(100_000).unwrap().unwrap().position, 99_000);
        };
        check(&idx);
        idx.seal();
        check(&idx);
        let reopened = OffsetIndex::open_sealed(&p).unwrap().unwrap();
        check(&reopened);
    }

    #[test]
    fn truncation_and_unseal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.timeindex");
        let mut idx = TimeIndex::create(&p).unwrap();
        for i in 0..10 {
            idx.push(TimeEntry {
                timestamp: 100 + i,
                relative_offset: i as u32,
            })
            .unwrap();
        }
        idx.seal();
        idx.truncate_while(|e| e.relative_offset < 4).unwrap();
        assert_eq!(idx.len(), 4);
        idx.unseal().unwrap();
        idx.push(TimeEntry {
            timestamp: 500,
            relative_offset: 4,
        })
        .unwrap();
        assert_eq!(idx.last().unwrap().unwrap().timestamp, 500);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 5 * 12);
    }

    #[test]
    fn torn_index_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.index");
        std::fs::write(&p, [0u8; 13]).unwrap();
        assert!(OffsetIndex::open_sealed(&p).unwrap().is_none());
        assert!(
            OffsetIndex::open_sealed(&dir.path().join("missing"))
                .unwrap()
                .is_none()
        );
    }
}
