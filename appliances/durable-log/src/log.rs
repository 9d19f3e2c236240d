//! A partition log: an ordered set of segments plus the state derived from them (leader epoch
//! cache, idempotent producer table, log start offset) and the bookkeeping that makes crash
//! recovery cheap and exact.
//!
//! Durability is split from appending: [`Log::append_as_leader`] writes to the page cache and
//! returns; [`Log::flush_plan`] hands out the file handles to fdatasync *outside* the caller's
//! lock, and [`Log::flush_completed`] advances the flushed offset. While one flush runs, more
//! appends accumulate and the next flush covers them all: that is the group commit.
//!
//! Files in the partition directory:
//! - `<base>.log/.index/.timeindex`: segments (see [`crate::segment`]);
//! - `<base>.snapshot`: producer table as of offset `<base>`, written at each roll;
//! - `leader-epoch-checkpoint`, `log-start-offset`, `recovery-point`: small checkpoints.
//!
//! The recovery point is the base of the oldest segment that may not be durable. After a crash
//! only segments from there on are rescanned (CRC-checked and cut at the first torn batch).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{BatchHeader, HEADER_LEN, PatchedHeader, RawBatch, TimestampType};
use crate::checkpoint;
use crate::compaction::{self, CleanPlan, CleanReport, Cleaned, CompactionConfig, Source};
use crate::epoch::LeaderEpochCache;
use crate::error::{AppendError, IoContext, LogError};
use crate::producer::{CachedBatch, ProducerTable, SequenceCheck};
use crate::records;
use crate::segment::{self, NO_TIMESTAMP, PendingBatch, RecoveryReport, Segment};
use crate::streams::{StreamCheck, StreamTable, origin_of};

const EPOCH_FILE: &str = "leader-epoch-checkpoint";
const LOG_START_FILE: &str = "log-start-offset";
const RECOVERY_POINT_FILE: &str = "recovery-point";

/// Settings of one log (Kafka topic configs with the same names in the broker).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the first batch of the active segment is this old.
    pub segment_ms: Option<i64>,
    /// `index.interval.bytes`: bytes between index entries.
    pub index_interval_bytes: u64,
    /// `retention.ms`: delete segments whose newest record is older (None: keep forever).
    pub retention_ms: Option<i64>,
    /// `retention.bytes`: delete oldest segments while the log is larger (None: no limit).
    pub retention_bytes: Option<u64>,
    /// `max.message.bytes`: largest record batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `producer.id.expiration.ms`.
    pub producer_id_expiration_ms: i64,
    /// Set when `cleanup.policy` includes `compact` (see [`crate::compaction`]).
    pub compaction: Option<CompactionConfig>,
    /// `clk.stream.dedup`: batches an edge gateway sent already are recognised by their
    /// stream and sequence headers (see [`crate::streams`]).
    pub stream_dedup: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            max_message_bytes: 1_048_588,
            timestamp_type: TimestampType::CreateTime,
            producer_id_expiration_ms: 24 * 3600 * 1000,
            compaction: None,
            stream_dedup: false,
        }
    }
}

/// What opening a log found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    /// Segments rescanned because they may not have been durable.
    pub recovered_segments: usize,
    /// Bytes cut from torn tails.
    pub truncated_bytes: u64,
    /// Segments removed because they followed a torn one.
    pub dropped_segments: usize,
}

/// Offsets given to an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub first_offset: i64,
    pub last_offset: i64,
    /// Set when the topic uses log-append time.
    pub log_append_time: Option<i64>,
    /// The batch was a producer's retry of one already in the log: nothing was written.
    pub duplicate: bool,
    pub records: u64,
    pub bytes: u64,
}

/// What retention removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
}

/// File handles to fdatasync so that everything up to `upto` is durable.
pub struct FlushPlan {
    files: Vec<Arc<File>>,
    sync_dir: Option<PathBuf>,
    recovery_point: Option<(PathBuf, i64)>,
    upto: i64,
    generation: u64,
}

impl FlushPlan {
    /// The offset that will be durable once this plan has run.
    pub fn upto(&self) -> i64 {
        self.upto
    }

