//! One segment of a partition log: `<base offset>.log` holding whole record batches back to
//! back exactly as Kafka stores them, with its sparse `.index` and `.timeindex`.
//!
//! Index semantics (both written together every `index_interval` bytes):
//! - offset entry `(r, p)`: the batch whose base offset is `base + r` starts at byte `p`;
//! - time entry `(t, r)`: every batch before the one starting at `base + r` has timestamps
//!   `<= t`. Sealing adds a final entry pointing past the last batch, so its `t` is the
//!   segment's max timestamp.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::batch::{BatchHeader, HEADER_LEN, PatchedHeader};
use crate::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};

/// Timestamp of an empty segment.
pub const NO_TIMESTAMP: i64 = -1;

/// Read size when scanning a segment during recovery.
const SCAN_CHUNK: usize = 1 << 20;

pub fn file_name(base_offset: i64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// A batch ready to be written: the broker's rewritten header and the producer's body.
pub struct PendingBatch<'a> {
    pub header: PatchedHeader,
    pub body: &'a [u8],
    /// The header as it will be on disk (assigned offset and epoch).
    pub parsed: BatchHeader,
}

pub struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    log: Arc<File>,
    /// Bytes of whole batches in the file.
    size: u64,
    next_offset: i64,
    index: OffsetIndex,
    time_index: TimeIndex,
    max_timestamp: i64,
    /// Wall-clock creation time (ms), the segment's age for `segment.ms`. Producer timestamps
    /// are not used: a producer's clock must not decide how storage is laid out.
    created_ms: i64,
    bytes_since_index: u64,
    sealed: bool,
}

/// What recovery found in a segment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    pub batches: u64,
    pub truncated_bytes: u64,
}

