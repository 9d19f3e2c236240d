//! The records of a Produce request: splitting and validating batches, and decoding records
//! (with decompression) as ListOffsets-by-timestamp does for stored batches, and as a topic
//! that de-duplicates by stream does to read a batch's stream and sequence headers
//! (`streams::origin_of`); and the log cleaner's view of them (the keyless-record check of
//! compacted topics uses it on produce): records split with their raw bytes, and a batch
//! rebuilt from some of them must read back as a valid stored batch covering the same
//! offsets. Random bytes rarely carry a valid CRC, so each input is also tried with its
//! length and CRC fixed up, which drives the fuzzer into record decoding and the
//! decompressors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn exercise(bytes: bytes::Bytes) {
    if let Ok(batches) = durable_log::split_batches(&bytes) {
        for b in batches {
            let _ = durable_log::records::record_timestamps(&b.bytes);
            // A topic that de-duplicates by stream reads every produced batch's headers.
            if let Ok(Some(o)) = durable_log::streams::origin_of(&b.bytes) {
                assert!(o.first <= o.last);
            }
        }
    }
    let _ = durable_log::batch::whole_batches_prefix(&bytes);
    for b in durable_log::split_stored_batches(&bytes).into_iter().flatten() {
        let Ok(data) = durable_log::compaction::record_data(&b.bytes, &b.header) else {
            continue;
        };
        let Ok(records) = durable_log::compaction::split_records(&data, b.header.records_count)
        else {
            continue;
        };
        let kept: Vec<&[u8]> = records.iter().step_by(2).map(|r| r.raw).collect();
        let rebuilt = durable_log::batch::rebuild(
            &b.bytes,
            durable_log::batch::Compression::None,
            kept.len() as i32,
            &kept.concat(),
        );
        let again = durable_log::split_stored_batches(&rebuilt).expect("a rebuilt batch is valid");
        assert_eq!(again[0].header.next_offset(), b.header.next_offset());
    }
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
