//! Nothing acknowledged is lost: crashes (SIGKILL) under acks=all load, torn writes, clean
//! restarts, and producer retries through dropped connections.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::Duration;

use e2e::Broker;
use e2e::acked::Producer;
use e2e::clients::{kcat, kcat_consume_all, metric, python};
use e2e::proxy::ChaosProxy;

const T: Duration = Duration::from_secs(120);

/// Every record of `topic` as `(partition, offset) -> value`.
fn everything(b: &Broker, topic: &str) -> BTreeMap<(i32, i64), String> {
    e2e::acked::everything(&b.bootstrap(), topic, T)
}

#[test]
fn kill_9_under_acks_all_load_loses_nothing_acknowledged() {
    let mut b = Broker::start_with("[topics]\npartitions = 4\n");
    let dir = tempfile::tempdir().unwrap();
    let acked_file = dir.path().join("acked.txt");
    for round in 0..3 {
        let prefix = format!("r{round}");
        let bootstrap = b.bootstrap();
        let producer = Producer::start(
            &acked_file,
            &[
                "--bootstrap",
                &bootstrap,
                "--topic",
                "crash",
                "--prefix",
                &prefix,
            ],
        );
        let before = producer.acked_count();
        producer.wait_acked(before + 3000, T);
        b.kill9();
        producer.stop(T);
        b.restart();
    }
    let acked = e2e::acked::read_acked(&acked_file);
    assert!(acked.len() >= 9000);
    let stored = everything(&b, "crash");
    e2e::acked::verify(&acked, &stored);
    // Offsets stay dense: recovery never leaves a hole.
    for p in 0..4 {
        let offsets: Vec<i64> = stored
            .keys()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(
            offsets,
            (0..offsets.len() as i64).collect::<Vec<_>>(),
            "partition {p}"
        );
    }
}

#[test]
fn torn_tail_is_cut_and_the_log_continues() {
    let mut b = Broker::start();
    let input: String = (0..1000).map(|i| format!("v-{i}\n")).collect();
    let bootstrap = b.bootstrap();
    kcat(
        &["-b", &bootstrap, "-P", "-t", "torn", "-X", "acks=all"],
        Some(input.as_bytes()),
        T,
    );
    b.kill9();
    // What a crash in the middle of a write leaves: half a batch header and garbage.
    let dir = b.data_dir().join("topics").join("torn-0");
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    f.write_all(&[
        0, 0, 0, 0, 0, 0, 3, 232, 0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef, 2, 7, 7, 7,
    ])
    .unwrap();
    drop(f);
    b.restart();
    assert!(
        b.log().contains("cut unacknowledged data torn by a crash"),
        "{}",
        b.log()
    );
    kcat(&["-b", &bootstrap, "-P", "-t", "torn"], Some(b"after\n"), T);
    let stored = everything(&b, "torn");
    assert_eq!(stored.len(), 1001);
    assert_eq!(stored[&(0, 999)], "v-999");
    assert_eq!(stored[&(0, 1000)], "after");
}

#[test]
fn clean_restart_keeps_data_and_committed_offsets() {
    let mut b = Broker::start();
    let input: String = (0..100).map(|i| format!("m-{i}\n")).collect();
    let bootstrap = b.bootstrap();
    kcat(
        &["-b", &bootstrap, "-P", "-t", "restart", "-X", "acks=all"],
        Some(input.as_bytes()),
        T,
    );
    // Consume `count` records in group g1, committing; returns what the script saw.
    let commit = |count: &str| {
        python(
            "ck_commit.py",
            &[
                "--bootstrap",
                &bootstrap,
                "--topic",
                "restart",
                "--group",
                "g1",
                "--count",
                count,
            ],
            T,
        )
    };
    let first = commit("40");
    assert_eq!(first["committed"], serde_json::json!([40]));
    assert!(b.stop().success());
    assert!(b.data_dir().join(".clean_shutdown").exists());
    b.restart();
    assert!(b.log().contains("\"clean_shutdown\":true"), "{}", b.log());
    let second = commit("60");
    let values = second["values"].as_array().unwrap();
    assert_eq!(
        values.first().unwrap(),
        "m-40",
        "the group resumes at its committed offset"
    );
    assert_eq!(values.len(), 60);
    assert_eq!(second["committed"], serde_json::json!([100]));
}

