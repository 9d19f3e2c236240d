//! Batches for the integration tests, encoded as a producer would (kafka-protocol's encoder).

use bytes::{Bytes, BytesMut};
use durable_log::{RawBatch, split_batches};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType as KTs,
};

/// One uncompressed batch of `(key, value)` records, timestamps from `ts` on, with
/// `(producer id, epoch, first sequence)` when idempotent.
pub fn encode(
    records: &[(Option<&str>, Option<&str>)],
    producer: Option<(i64, i16, i32)>,
    ts: i64,
) -> Vec<RawBatch> {
    encode_with_headers(records, producer, ts, |_| Default::default())
}

/// [`encode`], record `i` with the headers `headers(i)` gives.
pub fn encode_with_headers(
    records: &[(Option<&str>, Option<&str>)],
    producer: Option<(i64, i16, i32)>,
    ts: i64,
    headers: impl Fn(
        usize,
    ) -> kafka_protocol::indexmap::IndexMap<
        kafka_protocol::protocol::StrBytes,
        Option<Bytes>,
    >,
) -> Vec<RawBatch> {
    let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    let bytes = |s: Option<&str>| s.map(|s| Bytes::copy_from_slice(s.as_bytes()));
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
            timestamp_type: KTs::Creation,
            offset: i as i64,
            sequence: seq.wrapping_add(i as i32),
            timestamp: ts + i as i64,
            key: bytes(*k),
            value: bytes(*v),
            headers: headers(i),
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
    .unwrap();
    split_batches(&buf.freeze()).unwrap()
}
