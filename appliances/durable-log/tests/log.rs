//! Behaviour of a partition log through its public API: appends, reads, restarts (clean and
//! after simulated crashes), idempotence, truncation and retention.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use durable_log::{
    AppendError, BatchHeader, Log, LogConfig, LogError, RawBatch, TimestampType, split_batches,
};
use kafka_protocol::records::RecordBatchDecoder;

const NOW: i64 = 1_700_000_000_000;

fn batch(values: &[&str], ts: i64, producer: Option<(i64, i16, i32)>) -> Vec<RawBatch> {
    let records: Vec<(Option<&str>, Option<&str>)> =
        values.iter().map(|v| (None, Some(*v))).collect();
    common::encode(&records, producer, ts)
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, config: LogConfig, clean: bool) -> Log {
    Log::open(dir, config, clean, NOW).unwrap().0
}

fn flush(log: &mut Log) {
    if let Some(plan) = log.flush_plan() {
        plan.execute().unwrap();
        log.flush_completed(&plan);
    }
}

/// Every value in the log from `from`, in offset order, with offsets.
fn read_all(log: &Log, from: i64) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut offset = from;
    while let Some(plan) = log
        .read_plan(offset, 4096, log.log_end_offset(), true)
        .unwrap()
    {
        let mut bytes = plan.execute().unwrap();
        assert!(!bytes.is_empty());
        while !bytes.is_empty() {
            let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
            for r in set.records {
                if r.offset >= offset {
                    out.push((
                        r.offset,
                        String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                    ));
                }
            }
        }
        offset = out.last().map_or(offset, |(o, _)| o + 1);
    }
    out
}

fn append_values(log: &mut Log, n: usize, prefix: &str) {
    for i in 0..n {
        let v = format!("{prefix}-{i:04}-{}", "x".repeat(60));
        log.append_as_leader(&batch(&[&v], NOW + i as i64, None), 0, NOW)
            .unwrap();
    }
}

#[test]
fn append_read_roll_and_reopen_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments(), false);
    append_values(&mut log, 100, "a");
    assert_eq!(log.log_end_offset(), 100);
    assert!(log.segment_count() > 5, "small segments roll");
    let before = read_all(&log, 0);
    assert_eq!(before.len(), 100);
    assert_eq!(before[42].0, 42);
    log.close().unwrap();
    drop(log);

    let (log, report) = Log::open(dir.path(), small_segments(), true, NOW).unwrap();
    assert_eq!(report.recovered_segments, 0, "clean reopen scans nothing");
    assert_eq!(read_all(&log, 0), before);
    assert_eq!(read_all(&log, 57)[0], before[57]);
}

#[test]
fn unclean_reopen_cuts_a_torn_tail_and_keeps_flushed_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments(), false);
    append_values(&mut log, 40, "b");
    flush(&mut log);
    let flushed = read_all(&log, 0);
    // A write torn by the crash: half of a batch at the end of the active segment.
    let active = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    let extra = batch(&["torn"], NOW, None)[0].bytes.clone();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap();
    f.write_all_at(&extra[..extra.len() / 2], len).unwrap();
    drop(log);

    let (log, report) = Log::open(dir.path(), small_segments(), false, NOW).unwrap();
    assert!(report.truncated_bytes > 0);
    assert_eq!(read_all(&log, 0), flushed);
    assert_eq!(log.log_end_offset(), 40);
}

#[test]
fn torn_sealed_segment_drops_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments();
    let mut log = open(dir.path(), config.clone(), false);
    append_values(&mut log, 10, "c");
    flush(&mut log);
    let durable_end = log.log_end_offset();
    // More data rolls segments without a flush, then the crash corrupts the first of them.
    append_values(&mut log, 30, "d");
    drop(log);
    let mut logs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let victim = logs
        .iter()
        .find(|p| {
            let base: i64 = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            base >= durable_end
        })
        .unwrap()
        .clone();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap();
    f.write_all_at(&[0xAB; 8], 100).unwrap();

    let (log, report) = Log::open(dir.path(), config, false, NOW).unwrap();
    assert!(report.dropped_segments > 0, "{report:?}");
    let values = read_all(&log, 0);
    assert!(values.len() as i64 >= durable_end);
    for (i, (o, _)) in values.iter().enumerate() {
        assert_eq!(*o, i as i64, "offsets stay contiguous");
    }
}

