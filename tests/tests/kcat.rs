//! Debian's kcat (librdkafka 2.0.2, an old client) against the broker.

use std::time::Duration;

use e2e::Broker;
use e2e::clients::{kcat, kcat_consume_all};

const T: Duration = Duration::from_secs(90);

fn produce(b: &Broker, topic: &str, extra: &[&str], input: &str) {
    let bootstrap = b.bootstrap();
    let mut args = vec!["-b", &bootstrap, "-P", "-t", topic, "-K", ":"];
    args.extend_from_slice(extra);
    kcat(&args, Some(input.as_bytes()), T);
}

fn consume(b: &Broker, topic: &str, format: &str) -> Vec<String> {
    kcat_consume_all(&b.bootstrap(), topic, format, T)
}

#[test]
fn every_compression_codec_roundtrips() {
    let b = Broker::start();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        let input: String = (0..3000)
            .map(|i| format!("k{}:{codec}-{i}-{}\n", i % 7, "p".repeat(i % 200)))
            .collect();
        produce(
            &b,
            &topic,
            &["-X", &format!("compression.codec={codec}")],
            &input,
        );
        let got = consume(&b, &topic, "%o %k %s\n");
        assert_eq!(got.len(), 3000, "{codec}");
        for (i, line) in got.iter().enumerate() {
            assert_eq!(
                line,
                &format!("{i} k{} {codec}-{i}-{}", i % 7, "p".repeat(i % 200)),
                "{codec}"
            );
        }
    }
}

#[test]
fn acks_modes_and_idempotence_deliver_everything() {
    let b = Broker::start();
    for (name, opts) in [
        ("acks0", vec!["-X", "acks=0"]),
        ("acks1", vec!["-X", "acks=1"]),
        ("acksall", vec!["-X", "acks=all"]),
        ("idempotent", vec!["-X", "enable.idempotence=true"]),
    ] {
        let input: String = (0..1000).map(|i| format!("k:{name}-{i}\n")).collect();
        produce(&b, name, &opts, &input);
        let got = consume(&b, name, "%s\n");
        assert_eq!(
            got,
            (0..1000).map(|i| format!("{name}-{i}")).collect::<Vec<_>>(),
            "{name}"
        );
    }
}

#[test]
fn metadata_lists_brokers_and_topics() {
    let b = Broker::start();
    produce(&b, "meta-topic", &[], "k:v\n");
    let bootstrap = b.bootstrap();
    let out = kcat(&["-b", &bootstrap, "-L", "-J"], None, T);
    let meta: serde_json::Value = serde_json::from_str(&out).expect("kcat -J prints JSON");
    assert_eq!(meta["brokers"][0]["id"], 1);
    assert_eq!(meta["brokers"][0]["name"], b.kafka.to_string());
    let topic = meta["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "meta-topic")
        .unwrap();
    assert_eq!(topic["partitions"][0]["leader"], 1);
}

#[test]
fn consumer_group_reads_every_partition() {
    let b = Broker::start_with("[topics]\npartitions = 3\n");
    let input: String = (0..900).map(|i| format!("{i}:g-{i}\n")).collect();
    produce(&b, "kcat-group", &[], &input);
    let bootstrap = b.bootstrap();
    let out = kcat(
        &[
            "-b",
            &bootstrap,
            "-G",
            "kcat-g",
            "kcat-group",
            "-e",
            "-q",
            "-f",
            "%s\n",
            "-X",
            "auto.offset.reset=earliest",
        ],
        None,
        T,
    );
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = (0..900).map(|i| format!("g-{i}")).collect();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn oversized_messages_are_refused_by_the_broker() {
    let b = Broker::start_with("[topics]\nmax_message_bytes = \"64KiB\"\n");
    let big = format!("k:{}\n", "x".repeat(200_000));
    let bootstrap = b.bootstrap();
    let mut cmd = std::process::Command::new("kcat");
    cmd.args([
        "-b",
        &bootstrap,
        "-P",
        "-t",
        "big",
        "-K",
        ":",
        "-X",
        "message.max.bytes=1000000",
    ]);
    let out = e2e::clients::run(cmd, Some(big.as_bytes()), T);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Message size too large") || stderr.contains("MSG_SIZE_TOO_LARGE"),
        "{stderr}"
    );
    assert!(consume(&b, "big", "%s\n").is_empty());
}
