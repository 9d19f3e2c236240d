//! One partition replica on this broker: its [`Log`], the flusher that makes it durable, and
//! its [`Replica`] state machine, which decides what is committed (the high watermark) and who
//! may write.
//!
//! Locks: `replica` then `log`, never the other way round, each held only for in-memory work
//! and page-cache writes, never across an fsync or a read of record data. Appends (leader and
//! follower) hold both, so that the role and epoch they checked cannot change under them; the
//! flusher fsyncs with no lock held, then takes `log` and `replica` one after the other.
//! What readers need (high watermark, log end, epoch, role) is published on a `watch`
//! channel, read without locks.
//!
//! Durability: in `sync` mode (the default) the partition's durable offset is what is
//! fdatasync'ed; in `interval` mode it is the log end (an explicit, configured trade). The
//! high watermark is computed by the replica from the durable offsets of the in-sync
//! replicas, so acks=all (which waits for it) means "on disk on every in-sync replica".

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use durable_log::{AppendError, AppendResult, Log, LogConfig, LogError, RawBatch};
use parking_lot::Mutex;
use quorum::ids::{LeaderEpoch, NodeId, Offset, PartitionKey};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Durability;
use crate::metrics::Metrics;
use crate::replica::{Assignment, FetchRefusal, Replica, Role, Transition};
use crate::topic_config::TopicPolicy;

/// Appends and reads up to this size run on the calling task; larger ones on the blocking
/// pool. Below it, the page-cache copy costs less than a hand-off to another thread and back
/// (each a futex wake-up, and contention on the pool's lock: profiles of the stretched hub
/// showed more CPU in those than in the copies). Above it, a copy could hold a runtime
/// worker for milliseconds.
const INLINE_IO_BYTES_MAX: usize = 1 << 20;

fn bytes_of(batches: &[RawBatch]) -> usize {
    batches.iter().map(|b| b.bytes.len()).sum()
}

/// Current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Monotonic milliseconds, for the replica state machine's timers.
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(tokio::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Why a partition operation failed, beyond what the log itself reports.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("partition was deleted")]
    Deleted,
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("storage task failed: {0}")]
    Task(String),
    /// This broker does not lead the partition (any more), or leads it in another epoch.
    #[error("not the leader (or no longer in epoch {0})")]
    NotLeader(LeaderEpoch),
    #[error("not a follower of this partition")]
    NotFollower,
    #[error(transparent)]
    Fetch(#[from] FetchRefusal),
}

/// Records a leader appended, for [`Partition::wait_outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub first: i64,
    /// One past the last offset.
    pub end: i64,
    /// The epoch the broker led in when it appended (or found them already there).
    pub led_in: LeaderEpoch,
    /// The leader epoch the records carry: `led_in` for new ones, the original's for a
    /// retried batch found in the log (`None` if the log no longer knows).
    pub written_in: Option<i32>,
}

/// How appended records turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Below the high watermark: every in-sync replica has them.
    Committed,
    /// Cut by a new leader's history: they were not written.
    Lost,
}

/// Why a produce append failed.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Not the leader (any more): the client refreshes its metadata.
    #[error("not the leader")]
    NotLeader,
    #[error(transparent)]
    Append(#[from] AppendError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Durable {
    flushed: i64,
    offline: bool,
}

/// What clients may see of the partition right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub log_start: i64,
    pub high_watermark: i64,
    pub log_end: i64,
}

/// The result of a read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub records: Bytes,
    pub offsets: Offsets,
}

/// How far a read may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBound {
    /// Consumers: what is committed.
    HighWatermark,
    /// Followers (and internal replays of a log this broker wrote): everything written.
    LogEnd,
}

/// The partition as readers see it, published at every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    pub high_watermark: i64,
    pub log_end: i64,
    pub leader_epoch: LeaderEpoch,
    pub leader: bool,
    /// A storage error took the log offline (or it was deleted).
    pub offline: bool,
}

