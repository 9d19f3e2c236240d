//! Log compaction (`cleanup.policy=compact`): keep the newest record of every key, remove
//! tombstones once `delete.retention.ms` has passed, never change an offset.
//!
//! The design is Kafka's cleaner, reduced to one partition at a time:
//! - The log is split at the *cleaner checkpoint* (`cleaner-offset-checkpoint`) into a clean
//!   head (already compacted) and a dirty tail. Only sealed, fsynced segments below the high
//!   watermark whose newest record is older than `min.compaction.lag.ms` may be cleaned; a
//!   pass starts when dirty bytes are at least `min.cleanable.dirty.ratio` of the cleanable
//!   bytes (or the oldest dirty segment is older than `max.compaction.lag.ms`).
//! - A pass reads the dirty segments into a key map (key -> newest offset; exact keys, bounded
//!   by bytes: a hash collision would delete a live record), then rewrites every cleanable
//!   segment that loses a record into a staging directory. A batch keeps its base offset,
//!   `lastOffsetDelta`, leader epoch, timestamps and producer fields; only its records and
//!   CRC change, so offsets, the leader-epoch history and idempotent-producer sequences stay
//!   as they were. Compressed batches are recompressed with their own codec.
//! - Never dropped, even when none of its records remains: the last batch of every segment
//!   (so that each segment still ends where the next one begins: [`crate::Log::open`] treats
//!   a gap between segments as lost data) and the last batch of every live producer (its
//!   sequence state is rebuilt from the log after a crash). Such a batch stays as its header
//!   alone, an empty batch, as Kafka's cleaner leaves them: keeping a superseded record
//!   instead would bring a deleted key back once its tombstone expires.
//! - The swap is crash-safe: the staging directory `clean.tmp` is fsynced, renamed to
//!   `clean.swap` (the commit point), and its files are renamed over the old segments. At
//!   open, a `clean.tmp` is removed and a `clean.swap` is finished. Readers that planned a
//!   read before the swap keep reading the old file through their handle.
//!
//! The plan is taken under the caller's lock ([`crate::Log::clean_plan`]), the reading and
//! writing runs outside it ([`CleanPlan::execute`]) and only the renames run under it again
//! ([`crate::Log::install_cleaned`]), which refuses the result if the log changed underneath.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::batch::{self, BatchHeader, Compression, HEADER_LEN, PatchedHeader};
use crate::checkpoint;
use crate::error::{IoContext, LogError};
use crate::records;
use crate::segment::{PendingBatch, Segment};

/// Staging directory of a pass that has not committed.
pub(crate) const STAGING_DIR: &str = "clean.tmp";
/// Staging directory of a committed pass whose files may not all be in place yet.
pub(crate) const SWAP_DIR: &str = "clean.swap";
/// First dirty offset: everything below it was compacted by an earlier pass.
pub(crate) const CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";

/// A topic's compaction settings (Kafka's topic configs of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionConfig {
    /// `min.cleanable.dirty.ratio`: clean when dirty bytes are at least this share.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: a record stays uncompacted at least this long.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty segment this old is cleaned whatever the ratio.
    pub max_compaction_lag_ms: Option<i64>,
    /// `delete.retention.ms`: how long a tombstone is kept after its segment was last written.
    pub delete_retention_ms: i64,
    /// Bytes of keys the key map may hold in one pass (the cleaner's dedupe buffer).
    pub key_map_bytes_max: usize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: None,
            delete_retention_ms: 24 * 3600 * 1000,
            key_map_bytes_max: 64 << 20,
        }
    }
}

/// One sealed segment as the plan saw it.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub base: i64,
    pub next_offset: i64,
    pub size: u64,
    pub file: Arc<File>,
    /// When the segment was last written: the tombstone clock.
    pub modified: SystemTime,
}

/// What a pass will clean; taken under the log's lock, executed outside it.
pub struct CleanPlan {
    pub(crate) dir: PathBuf,
    /// Cleanable segments from the log start, oldest first.
    pub(crate) sources: Vec<Source>,
    pub(crate) first_dirty: i64,
    pub(crate) generation: u64,
    /// Base offsets of batches kept whole: every live producer's last batch.
    pub(crate) protected: BTreeSet<i64>,
    pub(crate) now: SystemTime,
    pub(crate) config: CompactionConfig,
    pub(crate) index_interval_bytes: u64,
}

