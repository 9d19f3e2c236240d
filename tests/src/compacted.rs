//! Records of compacted topics as `python/ck_compacted.py` prints them, and what compaction
//! must keep of them.

use std::collections::BTreeMap;

/// `offset -> (key, value)`; a `None` value is a tombstone.
pub type Records = BTreeMap<i64, (String, Option<String>)>;

/// Parse `[[offset, key, value or null], ...]`.
pub fn keyed_records(v: &serde_json::Value) -> Records {
    v.as_array()
        .expect("a list of records")
        .iter()
        .map(|r| {
            let key = r[1].as_str().expect("keyed").to_string();
            (
                r[0].as_i64().unwrap(),
                (key, r[2].as_str().map(str::to_string)),
            )
        })
        .collect()
}

/// The newest record of every key: `key -> (offset, value)`.
pub fn newest(records: &Records) -> BTreeMap<String, (i64, Option<String>)> {
    let mut out = BTreeMap::new();
    for (o, (k, v)) in records {
        out.insert(k.clone(), (*o, v.clone()));
    }
    out
}

/// `stored` is what compaction may leave of `acked`: a subset at the same offsets holding
/// the newest record of every key (tombstones included).
pub fn check_compacted(acked: &Records, stored: &Records) {
    for (o, rec) in stored {
        assert_eq!(
            acked.get(o),
            Some(rec),
            "offset {o} does not hold what was written there"
        );
    }
    for (k, (o, v)) in newest(acked) {
        assert_eq!(stored.get(&o), Some(&(k.clone(), v)), "{k}'s newest record");
    }
}

const T: std::time::Duration = std::time::Duration::from_secs(120);

/// Create `topic`, one partition at replication factor `rf`, compacted, with 16 KiB segments
/// and a dirty ratio of 1 % (so that the cleaner gets to it at once).
pub fn create(bootstrap: &str, topic: &str, rf: u32) {
    let rf = rf.to_string();
    crate::clients::python(
        "ck_compacted.py",
        &[
            "create",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--rf",
            &rf,
            "--config",
            "cleanup.policy=compact",
            "--config",
            "segment.bytes=16384",
            "--config",
            "min.cleanable.dirty.ratio=0.01",
        ],
        T,
    );
}

/// `rounds` rounds over `keys` keys, then tombstones for the first `tombstones`, then one
/// keyless record: `ck_compacted.py produce`'s report.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    keys: u32,
    rounds: u32,
    tombstones: u32,
) -> serde_json::Value {
    let (keys, rounds, tombstones) = (keys.to_string(), rounds.to_string(), tombstones.to_string());
    crate::clients::python(
        "ck_compacted.py",
        &[
            "produce",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--keys",
            &keys,
            "--rounds",
            &rounds,
            "--tombstones",
            &tombstones,
        ],
        T,
    )
}

/// The records of `topic` from `from` (at most `max`; 0: to the end).
pub fn read(bootstrap: &str, topic: &str, from: i64, max: usize) -> Records {
    let (from, max) = (from.to_string(), max.to_string());
    let out = crate::clients::python(
        "ck_compacted.py",
        &[
            "read",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--from",
            &from,
            "--max",
            &max,
        ],
        T,
    );
    keyed_records(&out["records"])
}

/// Read `topic` until every key's newest acknowledged record is there (a leader elected
/// a moment ago answers only up to its high watermark, which catches up with its followers
/// shortly), or `timeout` passes; what was read last. [`check_compacted`] then says what
/// is missing, if anything.
pub fn read_settled(
    bootstrap: &str,
    topic: &str,
    acked: &Records,
    timeout: std::time::Duration,
) -> Records {
    let deadline = std::time::Instant::now() + timeout;
    let newest = newest(acked);
    loop {
        let all = read(bootstrap, topic, 0, 0);
        let complete = newest
            .iter()
            .all(|(k, (o, v))| all.get(o) == Some(&(k.clone(), v.clone())));
        if complete || std::time::Instant::now() >= deadline {
            return all;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
