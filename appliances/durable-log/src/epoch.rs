//! The leader epoch cache of a partition: at which offset each leader epoch began.
//!
//! It answers OffsetForLeaderEpoch ("where did epoch E end?") so that a follower or a consumer
//! can detect a diverged log and truncate to the right offset after a leader change, instead of
//! trusting a high watermark. Persisted in Kafka's checkpoint text format
//! (`0\n<count>\n<epoch> <start offset>\n...`), replaced atomically on every change: changes
//! happen once per leader election, never per append.

use std::io;
use std::path::{Path, PathBuf};

use crate::checkpoint;

/// Epoch returned when no epoch applies.
pub const UNDEFINED_EPOCH: i32 = -1;
/// Offset returned when no epoch applies.
pub const UNDEFINED_OFFSET: i64 = -1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

pub struct LeaderEpochCache {
    path: PathBuf,
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// Load the cache from `path`; a missing file is an empty cache. A malformed file is an
    /// error: it is only ever replaced atomically, so damage is not a crash artefact.
    pub fn load(path: &Path) -> io::Result<Self> {
        let entries = match checkpoint::read_optional(path)? {
            None => Vec::new(),
            Some(bytes) => parse(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
        };
        Ok(LeaderEpochCache {
            path: path.to_owned(),
            entries,
        })
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Record that `epoch` starts at `start_offset`. A repeat of the latest epoch is a no-op.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> io::Result<()> {
        if let Some(last) = self.latest() {
            if epoch == last.epoch {
                return Ok(());
            }
            if epoch < last.epoch || start_offset < last.start_offset {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "leader epoch {epoch} at offset {start_offset} goes backwards from \
                         epoch {} at {}",
                        last.epoch, last.start_offset
                    ),
                ));
            }
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.persist()
    }

    /// The epoch of the batch holding `offset`, if the cache covers it.
    pub fn epoch_for_offset(&self, offset: i64) -> Option<i32> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.start_offset <= offset)
            .map(|e| e.epoch)
    }

    /// Where `requested` ended: the largest known epoch `<= requested` and the start offset of
    /// the next epoch (or `log_end` for the latest). Kafka's `endOffsetFor` semantics.
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        let Some(latest) = self.latest() else {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        };
        if requested == UNDEFINED_EPOCH {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        }
        if requested == latest.epoch {
            return (requested, log_end);
        }
        let Some(higher) = self.entries.iter().find(|e| e.epoch > requested) else {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        };
        match self.entries.iter().rev().find(|e| e.epoch <= requested) {
            None => (requested, higher.start_offset),
            Some(floor) => (floor.epoch, higher.start_offset),
        }
    }

    /// Forget epochs that start at or after `end_offset`: the log was truncated there.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> io::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end_offset);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// The log now starts at `start_offset`: drop epochs wholly before it and move the start of
    /// the epoch that covers it.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> io::Result<()> {
        let covering = self
            .entries
            .iter()
            .rposition(|e| e.start_offset <= start_offset);
        let Some(i) = covering else { return Ok(()) };
        if i == 0 && self.entries[0].start_offset == start_offset {
            return Ok(());
        }
        self.entries.drain(..i);
        self.entries[0].start_offset = start_offset;
        self.persist()
    }

    fn persist(&self) -> io::Result<()> {
        let mut s = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            s.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        checkpoint::write_atomic(&self.path, s.as_bytes())
    }
}

fn parse(bytes: &[u8]) -> Result<Vec<EpochEntry>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let mut lines = text.lines();
    if lines.next() != Some("0") {
        return Err("unknown checkpoint version".into());
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or("missing entry count")?;
    let mut entries = Vec::with_capacity(count);
    for line in lines.by_ref().take(count) {
        let mut parts = line.split(' ');
        let epoch = parts.next().and_then(|p| p.parse().ok());
        let start = parts.next().and_then(|p| p.parse().ok());
        match (epoch, start) {
            (Some(epoch), Some(start_offset)) => entries.push(EpochEntry {
                epoch,
                start_offset,
            }),
            _ => return Err(format!("bad entry {line:?}")),
        }
    }
    if entries.len() != count {
        return Err(format!("expected {count} entries, found {}", entries.len()));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> (tempfile::TempDir, LeaderEpochCache) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = LeaderEpochCache::load(&dir.path().join("leader-epoch-checkpoint")).unwrap();
        for &(e, o) in entries {
            c.assign(e, o).unwrap();
        }
        (dir, c)
    }

    #[test]
    fn end_offsets_follow_kafka() {
        let (_d, c) = cache(&[(1, 0), (3, 100), (6, 250)]);
        assert_eq!(c.end_offset_for(6, 300), (6, 300));
        assert_eq!(c.end_offset_for(3, 300), (3, 250));
        assert_eq!(
            c.end_offset_for(4, 300),
            (3, 250),
            "hole floors to the older epoch"
        );
        assert_eq!(
            c.end_offset_for(0, 300),
            (0, 0),
            "older than anything known"
        );
        assert_eq!(
            c.end_offset_for(7, 300),
            (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
        );
        assert_eq!(c.epoch_for_offset(99), Some(1));
        assert_eq!(c.epoch_for_offset(100), Some(3));
    }

    #[test]
    fn persists_and_truncates() {
        let (d, mut c) = cache(&[(0, 0), (2, 10), (5, 20)]);
        c.truncate_from_end(15).unwrap();
        assert_eq!(c.latest().unwrap().epoch, 2);
        c.truncate_from_start(12).unwrap();
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 2,
                start_offset: 12
            }]
        );
        let again = LeaderEpochCache::load(&d.path().join("leader-epoch-checkpoint")).unwrap();
        assert_eq!(again.entries(), c.entries());
    }

    #[test]
    fn refuses_going_backwards_and_bad_files() {
        let (d, mut c) = cache(&[(3, 10)]);
        assert!(c.assign(2, 20).is_err());
        assert!(c.assign(4, 5).is_err());
        c.assign(3, 50).unwrap();
        assert_eq!(c.entries().len(), 1);
        let p = d.path().join("bad");
        std::fs::write(&p, "0\n2\n1 0\n").unwrap();
        assert!(LeaderEpochCache::load(&p).is_err());
    }
}
