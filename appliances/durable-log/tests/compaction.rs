//! Log compaction through the public API: the newest record per key survives at its original
//! offset, tombstones go after `delete.retention.ms`, reads and followers cope with the gaps,
//! and a crash at any point of the swap leaves either the old or the new segments.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use durable_log::batch::{self, Compression as Codec};
use durable_log::compaction::{self, CompactionConfig};
use durable_log::{Log, LogConfig, RawBatch, split_batches, split_stored_batches};

const NOW: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// One batch of `(key, value)` records, ten days old; a `None` value is a tombstone.
fn keyed(records: &[(&str, Option<&str>)], producer: Option<(i64, i16, i32)>) -> Vec<RawBatch> {
    keyed_at(records, producer, NOW - 10 * DAY_MS)
}

fn keyed_at(
    records: &[(&str, Option<&str>)],
    producer: Option<(i64, i16, i32)>,
    ts: i64,
) -> Vec<RawBatch> {
    let records: Vec<(Option<&str>, Option<&str>)> =
        records.iter().map(|(k, v)| (Some(*k), *v)).collect();
    common::encode(&records, producer, ts)
}

/// The same batch with its records compressed by `codec`.
fn compressed(b: Vec<RawBatch>, codec: Codec) -> Vec<RawBatch> {
    let raw = &b[0].bytes;
    let body = compaction::compress(codec, &raw[batch::HEADER_LEN..]).unwrap();
    let rebuilt = batch::rebuild(raw, codec, b[0].header.records_count, &body);
    split_batches(&rebuilt).unwrap()
}

fn config() -> LogConfig {
    LogConfig {
        // Segments roll by age (7 days): each test decides where they end.
        segment_bytes: 1 << 20,
        index_interval_bytes: 100,
        retention_ms: None,
        compaction: Some(CompactionConfig {
            min_cleanable_dirty_ratio: 0.0,
            ..CompactionConfig::default()
        }),
        ..LogConfig::default()
    }
}

fn open(dir: &Path, clean: bool) -> Log {
    Log::open(dir, config(), clean, NOW).unwrap().0
}

fn flush(log: &mut Log) {
    if let Some(plan) = log.flush_plan() {
        plan.execute().unwrap();
        log.flush_completed(&plan);
    }
}

/// Every record `(offset -> (key, value))` from the log start.
fn contents(log: &Log) -> BTreeMap<i64, (String, Option<String>)> {
    let mut out = BTreeMap::new();
    let mut offset = log.log_start_offset();
    while let Some(plan) = log
        .read_plan(offset, 1 << 20, log.log_end_offset(), true)
        .unwrap()
    {
        let bytes = plan.execute().unwrap();
        for b in split_stored_batches(&bytes).unwrap() {
            for r in durable_log::records::decode_records(&b.bytes).unwrap() {
                let text = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
                out.insert(r.offset, (text(r.key).unwrap(), text(r.value)));
            }
            offset = b.header.next_offset();
        }
    }
    out
}

/// Ten rounds over keys k0..k7, each round its own segment (appended a week apart) of two
/// batches of four records. Round 6 deletes k3 (a tombstone no later round overwrites);
/// finally one record starts a new active segment. Returns the newest record per key.
fn write_versions(log: &mut Log) -> BTreeMap<String, (i64, Option<String>)> {
    let mut newest = BTreeMap::new();
    for round in 0..10i64 {
        let now = NOW + round * 8 * DAY_MS;
        for half in 0..2 {
            let recs: Vec<(String, Option<String>)> = (0..4)
                .map(|i| format!("k{}", half * 4 + i))
                .filter(|k| round <= 6 || k != "k3")
                .map(|k| {
                    let v = (round != 6 || k != "k3").then(|| format!("r{round}"));
                    (k, v)
                })
                .collect();
            let view: Vec<(&str, Option<&str>)> = recs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            let first = log
                .append_as_leader(&keyed(&view, None), 0, now)
                .unwrap()
                .first_offset;
            for (i, (k, v)) in recs.into_iter().enumerate() {
                newest.insert(k, (first + i as i64, v));
            }
        }
    }
    log.append_as_leader(&keyed(&[("roll", Some("x"))], None), 0, NOW + 80 * DAY_MS)
        .unwrap();
    flush(log);
    newest
}

fn clean(log: &mut Log, now_ms: i64) -> Option<durable_log::CleanReport> {
    let plan = log.clean_plan(log.log_end_offset(), now_ms)?;
    let cleaned = plan.execute().unwrap()?;
    log.install_cleaned(cleaned).unwrap()
}

