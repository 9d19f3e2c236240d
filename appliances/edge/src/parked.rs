//! Parked records: copies of the events the hub refused for good (and of the events of their
//! key queued behind them), kept beside a stream's journal until an operator releases or
//! drops their key.
//!
//! Each record is one file, `<offset>.record`, holding it as a one-record Kafka batch (so
//! its key, value, headers and timestamp come back exactly). Copies rather than references
//! into the local log: the stream's cursor may then pass a parked record, and the buffer's
//! retention removes what was forwarded as before, so a parked key waiting for days never
//! holds the buffer's disk. A file is written whole and fsynced before its `Parked` entry
//! is journaled; a file no entry names (a crash in between, a dropped key) is removed when
//! the stream opens.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};

use crate::journal::LocalOffset;

/// One stream's parked records.
#[derive(Debug, Clone)]
pub struct ParkedStore {
    dir: PathBuf,
}

impl ParkedStore {
    /// The store in `dir` (created when missing).
    pub fn open(dir: PathBuf) -> std::io::Result<ParkedStore> {
        std::fs::create_dir_all(&dir)?;
        Ok(ParkedStore { dir })
    }

    fn path(&self, offset: LocalOffset) -> PathBuf {
        self.dir.join(format!("{}.record", offset.0))
    }

    /// Keep `record` (local offset `offset`), durably.
    pub fn put(&self, offset: LocalOffset, record: &Record) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, std::slice::from_ref(record), &options)
            .map_err(std::io::Error::other)?;
        let path = self.path(offset);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)
    }

    /// The record parked as `offset`.
    pub fn get(&self, offset: LocalOffset) -> std::io::Result<Record> {
        let mut bytes = bytes::Bytes::from(std::fs::read(self.path(offset))?);
        let set = RecordBatchDecoder::decode(&mut bytes).map_err(std::io::Error::other)?;
        let mut records = set.records;
        match (records.pop(), records.is_empty()) {
            (Some(r), true) => Ok(r),
            _ => Err(std::io::Error::other(format!(
                "parked record {} is not one record",
                offset.0
            ))),
        }
    }

    /// Remove every file but those of `keep` (after a drop, a release, or a crash between a
    /// file and its journal entry).
    pub fn retain(&self, keep: &BTreeSet<LocalOffset>) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let offset = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<i64>().ok())
                .map(LocalOffset);
            let named = path.extension().is_some_and(|e| e == "record");
            if named && offset.is_some_and(|o| keep.contains(&o)) {
                continue;
            }
            std::fs::remove_file(&path)?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use indexmap::IndexMap;

    fn record(value: &[u8]) -> Record {
        let mut headers = IndexMap::new();
        headers.insert("id".into(), Some(Bytes::from_static(b"e-1")));
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1_700_000_000_123,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::copy_from_slice(value)),
            headers,
        }
    }

    #[test]
    fn a_parked_record_comes_back_whole_and_unnamed_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = ParkedStore::open(dir.path().join("s")).unwrap();
        let big = vec![7u8; 300_000];
        store.put(LocalOffset(41), &record(&big)).unwrap();
        store.put(LocalOffset(42), &record(b"small")).unwrap();
        let back = store.get(LocalOffset(41)).unwrap();
        assert_eq!(back.value.as_deref(), Some(&big[..]));
        assert_eq!(back.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(back.timestamp, 1_700_000_000_123);
        assert_eq!(back.headers[&b"id"[..]].as_deref(), Some(&b"e-1"[..]));
        std::fs::write(dir.path().join("s/43.tmp"), b"torn").unwrap();
        let keep = BTreeSet::from([LocalOffset(42)]);
        assert_eq!(store.retain(&keep).unwrap(), 2);
        assert!(store.get(LocalOffset(41)).is_err());
        assert_eq!(
            store.get(LocalOffset(42)).unwrap().value.as_deref(),
            Some(&b"small"[..])
        );
    }
}