#[test]
fn idempotent_retry_returns_the_original_offset_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments(), false);
    append_values(&mut log, 5, "pre");
    let first = log
        .append_as_leader(&batch(&["p0", "p1"], NOW, Some((77, 0, 0))), 0, NOW)
        .unwrap();
    assert_eq!((first.first_offset, first.duplicate), (5, false));
    let retry = log
        .append_as_leader(&batch(&["p0", "p1"], NOW, Some((77, 0, 0))), 0, NOW)
        .unwrap();
    assert_eq!(
        (retry.first_offset, retry.last_offset, retry.duplicate),
        (5, 6, true)
    );
    let gap = log.append_as_leader(&batch(&["p9"], NOW, Some((77, 0, 5))), 0, NOW);
    assert!(matches!(gap, Err(AppendError::Producer(_))));
    flush(&mut log);
    drop(log); // crash: no close, no snapshot at the end

    let mut log = open(dir.path(), small_segments(), false);
    let retry = log
        .append_as_leader(&batch(&["p0", "p1"], NOW, Some((77, 0, 0))), 0, NOW)
        .unwrap();
    assert_eq!((retry.first_offset, retry.duplicate), (5, true));
    let next = log
        .append_as_leader(&batch(&["p2"], NOW, Some((77, 0, 2))), 0, NOW)
        .unwrap();
    assert_eq!((next.first_offset, next.duplicate), (7, false));
    assert_eq!(read_all(&log, 0).len(), 8);
}

#[test]
fn reads_respect_bounds_and_progress_on_large_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), false);
    let big = "z".repeat(3000);
    log.append_as_leader(&batch(&[&big], NOW, None), 0, NOW)
        .unwrap();
    append_values(&mut log, 5, "s");
    // Nothing at or past the upper bound.
    assert!(log.read_plan(0, 1 << 20, 0, true).unwrap().is_none());
    let only_first = log
        .read_plan(0, 1 << 20, 1, true)
        .unwrap()
        .unwrap()
        .execute()
        .unwrap();
    assert_eq!(
        BatchHeader::parse(&only_first).unwrap().total_len(),
        only_first.len()
    );
    // A first batch larger than max_bytes comes whole, or not at all.
    let whole = log
        .read_plan(0, 100, 6, true)
        .unwrap()
        .unwrap()
        .execute()
        .unwrap();
    assert!(whole.len() > 3000);
    let none = log
        .read_plan(0, 100, 6, false)
        .unwrap()
        .unwrap()
        .execute()
        .unwrap();
    assert!(none.is_empty());
    assert!(matches!(
        log.read_plan(7, 100, 6, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn timestamps_find_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments(), false);
    for i in 0..50 {
        let ts = NOW + i * 1000;
        log.append_as_leader(&batch(&["a", "b"], ts, None), 0, NOW)
            .unwrap();
    }
    // Batch i holds offsets 2i (ts) and 2i+1 (ts + 1).
    assert_eq!(log.offset_for_timestamp(NOW).unwrap(), Some((0, NOW)));
    assert_eq!(
        log.offset_for_timestamp(NOW + 1).unwrap(),
        Some((1, NOW + 1))
    );
    assert_eq!(
        log.offset_for_timestamp(NOW + 2).unwrap(),
        Some((2, NOW + 1000))
    );
    assert_eq!(
        log.offset_for_timestamp(NOW + 30_500).unwrap(),
        Some((62, NOW + 31_000))
    );
    assert_eq!(log.offset_for_timestamp(NOW + 100_000).unwrap(), None);
    assert_eq!(
        log.offset_of_max_timestamp().unwrap(),
        Some((99, NOW + 49_001))
    );
}

#[test]
fn log_append_time_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, false);
    let r = log
        .append_as_leader(&batch(&["a"], 5, None), 0, NOW)
        .unwrap();
    assert_eq!(r.log_append_time, Some(NOW));
    let bytes = log
        .read_plan(0, 1000, 1, true)
        .unwrap()
        .unwrap()
        .execute()
        .unwrap();
    let h = BatchHeader::parse(&bytes).unwrap();
    h.validate(&bytes).unwrap();
    assert_eq!(
        (h.max_timestamp, h.timestamp_type()),
        (NOW, TimestampType::LogAppendTime)
    );
}