/// The log after compaction is a subset of the log before, at the same offsets, holding the
/// newest record of every key.
fn check_compacted(
    before: &BTreeMap<i64, (String, Option<String>)>,
    after: &BTreeMap<i64, (String, Option<String>)>,
    newest: &BTreeMap<String, (i64, Option<String>)>,
    tombstones_kept: bool,
) {
    for (offset, rec) in after {
        assert_eq!(before.get(offset), Some(rec), "offset {offset} changed");
    }
    for (key, (offset, value)) in newest {
        if value.is_none() && !tombstones_kept {
            continue;
        }
        assert_eq!(
            after.get(offset),
            Some(&(key.clone(), value.clone())),
            "the newest record of {key} is not at {offset}"
        );
    }
    assert!(after.len() < before.len(), "nothing was removed");
}

#[test]
fn the_newest_record_per_key_survives_at_its_offset_and_tombstones_go_after_the_horizon() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), true);
    let newest = write_versions(&mut log);
    let before = contents(&log);
    let segments = log.segment_count();
    assert!(segments > 4, "{segments} segments");

    let report = clean(&mut log, NOW).expect("a pass ran");
    assert!(
        report.records_removed > 0 && report.segments_rewritten > 0,
        "{report:?}"
    );
    assert_eq!(report.tombstones_removed, 0, "tombstones are recent");
    let after = contents(&log);
    check_compacted(&before, &after, &newest, true);
    assert_eq!(log.segment_count(), segments, "segments keep their bases");
    let leo = log.log_end_offset();

    // Reopened cleanly and after a crash (every segment rescanned): the same records.
    drop(log);
    let log = open(dir.path(), true);
    assert_eq!(contents(&log), after);
    drop(log);
    std::fs::remove_file(dir.path().join("recovery-point")).unwrap();
    let mut log = open(dir.path(), false);
    assert_eq!(contents(&log), after);
    assert_eq!(log.log_end_offset(), leo);

    // Nothing new is dirty: no pass. Past delete.retention.ms the tombstone goes too.
    assert!(clean(&mut log, NOW).is_none());
    log.append_as_leader(&keyed(&[("k0", Some("late"))], None), 0, NOW + 80 * DAY_MS)
        .unwrap();
    // The reopened active segment's age is its file's: roll it on the wall clock, and measure
    // the tombstone horizon (file modification times) on it too.
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    log.append_as_leader(
        &keyed(&[("roll2", Some("y"))], None),
        0,
        wall_ms + 8 * DAY_MS,
    )
    .unwrap();
    flush(&mut log);
    let before = contents(&log);
    let later = wall_ms + 2 * DAY_MS;
    let plan = log.clean_plan(log.log_end_offset(), later).expect("a plan");
    let cleaned = plan.execute().unwrap().expect("a result");
    let report = log.install_cleaned(cleaned).unwrap().expect("installed");
    assert_eq!(report.tombstones_removed, 1, "{report:?}");
    let after = contents(&log);
    assert!(!after.values().any(|(k, v)| k == "k3" && v.is_none()));
    for (offset, rec) in &after {
        assert_eq!(before.get(offset), Some(rec));
    }
}

#[test]
fn compressed_batches_are_rewritten_with_their_own_codec() {
    for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), true);
        for round in 0..6 {
            let v1 = format!("a{round}");
            let v2 = format!("b{round}");
            let b = keyed(
                &[("x", Some(&v1)), ("y", Some(&v2)), ("z", Some("same"))],
                None,
            );
            log.append_as_leader(&compressed(b, codec), 0, NOW).unwrap();
        }
        log.append_as_leader(&keyed(&[("x", Some("last"))], None), 0, NOW)
            .unwrap();
        log.append_as_leader(&keyed(&[("roll", Some("r"))], None), 0, NOW + 8 * DAY_MS)
            .unwrap();
        flush(&mut log);
        let before = contents(&log);
        clean(&mut log, NOW).expect("a pass");
        let after = contents(&log);
        assert!(after.len() < before.len(), "{codec:?}");
        for (o, rec) in &after {
            assert_eq!(before.get(o), Some(rec), "{codec:?}");
        }
        // Rewritten batches kept their codec.
        let plan = log
            .read_plan(0, 1 << 20, log.log_end_offset(), true)
            .unwrap()
            .unwrap();
        let first = split_stored_batches(&plan.execute().unwrap()).unwrap();
        assert_eq!(first[0].header.compression().unwrap(), codec);
    }
}

