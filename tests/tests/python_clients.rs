//! confluent-kafka and kafka-python (PyPI, default settings) against the broker.

use std::time::Duration;

use e2e::Broker;
use e2e::clients::python;

const T: Duration = Duration::from_secs(180);

fn check_roundtrip(r: &serde_json::Value, what: &str) {
    assert_eq!(r["acked"], r["produced"], "{what}: {r}");
    assert_eq!(r["consumed"], r["produced"], "{what}: {r}");
    assert_eq!(r["positions_match"], true, "{what}: {r}");
    assert_eq!(r["in_order"], true, "{what}: {r}");
}

#[test]
fn confluent_kafka_every_codec() {
    let b = Broker::start();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("ck-{codec}");
        let r = python(
            "ck_roundtrip.py",
            &[
                "--bootstrap",
                &b.bootstrap(),
                "--topic",
                &topic,
                "--codec",
                codec,
            ],
            T,
        );
        check_roundtrip(&r, codec);
        assert_eq!(r["headers_ok"], true, "{r}");
    }
}

#[test]
fn confluent_kafka_idempotent_and_acks_1() {
    let b = Broker::start();
    let r = python(
        "ck_roundtrip.py",
        &[
            "--bootstrap",
            &b.bootstrap(),
            "--topic",
            "ck-idem",
            "--idempotence",
        ],
        T,
    );
    check_roundtrip(&r, "idempotent");
    let r = python(
        "ck_roundtrip.py",
        &[
            "--bootstrap",
            &b.bootstrap(),
            "--topic",
            "ck-acks1",
            "--acks",
            "1",
        ],
        T,
    );
    check_roundtrip(&r, "acks=1");
}

#[test]
fn kafka_python_every_codec() {
    let b = Broker::start();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kp-{codec}");
        let r = python(
            "kp_roundtrip.py",
            &[
                "--bootstrap",
                &b.bootstrap(),
                "--topic",
                &topic,
                "--codec",
                codec,
            ],
            T,
        );
        check_roundtrip(&r, codec);
    }
    let r = python(
        "kp_roundtrip.py",
        &["--bootstrap", &b.bootstrap(), "--topic", "kp-plain"],
        T,
    );
    check_roundtrip(&r, "uncompressed");
}

/// Two members, one leaves: every record is consumed once, the rebalance takes seconds (the
/// initial rebalance delay, not the rebalance timeout), a later member resumes from commits.
fn check_group(r: &serde_json::Value, what: &str) {
    assert_eq!(r["consumed_unique"], 1200, "{what}: {r}");
    assert_eq!(r["duplicates"], 0, "{what}: {r}");
    let first = r["first_assignment_s"].as_f64().unwrap();
    assert!(
        (2.5..15.0).contains(&first),
        "{what}: first assignment after {first}s: {r}"
    );
    assert!(r["rebalance_s"].as_f64().unwrap() < 15.0, "{what}: {r}");
}

#[test]
fn confluent_kafka_groups_with_each_assignor() {
    let b = Broker::start();
    for assignor in ["range", "roundrobin", "cooperative-sticky"] {
        let topic = format!("ckg-{assignor}");
        let r = python(
            "ck_group.py",
            &[
                "--bootstrap",
                &b.bootstrap(),
                "--topic",
                &topic,
                "--assignor",
                assignor,
            ],
            T,
        );
        check_group(&r, assignor);
        assert_eq!(r["late_new"], 10, "{assignor}: {r}");
        assert_eq!(r["late_old"], 0, "{assignor}: {r}");
        let split = &r["split"];
        assert_eq!(
            split["a"].as_array().unwrap().len() + split["b"].as_array().unwrap().len(),
            6,
            "{r}"
        );
    }
}

#[test]
fn kafka_python_groups_with_each_assignor() {
    let b = Broker::start();
    for assignor in ["range", "roundrobin", "sticky"] {
        let topic = format!("kpg-{assignor}");
        let r = python(
            "kp_group.py",
            &[
                "--bootstrap",
                &b.bootstrap(),
                "--topic",
                &topic,
                "--assignor",
                assignor,
            ],
            T,
        );
        check_group(&r, assignor);
    }
}

#[test]
fn static_member_restarts_without_a_rebalance() {
    let b = Broker::start();
    let r = python(
        "ck_static.py",
        &["--bootstrap", &b.bootstrap(), "--topic", "static"],
        T,
    );
    assert_eq!(r["a_after"], r["a_before"], "{r}");
    assert_eq!(r["b_after"], r["b_before"], "{r}");
    assert_eq!(r["b_revocations"], 0, "{r}");
}

#[test]
fn confluent_kafka_admin_client() {
    let b = Broker::start();
    let r = python(
        "ck_admin.py",
        &["--bootstrap", &b.bootstrap(), "--topic", "ck-admin"],
        T,
    );
    let expect = serde_json::json!({
        "duplicate_create": "TOPIC_ALREADY_EXISTS", "bad_config": "INVALID_CONFIG",
        "retention_ms": "3600000", "retention_source": 1, "segment_bytes_default": "1073741824",
        "retention_ms_after": "7200000", "max_message_bytes_after": "1048588", "partitions": 4,
        "offset_for_time": 51, "earliest": 0, "latest": 100, "max_timestamp_offset": 99,
        "low_watermark": 30, "earliest_after_delete": 30, "group_listed": true, "group_state": "EMPTY",
        "committed": [31], "group_deleted": true, "cluster_nodes": 1, "cluster_id_set": true, "topic_deleted": true,
    });
    assert_eq!(r, expect);
}

#[test]
fn kafka_python_admin_client() {
    let b = Broker::start();
    let r = python(
        "kp_admin.py",
        &["--bootstrap", &b.bootstrap(), "--topic", "kp-admin"],
        T,
    );
    let expect = serde_json::json!({
        "partitions": 3, "retention_ms": "600000", "retention_ms_after": "900000",
        "broker_num_partitions_read_only": true, "low_watermark": 5, "controller_id": 1, "topic_deleted": true,
    });
    assert_eq!(r, expect);
}
