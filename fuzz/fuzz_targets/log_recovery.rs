//! A crash can leave anything at the end of a segment: opening a log over arbitrary segment
//! bytes must recover (cut what is invalid) without panicking, and the log must then accept
//! appends and serve reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("00000000000000000000.log"), data).expect("write segment");
    let Ok((mut log, _)) =
        durable_log::Log::open(dir.path(), durable_log::LogConfig::default(), false, 0)
    else {
        return;
    };
    let end = log.log_end_offset();
    if let Ok(Some(plan)) = log.read_plan(0, 1 << 20, end, true) {
        let _ = plan.execute();
    }
    let _ = log.offset_for_timestamp(0);
    // What survived recovery is a valid log: a new batch lands right after it and reads back.
    let epoch = log.epochs().latest().map_or(0, |e| e.epoch);
    let batch = one_record_batch();
    let batches = durable_log::split_batches(&batch).expect("a valid batch");
    let appended = log
        .append_as_leader(&batches, epoch, 0)
        .expect("a recovered log accepts appends");
    assert_eq!(appended.first_offset, end);
    let plan = log
        .read_plan(end, 1 << 20, end + 1, true)
        .expect("read after append")
        .expect("the appended batch");
    assert_eq!(plan.execute().expect("read").len(), batch.len());
});

fn one_record_batch() -> bytes::Bytes {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 0,
        key: None,
        value: Some(bytes::Bytes::from_static(b"after recovery")),
        headers: Default::default(),
    };
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encoding one record");
    buf.freeze()
}