pub struct Partition {
    pub topic: Arc<str>,
    pub topic_id: Uuid,
    pub index: i32,
    replica: Mutex<Replica>,
    log: Mutex<Option<Log>>,
    policy: Mutex<TopicPolicy>,
    durability: Durability,
    visible: watch::Sender<Visible>,
    durable: watch::Sender<Durable>,
    log_start: AtomicI64,
    flush_wanted: Notify,
    metrics: Arc<Metrics>,
}

/// Everything [`Partition::open`] needs besides the directory.
pub struct PartitionSpec {
    pub topic: Arc<str>,
    pub topic_id: Uuid,
    pub index: i32,
    pub me: NodeId,
    pub config: LogConfig,
    pub policy: TopicPolicy,
    pub durability: Durability,
    pub clean_shutdown: bool,
}

impl Partition {
    /// Open (recovering if needed) the log in `dir` and start its flusher. The replica has
    /// no role until [`Partition::assign`].
    pub fn open(
        dir: &Path,
        spec: PartitionSpec,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Partition>, LogError> {
        let (log, report) = Log::open(dir, spec.config, spec.clean_shutdown, now_ms())?;
        if report.truncated_bytes > 0 || report.dropped_segments > 0 {
            tracing::warn!(
                topic = %spec.topic, partition = spec.index,
                recovered_segments = report.recovered_segments,
                truncated_bytes = report.truncated_bytes,
                dropped_segments = report.dropped_segments,
                log_end_offset = log.log_end_offset(),
                "recovered partition log: cut unacknowledged data torn by a crash"
            );
        } else if report.recovered_segments > 0 {
            tracing::debug!(topic = %spec.topic, partition = spec.index, segments = report.recovered_segments, "verified partition log");
        }
        let (start, end) = (log.log_start_offset(), log.log_end_offset());
        // Open fsyncs what recovery kept: all of it is durable.
        let replica = Replica::new(spec.me, Offset(start), Offset(end), Offset(end));
        let p = Arc::new(Partition {
            topic: spec.topic,
            topic_id: spec.topic_id,
            index: spec.index,
            visible: watch::Sender::new(Visible {
                high_watermark: start,
                log_end: end,
                leader_epoch: replica.leader_epoch(),
                leader: false,
                offline: false,
            }),
            replica: Mutex::new(replica),
            durable: watch::Sender::new(Durable {
                flushed: end,
                offline: false,
            }),
            log_start: AtomicI64::new(start),
            log: Mutex::new(Some(log)),
            policy: Mutex::new(spec.policy),
            durability: spec.durability,
            flush_wanted: Notify::new(),
            metrics,
        });
        tokio::spawn(Arc::clone(&p).flusher(shutdown));
        Ok(p)
    }

    pub fn key(&self) -> PartitionKey {
        PartitionKey {
            topic: self.topic_id,
            index: self.index,
        }
    }

    pub fn policy(&self) -> TopicPolicy {
        *self.policy.lock()
    }

    pub fn visible(&self) -> Visible {
        *self.visible.borrow()
    }

    /// A receiver that changes whenever what readers see changes.
    pub fn watch(&self) -> watch::Receiver<Visible> {
        self.visible.subscribe()
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.visible().leader_epoch
    }

    pub fn is_leader(&self) -> bool {
        self.visible().leader
    }

    pub fn offsets(&self) -> Offsets {
        let v = self.visible();
        Offsets {
            log_start: self.log_start.load(Ordering::Acquire),
            high_watermark: v.high_watermark,
            log_end: v.log_end,
        }
    }

    pub fn high_watermark(&self) -> i64 {
        self.visible().high_watermark
    }

    pub fn is_offline(&self) -> bool {
        self.visible().offline
    }

    /// The replica's state, for metadata answers and metrics (a copy, taken under its lock).
    pub fn replica(&self) -> Replica {
        self.replica.lock().clone()
    }

    /// Publish what readers see from the replica (call with its lock held or just released).
    fn publish(&self, r: &Replica) {
        let hw = r.high_watermark().0;
        let end = r.log_end().0;
        let epoch = r.leader_epoch();
        let leader = r.is_leader();
        self.visible.send_if_modified(|v| {
            let next = Visible {
                high_watermark: hw,
                log_end: end,
                leader_epoch: epoch,
                leader,
                offline: v.offline,
            };
            let changed = *v != next;
            *v = next;
            changed
        });
    }

    /// Apply what the metadata says about this partition.
    pub async fn assign(self: &Arc<Self>, a: Assignment) -> Result<Transition, PartitionError> {
        let me = Arc::clone(self);
        let now = mono_ms();
        self.blocking(move || {
            let mut r = me.replica.lock();
            let t = r.assign(&a, now);
            if t == Transition::BecameLeader {
                // Record where this epoch starts, so that followers of an older epoch find
                // their divergence point even before anything is appended in it.
                let mut log = me.log.lock();
                let log = log.as_mut().ok_or(PartitionError::Deleted)?;
                let epoch = r.leader_epoch().0;
                if log.epochs().latest().is_none_or(|l| l.epoch < epoch) {
                    log.assign_epoch(epoch)?;
                }
            }
            me.publish(&r);
            Ok(t)
        })
        .await
    }

    /// Run `f` on a blocking thread.
    async fn blocking<T, F>(&self, f: F) -> Result<T, PartitionError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, PartitionError> + Send + 'static,
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| PartitionError::Task(e.to_string()))?
    }

    /// Run `f` on the log on a blocking thread.
    async fn with_log<T, F>(self: &Arc<Self>, f: F) -> Result<T, PartitionError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Log) -> T + Send + 'static,
    {
        let me = Arc::clone(self);
        self.blocking(move || {
            let mut guard = me.log.lock();
            let log = guard.as_mut().ok_or(PartitionError::Deleted)?;
            let out = f(log);
            me.after_log_change(log);
            Ok(out)
        })
        .await
    }

    /// Keep the atomics and the offline flag in step with the log (its lock held).
    fn after_log_change(&self, log: &Log) {
        self.log_start
            .store(log.log_start_offset(), Ordering::Release);
        // The log takes itself offline on a storage error (a full disk, say): waiters and
        // the metrics learn it now, not at the next flush.
        if log.is_offline() {
            self.publish_offline();
        }
    }

    /// Append producer batches as leader in the current epoch. Returns when they are in the
    /// page cache, with the epoch they were written in; [`Partition::wait_committed`] waits
    /// for the high watermark.
    pub async fn append(
        self: &Arc<Self>,
        batches: Vec<RawBatch>,
    ) -> Result<(AppendResult, LeaderEpoch), ProduceError> {
        if bytes_of(&batches) <= INLINE_IO_BYTES_MAX {
            return self.append_now(&batches);
        }
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.append_now(&batches))
            .await
            .map_err(|e| AppendError::Storage(LogError::Offline(e.to_string())))?
    }

    /// [`Partition::append`] on this thread: a page-cache write under the replica and log
    /// locks (a segment roll creates files but fsyncs nothing: the flusher does).
    fn append_now(
        &self,
        batches: &[RawBatch],
    ) -> Result<(AppendResult, LeaderEpoch), ProduceError> {
        let result = {
            let mut r = self.replica.lock();
            if !r.is_leader() {
                return Err(ProduceError::NotLeader);
            }
            let epoch = r.leader_epoch();
            let mut guard = self.log.lock();
            let log = guard.as_mut().ok_or_else(|| {
                AppendError::Storage(LogError::Offline("partition deleted".into()))
            })?;
            let started = std::time::Instant::now();
            let result = log.append_as_leader(batches, epoch.0, now_ms());
            self.metrics.observe_append(started.elapsed());
            self.after_log_change(log);
            let result = result?;
            if !result.duplicate {
                r.on_append(Offset(log.log_end_offset()));
                if matches!(self.durability, Durability::Interval { .. }) {
                    r.on_flush(Offset(log.log_end_offset()));
                }
                drop(guard);
                self.publish(&r);
            }
            (result, epoch)
        };
        if !result.0.duplicate && self.durability == Durability::Sync {
            self.flush_wanted.notify_one();
        }
        Ok(result)
    }

    /// Wait until every offset below `end` is committed (below the high watermark) in
    /// `epoch`. Fails if this broker stops leading in that epoch first: what it appended
    /// then may be truncated by the next leader, so it was not written.
    pub async fn wait_committed(&self, end: i64, epoch: LeaderEpoch) -> Result<(), PartitionError> {
        let mut rx = self.watch();
        let v = rx
            .wait_for(|v| {
                v.offline || !v.leader || v.leader_epoch != epoch || v.high_watermark >= end
            })
            .await
            .map_err(|_| PartitionError::Deleted)?;
        if v.offline {
            return Err(PartitionError::Log(LogError::Offline(
                "a flush of this partition failed".into(),
            )));
        }
        if !v.leader || v.leader_epoch != epoch {
            return Err(PartitionError::NotLeader(epoch));
        }
        Ok(())
    }

    /// What [`Partition::wait_outcome`] needs to know of an append made leading in `led_in`.
    pub fn written(&self, r: &AppendResult, led_in: LeaderEpoch) -> Written {
        let written_in = if r.duplicate {
            self.epoch_for_offset(r.first_offset).ok().flatten()
        } else {
            Some(led_in.0)
        };
        Written {
            first: r.first_offset,
            end: r.last_offset + 1,
            led_in,
            written_in,
        }
    }

    /// Wait until the records this broker appended at `w.first..w.end` are committed, or known
    /// lost. Unlike [`Partition::wait_committed`], losing the leadership does not end the
    /// wait: this replica, a follower then, learns from the new leader whether the records
    /// survived (its high watermark passes them, still in the epoch they were written in) or
    /// not (the divergence cuts them). Answering NOT_LEADER for records that survived tells an
    /// idempotent client they were not written, and librdkafka re-sends such records under a
    /// new producer epoch when any partition bumps it meanwhile: they would be stored twice.
    pub async fn wait_outcome(&self, w: Written) -> Result<Outcome, PartitionError> {
        let mut rx = self.watch();
        let v = *rx
            .wait_for(|v| v.offline || v.log_end < w.end || v.high_watermark >= w.end)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        if v.offline {
            // Deleted (the replica removed: its log is taken before waiters are told), or a
            // storage error.
            if self.log.lock().is_none() {
                return Err(PartitionError::Deleted);
            }
            return Err(PartitionError::Log(LogError::Offline(
                "a flush of this partition failed".into(),
            )));
        }
        if v.log_end < w.end {
            return Ok(Outcome::Lost);
        }
        if v.leader && v.leader_epoch == w.led_in {
            return Ok(Outcome::Committed);
        }
        // Committed under a later epoch: by the log matching property, records at these
        // offsets that carry the epoch they were written in are the ones written (epochs only
        // grow along a log, so the ends of the range decide for all of it).
        let kept = w.written_in.is_some()
            && self.epoch_for_offset(w.first)? == w.written_in
            && self.epoch_for_offset(w.end - 1)? == w.written_in;
        Ok(if kept {
            Outcome::Committed
        } else {
            Outcome::Lost
        })
    }

    /// Wait until the local log is durable up to `end` (a follower before it fetches on,
    /// internal replays).
    pub async fn wait_durable(&self, end: i64) -> Result<(), PartitionError> {
        if matches!(self.durability, Durability::Interval { .. }) {
            return Ok(());
        }
        self.flush_wanted.notify_one();
        let mut rx = self.durable.subscribe();
        let d = rx
            .wait_for(|d| d.offline || d.flushed >= end)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        if d.offline {
            return Err(PartitionError::Log(LogError::Offline(
                "a flush of this partition failed".into(),
            )));
        }
        Ok(())
    }

    /// A follower fetched from `offset` (everything below it is durable there). Updates its
    /// progress and perhaps the high watermark.
    pub async fn follower_fetched(
        self: &Arc<Self>,
        follower: NodeId,
        offset: i64,
        epoch: LeaderEpoch,
    ) -> Result<(), PartitionError> {
        // In memory only, under the replica lock (held briefly, as the flusher holds it): no
        // blocking-pool round trip for every partition of every follower fetch.
        let now = mono_ms();
        let mut r = self.replica.lock();
        if !r.is_leader() || r.leader_epoch() != epoch {
            return Err(PartitionError::NotLeader(epoch));
        }
        r.on_follower_fetch(follower, Offset(offset), now)?;
        self.publish(&r);
        Ok(())
    }

    /// Append batches fetched from the leader of `epoch` (offsets as they are). Returns the
    /// new log end; the caller waits for durability before fetching on.
    pub async fn append_as_follower(
        self: &Arc<Self>,
        batches: Vec<RawBatch>,
        epoch: LeaderEpoch,
    ) -> Result<i64, PartitionError> {
        if bytes_of(&batches) <= INLINE_IO_BYTES_MAX {
            return self.append_as_follower_now(&batches, epoch);
        }
        let me = Arc::clone(self);
        self.blocking(move || me.append_as_follower_now(&batches, epoch))
            .await
    }

    /// [`Partition::append_as_follower`] on this thread, as [`Partition::append_now`].
    fn append_as_follower_now(
        &self,
        batches: &[RawBatch],
        epoch: LeaderEpoch,
    ) -> Result<i64, PartitionError> {
        let end = {
            let mut r = self.replica.lock();
            if !matches!(r.role(), Role::Follower { .. }) || r.leader_epoch() != epoch {
                return Err(PartitionError::NotFollower);
            }
            let mut guard = self.log.lock();
            let log = guard.as_mut().ok_or(PartitionError::Deleted)?;
            let started = std::time::Instant::now();
            let appended = log.append_as_follower(batches);
            self.metrics.observe_append(started.elapsed());
            self.after_log_change(log);
            appended.map_err(|e| match e {
                AppendError::Storage(l) => PartitionError::Log(l),
                other => PartitionError::Log(LogError::Offline(other.to_string())),
            })?;
            let end = log.log_end_offset();
            r.on_append(Offset(end));
            if matches!(self.durability, Durability::Interval { .. }) {
                r.on_flush(Offset(end));
            }
            drop(guard);
            self.publish(&r);
            end
        };
        if self.durability == Durability::Sync {
            self.flush_wanted.notify_one();
        }
        Ok(end)
    }

    /// A follower's log diverged from its leader's: cut it at `offset` (everything at and
    /// after it goes). Below the log start, the log restarts empty at `offset`.
    pub async fn truncate_to(self: &Arc<Self>, offset: i64) -> Result<i64, PartitionError> {
        let me = Arc::clone(self);
        self.blocking(move || {
            let mut r = me.replica.lock();
            if r.is_leader() {
                return Err(PartitionError::NotFollower);
            }
            let mut guard = me.log.lock();
            let log = guard.as_mut().ok_or(PartitionError::Deleted)?;
            let done = log.truncate_to(offset, now_ms());
            me.after_log_change(log);
            done?;
            let end = log.log_end_offset();
            let flushed = log.flushed_offset();
            r.on_truncate(Offset(end));
            drop(guard);
            me.durable
                .send_modify(|d| d.flushed = d.flushed.min(flushed));
            me.publish(&r);
            Ok(end)
        })
        .await
    }

    /// The leader's log starts after our end: drop everything and restart at `start`.
    pub async fn restart_at(self: &Arc<Self>, start: i64) -> Result<(), PartitionError> {
        let me = Arc::clone(self);
        self.blocking(move || {
            let mut r = me.replica.lock();
            if r.is_leader() {
                return Err(PartitionError::NotFollower);
            }
            let mut guard = me.log.lock();
            let log = guard.as_mut().ok_or(PartitionError::Deleted)?;
            let done = log.truncate_fully_and_start_at(start, now_ms());
            me.after_log_change(log);
            done?;
            r.on_truncate(Offset(start));
            r.on_append(Offset(start));
            r.on_flush(Offset(start));
            drop(guard);
            me.durable.send_modify(|d| d.flushed = start);
            me.publish(&r);
            Ok(())
        })
        .await
    }

    /// (Leader) an answer told `follower` the high watermark `hw`.
    pub fn high_watermark_sent(&self, follower: NodeId, hw: i64) {
        self.replica
            .lock()
            .on_high_watermark_sent(follower, Offset(hw));
    }

    /// (Leader) whether the high watermark moved past what `follower` was last told.
    pub fn high_watermark_news(&self, follower: NodeId) -> bool {
        self.replica.lock().high_watermark_news(follower)
    }

    /// A follower learned its leader's high watermark.
    pub fn leader_high_watermark(&self, hw: i64) {
        let mut r = self.replica.lock();
        r.on_leader_high_watermark(Offset(hw));
        self.publish(&r);
    }

    /// The in-sync set this leader should ask the controller for now, if any.
    pub fn wanted_isr(&self, lag_time_ms: u64, retry_ms: u64) -> Option<Vec<NodeId>> {
        self.replica
            .lock()
            .wanted_isr(mono_ms(), lag_time_ms, retry_ms)
    }

    pub fn isr_requested(&self, isr: Vec<NodeId>) {
        let mut r = self.replica.lock();
        r.isr_requested(isr, mono_ms());
        self.publish(&r);
    }

    pub fn isr_request_failed(&self) {
        self.replica.lock().isr_request_failed();
    }

    /// Read up to `max_bytes` of whole batches from `offset`, below `bound`.
    ///
    /// A read that starts in the active segment (every follower fetch, every tailing
    /// consumer) is planned from that segment's in-memory index and copies bytes written a
    /// moment ago, still in the page cache: it runs on the calling task. An older segment may
    /// need the disk for its index and data: that read goes to the blocking pool, plan and
    /// copy in one trip. Either way the copy runs without the log lock.
    pub async fn read(
        self: &Arc<Self>,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
        bound: ReadBound,
    ) -> Result<ReadResult, PartitionError> {
        let visible = self.visible();
        let limit = match bound {
            ReadBound::HighWatermark => visible.high_watermark,
            ReadBound::LogEnd => visible.log_end,
        };
        let plan = move |log: &Log| log.read_plan(offset, max_bytes, limit, min_one_batch);
        // `Some(plan)`: planned here, in the active segment; `None`: an older segment.
        let here = self.with_log_now(|log| log.in_active_segment(offset).then(|| plan(log)))?;
        let records = match here.transpose()? {
            Some(None) => Bytes::new(),
            Some(Some(p)) if p.len() <= INLINE_IO_BYTES_MAX => p.execute()?,
            Some(Some(p)) => self.blocking(move || Ok(p.execute()?)).await?,
            None => {
                let me = Arc::clone(self);
                self.blocking(move || match me.with_log_now(plan)?? {
                    Some(p) => Ok(p.execute()?),
                    None => Ok(Bytes::new()),
                })
                .await?
            }
        };
        Ok(ReadResult {
            records,
            offsets: Offsets {
                log_start: self.log_start.load(Ordering::Acquire),
                high_watermark: visible.high_watermark,
                log_end: visible.log_end,
            },
        })
    }

    /// ListOffsets by timestamp: first offset with a timestamp `>= ts`, below the high
    /// watermark.
    pub async fn offset_for_timestamp(
        self: &Arc<Self>,
        ts: i64,
    ) -> Result<Option<(i64, i64)>, PartitionError> {
        let hw = self.high_watermark();
        let found = self
            .with_log(move |log| log.offset_for_timestamp(ts))
            .await??;
        Ok(found.filter(|(o, _)| *o < hw))
    }

    /// ListOffsets MAX_TIMESTAMP.
    pub async fn offset_of_max_timestamp(
        self: &Arc<Self>,
    ) -> Result<Option<(i64, i64)>, PartitionError> {
        let hw = self.high_watermark();
        let found = self.with_log(|log| log.offset_of_max_timestamp()).await??;
        Ok(found.filter(|(o, _)| *o < hw))
    }

    /// The leader epoch that covers `offset`. The epoch cache is in memory: read under the
    /// log lock, here, not on the blocking pool (a leader answers this for every partition
    /// of every follower fetch that says which epoch it last fetched).
    pub fn epoch_for_offset(&self, offset: i64) -> Result<Option<i32>, PartitionError> {
        self.with_log_now(|log| log.epochs().epoch_for_offset(offset))
    }

    /// OffsetForLeaderEpoch: `(epoch, end offset)` of the largest epoch `<= epoch`.
    pub fn epoch_end_offset(&self, epoch: i32) -> Result<(i32, i64), PartitionError> {
        self.with_log_now(|log| log.epochs().end_offset_for(epoch, log.log_end_offset()))
    }

    /// The newest epoch in the local log (a follower's `last_fetched_epoch`).
    pub fn last_epoch(&self) -> Result<Option<i32>, PartitionError> {
        self.with_log_now(|log| log.epochs().latest().map(|e| e.epoch))
    }

    /// Run `f` on the log on this thread, under its lock. On the runtime, only for what the
    /// log keeps in memory (the epoch cache, a plan in the active segment); a read plan of an
    /// older segment uses it on a blocking thread.
    fn with_log_now<T>(&self, f: impl FnOnce(&Log) -> T) -> Result<T, PartitionError> {
        let guard = self.log.lock();
        guard.as_ref().map(f).ok_or(PartitionError::Deleted)
    }

    /// DeleteRecords: move the log start offset to `offset` (durable on return).
    pub async fn delete_records(self: &Arc<Self>, offset: i64) -> Result<i64, PartitionError> {
        self.with_log(move |log| {
            log.advance_log_start(offset)
                .map(|_| log.log_start_offset())
        })
        .await?
        .map_err(PartitionError::from)
    }

    pub async fn enforce_retention(
        self: &Arc<Self>,
    ) -> Result<durable_log::RetentionReport, PartitionError> {
        Ok(self
            .with_log(|log| log.enforce_retention(now_ms()))
            .await??)
    }

    /// One compaction pass over this replica's log, below its high watermark: planned under
    /// the log's lock, read and written outside it, swapped in under it again (renames only).
    /// `None` when the log is not compacted, not dirty enough, or changed during the pass.
    pub async fn compact(
        self: &Arc<Self>,
    ) -> Result<Option<durable_log::CleanReport>, PartitionError> {
        let hw = self.high_watermark();
        let Some(plan) = self
            .with_log(move |log| log.clean_plan(hw, now_ms()))
            .await?
        else {
            return Ok(None);
        };
        let cleaned = self.blocking(move || Ok(plan.execute()?)).await?;
        let Some(cleaned) = cleaned else {
            return Ok(None);
        };
        Ok(self
            .with_log(move |log| log.install_cleaned(cleaned))
            .await??)
    }

    pub async fn reconfigure(
        self: &Arc<Self>,
        config: LogConfig,
        policy: TopicPolicy,
    ) -> Result<(), PartitionError> {
        *self.policy.lock() = policy;
        self.with_log(move |log| log.set_config(config)).await
    }

    pub async fn size_bytes(self: &Arc<Self>) -> Result<u64, PartitionError> {
        self.with_log(|log| log.size_bytes()).await
    }

    /// Flush and write the state that makes the next start fast. The log stays usable.
    pub async fn close(self: &Arc<Self>) -> Result<(), PartitionError> {
        Ok(self.with_log(|log| log.close()).await??)
    }

    /// Remove the log from disk. Waiters and later calls see [`PartitionError::Deleted`].
    pub async fn delete(self: &Arc<Self>) -> Result<(), PartitionError> {
        let me = Arc::clone(self);
        let log = tokio::task::spawn_blocking(move || me.log.lock().take())
            .await
            .map_err(|e| PartitionError::Task(e.to_string()))?;
        if let Some(log) = log {
            tokio::task::spawn_blocking(move || log.delete())
                .await
                .map_err(|e| PartitionError::Task(e.to_string()))??;
        }
        if !self.set_offline() {
            // Offline after a storage error until now: a deleted log no longer counts.
            self.metrics.offline_partitions.dec();
        }
        Ok(())
    }

    /// The group-commit loop: flush whatever accumulated, publish the new durable offset
    /// (which may move the high watermark), repeat while there is more; then sleep until an
    /// append asks (sync) or the interval passes (interval).
    async fn flusher(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = async {
                match self.durability {
                    Durability::Sync => self.flush_wanted.notified().await,
                    Durability::Interval { interval } => tokio::time::sleep(interval).await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wait => {}
            }
            loop {
                let plan = match self.log.lock().as_mut() {
                    Some(log) => log.flush_plan(),
                    None => return,
                };
                let Some(plan) = plan else { break };
                let started = std::time::Instant::now();
                let done = tokio::task::spawn_blocking(move || plan.execute().map(|_| plan)).await;
                let plan = match done {
                    Ok(Ok(plan)) => plan,
                    Ok(Err(e)) => return self.go_offline(&e),
                    Err(e) => return self.go_offline(&LogError::Offline(e.to_string())),
                };
                self.metrics.observe_flush(started.elapsed());
                // Both locks (replica, then log: the order every path takes) from reading the
                // flushed offset until it is published: a follower's truncation and re-append
                // between the two would otherwise let this offset cover bytes never fsynced.
                let mut r = self.replica.lock();
                let flushed = {
                    let mut guard = self.log.lock();
                    let Some(log) = guard.as_mut() else { return };
                    log.flush_completed(&plan);
                    log.flushed_offset()
                };
                self.durable
                    .send_modify(|d| d.flushed = d.flushed.max(flushed));
                if self.durability == Durability::Sync {
                    let end = r.log_end().0;
                    r.on_flush(Offset(flushed.min(end)));
                    self.publish(&r);
                }
                drop(r);
            }
        }
    }

    fn go_offline(&self, e: &LogError) {
        if let Some(log) = self.log.lock().as_mut() {
            log.mark_offline(e);
        }
        self.publish_offline();
    }

    /// Wake waiters with the news that the log is offline, and count it, once.
    fn publish_offline(&self) {
        if self.set_offline() {
            self.metrics.offline_partitions.inc();
        }
    }

    /// Tell waiters the log is gone or offline; true if it was online until now.
    fn set_offline(&self) -> bool {
        self.visible.send_modify(|v| v.offline = true);
        self.durable
            .send_if_modified(|d| !std::mem::replace(&mut d.offline, true))
    }

    /// Wait for the high watermark to move past `seen`, at most `timeout`.
    pub async fn wait_for_data(&self, seen: i64, timeout: Duration) {
        let mut rx = self.watch();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|v| v.high_watermark > seen)).await;
    }
}

#[cfg(test)]
mod tests;
