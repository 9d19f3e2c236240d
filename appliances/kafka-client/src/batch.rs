//! Building record batches as a producer does.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Idempotent producer identity of a batch: `(producer id, epoch, base sequence)`.
pub type ProducerStamp = (i64, i16, i32);

/// Encode one v2 batch of `(key, value)` records, uncompressed, with timestamps `timestamp`.
pub fn encode_batch(
    records: &[(Option<Bytes>, Option<Bytes>)],
    timestamp: i64,
    producer: Option<ProducerStamp>,
) -> Bytes {
    let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps records in one batch while offset - sequence is constant;
            // with no producer id the base sequence stays -1.
            sequence: seq.wrapping_add(i as i32),
            timestamp,
            key: k.clone(),
            value: v.clone(),
            headers: Default::default(),
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
    .expect("uncompressed batches always encode");
    buf.freeze()
}
