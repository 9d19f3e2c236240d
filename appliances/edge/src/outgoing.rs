//! A batch as it leaves for the hub: the local records of one journal batch, each with two
//! headers that name where it came from (its *stream*: gateway, topic and local partition)
//! and its place there (its local offset, which never changes and is never reused), under
//! the producer's id, epoch and base sequence, lz4-compressed (the seed's choice for WAN
//! links). The hub's producer idempotence recognises a re-sent batch by its sequences; the
//! headers let the hub recognise a record again when idempotence cannot (a new producer
//! after the hub forgot the old one, an outage longer than its producer-state expiry).
//!
//! Encoding is deterministic: the same records under the same stamp give the same bytes.

use bytes::{Bytes, BytesMut};
use durable_log::compaction::compress;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::journal::{Batch, LocalOffset, Producer};

/// The headers naming a record's stream (`<gateway>/<topic>/<local partition>`) and its
/// local offset there (8 bytes, big-endian): the hub's log reads them to recognise a batch
/// sent again (`durable_log::streams`).
pub use durable_log::streams::{SEQUENCE_HEADER, STREAM_HEADER};

/// Where a local partition's records come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    pub gateway: String,
    pub topic: String,
    pub partition: i32,
}

/// `<gateway>/<topic>/<partition>`: the header's value, and the stream's name in logs.
impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.gateway, self.topic, self.partition)
    }
}

impl StreamId {
    pub fn header_value(&self) -> Bytes {
        Bytes::from(self.to_string())
    }

    /// `<gateway>/<topic>/<partition>/released`: the stream of parked records an operator
    /// released. Their own stream, numbered by release, since their local offsets lie below
    /// what the hub already holds of the main stream (which would take them for repeats).
    pub fn released_header(&self) -> Bytes {
        Bytes::from(format!("{self}/released"))
    }
}

/// Encode `records` (each with its sequence in `stream`: its local offset, or its release
/// number in the released stream) as `batch` of `producer` for the hub.
pub fn encode(
    stream: &Bytes,
    records: &[(LocalOffset, Record)],
    producer: Producer,
    batch: &Batch,
) -> Result<Bytes, String> {
    if records.len() != batch.records as usize {
        return Err(format!(
            "the batch holds {} records, {} were given",
            batch.records,
            records.len()
        ));
    }
    let stream_value = stream.clone();
    let out: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (offset, r))| {
            let mut headers = r.headers.clone();
            headers.insert(STREAM_HEADER.into(), Some(stream_value.clone()));
            headers.insert(
                SEQUENCE_HEADER.into(),
                Some(Bytes::copy_from_slice(&offset.0.to_be_bytes())),
            );
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: producer.id,
                producer_epoch: producer.epoch,
                // The branch's own time of the event, whatever the local topic stamped.
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // Only the base sequence goes on the wire; the encoder keeps records in one
                // batch while `offset - sequence` (wrapping) holds. A batch that passes
                // i32::MAX is read by Kafka as going on from 0.
                sequence: batch.base_sequence.wrapping_add(i as i32),
                timestamp: r.timestamp,
                key: r.key.clone(),
                value: r.value.clone(),
                headers,
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::Lz4,
    };
    let lz4 = |data: &mut BytesMut, out: &mut BytesMut, codec: Compression| {
        let packed = compress(durable_log_codec(codec), data).map_err(anyhow_error)?;
        out.extend_from_slice(&packed);
        Ok(())
    };
    RecordBatchEncoder::encode_with_custom_compression(&mut buf, &out, &options, Some(lz4))
        .map_err(|e| format!("encoding the batch: {e:#}"))?;
    Ok(buf.freeze())
}

fn durable_log_codec(codec: Compression) -> durable_log::batch::Compression {
    match codec {
        Compression::None => durable_log::batch::Compression::None,
        Compression::Gzip => durable_log::batch::Compression::Gzip,
        Compression::Snappy => durable_log::batch::Compression::Snappy,
        Compression::Lz4 => durable_log::batch::Compression::Lz4,
        Compression::Zstd => durable_log::batch::Compression::Zstd,
    }
}

fn anyhow_error(e: String) -> anyhow::Error {
    anyhow::Error::msg(e)
}

/// The stream and local offset a forwarded record carries, if it carries them (read as the
/// hub reads them).
pub fn origin(record: &Record) -> Option<(Bytes, LocalOffset)> {
    durable_log::streams::record_origin(record).map(|(stream, seq)| (stream, LocalOffset(seq)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(n: i64) -> Vec<(LocalOffset, Record)> {
        (0..n)
            .map(|i| {
                let mut headers = kafka_protocol::indexmap::IndexMap::new();
                headers.insert("app".into(), Some(Bytes::from_static(b"hmi")));
                let record = Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: 0,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::LogAppend,
                    offset: 500 + i,
                    sequence: -1,
                    timestamp: 1_700_000_000_000 + i,
                    key: Some(Bytes::from(format!("pump-{}", i % 3))),
                    value: Some(Bytes::from(vec![b'v'; 200])),
                    headers,
                };
                (LocalOffset(500 + i), record)
            })
            .collect()
    }

    #[test]
    fn a_batch_carries_its_records_origins_and_stamp_and_encodes_the_same_twice() {
        let stream = StreamId {
            gateway: "branch-017".into(),
            topic: "alarms".into(),
            partition: 2,
        };
        let producer = Producer { id: 42, epoch: 3 };
        let batch = Batch {
            hub_partition: 0,
            base_sequence: i32::MAX - 1,
            records: 4,
        };
        let records = local(4);
        let bytes = encode(&stream.header_value(), &records, producer, &batch).unwrap();
        assert_eq!(
            bytes,
            encode(&stream.header_value(), &records, producer, &batch).unwrap()
        );
        let header = durable_log::BatchHeader::parse(&bytes).unwrap();
        assert_eq!(
            header.compression().unwrap(),
            durable_log::batch::Compression::Lz4
        );
        let decoded = durable_log::records::decode_records(&bytes).unwrap();
        assert_eq!(decoded.len(), 4);
        for (i, r) in decoded.iter().enumerate() {
            assert_eq!((r.producer_id, r.producer_epoch), (42, 3));
            // One batch, even across i32::MAX (the decoder adds the offset delta to the
            // base, wrapping; Kafka continues from 0 there).
            assert_eq!(r.sequence, (i32::MAX - 1).wrapping_add(i as i32));
            assert_eq!(r.key, records[i].1.key);
            assert_eq!(r.value, records[i].1.value);
            assert_eq!(r.timestamp, records[i].1.timestamp);
            let app = r.headers.iter().find(|(k, _)| k.as_str() == "app");
            assert_eq!(app.and_then(|(_, v)| v.as_deref()), Some(&b"hmi"[..]));
            assert_eq!(
                origin(r),
                Some((
                    Bytes::from_static(b"branch-017/alarms/2"),
                    LocalOffset(500 + i as i64)
                ))
            );
        }
        // 4 records of 200 repeated bytes compress well below their size.
        assert!(bytes.len() < 4 * 200);
        let wrong = Batch {
            records: 3,
            ..batch
        };
        assert!(encode(&stream.header_value(), &records, producer, &wrong).is_err());
    }
}
