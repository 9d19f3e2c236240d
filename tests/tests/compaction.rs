//! Log compaction in the broker (`cleanup.policy=compact`), with confluent-kafka: the newest
//! record of every key survives at its original offset while consumers read on, records
//! without a key are refused as Kafka refuses them, and kill -9 while the cleaner runs loses
//! no acknowledged newest record.

use std::time::Duration;

use e2e::Broker;
use e2e::acked::{Producer, read_acked};
use e2e::clients::metric;
use e2e::compacted::{Records, check_compacted, keyed_records, newest};

const T: Duration = Duration::from_secs(120);

fn create_compacted(b: &Broker, topic: &str) {
    e2e::compacted::create(&b.bootstrap(), topic, 1);
}

fn read(b: &Broker, topic: &str, from: i64, max: usize) -> Records {
    e2e::compacted::read(&b.bootstrap(), topic, from, max)
}

fn passes(b: &Broker) -> f64 {
    metric(&b.metrics_url(), "broker_log_cleaner_passes_total").unwrap_or(0.0)
}

/// Every file under `dir` with its size.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(format!("{} {len}", p.display()));
        }
    }
    out
}

/// Wait until the cleaner has swapped in at least `n` passes; on a timeout, say what the
/// broker's log tells about compaction.
fn wait_passes(b: &Broker, n: f64) {
    let deadline = std::time::Instant::now() + T;
    while passes(b) < n {
        if std::time::Instant::now() > deadline {
            let log = b.log();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("compact")).collect();
            let files = walk(&b.data_dir().join("topics"));
            panic!(
                "fewer than {n} compaction passes within {T:?}; the broker said:\n{}\nits files: {files:#?}",
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_compacted_topic_keeps_the_newest_record_per_key_at_its_offset_while_consumers_read() {
    let mut b = Broker::start_with("[topics]\ncleaner_check_interval = \"200ms\"\n");
    create_compacted(&b, "changelog");
    let bootstrap = b.bootstrap();
    let out = e2e::compacted::produce(&bootstrap, "changelog", 50, 20, 5);
    assert_eq!(out["errors"], serde_json::json!([]), "{out}");
    // Kafka's answer to a record without a key on a compacted topic: INVALID_RECORD, naming
    // each keyless record by its index.
    assert_eq!(out["keyless"], "INVALID_RECORD", "{out}");
    let key = |k: &str| Some(bytes::Bytes::from(k.to_string()));
    let value = Some(bytes::Bytes::from_static(b"v"));
    let batch = kafka_client::encode_batch(
        &[
            (key("a"), value.clone()),
            (None, value.clone()),
            (key("b"), value.clone()),
            (None, value),
        ],
        0,
        None,
    );
    let answer = b.produce_raw_answer("changelog", 0, batch, -1).unwrap();
    assert_eq!(answer.error_code, 87, "{answer:?}");
    let indexes: Vec<i32> = answer.record_errors.iter().map(|e| e.batch_index).collect();
    assert_eq!(indexes, vec![1, 3], "{answer:?}");
    let acked = keyed_records(&out["acked"]);
    assert_eq!(acked.len(), 50 * 20 + 5);

    // A consumer starts reading, the cleaner runs, the consumer goes on where it was.
    let first = read(&b, "changelog", 0, 200);
    wait_passes(&b, 1.0);
    let next = first.keys().next_back().map_or(0, |o| o + 1);
    let rest = read(&b, "changelog", next, 0);
    let seen: Records = first.into_iter().chain(rest).collect();
    check_compacted(&acked, &seen);

    // Read from the start after compaction: only a subset remains, at the same offsets, with
    // every key's newest record (the five deletions still there as tombstones: consumers
    // must see them for delete.retention.ms).
    let check = |b: &Broker| {
        let all = read(b, "changelog", 0, 0);
        check_compacted(&acked, &all);
        all
    };
    // The cleaner gets to every closed segment within a few passes: most records go.
    let all = e2e::wait_until("compaction of most records", T, || {
        let all = check(&b);
        (all.len() < acked.len() / 2).then_some(all)
    });
    assert_eq!(all.values().filter(|(_, v)| v.is_none()).count(), 5);
    let removed = metric(&b.metrics_url(), "broker_log_cleaner_records_removed_total").unwrap();
    assert!(removed >= (acked.len() - all.len()) as f64, "{removed}");

    // The compacted log survives a restart and a crash as it is.
    b.stop();
    b.restart();
    assert_eq!(check(&b), all);
    b.kill9();
    b.restart();
    assert_eq!(check(&b), all);
}

/// confluent-kafka writing keyed values `<prefix>-<i>` (key `i % 64`) to `churn`, 2000/s,
/// with idempotence, recording every acknowledgement in `acked_file`.
fn churn(b: &Broker, acked_file: &std::path::Path, prefix: &str) -> Producer {
    let bootstrap = b.bootstrap();
    Producer::start(
        acked_file,
        &[
            "--bootstrap",
            &bootstrap,
            "--topic",
            "churn",
            "--idempotence",
            "--prefix",
            prefix,
            "--rate",
            "2000",
        ],
    )
}

#[test]
fn kill_9_while_the_cleaner_runs_loses_no_acknowledged_newest_record() {
    let mut b = Broker::start_with("[topics]\ncleaner_check_interval = \"50ms\"\n");
    create_compacted(&b, "churn");
    let dir = tempfile::tempdir().unwrap();
    let acked_file = dir.path().join("acked.txt");
    for round in 0..3 {
        let prefix = format!("r{round}");
        let producer = churn(&b, &acked_file, &prefix);
        let before = passes(&b);
        // Killed while the producer writes and the cleaner swaps segments, both steadily.
        wait_passes(&b, before + 3.0);
        b.kill9();
        producer.stop(T);
        b.restart();
    }
    // ck_produce.py keys value `<prefix>-<i>` with `i % 64`. A record acknowledged without an
    // offset (librdkafka's implicit acknowledgement) leaves its key's newest offset unknown:
    // such keys are only checked for consistency.
    let mut acked = Records::new();
    let mut unknown = std::collections::BTreeSet::new();
    for a in read_acked(&acked_file) {
        let i: u64 = a.value.rsplit_once('-').unwrap().1.parse().unwrap();
        let key = (i % 64).to_string();
        match a.offset {
            Some(o) => {
                acked.insert(o, (key, Some(a.value)));
            }
            None => {
                unknown.insert(key);
            }
        }
    }
    assert!(acked.len() > 1000, "{} acknowledged", acked.len());
    let stored = read(&b, "churn", 0, 0);
    for (k, (o, v)) in newest(&acked)
        .into_iter()
        .filter(|(k, _)| !unknown.contains(k))
    {
        assert_eq!(
            stored.get(&o),
            Some(&(k.clone(), v)),
            "key {k}: its newest acknowledged record"
        );
    }
    for (o, rec) in &stored {
        if let Some(a) = acked.get(o) {
            assert_eq!(a, rec, "offset {o}");
        }
    }
    assert!(stored.len() < acked.len(), "compaction removed nothing");
    // The cleaner goes on after the crashes (no swap left half done).
    let before = passes(&b);
    let producer = churn(&b, &acked_file, "last");
    wait_passes(&b, before + 1.0);
    producer.stop(T);
}
