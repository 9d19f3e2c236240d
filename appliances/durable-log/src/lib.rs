//! Durable, Kafka-format partition logs.
//!
//! A [`Log`] stores record batches exactly as producers sent them (only the header's offset,
//! leader epoch and, for log-append time, timestamp are rewritten), in segment files with
//! sparse offset and time indexes, as Kafka lays them out. It keeps what replication needs
//! (leader epoch per batch and an epoch cache, truncation, follower appends, a log end offset
//! distinct from the flushed offset) and what idempotent producers need (per-producer sequence
//! state that survives restarts).
//!
//! The crate is synchronous: callers run it on blocking threads and do the slow parts (reads,
//! fsyncs) from plans taken under their lock and executed outside it.

pub mod batch;
pub mod checkpoint;
pub mod compaction;
pub mod epoch;
pub mod error;
pub mod index;
pub mod log;
pub mod producer;
pub mod records;
pub mod segment;
pub mod streams;

pub use batch::{
    BatchError, BatchHeader, RawBatch, TimestampType, split_batches, split_stored_batches,
};
pub use compaction::{CleanPlan, CleanReport, Cleaned, CompactionConfig};
pub use error::{AppendError, LogError};
pub use log::{AppendResult, FlushPlan, Log, LogConfig, OpenReport, ReadPlan, RetentionReport};