#[test]
fn a_follower_copies_a_compacted_log_with_its_gaps_and_reads_start_in_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = open(dir.path(), true);
    write_versions(&mut leader);
    clean(&mut leader, NOW).unwrap();
    let expected = contents(&leader);
    // A read at an offset whose batch is gone starts at the next batch that remains.
    let gap = (0..leader.log_end_offset())
        .find(|o| !expected.contains_key(o))
        .unwrap();
    let plan = leader
        .read_plan(gap, 1 << 20, leader.log_end_offset(), true)
        .unwrap()
        .unwrap();
    let got = split_stored_batches(&plan.execute().unwrap()).unwrap();
    assert!(got[0].header.base_offset > gap);

    let fdir = tempfile::tempdir().unwrap();
    let mut follower = Log::open(fdir.path(), config(), true, NOW).unwrap().0;
    let mut offset = 0;
    while let Some(plan) = leader
        .read_plan(offset, 300, leader.log_end_offset(), true)
        .unwrap()
    {
        let batches = split_stored_batches(&plan.execute().unwrap()).unwrap();
        offset = batches.last().unwrap().header.next_offset();
        follower.append_as_follower(&batches).unwrap();
    }
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(contents(&follower), expected);
    flush(&mut follower);
    drop(follower);
    std::fs::remove_file(fdir.path().join("recovery-point")).unwrap();
    let follower = Log::open(fdir.path(), config(), false, NOW).unwrap().0;
    assert_eq!(contents(&follower), expected, "recovery accepts the gaps");
}

#[test]
fn a_crash_before_the_commit_keeps_the_old_segments_and_after_it_the_new_ones() {
    // Before the commit: the staging directory is discarded.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), true);
    write_versions(&mut log);
    let before = contents(&log);
    let plan = log.clean_plan(log.log_end_offset(), NOW).unwrap();
    let cleaned = plan.execute().unwrap().unwrap();
    assert!(dir.path().join("clean.tmp").is_dir());
    drop(cleaned);
    drop(log);
    let log = open(dir.path(), false);
    assert_eq!(contents(&log), before);
    assert!(!dir.path().join("clean.tmp").exists());

    // After the commit, with only some files moved: the open finishes the swap.
    let plan = log.clean_plan(log.log_end_offset(), NOW).unwrap();
    let cleaned = plan.execute().unwrap().unwrap();
    drop(cleaned);
    drop(log);
    std::fs::rename(dir.path().join("clean.tmp"), dir.path().join("clean.swap")).unwrap();
    let mut moved = 0;
    for e in std::fs::read_dir(dir.path().join("clean.swap")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        // Move one segment's log file but not its indexes: the worst place to stop.
        if moved == 0 && name.ends_with(".log") {
            std::fs::rename(e.path(), dir.path().join(&name)).unwrap();
            moved += 1;
        }
    }
    let mut log = open(dir.path(), false);
    assert!(!dir.path().join("clean.swap").exists());
    let after = contents(&log);
    assert!(after.len() < before.len());
    for (o, rec) in &after {
        assert_eq!(before.get(o), Some(rec));
    }
    // And a pass over the finished swap finds nothing more to remove.
    let again = clean(&mut log, NOW);
    assert!(again.is_none_or(|r| r.records_removed == 0), "{again:?}");
}

#[test]
fn only_durable_sealed_segments_below_the_high_watermark_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), true);
    write_versions(&mut log);
    // Nothing below a high watermark of 0.
    assert!(log.clean_plan(0, NOW).is_none());
    // Records younger than min.compaction.lag.ms stay.
    let mut lagging = config();
    lagging.compaction.as_mut().unwrap().min_compaction_lag_ms = 30 * DAY_MS;
    log.set_config(lagging);
    assert!(log.clean_plan(log.log_end_offset(), NOW).is_none());
    // Below the dirty ratio: no pass either.
    let mut lazy = config();
    lazy.compaction.as_mut().unwrap().min_cleanable_dirty_ratio = 1.1;
    log.set_config(lazy);
    assert!(log.clean_plan(log.log_end_offset(), NOW).is_none());
    // Not a compacted topic: never.
    log.set_config(LogConfig {
        compaction: None,
        ..config()
    });
    assert!(log.clean_plan(log.log_end_offset(), NOW).is_none());
    // A truncation underneath a pass makes its result stale: refused, nothing changes.
    log.set_config(config());
    let plan = log.clean_plan(log.log_end_offset(), NOW).unwrap();
    let cleaned = plan.execute().unwrap().unwrap();
    let leo = log.log_end_offset();
    log.truncate_to(leo - 1, NOW).unwrap();
    let before = contents(&log);
    assert!(log.install_cleaned(cleaned).unwrap().is_none());
    assert_eq!(contents(&log), before);
    assert!(!dir.path().join("clean.tmp").exists());
}

