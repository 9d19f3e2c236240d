//! The Kafka record batch (magic v2) header: parsing, validation and the in-place rewrites a
//! broker makes (base offset, leader epoch, log-append time).
//!
//! Written by hand rather than with `kafka_protocol::records`: that decoder copies and decodes
//! whole batches, while a broker must look only at the fixed 61-byte header, keep the body as
//! received (no recompression) and patch a few header bytes before writing. The layout is
//! fixed by the Kafka protocol (`DefaultRecordBatch`):
//!
//! ```text
//! 0  baseOffset i64        | 8  batchLength i32     | 12 partitionLeaderEpoch i32
//! 16 magic i8              | 17 crc u32 (crc32c of bytes 21..end)
//! 21 attributes i16        | 23 lastOffsetDelta i32 | 27 baseTimestamp i64
//! 35 maxTimestamp i64      | 43 producerId i64      | 51 producerEpoch i16
//! 53 baseSequence i32      | 57 recordsCount i32    | 61 records...
//! ```

use bytes::Bytes;

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before the part counted by `batchLength` (base offset and the length itself).
pub const LOG_OVERHEAD: usize = 12;
/// Smallest legal `batchLength`: a header with no records.
pub const MIN_BATCH_LENGTH: i32 = (HEADER_LEN - LOG_OVERHEAD) as i32;

const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const MAX_TIMESTAMP_OFFSET: usize = 35;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_FLAG: i16 = 0x08;
const TRANSACTIONAL_FLAG: i16 = 0x10;
const CONTROL_FLAG: i16 = 0x20;

/// Producer id of batches written without idempotence.
pub const NO_PRODUCER_ID: i64 = -1;
/// Sequence of batches written without idempotence.
pub const NO_SEQUENCE: i32 = -1;

/// Compression codec named in a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// Whose clock the batch timestamps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// Why a batch was refused. Each maps to one Kafka error code in the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch truncated: {0}")]
    Truncated(&'static str),
    #[error("unsupported record batch magic {0} (only v2 is accepted)")]
    UnsupportedMagic(i8),
    #[error("record batch length {0} is invalid")]
    InvalidLength(i32),
    #[error("record batch CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch has an unknown compression codec {0}")]
    UnknownCompression(i16),
    #[error("record batch is invalid: {0}")]
    Invalid(&'static str),
}

/// The decoded fixed header of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Decode a header from the first [`HEADER_LEN`] bytes of `buf`. Checks only what is needed
    /// to walk a sequence of batches safely (magic and length); see [`BatchHeader::validate`].
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < LOG_OVERHEAD {
            return Err(BatchError::Truncated("fewer than 12 bytes"));
        }
        let batch_length = be_i32(buf, 8);
        if batch_length < MIN_BATCH_LENGTH {
            return Err(BatchError::InvalidLength(batch_length));
        }
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated("header shorter than 61 bytes"));
        }
        let magic = buf[16] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length,
            partition_leader_epoch: be_i32(buf, 12),
            magic,
            crc: u32::from_be_bytes(buf[CRC_OFFSET..CRC_OFFSET + 4].try_into().expect("4 bytes")),
            attributes: be_i16(buf, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_OFFSET),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            records_count: be_i32(buf, 57),
        })
    }

    /// Total size of the batch on the wire and on disk.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Saturating: headers read back from a damaged segment may carry any base offset.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// The offset that follows this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        match self.attributes & COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_FLAG != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_FLAG != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG != 0
    }

    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Sequence number of the last record, wrapping at `i32::MAX` as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence == NO_SEQUENCE {
            return NO_SEQUENCE;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        if last > i64::from(i32::MAX) {
            (last - i64::from(i32::MAX) - 1) as i32
        } else {
            last as i32
        }
    }

    /// Checks a producer-written batch: the CRC over `bytes` (the whole batch) and the
    /// consistency of header fields that a broker relies on.
    pub fn validate(&self, bytes: &[u8]) -> Result<(), BatchError> {
        self.validate_stored(bytes)?;
        if self.records_count == 0 {
            return Err(BatchError::Invalid("a batch must hold at least one record"));
        }
        if self.last_offset_delta != self.records_count - 1 {
            return Err(BatchError::Invalid(
                "lastOffsetDelta does not match the record count",
            ));
        }
        Ok(())
    }

    /// Checks a batch read back from a log: as [`BatchHeader::validate`], except that a
    /// compacted batch holds fewer records than its offset range, possibly none (the cleaner
    /// keeps the base offset and `lastOffsetDelta` of a batch whose older records it removed).
    pub fn validate_stored(&self, bytes: &[u8]) -> Result<(), BatchError> {
        if bytes.len() != self.total_len() {
            return Err(BatchError::Truncated("batch shorter than its length field"));
        }
        let computed = crc32c::crc32c(&bytes[ATTRIBUTES_OFFSET..]);
        if computed != self.crc {
            return Err(BatchError::CrcMismatch {
                stored: self.crc,
                computed,
            });
        }
        self.compression()?;
        if self.records_count < 0 || self.last_offset_delta < self.records_count - 1 {
            return Err(BatchError::Invalid(
                "the record count does not fit the batch's offset range",
            ));
        }
        Ok(())
    }
}

