//! One partition replica on this broker: its [`Log`] behind a lock, the flusher that makes it
//! durable, and the offsets clients see.
//!
//! - Appends and reads run on blocking threads; the lock is held only for in-memory work and
//!   page-cache writes, never across an fsync or a read of record data.
//! - The flusher task fdatasyncs whatever accumulated since its last pass, so concurrent
//!   producers share each fsync (group commit). In `sync` durability the high watermark (what
//!   consumers may read) is the flushed offset: a consumer never sees data a crash could
//!   take back. In `interval` durability it is the log end offset.
//! - Replication will move the high watermark to "flushed on enough in-sync replicas"; the
//!   rest of this type does not change.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use durable_log::{AppendError, AppendResult, Log, LogConfig, LogError, RawBatch};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Durability;
use crate::metrics::Metrics;
use crate::topic_config::TopicPolicy;

/// Current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Durable {
    flushed: i64,
    offline: bool,
}

pub struct Partition {
    pub topic: Arc<str>,
    pub topic_id: Uuid,
    pub index: i32,
    log: Mutex<Option<Log>>,
    policy: Mutex<TopicPolicy>,
    leader_epoch: i32,
    durability: Durability,
    durable: watch::Sender<Durable>,
    high_watermark: watch::Sender<i64>,
    log_start: AtomicI64,
    log_end: AtomicI64,
    flush_wanted: Notify,
    metrics: Arc<Metrics>,
}

