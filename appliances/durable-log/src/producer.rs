//! Idempotent producer state of one partition: for each producer id, its epoch and the last
//! [`MAX_CACHED_BATCHES`] batches it wrote, so that a retried batch is recognised (and answered
//! with its original offset) and a gap in sequence numbers is refused, as Kafka does.
//!
//! The state is a function of the log: it is rebuilt by replaying batch headers, starting from a
//! snapshot written when a segment rolls so that replay covers at most the active segment.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::streams::StreamTable;

use crate::batch::BatchHeader;

/// Batches remembered per producer, as in Kafka (and what clients assume for max in-flight 5).
pub const MAX_CACHED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<CachedBatch>,
    /// Max timestamp of the producer's last batch, for expiry.
    pub last_timestamp: i64,
}

/// Why a producer's batch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    FencedEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error(
        "out of order sequence for producer {producer_id}: got {got}, expected {expected} \
         (epoch {epoch})"
    )]
    OutOfOrder {
        producer_id: i64,
        epoch: i16,
        got: i32,
        expected: i32,
    },
}

/// What a producer's batch is, relative to what the partition already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// The next batch in sequence (or a new producer or epoch): append it.
    Append,
    /// A retry of a batch already in the log: answer with its original offsets.
    Duplicate(CachedBatch),
}

fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerTable {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// The base offset of every producer's newest batch (the log cleaner keeps these whole:
    /// the table is rebuilt from them after a crash).
    pub fn last_batch_offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.producers
            .values()
            .filter_map(|e| e.batches.back().map(|b| b.first_offset))
    }

    /// A copy of the entries of the given producers, to check a request against without
    /// touching the table.
    pub fn clone_subset(&self, producer_ids: impl Iterator<Item = i64>) -> ProducerTable {
        let producers = producer_ids
            .filter_map(|id| self.producers.get(&id).map(|e| (id, e.clone())))
            .collect();
        ProducerTable { producers }
    }

    /// Replace entries with those of `other` (a checked subset, see [`Self::clone_subset`]).
    pub fn merge(&mut self, other: ProducerTable) {
        self.producers.extend(other.producers);
    }

    /// Classify a batch about to be appended (its header as the producer sent it).
    pub fn check(&self, h: &BatchHeader) -> Result<SequenceCheck, ProducerError> {
        let Some(entry) = self.producers.get(&h.producer_id) else {
            // Unknown producer (new, or its state expired): any sequence is accepted, as Kafka
            // does, since its history may have been removed by retention.
            return Ok(SequenceCheck::Append);
        };
        if h.producer_epoch < entry.epoch {
            return Err(ProducerError::FencedEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current: entry.epoch,
            });
        }
        if h.producer_epoch != entry.epoch {
            // A bumped epoch restarts the sequence at 0.
            return if h.base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(ProducerError::OutOfOrder {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    got: h.base_sequence,
                    expected: 0,
                })
            };
        }
        let last_seq = h.last_sequence();
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq)
        {
            return Ok(SequenceCheck::Duplicate(*dup));
        }
        match entry.batches.back() {
            Some(last) if !in_sequence(last.last_seq, h.base_sequence) => {
                Err(ProducerError::OutOfOrder {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    got: h.base_sequence,
                    expected: last.last_seq.wrapping_add(1).max(0),
                })
            }
            _ => Ok(SequenceCheck::Append),
        }
    }

    /// Record a batch now in the log (its header with the assigned base offset).
    pub fn record(&mut self, h: &BatchHeader) {
        if !h.has_producer_id() {
            return;
        }
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp: h.max_timestamp,
            });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(CachedBatch {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            first_offset: h.base_offset,
            last_offset: h.last_offset(),
            timestamp: h.max_timestamp,
        });
        while entry.batches.len() > MAX_CACHED_BATCHES {
            entry.batches.pop_front();
        }
        entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
    }

    /// Forget producers idle for longer than `expiration_ms` (Kafka's
    /// `producer.id.expiration.ms`), judged by their batches' timestamps.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) {
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp) < expiration_ms);
    }

    /// Forget batches at or after `offset` (log truncation). Producers left with no batch are
    /// dropped: their older history is unknown, so they are accepted as new.
    pub fn truncate_from(&mut self, offset: i64) {
        self.producers.retain(|_, e| {
            e.batches.retain(|b| b.last_offset < offset);
            !e.batches.is_empty()
        });
    }

    pub fn to_snapshot(&self, offset: i64, streams: &StreamTable) -> Vec<u8> {
        serde_json::to_vec(&Snapshot {
            offset,
            table: self.clone(),
            streams: streams.clone(),
        })
        .expect("producer table serializes")
    }

    /// Parse a snapshot; `None` if it is damaged (it is then ignored and the log replayed).
    pub fn from_snapshot(bytes: &[u8]) -> Option<(i64, ProducerTable, StreamTable)> {
        serde_json::from_slice::<Snapshot>(bytes)
            .ok()
            .map(|s| (s.offset, s.table, s.streams))
    }
}