impl Segment {
    /// Create an empty active segment, replacing leftovers with the same base offset.
    pub fn create(dir: &Path, base_offset: i64, now_ms: i64) -> io::Result<Self> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)?;
        Ok(Segment {
            base_offset,
            log_path,
            log: Arc::new(log),
            size: 0,
            next_offset: base_offset,
            index: OffsetIndex::create(&dir.join(file_name(base_offset, "index")))?,
            time_index: TimeIndex::create(&dir.join(file_name(base_offset, "timeindex")))?,
            max_timestamp: NO_TIMESTAMP,
            created_ms: now_ms,
            bytes_since_index: 0,
            sealed: false,
        })
    }

    /// Open a segment known to be durable and consistent (below the recovery point, or after a
    /// clean shutdown). Falls back to a full recovery scan if its indexes are missing or do not
    /// match the log. `sealed` selects whether indexes stay on disk or come into memory.
    pub fn open(
        dir: &Path,
        base_offset: i64,
        sealed: bool,
        index_interval: u64,
    ) -> io::Result<(Self, Option<RecoveryReport>)> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let log = OpenOptions::new().read(true).write(true).open(&log_path)?;
        let meta = log.metadata()?;
        let size = meta.len();
        let index = OffsetIndex::open_sealed(&dir.join(file_name(base_offset, "index")))?;
        let time_index = TimeIndex::open_sealed(&dir.join(file_name(base_offset, "timeindex")))?;
        let (Some(index), Some(time_index)) = (index, time_index) else {
            let mut report = RecoveryReport::default();
            let seg = Self::recover(dir, base_offset, index_interval, &mut |_| {}, &mut report)?;
            return Ok((seg, Some(report)));
        };
        let mut seg = Segment {
            base_offset,
            log_path,
            log: Arc::new(log),
            size,
            next_offset: base_offset,
            index,
            time_index,
            max_timestamp: NO_TIMESTAMP,
            created_ms: birth_ms(&meta),
            bytes_since_index: 0,
            sealed: true,
        };
        if seg.reload_tail_state().is_err() {
            let mut report = RecoveryReport::default();
            let seg = Self::recover(dir, base_offset, index_interval, &mut |_| {}, &mut report)?;
            return Ok((seg, Some(report)));
        }
        if !sealed {
            seg.unseal()?;
        }
        Ok((seg, None))
    }

    /// Rebuild a segment that may have a torn tail: validate every batch (header, CRC,
    /// growing offsets), rebuild both indexes, and cut the file after the last valid batch.
    /// `on_batch` sees every valid batch in order. The result is an active (unsealed) segment.
    pub fn recover(
        dir: &Path,
        base_offset: i64,
        index_interval: u64,
        on_batch: &mut dyn FnMut(&BatchHeader),
        report: &mut RecoveryReport,
    ) -> io::Result<Self> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let log = OpenOptions::new().read(true).write(true).open(&log_path)?;
        let meta = log.metadata()?;
        let file_len = meta.len();
        let mut seg = Segment {
            base_offset,
            log_path,
            log: Arc::new(log),
            size: 0,
            next_offset: base_offset,
            index: OffsetIndex::create(&dir.join(file_name(base_offset, "index")))?,
            time_index: TimeIndex::create(&dir.join(file_name(base_offset, "timeindex")))?,
            max_timestamp: NO_TIMESTAMP,
            created_ms: birth_ms(&meta),
            bytes_since_index: 0,
            sealed: false,
        };
        let mut chunk = Vec::new();
        let mut chunk_start = 0u64;
        let mut pos = 0u64;
        // Keep at least one header (then one whole batch) in the chunk.
        while let Some(header) =
            read_in_chunk(&seg.log, &mut chunk, &mut chunk_start, pos, HEADER_LEN)?
                .and_then(|b| BatchHeader::parse(b).ok())
        {
            // Offsets only grow; a compacted segment has gaps between batches.
            if header.base_offset < seg.next_offset {
                break;
            }
            let len = header.total_len();
            let Some(bytes) = read_in_chunk(&seg.log, &mut chunk, &mut chunk_start, pos, len)?
            else {
                break;
            };
            if header.validate_stored(bytes).is_err() {
                break;
            }
            seg.index_batch(&header, pos, len as u64, index_interval)?;
            on_batch(&header);
            report.batches += 1;
            pos += len as u64;
            seg.size = pos;
        }
        if file_len > seg.size {
            report.truncated_bytes = file_len - seg.size;
            seg.log.set_len(seg.size)?;
        }
        Ok(seg)
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    pub fn log_file(&self) -> Arc<File> {
        Arc::clone(&self.log)
    }

    /// Handles on every file of the segment, to make a sealed segment durable.
    pub fn all_files(&self) -> [Arc<File>; 3] {
        [self.log_file(), self.index.file(), self.time_index.file()]
    }

    /// Write batches at the end of the segment with one vectored write per batch group. The
    /// caller has checked that they fit and carry contiguous offsets from `next_offset`.
    pub fn append(&mut self, batches: &[PendingBatch<'_>], index_interval: u64) -> io::Result<()> {
        debug_assert!(!self.sealed, "append to a sealed segment");
        let mut slices = Vec::with_capacity(batches.len() * 2);
        for b in batches {
            slices.push(IoSlice::new(&b.header.0));
            slices.push(IoSlice::new(b.body));
        }
        write_all_vectored_at(&self.log, &mut slices, self.size)?;
        for b in batches {
            let len = (HEADER_LEN + b.body.len()) as u64;
            self.index_batch(&b.parsed, self.size, len, index_interval)?;
            self.size += len;
        }
        Ok(())
    }

    /// Account for a batch written at `pos`: indexes, offsets, timestamps.
    fn index_batch(
        &mut self,
        h: &BatchHeader,
        pos: u64,
        len: u64,
        index_interval: u64,
    ) -> io::Result<()> {
        if self.bytes_since_index >= index_interval {
            let relative_offset = (h.base_offset - self.base_offset) as u32;
            self.index.push(OffsetEntry {
                relative_offset,
                position: pos as u32,
            })?;
            let last_time = self.time_index.last()?.map(|e| e.timestamp);
            if self.max_timestamp != NO_TIMESTAMP && last_time < Some(self.max_timestamp) {
                self.time_index.push(TimeEntry {
                    timestamp: self.max_timestamp,
                    relative_offset,
                })?;
            }
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += len;
        self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
        self.next_offset = h.next_offset();
        Ok(())
    }

    /// The first batch whose last offset is `>= offset`, with its position.
    pub fn find(&self, offset: i64) -> io::Result<Option<(u64, BatchHeader)>> {
        let mut pos = match self.index.floor(offset - self.base_offset)? {
            Some(e) => u64::from(e.position),
            None => 0,
        };
        while pos < self.size {
            let h = self.header_at(pos)?;
            if h.last_offset() >= offset {
                return Ok(Some((pos, h)));
            }
            pos += h.total_len() as u64;
        }
        Ok(None)
    }

    /// Read the batch header at `pos` (which must start a batch).
    pub fn header_at(&self, pos: u64) -> io::Result<BatchHeader> {
        let mut b = [0u8; HEADER_LEN];
        self.log.read_exact_at(&mut b, pos)?;
        BatchHeader::parse(&b).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} at byte {pos}: {e}", self.log_path.display()),
            )
        })
    }

    /// Iterate over `(position, header)` of the batches from `pos` to the end.
    pub fn headers_from(
        &self,
        pos: u64,
    ) -> impl Iterator<Item = io::Result<(u64, BatchHeader)>> + '_ {
        let mut pos = pos;
        std::iter::from_fn(move || {
            if pos >= self.size {
                return None;
            }
            let at = pos;
            Some(self.header_at(at).map(|h| {
                pos = at + h.total_len() as u64;
                (at, h)
            }))
        })
    }

    /// Where to start scanning for the first record with a timestamp `>= ts`.
    pub fn time_lookup_start(&self, ts: i64) -> io::Result<u64> {
        let Some(t) = self.time_index.floor(ts.saturating_sub(1))? else {
            return Ok(0);
        };
        let target = self.base_offset + i64::from(t.relative_offset);
        Ok(match self.index.floor(i64::from(t.relative_offset))? {
            Some(e) if self.base_offset + i64::from(e.relative_offset) <= target => {
                u64::from(e.position)
            }
            _ => 0,
        })
    }

    /// Read `len` bytes at `pos`; fewer if the file is shorter.
    pub fn read_at(file: &File, pos: u64, len: usize) -> io::Result<Bytes> {
        let mut buf = BytesMut::zeroed(len);
        let mut done = 0;
        while done < len {
            match file.read_at(&mut buf[done..], pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf.freeze())
    }

    /// Remove every batch holding offsets `>= offset`; the segment becomes active again.
    pub fn truncate_to(&mut self, offset: i64) -> io::Result<()> {
        let Some((pos, _)) = self.find(offset)? else {
            return Ok(());
        };
        self.unseal()?;
        self.log.set_len(pos)?;
        self.size = pos;
        self.index.truncate_while(|e| u64::from(e.position) < pos)?;
        let last_rel = self.index.last()?.map(|e| e.relative_offset);
        self.time_index
            .truncate_while(|e| Some(e.relative_offset) <= last_rel)?;
        self.reload_tail_state()
    }

    /// Recompute next offset, timestamps and the index cursor from the last index entry to the
    /// end of the file (the part no index entry describes).
    fn reload_tail_state(&mut self) -> io::Result<()> {
        let (mut pos, mut max_ts) = match self.index.last()? {
            Some(e) => (
                u64::from(e.position),
                self.time_index_max_before(e.relative_offset)?,
            ),
            None => (0, NO_TIMESTAMP),
        };
        let start = pos;
        self.next_offset = self.base_offset;
        let mut last = None;
        while pos < self.size {
            let h = self.header_at(pos)?;
            let end = pos + h.total_len() as u64;
            if end > self.size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: batch at {pos} runs past the end",
                        self.log_path.display()
                    ),
                ));
            }
            max_ts = max_ts.max(h.max_timestamp);
            last = Some(h);
            pos = end;
        }
        match last {
            Some(h) => self.next_offset = h.next_offset(),
            None if start > 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "index points at the end of the log",
                ));
            }
            None => {}
        }
        self.max_timestamp = max_ts;
        self.bytes_since_index = self.size - start;
        Ok(())
    }

    /// Max timestamp of the batches before relative offset `rel`, as the time index knows it.
    fn time_index_max_before(&self, rel: u32) -> io::Result<i64> {
        let mut best = NO_TIMESTAMP;
        // Entries are few (one per index interval); walk from the end to the covering one.
        for i in (0..self.time_index.len()).rev() {
            let e = self.time_index.get(i)?;
            if e.relative_offset <= rel {
                best = e.timestamp;
                break;
            }
        }
        Ok(best)
    }

    /// The segment stops receiving appends: record its max timestamp and move indexes to disk.
    pub fn seal(&mut self) -> io::Result<()> {
        if self.sealed {
            return Ok(());
        }
        if self.max_timestamp != NO_TIMESTAMP {
            let last = self.time_index.last()?.map(|e| e.timestamp);
            if last < Some(self.max_timestamp) {
                self.time_index.push(TimeEntry {
                    timestamp: self.max_timestamp,
                    relative_offset: (self.next_offset - self.base_offset) as u32,
                })?;
            }
        }
        self.index.seal();
        self.time_index.seal();
        self.sealed = true;
        Ok(())
    }

    /// Make this segment the active one (bring its indexes into memory).
    pub fn activate(&mut self) -> io::Result<()> {
        self.unseal()
    }

    fn unseal(&mut self) -> io::Result<()> {
        if self.sealed {
            self.index.unseal()?;
            self.time_index.unseal()?;
            self.sealed = false;
        }
        Ok(())
    }

    /// The segment's files were moved (same names) into `dir`: the log cleaner builds a
    /// segment in a staging directory and swaps it in.
    pub fn relocate(&mut self, dir: &Path) {
        self.log_path = dir.join(file_name(self.base_offset, "log"));
        self.index
            .relocate(dir.join(file_name(self.base_offset, "index")));
        self.time_index
            .relocate(dir.join(file_name(self.base_offset, "timeindex")));
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Remove the segment's files.
    pub fn delete(self) -> io::Result<()> {
        for p in [
            self.log_path.clone(),
            self.index.path().to_owned(),
            self.time_index.path().to_owned(),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// When a segment file was created (birth time where the filesystem records it, else its last
/// modification), in ms since the Unix epoch.
fn birth_ms(meta: &std::fs::Metadata) -> i64 {
    meta.created()
        .or_else(|_| meta.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

/// Make sure `chunk` holds bytes `[pos, pos + len)` of the file, reading forward as needed.
/// Returns `None` when the file ends first.
fn read_in_chunk<'c>(
    file: &File,
    chunk: &'c mut Vec<u8>,
    chunk_start: &mut u64,
    pos: u64,
    len: usize,
) -> io::Result<Option<&'c [u8]>> {
    let have = |chunk: &Vec<u8>, start: u64| {
        pos >= start && pos + len as u64 <= start + chunk.len() as u64
    };
    if !have(chunk, *chunk_start) {
        let want = len.max(SCAN_CHUNK);
        chunk.resize(want, 0);
        let mut done = 0;
        while done < want {
            match file.read_at(&mut chunk[done..], pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        chunk.truncate(done);
        *chunk_start = pos;
        if !have(chunk, *chunk_start) {
            return Ok(None);
        }
    }
    let from = (pos - *chunk_start) as usize;
    Ok(Some(&chunk[from..from + len]))
}

/// `pwritev` until every slice is written (std's `write_all_vectored` is not stable, and
/// positional vectored writes are not in std at all).
fn write_all_vectored_at(file: &File, slices: &mut [IoSlice<'_>], mut pos: u64) -> io::Result<()> {
    use std::os::fd::AsFd;
    let mut slices = &mut slices[..];
    // Linux caps one call at IOV_MAX slices.
    const IOV_MAX: usize = 1024;
    while !slices.is_empty() {
        let n = slices.len().min(IOV_MAX);
        match nix::sys::uio::pwritev(file.as_fd(), &slices[..n], pos as i64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                pos += written as u64;
                IoSlice::advance_slices(&mut slices, written);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::encode_batch;

    fn write(seg: &mut Segment, values: &[&[u8]], ts: i64) -> BatchHeader {
        let raw = encode_batch(values, None, ts);
        let header = PatchedHeader::new(&raw, seg.next_offset(), 0);
        let parsed = BatchHeader::parse(&header.0).unwrap();
        seg.append(
            &[PendingBatch {
                header,
                body: &raw[HEADER_LEN..],
                parsed,
            }],
            64,
        )
        .unwrap();
        parsed
    }

    #[test]
    fn append_find_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 100, 0).unwrap();
        for i in 0..50 {
            write(
                &mut seg,
                &[b"value-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", b"v2"],
                1000 + i,
            );
        }
        assert_eq!(seg.next_offset(), 200);
        let (pos, h) = seg.find(151).unwrap().unwrap();
        assert_eq!(h.base_offset, 150);
        assert_eq!(seg.header_at(pos).unwrap(), h);
        assert!(seg.find(200).unwrap().is_none());
        let size = seg.size();
        seg.seal().unwrap();
        drop(seg);

        let (seg, rebuilt) = Segment::open(dir.path(), 100, true, 64).unwrap();
        assert!(rebuilt.is_none());
        assert_eq!((seg.next_offset(), seg.size()), (200, size));
        assert_eq!(seg.max_timestamp(), 1049 + 1);
        assert_eq!(seg.find(199).unwrap().unwrap().1.base_offset, 198);
    }

    #[test]
    fn recovery_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 0).unwrap();
        for _ in 0..10 {
            write(&mut seg, &[b"abc"], 5);
        }
        let good = seg.size();
        // A torn write: half a batch of garbage after the last good batch.
        seg.log_file().write_all_at(&[7u8; 40], good).unwrap();
        drop(seg);
        let mut seen = 0;
        let mut report = RecoveryReport::default();
        let seg = Segment::recover(dir.path(), 0, 64, &mut |_| seen += 1, &mut report).unwrap();
        assert_eq!(seen, 10);
        assert_eq!(report.truncated_bytes, 40);
        assert_eq!(seg.size(), good);
        assert_eq!(seg.next_offset(), 10);
        assert_eq!(
            std::fs::metadata(dir.path().join(file_name(0, "log")))
                .unwrap()
                .len(),
            good
        );
    }

    #[test]
    fn recovery_stops_at_a_bad_crc() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 0).unwrap();
        write(&mut seg, &[b"one"], 1);
        let second = seg.size();
        write(&mut seg, &[b"two"], 2);
        write(&mut seg, &[b"three"], 3);
        // Flip a byte in the body of the second batch.
        seg.log_file()
            .write_all_at(&[0xee], second + HEADER_LEN as u64 + 2)
            .unwrap();
        drop(seg);
        let mut report = RecoveryReport::default();
        let seg = Segment::recover(dir.path(), 0, 64, &mut |_| {}, &mut report).unwrap();
        assert_eq!(seg.next_offset(), 1);
        assert_eq!(seg.size(), second);
    }

    #[test]
    fn truncate_then_append_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 0).unwrap();
        for i in 0..20 {
            write(&mut seg, &[b"0123456789012345678901234567890123456789"], i);
        }
        seg.seal().unwrap();
        seg.truncate_to(7).unwrap();
        assert_eq!(seg.next_offset(), 7);
        assert_eq!(seg.max_timestamp(), 6);
        write(&mut seg, &[b"new"], 100);
        assert_eq!(seg.next_offset(), 8);
        assert_eq!(seg.find(7).unwrap().unwrap().1.max_timestamp, 100);
    }

    #[test]
    fn time_lookup_start_never_skips_a_match() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 0).unwrap();
        for i in 0..100 {
            write(
                &mut seg,
                &[b"0123456789012345678901234567890123456789"],
                i * 10,
            );
        }
        for target in [0, 5, 10, 455, 990, 5000] {
            let start = seg.time_lookup_start(target).unwrap();
            let first = seg
                .headers_from(start)
                .map(|r| r.unwrap().1)
                .find(|h| h.max_timestamp >= target);
            let expected = (0..100).find(|i| i * 10 >= target);
            assert_eq!(first.map(|h| h.base_offset), expected, "target {target}");
        }
    }
}