/// A finished pass, ready to be swapped in.
pub struct Cleaned {
    pub(crate) generation: u64,
    /// `(size of the segment it replaces, the new segment in the staging directory)`.
    pub(crate) segments: Vec<(u64, Segment)>,
    /// The new cleaner checkpoint.
    pub(crate) end: i64,
    pub report: CleanReport,
}

/// What a pass did (for logs and metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanReport {
    pub segments_read: usize,
    pub segments_rewritten: usize,
    pub keys: usize,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    /// Records without a key (none can be produced to a compacted topic; a topic switched
    /// from `delete` to `compact` may hold some): removed, as Kafka does.
    pub keyless_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// A record as the cleaner needs it: its bytes inside the batch's record data, its offset
/// delta, its key and whether it is a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub raw: &'a [u8],
    pub offset_delta: i64,
    pub key: Option<&'a [u8]>,
    pub tombstone: bool,
}

/// Zigzag varint (Kafka's signed varint and varlong), at most 10 bytes.
fn varint(buf: &[u8], at: &mut usize) -> Option<i64> {
    let mut raw: u64 = 0;
    for i in 0..10 {
        let b = *buf.get(*at)?;
        *at += 1;
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    None
}

/// A length field followed by that many bytes; `-1` is null.
fn bytes_field<'a>(buf: &'a [u8], at: &mut usize) -> Option<Option<&'a [u8]>> {
    let len = varint(buf, at)?;
    if len < 0 {
        return Some(None);
    }
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    let b = buf.get(*at..end)?;
    *at = end;
    Some(Some(b))
}

/// Split uncompressed record data (the part after a batch header, decompressed) into its
/// `count` records. Written by hand: the cleaner must keep each kept record's bytes exactly
/// as the producer wrote them, which `kafka_protocol`'s decoder (it builds owned records)
/// cannot give. Never panics on bad input.
pub fn split_records(data: &[u8], count: i32) -> Result<Vec<RecordView<'_>>, String> {
    let count = usize::try_from(count).map_err(|_| format!("record count {count}"))?;
    let mut out = Vec::with_capacity(count.min(data.len()));
    let mut at = 0usize;
    for i in 0..count {
        let bad = || format!("record {i} is malformed");
        let start = at;
        let len = varint(data, &mut at).ok_or_else(bad)?;
        let len = usize::try_from(len).map_err(|_| bad())?;
        let end = at
            .checked_add(len)
            .filter(|e| *e <= data.len())
            .ok_or_else(bad)?;
        let body = &data[at..end];
        let mut p = 1usize; // attributes
        varint(body, &mut p).ok_or_else(bad)?; // timestamp delta
        let offset_delta = varint(body, &mut p).ok_or_else(bad)?;
        let key = bytes_field(body, &mut p).ok_or_else(bad)?;
        let value = bytes_field(body, &mut p).ok_or_else(bad)?;
        if body.is_empty() || offset_delta < 0 {
            return Err(bad());
        }
        out.push(RecordView {
            raw: &data[start..end],
            offset_delta,
            key,
            tombstone: value.is_none(),
        });
        at = end;
    }
    if at != data.len() {
        return Err(format!("{} bytes after the last record", data.len() - at));
    }
    Ok(out)
}

/// The batch's record data, decompressed.
pub fn record_data(batch: &Bytes, header: &BatchHeader) -> Result<Bytes, String> {
    let codec = header.compression().map_err(|e| e.to_string())?;
    let mut body = batch.slice(HEADER_LEN..);
    records::decompress_body(&mut body, codec).map_err(|e| format!("{e:#}"))
}