#[test]
fn follower_truncation_by_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = open(&dir.path().join("leader"), small_segments(), false);
    let mut follower = open(&dir.path().join("follower"), small_segments(), false);
    for epoch in [0, 0, 1, 1, 3] {
        leader
            .append_as_leader(
                &batch(&["v-aaaaaaaaaaaaaaaaaaaa"; 8], NOW, None),
                epoch,
                NOW,
            )
            .unwrap();
    }
    // Copy the leader's log into the follower as fetched bytes.
    let mut offset = 0;
    while let Some(plan) = leader
        .read_plan(offset, 10_000, leader.log_end_offset(), true)
        .unwrap()
    {
        let bytes = plan.execute().unwrap();
        let batches = split_batches(&bytes).unwrap();
        offset = batches.last().unwrap().header.next_offset();
        follower.append_as_follower(&batches).unwrap();
    }
    assert_eq!(follower.log_end_offset(), 40);
    let epochs: Vec<_> = follower
        .epochs()
        .entries()
        .iter()
        .map(|e| (e.epoch, e.start_offset))
        .collect();
    assert_eq!(epochs, vec![(0, 0), (1, 16), (3, 32)]);
    assert_eq!(leader.epochs().end_offset_for(2, 40), (1, 32));
    // A diverged follower truncates to where its epoch 1 ended on the leader.
    follower.truncate_to(32, NOW).unwrap();
    assert_eq!(follower.log_end_offset(), 32);
    assert_eq!(follower.epochs().latest().unwrap().epoch, 1);
    let wrong = batch(&["x"], NOW, None);
    assert!(matches!(
        follower.append_as_follower(&wrong),
        Err(AppendError::OffsetMismatch {
            expected: 32,
            got: 0
        })
    ));
    drop(follower);
    let follower = open(&dir.path().join("follower"), small_segments(), false);
    assert_eq!(follower.log_end_offset(), 32);
}

#[test]
fn retention_and_delete_records() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(2048),
        retention_ms: Some(60_000),
        ..small_segments()
    };
    let mut log = open(dir.path(), config.clone(), false);
    append_values(&mut log, 60, "r");
    let report = log.enforce_retention(NOW).unwrap();
    assert!(report.deleted_segments > 0);
    assert!(log.size_bytes() <= 2048 + 1024);
    let start = log.log_start_offset();
    assert!(start > 0);
    assert_eq!(read_all(&log, start).first().unwrap().0, start);

    log.advance_log_start(55).unwrap();
    assert_eq!(log.log_start_offset(), 55);
    assert!(matches!(
        log.read_plan(54, 100, 60, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    drop(log);
    let mut log = open(dir.path(), config, false);
    assert_eq!(log.log_start_offset(), 55, "log start survives restart");

    // Everything older than retention.ms goes, the active segment included.
    let report = log.enforce_retention(NOW + 10 * 60_000).unwrap();
    assert!(report.deleted_segments > 0);
    assert_eq!(log.log_start_offset(), 60);
    assert_eq!(log.log_end_offset(), 60);
}

#[test]
fn flush_planned_before_truncation_does_not_cover_new_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), false);
    append_values(&mut log, 10, "g");
    let plan = log.flush_plan().unwrap();
    log.truncate_to(5, NOW).unwrap();
    append_values(&mut log, 10, "h");
    plan.execute().unwrap();
    log.flush_completed(&plan);
    assert!(
        log.flushed_offset() <= 5,
        "stale plan must not advance past the truncation"
    );
}

