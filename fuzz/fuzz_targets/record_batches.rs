//! The records of a Produce request: splitting and validating batches, and decoding records
//! (with decompression) as ListOffsets-by-timestamp does for stored batches. Random bytes
//! rarely carry a valid CRC, so each input is also tried with its length and CRC fixed up,
//! which drives the fuzzer into record decoding and the decompressors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn exercise(bytes: bytes::Bytes) {
    if let Ok(batches) = durable_log::split_batches(&bytes) {
        for b in batches {
            let _ = durable_log::records::record_timestamps(&b.bytes);
        }
    }
    let _ = durable_log::batch::whole_batches_prefix(&bytes);
}

fuzz_target!(|data: &[u8]| {
    exercise(bytes::Bytes::copy_from_slice(data));
    if data.len() >= durable_log::batch::HEADER_LEN {
        let mut fixed = data.to_vec();
        let len = (fixed.len() - 12) as i32;
        fixed[8..12].copy_from_slice(&len.to_be_bytes());
        fixed[16] = 2;
        let crc = crc32c::crc32c(&fixed[21..]);
        fixed[17..21].copy_from_slice(&crc.to_be_bytes());
        exercise(fixed.into());
    }
});