/// Compress record data with `codec` as Kafka clients expect it (snappy in the xerial framing
/// of the Java client, lz4 frames, gzip, zstd).
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, String> {
    let io = |e: std::io::Error| e.to_string();
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data).map_err(io)?;
            enc.finish().map_err(io)
        }
        Compression::Snappy => {
            let mut out = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
            for chunk in data.chunks(32 << 10) {
                let block = snap::raw::Encoder::new()
                    .compress_vec(chunk)
                    .map_err(|e| e.to_string())?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(out)
        }
        Compression::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            enc.write_all(data).map_err(io)?;
            enc.finish().map_err(|e| e.to_string())
        }
        Compression::Zstd => Ok(ruzstd::encoding::compress_to_vec(
            data,
            ruzstd::encoding::CompressionLevel::Fastest,
        )),
    }
}

/// What becomes of one batch.
enum Fate {
    Keep,
    Drop,
    Rewrite(Bytes),
}

/// The key map: the newest offset of every key in the dirty segments.
struct KeyMap {
    offsets: HashMap<Vec<u8>, i64>,
    bytes: usize,
}

impl CleanPlan {
    /// Read, filter and write the cleaned segments. Call without holding the log's lock.
    pub fn execute(&self) -> Result<Option<Cleaned>, LogError> {
        let mut report = CleanReport::default();
        let (map, end) = self.build_key_map()?;
        report.keys = map.offsets.len();
        let staging = self.dir.join(STAGING_DIR);
        let _ = fs::remove_dir_all(&staging);
        let mut segments = Vec::new();
        for src in self.sources.iter().take_while(|s| s.next_offset <= end) {
            report.segments_read += 1;
            report.bytes_before += src.size;
            match self.clean_segment(&staging, src, &map, &mut report)? {
                None => report.bytes_after += src.size,
                Some(seg) => {
                    report.bytes_after += seg.size();
                    report.segments_rewritten += 1;
                    segments.push((src.size, seg));
                }
            }
        }
        if segments.is_empty() && end <= self.first_dirty {
            return Ok(None);
        }
        if !segments.is_empty() {
            checkpoint::sync_dir(&staging).ctx(|| format!("fsync of {}", staging.display()))?;
        }
        Ok(Some(Cleaned {
            generation: self.generation,
            segments,
            end,
            report,
        }))
    }

    /// Every batch of `src` that starts before byte `end`, with its position, one at a time.
    fn each_batch(
        src: &Source,
        end: u64,
        mut f: impl FnMut(u64, &BatchHeader, &Bytes) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let mut pos = 0u64;
        while pos < end.min(src.size) {
            let head = Segment::read_at(&src.file, pos, HEADER_LEN)
                .ctx(|| format!("reading a batch header at {pos} of segment {}", src.base))?;
            let h = BatchHeader::parse(&head).map_err(|e| corrupt(src, pos, e.to_string()))?;
            if h.total_len() as u64 > src.size - pos {
                return Err(corrupt(src, pos, "batch runs past the end".into()));
            }
            let bytes = Segment::read_at(&src.file, pos, h.total_len())
                .ctx(|| format!("reading a batch at {pos} of segment {}", src.base))?;
            if bytes.len() != h.total_len() {
                return Err(corrupt(src, pos, "batch runs past the end".into()));
            }
            f(pos, &h, &bytes)?;
            pos += h.total_len() as u64;
        }
        Ok(())
    }

    /// Scan the dirty segments (from the checkpoint) into the key map until it holds
    /// `key_map_bytes_max` bytes of keys. Returns the map and the end of the last segment it
    /// covers whole: the pass cleans up to there. Keys of a segment read only in part stay in
    /// the map: their offsets are newer records that exist, so older ones may go. The first
    /// segment is always read whole, so that every pass progresses.
    fn build_key_map(&self) -> Result<(KeyMap, i64), LogError> {
        let mut map = KeyMap {
            offsets: HashMap::new(),
            bytes: 0,
        };
        let max = self.config.key_map_bytes_max;
        let mut end = self.first_dirty;
        for src in self.sources.iter().filter(|s| s.base >= self.first_dirty) {
            let first = end == self.first_dirty;
            let mut full = false;
            Self::each_batch(src, src.size, |pos, h, bytes| {
                if full {
                    return Ok(());
                }
                let data = record_data(bytes, h).map_err(|e| corrupt(src, pos, e))?;
                for r in split_records(&data, h.records_count).map_err(|e| corrupt(src, pos, e))? {
                    if let Some(k) = r.key {
                        let offset = h.base_offset + r.offset_delta;
                        if map.offsets.insert(k.to_vec(), offset).is_none() {
                            map.bytes += k.len();
                        }
                    }
                }
                full = !first && map.bytes > max;
                Ok(())
            })?;
            if full {
                break;
            }
            end = src.next_offset;
        }
        Ok((map, end))
    }