    /// Do the I/O. Call without holding the log's lock.
    pub fn execute(&self) -> Result<(), LogError> {
        for f in &self.files {
            f.sync_data().ctx(|| "fdatasync of a segment".into())?;
        }
        if let Some(dir) = &self.sync_dir {
            checkpoint::sync_dir(dir).ctx(|| format!("fsync of {}", dir.display()))?;
        }
        if let Some((path, base)) = &self.recovery_point {
            checkpoint::write_atomic(path, base.to_string().as_bytes())
                .ctx(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// Bytes to read for a fetch: a range of one segment file, ending on batch boundaries.
pub struct ReadPlan {
    file: Arc<File>,
    start: u64,
    end: u64,
    max_bytes: usize,
    first_batch_len: usize,
    min_one_batch: bool,
}

impl ReadPlan {
    /// How many bytes [`ReadPlan::execute`] reads (it may return fewer: whole batches only).
    pub fn len(&self) -> usize {
        let available = (self.end - self.start) as usize;
        let want = available.min(self.max_bytes);
        if want >= self.first_batch_len {
            want
        } else if self.min_one_batch {
            self.first_batch_len
        } else {
            0
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Read the bytes. Call without holding the log's lock.
    pub fn execute(&self) -> Result<Bytes, LogError> {
        let want = self.len();
        if want == 0 {
            return Ok(Bytes::new());
        }
        let mut buf = Segment::read_at(&self.file, self.start, want)
            .ctx(|| format!("reading {want} bytes at {}", self.start))?;
        let (whole, _) = crate::batch::whole_batches_prefix(&buf);
        buf.truncate(whole);
        Ok(buf)
    }
}

pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    flushed_offset: i64,
    /// Files of sealed segments not yet fsynced.
    unflushed_sealed: Vec<Arc<File>>,
    dir_dirty: bool,
    /// Bumped by truncation, so a flush planned before it cannot claim offsets written after.
    generation: u64,
    epochs: LeaderEpochCache,
    producers: ProducerTable,
    /// Per stream, the highest sequence stored (`stream_dedup` only).
    streams: StreamTable,
    offline: Option<String>,
    /// First offset not yet compacted (the cleaner checkpoint).
    cleaner_checkpoint: i64,
}

fn parse_base(name: &str, ext: &str) -> Option<i64> {
    name.strip_suffix(ext)?.strip_suffix('.')?.parse().ok()
}

fn read_i64_checkpoint(path: &Path) -> Result<Option<i64>, LogError> {
    let Some(bytes) =
        checkpoint::read_optional(path).ctx(|| format!("reading {}", path.display()))?
    else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    text.trim().parse().map(Some).map_err(|_| {
        LogError::io(
            format!("reading {}", path.display()),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad value {text:?}"),
            ),
        )
    })
}

impl Log {
    /// Open (or create) the log in `dir`. `clean_shutdown` tells that the previous process
    /// closed every log with [`Log::close`]; otherwise segments that may not be durable are
    /// scanned and cut at their first invalid batch.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        clean_shutdown: bool,
        now_ms: i64,
    ) -> Result<(Log, OpenReport), LogError> {
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        compaction::recover_interrupted(dir)?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(base) = parse_base(&name, "log") {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let checkpointed_start = read_i64_checkpoint(&dir.join(LOG_START_FILE))?.unwrap_or(0);
        let recovery_point = if clean_shutdown {
            i64::MAX
        } else {
            read_i64_checkpoint(&dir.join(RECOVERY_POINT_FILE))?.unwrap_or(i64::MIN)
        };

        let mut report = OpenReport::default();
        let mut segments = BTreeMap::new();
        let interval = config.index_interval_bytes;
        let last_base = bases.last().copied();
        let mut torn = false;
        let mut expected_next: Option<i64> = None;
        for base in bases {
            if torn || expected_next.is_some_and(|n| n != base) {
                // Everything after a torn or missing stretch is unacknowledged: drop it.
                let seg_files =
                    ["log", "index", "timeindex"].map(|e| dir.join(segment::file_name(base, e)));
                for f in seg_files {
                    let _ = fs::remove_file(f);
                }
                report.dropped_segments += 1;
                torn = true;
                continue;
            }
            let is_last = Some(base) == last_base;
            let seg = if base >= recovery_point {
                let mut r = RecoveryReport::default();
                let seg = Segment::recover(dir, base, interval, &mut |_| {}, &mut r)
                    .ctx(|| format!("recovering segment {base} in {}", dir.display()))?;
                report.recovered_segments += 1;
                report.truncated_bytes += r.truncated_bytes;
                torn = r.truncated_bytes > 0;
                seg
            } else {
                let (seg, rebuilt) = Segment::open(dir, base, !is_last, interval)
                    .ctx(|| format!("opening segment {base} in {}", dir.display()))?;
                if rebuilt.is_some() {
                    report.recovered_segments += 1;
                }
                seg
            };
            expected_next = Some(seg.next_offset());
            segments.insert(base, seg);
        }
        // The last surviving segment is the active one, even if it was opened as sealed
        // because segments after it were dropped.
        if let Some((_, active)) = segments.iter_mut().next_back() {
            active
                .activate()
                .ctx(|| "activating the last segment".into())?;
        }
        let mut sealed: Vec<_> = segments.keys().copied().collect();
        sealed.pop();
        for base in sealed {
            segments
                .get_mut(&base)
                .expect("segment exists")
                .seal()
                .ctx(|| format!("sealing segment {base}"))?;
        }
        if segments.is_empty() {
            let seg = Segment::create(dir, checkpointed_start, now_ms)
                .ctx(|| format!("creating the first segment in {}", dir.display()))?;
            segments.insert(checkpointed_start, seg);
        }
        report.segments = segments.len();

        let first_base = *segments.keys().next().expect("at least one segment");
        let epochs = LeaderEpochCache::load(&dir.join(EPOCH_FILE))
            .ctx(|| format!("loading the epoch cache in {}", dir.display()))?;
        let mut log = Log {
            dir: dir.to_owned(),
            config,
            segments,
            log_start_offset: checkpointed_start.max(first_base),
            flushed_offset: 0,
            unflushed_sealed: Vec::new(),
            dir_dirty: true,
            generation: 0,
            epochs,
            producers: ProducerTable::default(),
            streams: StreamTable::default(),
            offline: None,
            cleaner_checkpoint: read_i64_checkpoint(&dir.join(compaction::CHECKPOINT_FILE))?
                .unwrap_or(0),
        };
        let leo = log.log_end_offset();
        if log.log_start_offset > leo {
            log.log_start_offset = leo;
        }
        log.rebuild_epochs_from_log(recovery_point)?;
        log.reload_producer_state(now_ms)?;
        // Everything recovered is now made durable, and becomes the recovery point.
        for seg in log.segments.values() {
            for f in seg.all_files() {
                f.sync_data()
                    .ctx(|| format!("fsync in {}", dir.display()))?;
            }
        }
        checkpoint::sync_dir(dir).ctx(|| format!("fsync of {}", dir.display()))?;
        log.flushed_offset = leo;
        log.dir_dirty = false;
        let active_base = log.active().base_offset();
        checkpoint::write_atomic(
            &dir.join(RECOVERY_POINT_FILE),
            active_base.to_string().as_bytes(),
        )
        .ctx(|| "writing the recovery point".into())?;
        Ok((log, report))
    }

    /// Make the epoch cache agree with the log: forget epochs past its end, and learn epochs
    /// from batches in rescanned segments (the cache is written before a new epoch's first
    /// batch, but a follower's cache may lag what it copied).
    fn rebuild_epochs_from_log(&mut self, recovery_point: i64) -> Result<(), LogError> {
        let leo = self.log_end_offset();
        self.epochs
            .truncate_from_end(leo)
            .ctx(|| "truncating the epoch cache".into())?;
        let mut learned = Vec::new();
        for seg in self
            .segments
            .values()
            .filter(|s| s.base_offset() >= recovery_point)
        {
            for item in seg.headers_from(0) {
                let (_, h) = item.ctx(|| "reading batch headers".into())?;
                learned.push((h.partition_leader_epoch, h.base_offset));
            }
        }
        for (epoch, offset) in learned {
            let newer = self.epochs.latest().is_none_or(|l| epoch > l.epoch);
            if epoch >= 0 && newer {
                self.epochs
                    .assign(epoch, offset)
                    .ctx(|| "updating the epoch cache".into())?;
            }
        }
        self.epochs
            .truncate_from_start(self.log_start_offset)
            .ctx(|| "truncating the epoch cache".into())
    }

    /// Load the newest usable producer snapshot and replay the batches after it.
    fn reload_producer_state(&mut self, now_ms: i64) -> Result<(), LogError> {
        let leo = self.log_end_offset();
        let mut snapshots = Vec::new();
        for entry in fs::read_dir(&self.dir).ctx(|| format!("listing {}", self.dir.display()))? {
            let entry = entry.ctx(|| "listing snapshots".into())?;
            if let Some(off) = parse_base(&entry.file_name().to_string_lossy(), "snapshot") {
                snapshots.push(off);
            }
        }
        snapshots.sort_unstable();
        let mut table = ProducerTable::default();
        let mut streams = StreamTable::default();
        let mut from = self.log_start_offset;
        for &off in snapshots.iter().rev() {
            let path = self.snapshot_path(off);
            if off > leo {
                let _ = fs::remove_file(&path);
                continue;
            }
            let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
            if let Some((at, t, s)) =
                ProducerTable::from_snapshot(&bytes).filter(|(at, _, _)| *at == off)
            {
                (table, streams, from) = (t, s, at);
                break;
            }
            let _ = fs::remove_file(&path);
        }
        for seg in self.segments.values().filter(|s| s.next_offset() > from) {
            for item in seg.headers_from(0) {
                let (pos, h) = item.ctx(|| "replaying producer state".into())?;
                if h.base_offset < from {
                    continue;
                }
                table.record(&h);
                if self.config.stream_dedup && !h.is_control() {
                    let bytes = Segment::read_at(&seg.log_file(), pos, h.total_len())
                        .ctx(|| "replaying stream state".into())?;
                    if let Ok(Some(o)) = origin_of(&bytes) {
                        streams.record(&o, h.last_offset());
                    }
                }
            }
        }
        table.expire(now_ms, self.config.producer_id_expiration_ms);
        self.producers = table;
        self.streams = streams;
        Ok(())
    }

    fn snapshot_path(&self, offset: i64) -> PathBuf {
        self.dir.join(segment::file_name(offset, "snapshot"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The offset the next appended record gets.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset()
    }

    /// Every offset below this is on disk (fdatasync'ed).
    pub fn flushed_offset(&self) -> i64 {
        self.flushed_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    pub fn producers(&self) -> &ProducerTable {
        &self.producers
    }

    pub fn is_offline(&self) -> bool {
        self.offline.is_some()
    }

    /// Whether `offset` lies in the active segment, whose index is in memory and whose bytes
    /// were written recently: a read from there needs no disk I/O in the common case.
    pub fn in_active_segment(&self, offset: i64) -> bool {
        offset >= self.active().base_offset()
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has a segment")
    }

    fn check_online(&self) -> Result<(), LogError> {
        match &self.offline {
            Some(why) => Err(LogError::Offline(why.clone())),
            None => Ok(()),
        }
    }

    /// Take the log offline after a storage error (see [`LogError::Offline`]).
    pub fn mark_offline(&mut self, why: &LogError) {
        if self.offline.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %why, "log taken offline");
            self.offline = Some(why.to_string());
        }
    }

    /// Take the log offline for `e` and hand `e` back to be returned.
    fn fail(&mut self, e: LogError) -> LogError {
        self.mark_offline(&e);
        e
    }

    /// Record that leader epoch `epoch` starts at the log end: a new leader does this before
    /// anything is appended in its epoch, so that followers of an older epoch find where
    /// their history diverges.
    pub fn assign_epoch(&mut self, epoch: i32) -> Result<(), LogError> {
        self.check_online()?;
        let leo = self.log_end_offset();
        if let Err(e) = self.epochs.assign(epoch, leo) {
            return Err(self.fail(LogError::io("recording the leader epoch", e)));
        }
        Ok(())
    }

    /// Append producer batches as the partition leader: check sizes and idempotence, assign
    /// offsets and the leader epoch, write. Returns once the data is in the page cache.
    pub fn append_as_leader(
        &mut self,
        batches: &[RawBatch],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendResult, AppendError> {
        self.check_online()?;
        for b in batches {
            if b.bytes.len() > self.config.max_message_bytes {
                return Err(AppendError::RecordTooLarge {
                    size: b.bytes.len(),
                    max: self.config.max_message_bytes,
                });
            }
            if b.header.is_control() {
                return Err(AppendError::InvalidRecord(
                    "producers may not write control batches",
                ));
            }
            if b.header.is_transactional() {
                return Err(AppendError::InvalidRecord("transactions are not supported"));
            }
        }
        // Sequence checks against a scratch copy, so that a refused batch leaves no trace.
        let mut scratch = self
            .producers
            .clone_subset(batches.iter().map(|b| b.header.producer_id));
        let mut next = self.log_end_offset();
        let first_offset = next;
        let log_append = self.config.timestamp_type == TimestampType::LogAppendTime;
        let mut pending = Vec::with_capacity(batches.len());
        let mut origins = Vec::new();
        for b in batches {
            if b.header.has_producer_id()
                && let SequenceCheck::Duplicate(dup) = scratch.check(&b.header)?
            {
                return Ok(self.duplicate_result(dup, log_append));
            }
            if let Some(o) = self.origin(b)? {
                match self.streams.check(&o) {
                    StreamCheck::New => origins.push((pending.len(), o)),
                    StreamCheck::Duplicate { offset } => {
                        return Ok(self.stream_duplicate(offset, log_append));
                    }
                    StreamCheck::Overlap { .. } => {
                        return Err(AppendError::InvalidRecord(
                            "a batch holds records of its stream both stored already and not",
                        ));
                    }
                }
            }
            let mut header = PatchedHeader::new(&b.bytes, next, leader_epoch);
            if log_append {
                header.set_log_append_time(now_ms, &b.bytes[HEADER_LEN..]);
            }
            let parsed = BatchHeader::parse(&header.0)?;
            scratch.record(&parsed);
            next = parsed.next_offset();
            pending.push(PendingBatch {
                header,
                body: &b.bytes[HEADER_LEN..],
                parsed,
            });
        }
        if self.epochs.latest().is_none_or(|l| l.epoch != leader_epoch)
            && let Err(e) = self.epochs.assign(leader_epoch, first_offset)
        {
            return Err(self
                .fail(LogError::io("recording the leader epoch", e))
                .into());
        }
        let bytes = self.write(&pending, now_ms)?;
        self.producers.merge(scratch);
        for (i, o) in origins {
            self.streams.record(&o, pending[i].parsed.last_offset());
        }
        Ok(AppendResult {
            first_offset,
            last_offset: next - 1,
            log_append_time: log_append.then_some(now_ms),
            duplicate: false,
            records: (next - first_offset) as u64,
            bytes,
        })
    }

    /// The stream and sequences of a batch, in a log that de-duplicates by stream.
    fn origin(&self, b: &RawBatch) -> Result<Option<crate::streams::Origin>, AppendError> {
        if !self.config.stream_dedup {
            return Ok(None);
        }
        origin_of(&b.bytes)
            .map_err(|_| AppendError::InvalidRecord("the batch's records cannot be decoded"))
    }

    /// A batch of a stream stored already, at or before `offset` (its original offsets are
    /// not kept: the answer names the stored record holding the stream's mark).
    fn stream_duplicate(&self, offset: i64, log_append: bool) -> AppendResult {
        AppendResult {
            first_offset: offset,
            last_offset: offset,
            log_append_time: log_append.then_some(-1),
            duplicate: true,
            records: 0,
            bytes: 0,
        }
    }

    fn duplicate_result(&self, dup: CachedBatch, log_append: bool) -> AppendResult {
        AppendResult {
            first_offset: dup.first_offset,
            last_offset: dup.last_offset,
            log_append_time: log_append.then_some(dup.timestamp),
            duplicate: true,
            records: 0,
            bytes: 0,
        }
    }

    /// Append batches copied from the leader, offsets and epochs as they are. They start at
    /// or after the log end offset: after it where the leader's compaction removed batches.
    pub fn append_as_follower(
        &mut self,
        batches: &[RawBatch],
    ) -> Result<AppendResult, AppendError> {
        self.check_online()?;
        let first_offset = self.log_end_offset();
        let mut next = first_offset;
        let mut pending = Vec::with_capacity(batches.len());
        for b in batches {
            // A compacted leader log has gaps between batches: offsets must only grow.
            if b.header.base_offset < next {
                return Err(AppendError::OffsetMismatch {
                    expected: next,
                    got: b.header.base_offset,
                });
            }
            next = b.header.next_offset();
            pending.push(PendingBatch {
                header: PatchedHeader::new(
                    &b.bytes,
                    b.header.base_offset,
                    b.header.partition_leader_epoch,
                ),
                body: &b.bytes[HEADER_LEN..],
                parsed: b.header,
            });
        }
        for p in &pending {
            let epoch = p.parsed.partition_leader_epoch;
            if epoch >= 0
                && self.epochs.latest().is_none_or(|l| epoch > l.epoch)
                && let Err(e) = self.epochs.assign(epoch, p.parsed.base_offset)
            {
                return Err(self
                    .fail(LogError::io("recording the leader epoch", e))
                    .into());
            }
        }
        let origins: Vec<(usize, crate::streams::Origin)> = batches
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Some((i, self.origin(b).ok()??)))
            .collect();
        let now = pending.last().map_or(0, |p| p.parsed.max_timestamp);
        let bytes = self.write(&pending, now)?;
        for p in &pending {
            self.producers.record(&p.parsed);
        }
        for (i, o) in origins {
            self.streams.record(&o, pending[i].parsed.last_offset());
        }
        Ok(AppendResult {
            first_offset,
            last_offset: next - 1,
            log_append_time: None,
            duplicate: false,
            records: (next - first_offset) as u64,
            bytes,
        })
    }

    /// Roll if needed, then write. Any I/O error takes the log offline.
    fn write(&mut self, pending: &[PendingBatch<'_>], now_ms: i64) -> Result<u64, LogError> {
        let bytes: u64 = pending
            .iter()
            .map(|p| (HEADER_LEN + p.body.len()) as u64)
            .sum();
        let Some(last) = pending.last() else {
            return Ok(0);
        };
        if self.should_roll(bytes, last.parsed.last_offset(), now_ms)
            && let Err(e) = self.roll(now_ms)
        {
            return Err(self.fail(e));
        }
        let interval = self.config.index_interval_bytes;
        if let Err(e) = self.active_mut().append(pending, interval) {
            return Err(self.fail(LogError::io("appending to the active segment", e)));
        }
        Ok(bytes)
    }

    fn should_roll(&self, incoming: u64, last_offset: i64, now_ms: i64) -> bool {
        let active = self.active();
        if active.is_empty() {
            return false;
        }
        let too_big = active.size() + incoming > self.config.segment_bytes;
        let too_old = self
            .config
            .segment_ms
            .is_some_and(|ms| now_ms.saturating_sub(active.created_ms()) >= ms);
        // Index entries hold offsets relative to the segment base in 32 bits.
        let offsets_overflow = last_offset - active.base_offset() > i64::from(i32::MAX);
        too_big || too_old || offsets_overflow
    }

    /// Seal the active segment and start a new one at the log end offset.
    fn roll(&mut self, now_ms: i64) -> Result<(), LogError> {
        let base = self.log_end_offset();
        let active = self.active_mut();
        active.seal().ctx(|| "sealing the active segment".into())?;
        let files = active.all_files();
        self.unflushed_sealed.extend(files);
        let snapshot = self.producers.to_snapshot(base, &self.streams);
        let path = self.snapshot_path(base);
        // Not fsynced: a lost or damaged snapshot only means a longer replay after a crash.
        let tmp = path.with_extension("snapshot.tmp");
        fs::write(&tmp, snapshot)
            .and_then(|_| fs::rename(&tmp, &path))
            .ctx(|| format!("writing {}", path.display()))?;
        let seg =
            Segment::create(&self.dir, base, now_ms).ctx(|| format!("creating segment {base}"))?;
        self.segments.insert(base, seg);
        self.dir_dirty = true;
        tracing::debug!(dir = %self.dir.display(), base, "rolled segment");
        Ok(())
    }

    /// Plan a read of up to `max_bytes` of whole batches starting with the batch that holds
    /// `offset`, never including offsets at or past `upper_bound` (the high watermark for
    /// consumers, the log end for followers). With `min_one_batch`, a first batch larger than
    /// `max_bytes` is returned whole, so that a consumer always progresses (KIP-74).
    pub fn read_plan(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
        min_one_batch: bool,
    ) -> Result<Option<ReadPlan>, LogError> {
        self.check_online()?;
        let leo = self.log_end_offset();
        if offset < self.log_start_offset || offset > leo {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start_offset,
                end: leo,
            });
        }
        if offset >= upper_bound.min(leo) {
            return Ok(None);
        }
        // The segment holding `offset`; the next ones only if it turns out empty.
        let floor = self.segments.range(..=offset).next_back().map(|(_, s)| s);
        let later = self.segments.range(offset + 1..).map(|(_, s)| s);
        for seg in floor.into_iter().chain(later) {
            let Some((start, first)) = seg.find(offset).ctx(|| "locating a fetch offset".into())?
            else {
                continue;
            };
            if first.base_offset >= upper_bound {
                return Ok(None);
            }
            let end = if upper_bound >= seg.next_offset() {
                seg.size()
            } else {
                match seg
                    .find(upper_bound)
                    .ctx(|| "locating the read bound".into())?
                {
                    Some((pos, _)) => pos,
                    None => seg.size(),
                }
            };
            if end <= start {
                return Ok(None);
            }
            return Ok(Some(ReadPlan {
                file: seg.log_file(),
                start,
                end,
                max_bytes,
                first_batch_len: first.total_len(),
                min_one_batch,
            }));
        }
        Ok(None)
    }

    /// The first record with a timestamp `>= ts` (ListOffsets by timestamp): `(offset,
    /// timestamp)`, or `None` if every record is older.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        self.check_online()?;
        for seg in self.segments.values() {
            if seg.is_empty() || seg.max_timestamp() < ts {
                continue;
            }
            let start = seg
                .time_lookup_start(ts)
                .ctx(|| "time index lookup".into())?;
            for item in seg.headers_from(start) {
                let (pos, h) = item.ctx(|| "scanning batches by time".into())?;
                if h.max_timestamp < ts || h.last_offset() < self.log_start_offset {
                    continue;
                }
                if let Some(found) = self.first_record_where(seg, pos, &h, |o, t| {
                    t >= ts && o >= self.log_start_offset
                })? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// The record with the largest timestamp (ListOffsets MAX_TIMESTAMP): `(offset, timestamp)`.
    pub fn offset_of_max_timestamp(&self) -> Result<Option<(i64, i64)>, LogError> {
        self.check_online()?;
        let Some(seg) = self
            .segments
            .values()
            .filter(|s| !s.is_empty())
            .max_by_key(|s| s.max_timestamp())
        else {
            return Ok(None);
        };
        let max = seg.max_timestamp();
        for item in seg.headers_from(0) {
            let (pos, h) = item.ctx(|| "scanning for the max timestamp".into())?;
            if h.max_timestamp == max {
                return self.first_record_where(seg, pos, &h, |_, t| t == max);
            }
        }
        Ok(None)
    }

    fn first_record_where(
        &self,
        seg: &Segment,
        pos: u64,
        h: &BatchHeader,
        pred: impl Fn(i64, i64) -> bool,
    ) -> Result<Option<(i64, i64)>, LogError> {
        let bytes = Segment::read_at(&seg.log_file(), pos, h.total_len())
            .ctx(|| "reading a batch".into())?;
        let stamps = records::record_timestamps(&bytes).map_err(|e| {
            LogError::io(
                "decoding a stored batch",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        Ok(stamps.into_iter().find(|&(o, t)| pred(o, t)))
    }

    /// Remove every record at or after `offset` (a follower whose log diverged from the
    /// leader's). Truncating below the log start empties the log and restarts it at `offset`.
    pub fn truncate_to(&mut self, offset: i64, now_ms: i64) -> Result<(), LogError> {
        self.check_online()?;
        if offset >= self.log_end_offset() {
            // No records to cut, but maybe an epoch without records at the end (a leader
            // that wrote nothing in its epoch): it goes too, or a follower would keep naming
            // an epoch its new leader never had.
            if self
                .epochs
                .latest()
                .is_some_and(|e| e.start_offset >= offset)
                && let Err(e) = self.epochs.truncate_from_end(offset)
            {
                return Err(self.fail(LogError::io("truncating the epoch cache", e)));
            }
            return Ok(());
        }
        if offset <= self.log_start_offset {
            return self.truncate_fully_and_start_at(offset, now_ms);
        }
        let doomed: Vec<i64> = self.segments.range(offset..).map(|(b, _)| *b).collect();
        for base in doomed {
            if self.segments.len() > 1 {
                let seg = self.segments.remove(&base).expect("listed segment");
                seg.delete().ctx(|| format!("deleting segment {base}"))?;
            }
        }
        let active = self.active_mut();
        active
            .truncate_to(offset)
            .ctx(|| format!("truncating to {offset}"))?;
        self.after_truncation(now_ms)
    }

    /// Delete everything and restart the log empty at `offset`.
    pub fn truncate_fully_and_start_at(
        &mut self,
        offset: i64,
        now_ms: i64,
    ) -> Result<(), LogError> {
        self.check_online()?;
        let all: Vec<i64> = self.segments.keys().copied().collect();
        for base in all {
            let seg = self.segments.remove(&base).expect("listed segment");
            seg.delete().ctx(|| format!("deleting segment {base}"))?;
        }
        let seg = Segment::create(&self.dir, offset, now_ms)
            .ctx(|| format!("creating segment {offset}"))?;
        self.segments.insert(offset, seg);
        self.log_start_offset = offset;
        checkpoint::write_atomic(
            &self.dir.join(LOG_START_FILE),
            offset.to_string().as_bytes(),
        )
        .ctx(|| "writing the log start offset".into())?;
        self.after_truncation(now_ms)
    }

    fn after_truncation(&mut self, now_ms: i64) -> Result<(), LogError> {
        self.generation += 1;
        let leo = self.log_end_offset();
        self.cleaner_checkpoint = self.cleaner_checkpoint.min(leo);
        self.flushed_offset = self.flushed_offset.min(leo);
        // Sealed segments that survived must be durable before the recovery point moves.
        for f in std::mem::take(&mut self.unflushed_sealed) {
            f.sync_data().ctx(|| "fsync of a sealed segment".into())?;
        }
        self.epochs
            .truncate_from_end(leo)
            .ctx(|| "truncating the epoch cache".into())?;
        self.reload_producer_state(now_ms)?;
        // The active segment may now be one that was below the recovery point: move the point
        // back before anything new is written into it.
        let active_base = self.active().base_offset();
        checkpoint::write_atomic(
            &self.dir.join(RECOVERY_POINT_FILE),
            active_base.to_string().as_bytes(),
        )
        .ctx(|| "writing the recovery point".into())?;
        // Sealed segments kept their files; make sure the truncated active one is synced.
        for f in self.active().all_files() {
            f.sync_data().ctx(|| "fsync after truncation".into())?;
        }
        checkpoint::sync_dir(&self.dir).ctx(|| "fsync of the log directory".into())?;
        self.flushed_offset = leo;
        self.dir_dirty = false;
        Ok(())
    }

    /// Move the log start offset forward (DeleteRecords): records below it disappear from
    /// reads at once, and segments wholly below it are deleted. Durable before returning.
    pub fn advance_log_start(&mut self, offset: i64) -> Result<(), LogError> {
        self.check_online()?;
        let leo = self.log_end_offset();
        if offset > leo {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start_offset,
                end: leo,
            });
        }
        if offset <= self.log_start_offset {
            return Ok(());
        }
        checkpoint::write_atomic(
            &self.dir.join(LOG_START_FILE),
            offset.to_string().as_bytes(),
        )
        .ctx(|| "writing the log start offset".into())?;
        self.log_start_offset = offset;
        self.epochs
            .truncate_from_start(offset)
            .ctx(|| "truncating the epoch cache".into())?;
        self.delete_segments_while(|log, seg| seg.next_offset() <= log.log_start_offset)?;
        Ok(())
    }

    /// Apply `retention.ms` and `retention.bytes`, never leaving the log without a segment.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<RetentionReport, LogError> {
        self.check_online()?;
        let expired = |log: &Log, seg: &Segment| match log.config.retention_ms {
            Some(ms) => seg.max_timestamp() != NO_TIMESTAMP && now_ms - seg.max_timestamp() > ms,
            None => false,
        };
        // When even the active segment has expired, roll so that it can go too.
        if !self.active().is_empty() && expired(self, self.active()) {
            self.roll(now_ms)?;
        }
        let mut report = self.delete_segments_while(|log, seg| expired(log, seg))?;
        if let Some(limit) = self.config.retention_bytes {
            let mut total = self.size_bytes();
            let r = self.delete_segments_while(|_, seg| {
                let delete = total.saturating_sub(seg.size()) >= limit;
                if delete {
                    total -= seg.size();
                }
                delete
            })?;
            report.deleted_segments += r.deleted_segments;
            report.deleted_bytes += r.deleted_bytes;
        }
        Ok(report)
    }

    /// Delete the oldest segments while `pred` holds, never the active one.
    fn delete_segments_while(
        &mut self,
        mut pred: impl FnMut(&Log, &Segment) -> bool,
    ) -> Result<RetentionReport, LogError> {
        let mut report = RetentionReport::default();
        while self.segments.len() > 1 {
            let (&base, seg) = self.segments.iter().next().expect("segments");
            if !pred(self, seg) {
                break;
            }
            let seg = self.segments.remove(&base).expect("first segment");
            report.deleted_segments += 1;
            report.deleted_bytes += seg.size();
            seg.delete().ctx(|| format!("deleting segment {base}"))?;
            let _ = fs::remove_file(self.snapshot_path(base));
        }
        if report.deleted_segments > 0 {
            let first = *self.segments.keys().next().expect("segments");
            if first > self.log_start_offset {
                self.log_start_offset = first;
                self.epochs
                    .truncate_from_start(first)
                    .ctx(|| "truncating the epoch cache".into())?;
            }
            self.dir_dirty = true;
        }
        Ok(report)
    }

    /// The next compaction pass, or `None` when the log is not compacted or not dirty enough.
    /// Only sealed, durable segments below `high_watermark` whose records are all older than
    /// `min.compaction.lag.ms` take part. Cheap: run it under the caller's lock.
    pub fn clean_plan(&self, high_watermark: i64, now_ms: i64) -> Option<CleanPlan> {
        let config = self.config.compaction.clone()?;
        if self.offline.is_some() {
            return None;
        }
        let limit = high_watermark
            .min(self.flushed_offset)
            .min(self.active().base_offset());
        let lag_cutoff = now_ms.saturating_sub(config.min_compaction_lag_ms);
        let sources: Vec<Source> = self
            .segments
            .values()
            .take_while(|s| {
                s.is_sealed() && s.next_offset() <= limit && s.max_timestamp() <= lag_cutoff
            })
            .map(|s| {
                let file = s.log_file();
                let modified = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                Source {
                    base: s.base_offset(),
                    next_offset: s.next_offset(),
                    size: s.size(),
                    file,
                    modified,
                }
            })
            .collect();
        let first_dirty = self.cleaner_checkpoint.max(self.log_start_offset);
        let total: u64 = sources.iter().map(|s| s.size).sum();
        let dirty: Vec<&Source> = sources.iter().filter(|s| s.base >= first_dirty).collect();
        let dirty_bytes: u64 = dirty.iter().map(|s| s.size).sum();
        if dirty_bytes == 0 {
            return None;
        }
        let ratio = dirty_bytes as f64 / total as f64;
        let overdue = config.max_compaction_lag_ms.is_some_and(|max| {
            let oldest = self.segments[&dirty[0].base].max_timestamp();
            oldest < now_ms.saturating_sub(max)
        });
        if ratio < config.min_cleanable_dirty_ratio && !overdue {
            return None;
        }
        Some(CleanPlan {
            dir: self.dir.clone(),
            sources,
            first_dirty,
            generation: self.generation,
            protected: self.producers.last_batch_offsets().collect(),
            now: std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_millis(now_ms.max(0) as u64),
            config,
            index_interval_bytes: self.config.index_interval_bytes,
        })
    }

    /// Swap in the segments a pass wrote, if the log did not change underneath (truncated,
    /// segments deleted by retention or DeleteRecords); otherwise discard them and return
    /// `None`. The renames and two directory fsyncs run here, under the caller's lock.
    pub fn install_cleaned(&mut self, cleaned: Cleaned) -> Result<Option<CleanReport>, LogError> {
        self.check_online()?;
        let staging = self.dir.join(compaction::STAGING_DIR);
        let current = cleaned.generation == self.generation
            && cleaned.segments.iter().all(|(size, new)| {
                self.segments
                    .get(&new.base_offset())
                    .is_some_and(|s| s.is_sealed() && s.size() == *size)
                    && new.base_offset() != self.active().base_offset()
            });
        if !current {
            let _ = fs::remove_dir_all(&staging);
            return Ok(None);
        }
        if !cleaned.segments.is_empty() {
            let swap = self.dir.join(compaction::SWAP_DIR);
            fs::rename(&staging, &swap).ctx(|| format!("renaming {}", staging.display()))?;
            // The commit point: from here a crash finishes the swap at the next open.
            checkpoint::sync_dir(&self.dir).ctx(|| "fsync of the log directory".into())?;
            if let Err(e) = compaction::finish_swap(&self.dir) {
                return Err(self.fail(e));
            }
            for (_, mut seg) in cleaned.segments {
                seg.relocate(&self.dir);
                // The old segment's files were replaced by the renames: dropping it closes them.
                self.segments.insert(seg.base_offset(), seg);
            }
        }
        self.cleaner_checkpoint = cleaned.end;
        checkpoint::write_atomic(
            &self.dir.join(compaction::CHECKPOINT_FILE),
            cleaned.end.to_string().as_bytes(),
        )
        .ctx(|| "writing the cleaner checkpoint".into())?;
        Ok(Some(cleaned.report))
    }

    /// The cleaner checkpoint: offsets below it were compacted.
    pub fn cleaner_checkpoint(&self) -> i64 {
        self.cleaner_checkpoint
    }

    /// What to fsync to make the whole log durable, or `None` if it already is.
    pub fn flush_plan(&mut self) -> Option<FlushPlan> {
        if self.offline.is_some() {
            return None;
        }
        let leo = self.log_end_offset();
        if self.flushed_offset >= leo && self.unflushed_sealed.is_empty() && !self.dir_dirty {
            return None;
        }
        let sealed = !self.unflushed_sealed.is_empty();
        let mut files: Vec<Arc<File>> = self.unflushed_sealed.drain(..).collect();
        files.push(self.active().log_file());
        let sync_dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        let recovery_point = sealed.then(|| {
            (
                self.dir.join(RECOVERY_POINT_FILE),
                self.active().base_offset(),
            )
        });
        Some(FlushPlan {
            files,
            sync_dir,
            recovery_point,
            upto: leo,
            generation: self.generation,
        })
    }

    /// Record that `plan` ran successfully.
    pub fn flush_completed(&mut self, plan: &FlushPlan) {
        if plan.generation == self.generation {
            self.flushed_offset = self
                .flushed_offset
                .max(plan.upto)
                .min(self.log_end_offset());
        }
    }

    /// Flush everything and leave a producer snapshot at the log end, so that the next open
    /// after a clean shutdown replays nothing.
    pub fn close(&mut self) -> Result<(), LogError> {
        self.check_online()?;
        if let Some(plan) = self.flush_plan() {
            plan.execute()?;
        }
        let leo = self.log_end_offset();
        let path = self.snapshot_path(leo);
        checkpoint::write_atomic(&path, &self.producers.to_snapshot(leo, &self.streams))
            .ctx(|| format!("writing {}", path.display()))
    }

    /// Remove the log and its directory.
    pub fn delete(self) -> Result<(), LogError> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))
    }
}