#[test]
fn an_idempotent_producers_last_batch_is_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), true);
    // Producer 9 writes k0 and k1 once; plain writes supersede both many times afterwards.
    let ts = NOW - 1000;
    let first = log
        .append_as_leader(
            &keyed_at(&[("k0", Some("p")), ("k1", Some("p"))], Some((9, 0, 0)), ts),
            0,
            NOW,
        )
        .unwrap()
        .first_offset;
    for i in 0..30 {
        let v = format!("v{i}");
        log.append_as_leader(
            &keyed_at(&[("k0", Some(&v)), ("k1", Some(&v))], None, ts),
            0,
            NOW,
        )
        .unwrap();
    }
    log.append_as_leader(&keyed(&[("roll", Some("r"))], None), 0, NOW + 8 * DAY_MS)
        .unwrap();
    flush(&mut log);
    let report = clean(&mut log, NOW).unwrap();
    assert!(report.records_removed >= 50, "{report:?}");
    // Both its records are superseded: the batch stays as its header alone.
    assert!(!contents(&log).contains_key(&first));
    let plan = log
        .read_plan(first, 1 << 20, log.log_end_offset(), true)
        .unwrap()
        .unwrap();
    let kept = split_stored_batches(&plan.execute().unwrap()).unwrap();
    let h = kept[0].header;
    assert_eq!(
        (h.base_offset, h.records_count, h.last_offset_delta),
        (first, 0, 1)
    );
    assert_eq!((h.producer_id, h.base_sequence), (9, 0));
    // After a crash without snapshots the producer's state is rebuilt from that batch: its
    // next sequence is 2, and a gap is refused (an unknown producer would be let through).
    drop(log);
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "snapshot") {
            std::fs::remove_file(p).unwrap();
        }
    }
    std::fs::remove_file(dir.path().join("recovery-point")).unwrap();
    let mut log = open(dir.path(), false);
    assert!(
        log.append_as_leader(&keyed_at(&[("k2", Some("q"))], Some((9, 0, 5)), ts), 0, NOW)
            .is_err(),
        "sequence 5 does not follow 1"
    );
    log.append_as_leader(&keyed_at(&[("k2", Some("q"))], Some((9, 0, 2)), ts), 0, NOW)
        .expect("sequence 2 follows the kept batch");
}

#[test]
fn a_deleted_key_does_not_come_back_when_its_tombstone_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), true);
    // "a" is written as the only (so last) batch of the first segment, then deleted in the
    // next segment; a segment end must not keep "a"'s value once its tombstone is gone.
    log.append_as_leader(&keyed(&[("a", Some("1"))], None), 0, NOW)
        .unwrap();
    log.append_as_leader(&keyed(&[("a", None)], None), 0, NOW + 8 * DAY_MS)
        .unwrap();
    log.append_as_leader(&keyed(&[("b", Some("2"))], None), 0, NOW + 8 * DAY_MS)
        .unwrap();
    log.append_as_leader(&keyed(&[("roll", Some("x"))], None), 0, NOW + 16 * DAY_MS)
        .unwrap();
    flush(&mut log);
    let leo = log.log_end_offset();
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let report = clean(&mut log, wall_ms + 2 * DAY_MS).unwrap();
    assert_eq!(report.tombstones_removed, 1, "{report:?}");
    let after = contents(&log);
    assert!(!after.values().any(|(k, _)| k == "a"), "{after:?}");
    assert_eq!(
        after.get(&2),
        Some(&("b".to_string(), Some("2".to_string())))
    );
    // The first segment still ends where the second begins: reopened after a crash, the log
    // keeps every segment.
    drop(log);
    std::fs::remove_file(dir.path().join("recovery-point")).unwrap();
    let log = open(dir.path(), false);
    assert_eq!((log.log_end_offset(), contents(&log)), (leo, after));
}

#[test]
fn a_small_key_map_cleans_in_several_passes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), true);
    let newest = write_versions(&mut log);
    let before = contents(&log);
    let mut small = config();
    small.compaction.as_mut().unwrap().key_map_bytes_max = 1;
    log.set_config(small);
    let mut passes = 0;
    let mut checkpoints = vec![];
    while let Some(r) = clean(&mut log, NOW) {
        passes += 1;
        checkpoints.push(log.cleaner_checkpoint());
        assert!(r.segments_read >= 1 && passes < 100, "{r:?}");
    }
    assert!(passes >= 5, "{passes} passes: one segment's keys each");
    assert!(
        checkpoints.windows(2).all(|w| w[0] < w[1]),
        "{checkpoints:?}"
    );
    let after = contents(&log);
    check_compacted(&before, &after, &newest, true);
}