    /// What becomes of one batch: its records filtered against the key map and the
    /// tombstone horizon.
    #[allow(clippy::too_many_arguments)]
    fn fate(
        &self,
        src: &Source,
        pos: u64,
        h: &BatchHeader,
        bytes: &Bytes,
        map: &KeyMap,
        horizon_passed: bool,
        report: &mut CleanReport,
    ) -> Result<Fate, LogError> {
        // Its header must stay even when no record does (see the module's doc).
        let header_stays =
            pos + h.total_len() as u64 >= src.size || self.protected.contains(&h.base_offset);
        let data = record_data(bytes, h).map_err(|e| corrupt(src, pos, e))?;
        let records = split_records(&data, h.records_count).map_err(|e| corrupt(src, pos, e))?;
        let mut kept: Vec<&[u8]> = Vec::with_capacity(records.len());
        for r in &records {
            let offset = h.base_offset + r.offset_delta;
            match r.key {
                None => report.keyless_removed += 1,
                Some(k) if map.offsets.get(k).is_some_and(|newest| offset < *newest) => {
                    report.records_removed += 1
                }
                Some(_) if r.tombstone && horizon_passed => report.tombstones_removed += 1,
                Some(_) => kept.push(r.raw),
            }
        }
        Ok(if kept.len() == records.len() {
            Fate::Keep
        } else if kept.is_empty() && !header_stays {
            Fate::Drop
        } else if kept.is_empty() {
            Fate::Rewrite(batch::rebuild(bytes, Compression::None, 0, &[]))
        } else {
            let codec = h
                .compression()
                .map_err(|e| corrupt(src, pos, e.to_string()))?;
            let body = compress(codec, &kept.concat()).map_err(|e| corrupt(src, pos, e))?;
            Fate::Rewrite(batch::rebuild(bytes, codec, kept.len() as i32, &body))
        })
    }

    /// Filter `src` into a cleaned copy in the staging directory, one batch in memory at a
    /// time: the copy starts at the first batch that changes (the unchanged ones before it are
    /// copied then). Sealed and fsynced, with the source's modification time (the tombstone
    /// clock must not restart at every pass). `None` when nothing in `src` changes.
    fn clean_segment(
        &self,
        staging: &Path,
        src: &Source,
        map: &KeyMap,
        report: &mut CleanReport,
    ) -> Result<Option<Segment>, LogError> {
        let horizon_passed = self
            .now
            .duration_since(src.modified)
            .is_ok_and(|age| age.as_millis() as i64 > self.config.delete_retention_ms);
        let ctx = || format!("writing the cleaned segment {}", src.base);
        let append = |seg: &mut Segment, bytes: &Bytes, pos: u64| -> Result<(), LogError> {
            let parsed = BatchHeader::parse(bytes).map_err(|e| corrupt(src, pos, e.to_string()))?;
            let pending = PendingBatch {
                header: PatchedHeader::new(
                    bytes,
                    parsed.base_offset,
                    parsed.partition_leader_epoch,
                ),
                body: &bytes[HEADER_LEN..],
                parsed,
            };
            seg.append(std::slice::from_ref(&pending), self.index_interval_bytes)
                .ctx(ctx)
        };
        let mut out: Option<Segment> = None;
        Self::each_batch(src, src.size, |pos, h, bytes| {
            let fate = self.fate(src, pos, h, bytes, map, horizon_passed, report)?;
            if out.is_none() {
                if matches!(fate, Fate::Keep) {
                    return Ok(());
                }
                fs::create_dir_all(staging).ctx(|| format!("creating {}", staging.display()))?;
                let mut seg = Segment::create(staging, src.base, 0).ctx(ctx)?;
                Self::each_batch(src, pos, |p, _, b| append(&mut seg, b, p))?;
                out = Some(seg);
            }
            let seg = out.as_mut().expect("the copy has started");
            match fate {
                Fate::Keep => append(seg, bytes, pos),
                Fate::Drop => Ok(()),
                Fate::Rewrite(b) => append(seg, &b, pos),
            }
        })?;
        let Some(mut seg) = out else {
            return Ok(None);
        };
        if seg.next_offset() != src.next_offset {
            return Err(corrupt(
                src,
                0,
                "the cleaned segment would end elsewhere".into(),
            ));
        }
        seg.seal().ctx(ctx)?;
        for f in seg.all_files() {
            f.sync_data().ctx(ctx)?;
        }
        seg.log_file().set_modified(src.modified).ctx(ctx)?;
        Ok(Some(seg))
    }
}

