//! A durable store of typed records (JSON) on a partition of an internal topic: consumer group
//! state lives in these, so it gets the same group-committed, crash-recovered and replicated
//! storage as user data. An append is acknowledged once committed (on disk on every in-sync
//! replica), and only by the partition's leader.
//!
//! State is rebuilt by replaying every record from the log start. To keep that short, a
//! store is compacted by appending the whole current state as ONE batch (all or nothing under
//! its CRC) and then moving the log start to it; replay after a crash between the two steps
//! sees the old records and then the snapshot, which restates the same state.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use durable_log::{AppendError, LogConfig, TimestampType, split_batches};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType as KTs,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::partition::{Partition, PartitionError, ProduceError, ReadBound, now_ms};

/// Log settings for internal stores: never deleted by retention, large batches (snapshots).
pub fn internal_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 20,
        segment_ms: None,
        index_interval_bytes: 4096,
        retention_ms: None,
        retention_bytes: None,
        max_message_bytes: 256 << 20,
        timestamp_type: TimestampType::CreateTime,
        producer_id_expiration_ms: i64::MAX,
        // Compacted by the store itself (a snapshot batch, then the log start moves).
        compaction: None,
        stream_dedup: false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error("corrupt internal record at offset {offset}: {message}")]
    Corrupt { offset: i64, message: String },
}

pub struct InternalLog<T> {
    partition: Arc<Partition>,
    _records: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> InternalLog<T> {
    pub fn new(partition: Arc<Partition>) -> Self {
        InternalLog {
            partition,
            _records: PhantomData,
        }
    }

    pub fn partition(&self) -> &Arc<Partition> {
        &self.partition
    }

    /// Every record from the log start, in order.
    pub async fn replay(&self) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut offset = self.partition.offsets().log_start;
        loop {
            let read = self
                .partition
                .read(offset, 4 << 20, true, ReadBound::LogEnd)
                .await?;
            if read.records.is_empty() {
                return Ok(out);
            }
            let batches = durable_log::split_stored_batches(&read.records).map_err(|e| {
                StoreError::Corrupt {
                    offset,
                    message: e.to_string(),
                }
            })?;
            for b in batches {
                let records = durable_log::records::decode_records(&b.bytes).map_err(|e| {
                    StoreError::Corrupt {
                        offset: b.header.base_offset,
                        message: e.to_string(),
                    }
                })?;
                for r in records.into_iter().filter(|r| r.offset >= offset) {
                    let value = r.value.unwrap_or_default();
                    let rec = serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                        offset: r.offset,
                        message: e.to_string(),
                    })?;
                    out.push(rec);
                }
                offset = b.header.next_offset();
            }
        }
    }

    /// Append records as one batch and wait until they are committed. Returns the offset of
    /// the first one.
    pub async fn append(&self, records: &[T]) -> Result<i64, StoreError> {
        if records.is_empty() {
            return Ok(self.partition.offsets().log_end);
        }
        let batch = encode(records);
        let batches = split_batches(&batch).map_err(AppendError::from)?;
        let (result, epoch) = self.partition.append(batches).await?;
        self.partition
            .wait_committed(result.last_offset + 1, epoch)
            .await?;
        Ok(result.first_offset)
    }

    /// Replace the history with `snapshot` (the complete current state).
    pub async fn compact(&self, snapshot: &[T]) -> Result<(), StoreError> {
        let start = self.append(snapshot).await?;
        self.partition.delete_records(start).await?;
        self.partition.enforce_retention().await?;
        Ok(())
    }

    pub async fn size_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.partition.size_bytes().await?)
    }
}

fn encode<T: Serialize>(records: &[T]) -> Bytes {
    encode_batch(records.iter().map(|r| {
        let value = serde_json::to_vec(r).expect("internal records serialize");
        (None, Some(Bytes::from(value)))
    }))
}

/// A record's headers, as kafka-protocol holds them.
pub type Headers = indexmap::IndexMap<kafka_protocol::protocol::StrBytes, Option<Bytes>>;

/// `(key, value)` pairs as one uncompressed batch of an internal topic (offsets from 0, no
/// producer id; the log assigns the real offsets).
pub fn encode_batch(records: impl Iterator<Item = (Option<Bytes>, Option<Bytes>)>) -> Bytes {
    encode_records(records.map(|(key, value)| (key, value, Headers::default())))
}

/// `(key, value, headers)` as one uncompressed batch, stamped now (offsets from 0, no
/// producer id): what an embedding appliance appends in-process, too.
pub fn encode_records(
    records: impl Iterator<Item = (Option<Bytes>, Option<Bytes>, Headers)>,
) -> Bytes {
    let now = now_ms();
    let records: Vec<Record> = records
        .enumerate()
        .map(|(i, (key, value, headers))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: KTs::Creation,
            offset: i as i64,
            // The encoder keeps records in one batch while offset - sequence is constant.
            sequence: -1 + i as i32,
            timestamp: now,
            key,
            value,
            headers,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encoding uncompressed records cannot fail");
    buf.freeze()
}