/// A batch rebuilt around new record data: the header of `original` (base offset, leader
/// epoch, `lastOffsetDelta`, timestamps, producer fields) with `records_count`, the
/// compression bits of `compression` and `records` (already compressed) as its body; length
/// and CRC recomputed. The cleaner's output.
pub fn rebuild(
    original: &[u8],
    compression: Compression,
    records_count: i32,
    records: &[u8],
) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_LEN + records.len());
    out.extend_from_slice(&original[..HEADER_LEN]);
    out.extend_from_slice(records);
    let batch_length = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attrs = (be_i16(original, ATTRIBUTES_OFFSET) & !COMPRESSION_MASK) | compression as i16;
    out[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attrs.to_be_bytes());
    out[57..61].copy_from_slice(&records_count.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    out.into()
}

/// A batch header rewritten by the broker: a copy of the 61 header bytes to write in place of
/// the original ones, while the body is written from the producer's buffer untouched.
#[derive(Clone)]
pub struct PatchedHeader(pub [u8; HEADER_LEN]);

impl PatchedHeader {
    /// Copy the header of `batch` and assign `base_offset` and the leader epoch. Neither field
    /// is covered by the CRC, so the checksum stays valid.
    pub fn new(batch: &[u8], base_offset: i64, leader_epoch: i32) -> Self {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&batch[..HEADER_LEN]);
        h[0..8].copy_from_slice(&base_offset.to_be_bytes());
        h[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
        PatchedHeader(h)
    }