#[test]
fn idempotent_retries_of_lost_responses_create_no_duplicates() {
    let proxy = ChaosProxy::start();
    let b = Broker::start_with(&format!(
        "[kafka]\nadvertised = \"{}\"\n[topics]\npartitions = 3\n",
        proxy.addr
    ));
    proxy.set_target(b.kafka);
    // The broker appends every 5th Produce request but its response never arrives.
    proxy.lose_produce_responses(5);
    let report = python(
        "ck_produce.py",
        &[
            "--bootstrap",
            &proxy.addr.to_string(),
            "--topic",
            "idem",
            "--count",
            "20000",
            "--rate",
            "5000",
            "--idempotence",
            "--fast-reconnect",
        ],
        T,
    );
    assert_eq!(report["acked"], 20000, "{report}");
    assert_eq!(report["error_count"], 0, "{report}");
    assert!(
        proxy.lost_responses() >= 5,
        "responses were lost ({})",
        proxy.lost_responses()
    );
    let retried = metric(&b.metrics_url(), "broker_produce_duplicates_total").unwrap_or(0.0);
    assert!(
        retried >= 1.0,
        "retried batches reached the broker and were recognised as duplicates"
    );
    let stored = everything(&b, "idem");
    let unique: HashSet<&String> = stored.values().collect();
    assert_eq!(stored.len(), 20000, "every record exactly once");
    assert_eq!(unique.len(), 20000);
}

/// One acks=all Produce of a record holding `value`; the partition's error code.
fn produce_one(b: &Broker, topic: &'static str, value: bytes::Bytes) -> i16 {
    let batch = kafka_client::encode_batch(&[(None, Some(value))], 1_800_000_000_000, None);
    b.produce_raw(topic, batch, -1)
}

#[test]
fn a_full_disk_takes_the_partition_offline_and_loses_nothing_acknowledged() {
    const KAFKA_STORAGE_ERROR: i16 = 56;
    let Some(mut b) = Broker::start_on_small_disk(16, "") else {
        return;
    };
    kcat(
        &["-b", &b.bootstrap(), "-P", "-t", "full", "-p", "0"],
        Some(b"first\n"),
        T,
    );
    let value = |i: usize| -> bytes::Bytes {
        let mut v = format!("{i:06} ").into_bytes();
        v.resize(256 << 10, b'a' + (i % 26) as u8);
        v.into()
    };
    // 16 MiB cannot hold 100 records of 256 KiB: the disk fills on the way.
    let mut acknowledged = 0;
    let code = loop {
        assert!(acknowledged < 100, "the disk never filled");
        match produce_one(&b, "full", value(acknowledged)) {
            0 => acknowledged += 1,
            code => break code,
        }
    };
    assert_eq!(code, KAFKA_STORAGE_ERROR, "after {acknowledged} records");
    assert!(acknowledged > 10, "only {acknowledged} records fitted");
    assert_eq!(
        metric(&b.metrics_url(), "broker_offline_partitions"),
        Some(1.0),
        "the partition is reported offline as soon as a write fails"
    );
    assert_eq!(produce_one(&b, "full", value(0)), KAFKA_STORAGE_ERROR);

    // The operator grows the disk and restarts: every acknowledged record is there, whole,
    // and the partition takes writes again.
    b.kill9();
    b.small_disk.as_ref().unwrap().resize(64);
    b.restart();
    let records = kcat_consume_all(&b.bootstrap(), "full", "%s\n", T);
    assert_eq!(records.len(), 1 + acknowledged, "records after the restart");
    assert_eq!(records[0], "first");
    for (i, r) in records[1..].iter().enumerate() {
        assert!(r.as_bytes() == &value(i)[..], "record {i} damaged");
    }
    assert_eq!(produce_one(&b, "full", value(acknowledged)), 0);
    assert_eq!(
        metric(&b.metrics_url(), "broker_offline_partitions"),
        Some(0.0)
    );
}