impl Partition {
    /// Open (recovering if needed) the log in `dir` and start its flusher.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        dir: &std::path::Path,
        topic: Arc<str>,
        topic_id: Uuid,
        index: i32,
        config: LogConfig,
        policy: TopicPolicy,
        durability: Durability,
        clean_shutdown: bool,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Partition>, LogError> {
        let (log, report) = Log::open(dir, config, clean_shutdown, now_ms())?;
        if report.truncated_bytes > 0 || report.dropped_segments > 0 {
            tracing::warn!(
                %topic, partition = index,
                recovered_segments = report.recovered_segments,
                truncated_bytes = report.truncated_bytes,
                dropped_segments = report.dropped_segments,
                log_end_offset = log.log_end_offset(),
                "recovered partition log: cut unacknowledged data torn by a crash"
            );
        } else if report.recovered_segments > 0 {
            tracing::debug!(%topic, partition = index, segments = report.recovered_segments, "verified partition log");
        }
        let leo = log.log_end_offset();
        let p = Arc::new(Partition {
            topic,
            topic_id,
            index,
            log_start: AtomicI64::new(log.log_start_offset()),
            log_end: AtomicI64::new(leo),
            log: Mutex::new(Some(log)),
            policy: Mutex::new(policy),
            leader_epoch: 0,
            durability,
            durable: watch::Sender::new(Durable {
                flushed: leo,
                offline: false,
            }),
            high_watermark: watch::Sender::new(leo),
            flush_wanted: Notify::new(),
            metrics,
        });
        tokio::spawn(Arc::clone(&p).flusher(shutdown));
        Ok(p)
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn policy(&self) -> TopicPolicy {
        *self.policy.lock()
    }

    pub fn offsets(&self) -> Offsets {
        Offsets {
            log_start: self.log_start.load(Ordering::Acquire),
            high_watermark: *self.high_watermark.borrow(),
            log_end: self.log_end.load(Ordering::Acquire),
        }
    }

    pub fn high_watermark(&self) -> i64 {
        *self.high_watermark.borrow()
    }

    /// A receiver that changes whenever the high watermark moves.
    pub fn watch_high_watermark(&self) -> watch::Receiver<i64> {
        self.high_watermark.subscribe()
    }

    pub fn is_offline(&self) -> bool {
        self.durable.borrow().offline
    }

    /// Run `f` on the log on a blocking thread.
    async fn with_log<T, F>(self: &Arc<Self>, f: F) -> Result<T, PartitionError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Log) -> T + Send + 'static,
    {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut guard = me.log.lock();
            let log = guard.as_mut().ok_or(PartitionError::Deleted)?;
            let out = f(log);
            me.log_start
                .store(log.log_start_offset(), Ordering::Release);
            me.log_end.store(log.log_end_offset(), Ordering::Release);
            // The log takes itself offline on a storage error (a full disk, say): waiters
            // and the metrics learn it now, not at the next flush.
            if log.is_offline() {
                me.publish_offline();
            }
            Ok(out)
        })
        .await
        .map_err(|e| PartitionError::Task(e.to_string()))?
    }

    /// Append producer batches as leader. Returns when they are in the page cache; call
    /// [`Partition::wait_durable`] to wait for the disk.
    pub async fn append(
        self: &Arc<Self>,
        batches: Vec<RawBatch>,
    ) -> Result<AppendResult, AppendError> {
        let epoch = self.leader_epoch;
        let result = self
            .with_log(move |log| log.append_as_leader(&batches, epoch, now_ms()))
            .await
            .map_err(|e| match e {
                PartitionError::Log(l) => AppendError::Storage(l),
                other => AppendError::Storage(LogError::Offline(other.to_string())),
            })??;
        if !result.duplicate {
            self.after_append();
        }
        Ok(result)
    }

    fn after_append(&self) {
        match self.durability {
            Durability::Sync => self.flush_wanted.notify_one(),
            Durability::Interval { .. } => {
                let leo = self.log_end.load(Ordering::Acquire);
                self.high_watermark.send_if_modified(|hw| {
                    let moved = *hw < leo;
                    *hw = (*hw).max(leo);
                    moved
                });
            }
        }
    }

    /// Wait until every offset below `end` is as durable as the configured durability mode
    /// promises: fdatasync'ed in `sync` mode, written in `interval` mode.
    pub async fn wait_durable(&self, end: i64) -> Result<(), PartitionError> {
        if matches!(self.durability, Durability::Interval { .. }) {
            return Ok(());
        }
        let mut rx = self.durable.subscribe();
        let state = rx
            .wait_for(|d| d.offline || d.flushed >= end)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        if state.offline {
            return Err(PartitionError::Log(LogError::Offline(
                "a flush of this partition failed".into(),
            )));
        }
        Ok(())
    }

    /// Read up to `max_bytes` of whole batches from `offset`, below the high watermark
    /// (consumers) or the log end (followers, `to_log_end`).
    pub async fn read(
        self: &Arc<Self>,
        offset: i64,
        max_bytes: usize,
        min_one_batch: bool,
        to_log_end: bool,
    ) -> Result<ReadResult, PartitionError> {
        let hw = self.high_watermark();
        let plan = self
            .with_log(move |log| {
                let bound = if to_log_end { log.log_end_offset() } else { hw };
                log.read_plan(offset, max_bytes, bound, min_one_batch)
            })
            .await??;
        let records = match plan {
            Some(plan) => tokio::task::spawn_blocking(move || plan.execute())
                .await
                .map_err(|e| PartitionError::Task(e.to_string()))??,
            None => Bytes::new(),
        };
        let mut offsets = self.offsets();
        offsets.high_watermark = hw;
        Ok(ReadResult { records, offsets })
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

    /// The leader epoch that covers `offset`.
    pub async fn epoch_for_offset(
        self: &Arc<Self>,
        offset: i64,
    ) -> Result<Option<i32>, PartitionError> {
        self.with_log(move |log| log.epochs().epoch_for_offset(offset))
            .await
    }

    /// OffsetForLeaderEpoch: `(epoch, end offset)` of the largest epoch `<= epoch`.
    pub async fn epoch_end_offset(
        self: &Arc<Self>,
        epoch: i32,
    ) -> Result<(i32, i64), PartitionError> {
        self.with_log(move |log| log.epochs().end_offset_for(epoch, log.log_end_offset()))
            .await
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

    /// The group-commit loop: flush whatever accumulated, publish the new durable offset,
    /// repeat while there is more; then sleep until an append asks (sync) or the interval
    /// passes (interval).
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
                let flushed = {
                    let mut guard = self.log.lock();
                    let Some(log) = guard.as_mut() else { return };
                    log.flush_completed(&plan);
                    log.flushed_offset()
                };
                self.durable
                    .send_modify(|d| d.flushed = d.flushed.max(flushed));
                if self.durability == Durability::Sync {
                    self.high_watermark.send_if_modified(|hw| {
                        let moved = *hw < flushed;
                        *hw = (*hw).max(flushed);
                        moved
                    });
                }
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
        self.durable
            .send_if_modified(|d| !std::mem::replace(&mut d.offline, true))
    }

    /// Wait for the high watermark to move past `seen`, at most `timeout`.
    pub async fn wait_for_data(&self, seen: i64, timeout: Duration) {
        let mut rx = self.watch_high_watermark();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|hw| *hw > seen)).await;
    }
}
