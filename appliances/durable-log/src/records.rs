//! Record-level view of a stored batch, for the rare paths that need more than the header
//! (ListOffsets by timestamp, internal topics). Batches are decoded with `kafka_protocol`; its
//! compression features are off because they link C libraries, so this module supplies the
//! codecs through the crate's custom-decompression hook, all pure Rust.

use std::io::Read;

use bytes::Bytes;
use kafka_protocol::records::{Compression as KCompression, Record, RecordBatchDecoder};

use crate::batch::{BatchHeader, TimestampType};

/// Decompressed record data larger than this is refused: a corrupt or hostile batch must not
/// make the broker allocate without bound.
pub const MAX_DECOMPRESSED: u64 = 256 << 20;

/// Xerial snappy framing used by the Java client (the Kafka "snappy" codec).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
#[error("cannot decode records: {0}")]
pub struct RecordsError(String);

fn read_bounded(mut r: impl Read) -> anyhow::Result<Bytes> {
    let mut out = Vec::new();
    r.by_ref()
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        anyhow::bail!("decompressed records exceed {MAX_DECOMPRESSED} bytes");
    }
    Ok(out.into())
}

fn snappy(data: &[u8]) -> anyhow::Result<Bytes> {
    if !data.starts_with(XERIAL_MAGIC) {
        let len = snap::raw::decompress_len(data)?;
        if len as u64 > MAX_DECOMPRESSED {
            anyhow::bail!("snappy block too large");
        }
        return Ok(snap::raw::Decoder::new().decompress_vec(data)?.into());
    }
    let mut out = Vec::new();
    let mut rest = data
        .get(XERIAL_HEADER_LEN..)
        .ok_or_else(|| anyhow::anyhow!("short xerial header"))?;
    while !rest.is_empty() {
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("short xerial block length"))?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let block = rest
            .get(4..4 + len)
            .ok_or_else(|| anyhow::anyhow!("xerial block past end"))?;
        let need = snap::raw::decompress_len(block)?;
        if (out.len() + need) as u64 > MAX_DECOMPRESSED {
            anyhow::bail!("snappy data too large");
        }
        out.extend_from_slice(&snap::raw::Decoder::new().decompress_vec(block)?);
        rest = &rest[4 + len..];
    }
    Ok(out.into())
}

fn decompress(data: &mut Bytes, codec: KCompression) -> anyhow::Result<Bytes> {
    match codec {
        KCompression::None => Ok(data.clone()),
        KCompression::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(&data[..])),
        KCompression::Snappy => snappy(data),
        KCompression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(&data[..])),
        KCompression::Zstd => read_bounded(
            ruzstd::decoding::StreamingDecoder::new(&data[..])
                .map_err(|e| anyhow::anyhow!("zstd: {e}"))?,
        ),
    }
}

/// Decompress a batch's record data (`body`: the bytes after its header).
pub fn decompress_body(
    body: &mut Bytes,
    codec: crate::batch::Compression,
) -> anyhow::Result<Bytes> {
    use crate::batch::Compression as C;
    let codec = match codec {
        C::None => KCompression::None,
        C::Gzip => KCompression::Gzip,
        C::Snappy => KCompression::Snappy,
        C::Lz4 => KCompression::Lz4,
        C::Zstd => KCompression::Zstd,
    };
    decompress(body, codec)
}

/// Decode every record of one batch (header included in `batch`).
pub fn decode_records(batch: &Bytes) -> Result<Vec<Record>, RecordsError> {
    let mut buf = batch.clone();
    RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(decompress))
        .map(|set| set.records)
        .map_err(|e| RecordsError(format!("{e:#}")))
}

/// `(offset, timestamp)` of each record of a batch, with log-append time applied.
pub fn record_timestamps(batch: &Bytes) -> Result<Vec<(i64, i64)>, RecordsError> {
    let header = BatchHeader::parse(batch).map_err(|e| RecordsError(e.to_string()))?;
    let records = decode_records(batch)?;
    Ok(records
        .iter()
        .map(|r| match header.timestamp_type() {
            TimestampType::LogAppendTime => (r.offset, header.max_timestamp),
            TimestampType::CreateTime => (r.offset, r.timestamp),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::encode_batch;

    #[test]
    fn timestamps_of_an_uncompressed_batch() {
        let b = encode_batch(&[b"a", b"b"], None, 500);
        assert_eq!(record_timestamps(&b).unwrap(), vec![(0, 500), (1, 501)]);
    }

    #[test]
    fn xerial_and_raw_snappy() {
        let plain = b"hello hello hello hello".to_vec();
        let raw = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        assert_eq!(&snappy(&raw).unwrap()[..], &plain[..]);
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        framed.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        framed.extend_from_slice(&raw);
        assert_eq!(&snappy(&framed).unwrap()[..], &plain[..]);
        assert!(snappy(b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\xff").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut b = encode_batch(&[b"a"], None, 0).to_vec();
        b[22] |= 0x03; // claim lz4 without recomputing anything
        assert!(record_timestamps(&Bytes::from(b)).is_err());
    }
}