    /// Switch the batch to log-append time with `now_ms` as its max timestamp. These fields
    /// are covered by the CRC, so it is recomputed over the patched header and the body.
    pub fn set_log_append_time(&mut self, now_ms: i64, body: &[u8]) {
        let attrs = be_i16(&self.0, ATTRIBUTES_OFFSET) | TIMESTAMP_TYPE_FLAG;
        self.0[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attrs.to_be_bytes());
        self.0[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8]
            .copy_from_slice(&now_ms.to_be_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.0[ATTRIBUTES_OFFSET..]), body);
        self.0[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// One batch found in a buffer of concatenated batches.
#[derive(Debug, Clone)]
pub struct RawBatch {
    pub header: BatchHeader,
    pub bytes: Bytes,
}

/// Split a buffer of concatenated batches (a Produce request's `records`) into batches,
/// validating each. Fails on the first bad batch: a producer's request is all or nothing.
pub fn split_batches(records: &Bytes) -> Result<Vec<RawBatch>, BatchError> {
    let batches = split(records, BatchHeader::validate)?;
    if batches.is_empty() {
        return Err(BatchError::Invalid("no record batch in the request"));
    }
    Ok(batches)
}

/// Split batches read back from a log (a fetch answer, an internal topic's tail): as
/// [`split_batches`], but compacted batches are accepted ([`BatchHeader::validate_stored`])
/// and an empty buffer is no batch.
pub fn split_stored_batches(records: &Bytes) -> Result<Vec<RawBatch>, BatchError> {
    split(records, BatchHeader::validate_stored)
}

fn split(
    records: &Bytes,
    validate: fn(&BatchHeader, &[u8]) -> Result<(), BatchError>,
) -> Result<Vec<RawBatch>, BatchError> {
    let mut batches = Vec::new();
    let mut at = 0usize;
    while at < records.len() {
        let rest = &records[at..];
        let header = BatchHeader::parse(rest)?;
        let len = header.total_len();
        if len > rest.len() {
            return Err(BatchError::Truncated(
                "batch extends past the end of the data",
            ));
        }
        let bytes = records.slice(at..at + len);
        validate(&header, &bytes)?;
        batches.push(RawBatch { header, bytes });
        at += len;
    }
    Ok(batches)
}

/// Walk batch headers in a buffer read from a segment, returning the length of the prefix made
/// of whole batches (headers parse and fit), and their headers. Stops at the first batch that
/// does not fit or does not parse; never fails.
pub fn whole_batches_prefix(buf: &[u8]) -> (usize, Vec<BatchHeader>) {
    let mut at = 0usize;
    let mut headers = Vec::new();
    while let Ok(h) = BatchHeader::parse(&buf[at..]) {
        let len = h.total_len();
        if at + len > buf.len() {
            break;
        }
        headers.push(h);
        at += len;
    }
    (at, headers)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression as KCompression, Record, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType as KTs,
    };

    /// Encode a batch of `n` records with the given values, as a producer would.
    pub fn encode_batch(
        values: &[&[u8]],
        producer: Option<(i64, i16, i32)>,
        timestamp: i64,
    ) -> Bytes {
        let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: pid,
                producer_epoch: epoch,
                timestamp_type: KTs::Creation,
                offset: i as i64,
                sequence: seq.wrapping_add(i as i32),
                timestamp: timestamp + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::copy_from_slice(v)),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: KCompression::None,
            },
        )
        .expect("encode batch");
        buf.freeze()
    }

    #[test]
    fn parses_and_validates_an_encoded_batch() {
        let b = encode_batch(&[b"a", b"bb", b"ccc"], Some((7, 1, 10)), 1000);
        let batches = split_batches(&b).unwrap();
        assert_eq!(batches.len(), 1);
        let h = batches[0].header;
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.producer_id, 7);
        assert_eq!(h.base_sequence, 10);
        assert_eq!(h.last_sequence(), 12);
        assert_eq!(h.base_timestamp, 1000);
        assert_eq!(h.max_timestamp, 1002);
        assert_eq!(h.compression().unwrap(), Compression::None);
        assert_eq!(h.timestamp_type(), TimestampType::CreateTime);
    }

    #[test]
    fn refuses_corruption_and_truncation() {
        let b = encode_batch(&[b"hello"], None, 0);
        let mut bad = b.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(
            split_batches(&Bytes::from(bad)),
            Err(BatchError::CrcMismatch { .. })
        ));
        let short = b.slice(..b.len() - 1);
        assert!(matches!(
            split_batches(&short),
            Err(BatchError::Truncated(_))
        ));
        let mut magic = b.to_vec();
        magic[16] = 1;
        assert_eq!(
            split_batches(&Bytes::from(magic)).unwrap_err(),
            BatchError::UnsupportedMagic(1)
        );
        let mut len = b.to_vec();
        len[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(
            split_batches(&Bytes::from(len)).unwrap_err(),
            BatchError::InvalidLength(-5)
        );
        assert!(split_batches(&Bytes::new()).is_err());
    }

    #[test]
    fn patching_offset_and_epoch_keeps_the_crc_valid() {
        let b = encode_batch(&[b"x", b"y"], None, 5);
        let p = PatchedHeader::new(&b, 42, 3);
        let mut whole = p.0.to_vec();
        whole.extend_from_slice(&b[HEADER_LEN..]);
        let h = BatchHeader::parse(&whole).unwrap();
        h.validate(&whole).unwrap();
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.partition_leader_epoch, 3);
        assert_eq!(h.last_offset(), 43);
    }

    #[test]
    fn log_append_time_rewrites_timestamp_and_crc() {
        let b = encode_batch(&[b"x"], None, 5);
        let mut p = PatchedHeader::new(&b, 0, 0);
        p.set_log_append_time(99_000, &b[HEADER_LEN..]);
        let mut whole = p.0.to_vec();
        whole.extend_from_slice(&b[HEADER_LEN..]);
        let h = BatchHeader::parse(&whole).unwrap();
        h.validate(&whole).unwrap();
        assert_eq!(h.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(h.max_timestamp, 99_000);
    }

    #[test]
    fn sequence_wraps_like_kafka() {
        let b = encode_batch(&[b"a", b"b", b"c"], Some((1, 0, i32::MAX - 1)), 0);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.last_sequence(), 0);
    }

    #[test]
    fn whole_prefix_stops_at_a_partial_batch() {
        let a = encode_batch(&[b"a"], None, 0);
        let b = encode_batch(&[b"b"], None, 0);
        let mut buf = a.to_vec();
        buf.extend_from_slice(&b[..b.len() - 3]);
        let (len, headers) = whole_batches_prefix(&buf);
        assert_eq!(len, a.len());
        assert_eq!(headers.len(), 1);
    }
}