fn corrupt(src: &Source, pos: u64, why: String) -> LogError {
    LogError::io(
        format!("compacting segment {} (batch at byte {pos})", src.base),
        std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    )
}

/// Finish or discard a pass interrupted by a crash; called by [`crate::Log::open`] before it
/// lists the segments.
pub(crate) fn recover_interrupted(dir: &Path) -> Result<(), LogError> {
    let staging = dir.join(STAGING_DIR);
    if staging.exists() {
        fs::remove_dir_all(&staging).ctx(|| format!("removing {}", staging.display()))?;
    }
    let swap = dir.join(SWAP_DIR);
    if swap.exists() {
        tracing::info!(dir = %dir.display(), "finishing an interrupted compaction swap");
        finish_swap(dir)?;
    }
    Ok(())
}

/// Move every file of the committed swap directory over the segment it replaces.
pub(crate) fn finish_swap(dir: &Path) -> Result<(), LogError> {
    let swap = dir.join(SWAP_DIR);
    for entry in fs::read_dir(&swap).ctx(|| format!("listing {}", swap.display()))? {
        let entry = entry.ctx(|| format!("listing {}", swap.display()))?;
        let to = dir.join(entry.file_name());
        fs::rename(entry.path(), &to).ctx(|| format!("moving {}", to.display()))?;
    }
    checkpoint::sync_dir(dir).ctx(|| format!("fsync of {}", dir.display()))?;
    fs::remove_dir(&swap).ctx(|| format!("removing {}", swap.display()))?;
    checkpoint::sync_dir(dir).ctx(|| format!("fsync of {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_through_the_readers_decompression() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut packed = Bytes::from(compress(codec, &data).unwrap());
            let back = records::decompress_body(&mut packed, codec).unwrap();
            assert_eq!(&back[..], &data[..], "{codec:?}");
        }
    }

    #[test]
    fn records_of_an_encoded_batch_are_split_with_keys_and_tombstones() {
        let b = crate::batch::tests::encode_batch(&[b"a", b"bb"], None, 5);
        let h = BatchHeader::parse(&b).unwrap();
        let data = record_data(&b, &h).unwrap();
        let r = split_records(&data, h.records_count).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[1].offset_delta, r[1].key), (1, Some(&b"k1"[..])));
        assert!(!r[0].tombstone);
        assert_eq!(r.iter().map(|r| r.raw.len()).sum::<usize>(), data.len());
    }

    #[test]
    fn malformed_record_data_is_an_error_never_a_panic() {
        let b = crate::batch::tests::encode_batch(&[b"a", b"bb"], None, 5);
        let data = b.slice(HEADER_LEN..);
        assert!(
            split_records(&data, 3).is_err(),
            "more records claimed than present"
        );
        assert!(split_records(&data, 1).is_err(), "bytes left over");
        assert!(split_records(&data, -1).is_err());
        // Every truncation and every single-byte corruption.
        for cut in 0..data.len() {
            let _ = split_records(&data[..cut], 2);
        }
        for i in 0..data.len() {
            for v in [0x00, 0x7f, 0x80, 0xff] {
                let mut d = data.to_vec();
                d[i] = v;
                let _ = split_records(&d, 2);
            }
        }
        assert!(
            split_records(&[0xff; 11], 1).is_err(),
            "an over-long varint"
        );
    }
}
