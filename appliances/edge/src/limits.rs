//! The buffer's limits: at most `max_bytes` on disk and nothing unforwarded older than
//! `max_age` (the seed's 20 GiB and 3 days). They act on ingest: past either, the buffer
//! refuses new events (the broker answers `KAFKA_STORAGE_ERROR` with the reason, clients
//! retry, so they wait) and counts the refusals; what it holds is never dropped to make room.
//! The buffer's own segments go only once the hub has acknowledged them: every second the
//! monitor moves each forwarded partition's start to its stream's acknowledged cursor.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use broker::partition::{Partition, ReadBound, now_ms};
use durable_log::batch::TimestampType;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::LimitSettings;
use crate::metrics::EdgeMetrics;

/// How often the buffer is measured and its acknowledged segments removed.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);
/// No unforwarded record.
const NONE: i64 = i64::MAX;

/// Each stream's acknowledged cursor, as its forwarder last published it.
pub type Cursors = Arc<std::sync::Mutex<HashMap<(Uuid, i32), i64>>>;

/// What the monitor measured last, and the decision it implies for ingest.
pub struct BufferLimits {
    settings: LimitSettings,
    bytes: AtomicU64,
    /// The timestamp (ms) of the oldest record not yet acknowledged by the hub.
    oldest_ms: AtomicI64,
    metrics: Arc<EdgeMetrics>,
}

impl BufferLimits {
    pub fn new(settings: LimitSettings, metrics: Arc<EdgeMetrics>) -> BufferLimits {
        BufferLimits {
            settings,
            bytes: AtomicU64::new(0),
            oldest_ms: AtomicI64::new(NONE),
            metrics,
        }
    }

    /// Why ingest is refused now, if it is.
    fn full(&self, now_ms: i64) -> Option<String> {
        let bytes = self.bytes.load(Ordering::Relaxed);
        if bytes >= self.settings.max_bytes {
            return Some(format!(
                "the edge buffer is full: {bytes} bytes of at most {} wait for the hub",
                self.settings.max_bytes
            ));
        }
        let oldest = self.oldest_ms.load(Ordering::Relaxed);
        let age_ms = now_ms.saturating_sub(oldest);
        let max_ms = self.settings.max_age.as_millis() as i64;
        (oldest != NONE && age_ms >= max_ms).then(|| {
            format!(
                "the edge buffer is full: its oldest event has waited {} s for the hub, at most {} s are kept",
                age_ms / 1000,
                max_ms / 1000
            )
        })
    }
}

impl broker::state::IngestGate for BufferLimits {
    fn admit(&self, topic: &str) -> Result<(), String> {
        match self.full(now_ms()) {
            None => Ok(()),
            Some(why) => {
                self.metrics.refused(topic);
                Err(why)
            }
        }
    }
}

/// Every second until `stop`: measure the buffer, and remove what the hub acknowledged.
pub async fn monitor(
    limits: Arc<BufferLimits>,
    state: Arc<broker::state::BrokerState>,
    cursors: Cursors,
    stop: CancellationToken,
) {
    loop {
        let partitions = state.replicas.all();
        let mut bytes = 0u64;
        let mut oldest = NONE;
        for p in &partitions {
            bytes += p.size_bytes().await.unwrap_or(0);
            let key = (p.topic_id, p.index);
            let Some(cursor) = cursors.lock().expect("cursors lock").get(&key).copied() else {
                continue;
            };
            if p.high_watermark() > cursor {
                oldest = oldest.min(timestamp_at(p, cursor).await.unwrap_or(NONE));
            }
            // The log start moves to the cursor: once there, nothing more to remove.
            if cursor > p.offsets().log_start
                && let Err(e) = p.delete_records(cursor).await
            {
                tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "cannot remove forwarded records from the buffer")
            }
        }
        limits.bytes.store(bytes, Ordering::Relaxed);
        limits.oldest_ms.store(oldest, Ordering::Relaxed);
        limits.metrics.buffer_bytes.set(bytes as i64);
        let age_s = if oldest == NONE {
            0
        } else {
            (now_ms() - oldest).max(0) / 1000
        };
        limits.metrics.oldest_unforwarded_age_seconds.set(age_s);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(MONITOR_INTERVAL) => {}
        }
    }
}

/// The timestamp of the batch holding `offset` (its first record's, or the broker's clock
/// for log-append time).
async fn timestamp_at(p: &Arc<Partition>, offset: i64) -> Option<i64> {
    let read = p
        .read(offset, 1, true, ReadBound::HighWatermark)
        .await
        .ok()?;
    let header = durable_log::BatchHeader::parse(&read.records).ok()?;
    Some(match header.timestamp_type() {
        TimestampType::LogAppendTime => header.max_timestamp,
        TimestampType::CreateTime => header.base_timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_stops_at_either_limit() {
        let settings = LimitSettings {
            max_bytes: 1000,
            max_age: Duration::from_secs(60),
        };
        let l = BufferLimits::new(settings, Arc::new(EdgeMetrics::default()));
        assert_eq!(l.full(1_000_000), None);
        l.bytes.store(999, Ordering::Relaxed);
        assert_eq!(l.full(1_000_000), None);
        l.bytes.store(1000, Ordering::Relaxed);
        assert!(l.full(1_000_000).unwrap().contains("1000 bytes"));
        l.bytes.store(0, Ordering::Relaxed);
        l.oldest_ms.store(1_000_000, Ordering::Relaxed);
        assert_eq!(l.full(1_059_999), None);
        assert!(l.full(1_060_000).unwrap().contains("60 s"));
    }
}