/// A snapshot of the producers, and of the streams (see [`crate::streams`]; absent from
/// snapshots written before it existed).
#[derive(Serialize, Deserialize)]
struct Snapshot {
    offset: i64,
    table: ProducerTable,
    #[serde(default)]
    streams: StreamTable,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 1000,
            max_timestamp: 1000,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: count,
        }
    }

    #[test]
    fn accepts_in_order_and_detects_retries() {
        let mut t = ProducerTable::default();
        let b0 = header(1, 0, 0, 3, 0);
        assert_eq!(t.check(&b0).unwrap(), SequenceCheck::Append);
        t.record(&b0);
        let b1 = header(1, 0, 3, 2, 3);
        assert_eq!(t.check(&b1).unwrap(), SequenceCheck::Append);
        t.record(&b1);
        match t.check(&header(1, 0, 0, 3, -1)).unwrap() {
            SequenceCheck::Duplicate(d) => assert_eq!((d.first_offset, d.last_offset), (0, 2)),
            other => panic!("expected duplicate, got {other:?}"),
        }
    }

    #[test]
    fn refuses_gaps_and_fenced_epochs() {
        let mut t = ProducerTable::default();
        t.record(&header(1, 2, 0, 1, 0));
        assert!(matches!(
            t.check(&header(1, 2, 5, 1, 0)),
            Err(ProducerError::OutOfOrder { expected: 1, .. })
        ));
        assert!(matches!(
            t.check(&header(1, 1, 1, 1, 0)),
            Err(ProducerError::FencedEpoch { current: 2, .. })
        ));
        assert!(matches!(
            t.check(&header(1, 3, 4, 1, 0)),
            Err(ProducerError::OutOfOrder { expected: 0, .. })
        ));
        assert_eq!(
            t.check(&header(1, 3, 0, 1, 0)).unwrap(),
            SequenceCheck::Append
        );
    }

    #[test]
    fn only_five_batches_are_remembered() {
        let mut t = ProducerTable::default();
        for i in 0..6 {
            t.record(&header(9, 0, i, 1, i as i64));
        }
        assert!(matches!(
            t.check(&header(9, 0, 0, 1, 0)),
            Err(ProducerError::OutOfOrder { .. })
        ));
        assert!(matches!(
            t.check(&header(9, 0, 1, 1, 0)).unwrap(),
            SequenceCheck::Duplicate(_)
        ));
    }

    #[test]
    fn sequence_wraps_at_max() {
        let mut t = ProducerTable::default();
        t.record(&header(4, 0, i32::MAX, 1, 0));
        assert_eq!(
            t.check(&header(4, 0, 0, 1, 1)).unwrap(),
            SequenceCheck::Append
        );
    }

    #[test]
    fn snapshot_roundtrip_expiry_and_truncation() {
        let mut t = ProducerTable::default();
        t.record(&header(1, 0, 0, 1, 0));
        t.record(&header(2, 0, 0, 1, 1));
        let snap = t.to_snapshot(2, &StreamTable::default());
        let (off, back, _) = ProducerTable::from_snapshot(&snap).unwrap();
        assert_eq!((off, &back), (2, &t));
        assert!(ProducerTable::from_snapshot(b"{garbage").is_none());
        t.truncate_from(1);
        assert!(t.get(2).is_none() && t.get(1).is_some());
        t.expire(1000 + 10, 5);
        assert!(t.is_empty());
    }
}