#[test]
fn oversized_and_control_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_message_bytes: 200,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, false);
    let big = "q".repeat(500);
    assert!(matches!(
        log.append_as_leader(&batch(&[&big], NOW, None), 0, NOW),
        Err(AppendError::RecordTooLarge { .. })
    ));
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn segment_age_follows_the_wall_clock_not_producer_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: Some(60_000),
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, false);
    // Batches stamped years ago by their producer do not make every append roll.
    for _ in 0..20 {
        log.append_as_leader(&batch(&["old"], 1_000, None), 0, NOW)
            .unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    // A minute of wall-clock time later, the next append starts a new segment.
    log.append_as_leader(&batch(&["later"], 1_000, None), 0, NOW + 61_000)
        .unwrap();
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn an_epoch_without_records_goes_when_a_follower_truncates_at_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default(), true);
    log.append_as_leader(&batch(&["a", "b"], NOW, None), 0, NOW)
        .unwrap();
    // Briefly leader in epoch 1, writing nothing, then a follower again.
    log.assign_epoch(1).unwrap();
    assert_eq!(log.epochs().latest().unwrap().epoch, 1);
    // Its new leader has no epoch 1: truncating at the end drops it, records stay.
    log.truncate_to(2, NOW).unwrap();
    assert_eq!(log.epochs().latest().unwrap().epoch, 0);
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.epochs().end_offset_for(0, 2), (0, 2));
}

/// A batch an edge gateway forwards: records `seqs` of stream `b/t/0`, as producer `pid`.
fn stamped(seqs: std::ops::RangeInclusive<i64>, pid: i64) -> Vec<RawBatch> {
    use durable_log::streams::{SEQUENCE_HEADER, STREAM_HEADER};
    let values: Vec<String> = seqs.clone().map(|s| format!("e{s}")).collect();
    let records: Vec<(Option<&str>, Option<&str>)> =
        values.iter().map(|v| (None, Some(v.as_str()))).collect();
    let first = *seqs.start();
    common::encode_with_headers(&records, Some((pid, 0, 0)), NOW, |i| {
        let mut h = kafka_protocol::indexmap::IndexMap::new();
        h.insert(
            STREAM_HEADER.into(),
            Some(bytes::Bytes::from_static(b"b/t/0")),
        );
        let seq = first + i as i64;
        h.insert(
            SEQUENCE_HEADER.into(),
            Some(bytes::Bytes::copy_from_slice(&seq.to_be_bytes())),
        );
        h
    })
}

#[test]
fn a_stream_s_batch_sent_again_under_a_new_producer_is_recognised_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let dedup = LogConfig {
        stream_dedup: true,
        ..small_segments()
    };
    let mut log = open(dir.path(), dedup.clone(), false);
    append_values(&mut log, 3, "plain");
    let first = log.append_as_leader(&stamped(0..=4, 1), 0, NOW).unwrap();
    assert_eq!((first.first_offset, first.last_offset), (3, 7));
    // The producer's state expired at the hub: the gateway sends it again as another producer.
    let again = log.append_as_leader(&stamped(0..=4, 2), 0, NOW).unwrap();
    assert_eq!((again.duplicate, again.last_offset), (true, 7));
    let part = log.append_as_leader(&stamped(3..=6, 2), 0, NOW);
    assert!(
        matches!(part, Err(AppendError::InvalidRecord(_))),
        "{part:?}"
    );
    log.append_as_leader(&stamped(5..=6, 2), 0, NOW).unwrap();
    flush(&mut log);
    drop(log); // crash: the table comes back from the log itself

    let mut log = open(dir.path(), dedup.clone(), false);
    assert!(
        log.append_as_leader(&stamped(5..=6, 3), 0, NOW)
            .unwrap()
            .duplicate
    );
    assert!(
        log.append_as_leader(&stamped(0..=4, 3), 0, NOW)
            .unwrap()
            .duplicate
    );
    log.close().unwrap();
    let mut log = open(dir.path(), dedup, true);
    assert!(
        log.append_as_leader(&stamped(5..=6, 4), 0, NOW)
            .unwrap()
            .duplicate
    );
    assert_eq!(read_all(&log, 0).len(), 10);

    // Without the setting the same batch is stored twice: the test above is not vacuous.
    let plain = tempfile::tempdir().unwrap();
    let mut log = open(plain.path(), small_segments(), false);
    log.append_as_leader(&stamped(0..=4, 1), 0, NOW).unwrap();
    assert!(
        !log.append_as_leader(&stamped(0..=4, 2), 0, NOW)
            .unwrap()
            .duplicate
    );
}
