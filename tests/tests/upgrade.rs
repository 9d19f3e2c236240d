//! A one-node broker's data directory written by the version before the metadata quorum
//! (`tests/fixtures/one-node-data-dir-v0.1.tar.gz`: topics `orders` (100 records) and
//! `telemetry` (30, `retention.ms` overridden), a topic created and deleted, group
//! `legacy-group` having committed 60 of the `orders` records, idempotent producers that
//! reserved producer ids up to 1000; stopped cleanly) is imported on the first start: every
//! topic, record, override and committed offset is there, and producer ids are never reused.

use std::path::Path;
use std::time::Duration;

use e2e::Broker;
use e2e::clients::{kcat, kcat_consume_all};

const T: Duration = Duration::from_secs(60);

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/one-node-data-dir-v0.1.tar.gz")
}

/// The producer id InitProducerId hands out now.
fn new_producer_id(broker: &Broker) -> i64 {
    use kafka_protocol::messages::InitProducerIdRequest;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = kafka_client::Connection::connect(&broker.bootstrap(), "e2e-upgrade")
            .await
            .unwrap();
        let r = c
            .request(
                InitProducerIdRequest::default().with_transaction_timeout_ms(60_000),
                4,
            )
            .await
            .unwrap();
        assert_eq!(r.error_code, 0);
        r.producer_id.0
    })
}

#[test]
fn a_one_node_data_directory_from_before_the_quorum_is_imported_whole() {
    // The fixture's records are older than `telemetry`'s 1-day retention: the first
    // retention pass (one `retention_check_interval` after each start) would remove them.
    // What is checked here is the import, so that pass comes after the test.
    let mut broker =
        Broker::start_from_archive(&fixture(), "[topics]\nretention_check_interval = \"1h\"\n");
    let listing = kcat(&["-b", &broker.bootstrap(), "-L"], None, T);
    assert!(
        listing.contains("topic \"orders\" with 2 partitions"),
        "{listing}"
    );
    assert!(
        listing.contains("topic \"telemetry\" with 2 partitions"),
        "{listing}"
    );
    assert!(!listing.contains("deleted-later"), "{listing}");

    let check = |broker: &Broker| {
        let orders = kcat_consume_all(&broker.bootstrap(), "orders", "%s\\n", T);
        assert_eq!(orders.len(), 100, "{orders:?}");
        let telemetry = kcat_consume_all(&broker.bootstrap(), "telemetry", "%k=%s\\n", T);
        assert_eq!(telemetry.len(), 30);
        assert!(telemetry.iter().all(|l| l.starts_with("k=telemetry-")));
    };
    check(&broker);
    // The group resumes where it committed: 40 records are left.
    let rest = kcat(
        &[
            "-b",
            &broker.bootstrap(),
            "-G",
            "legacy-group",
            "orders",
            "-e",
            "-q",
            "-X",
            "auto.offset.reset=earliest",
        ],
        None,
        T,
    );
    assert_eq!(rest.lines().count(), 40, "{rest}");
    let configs = e2e::clients::python(
        "kp_describe_config.py",
        &[
            "--bootstrap",
            &broker.bootstrap(),
            "--topic",
            "telemetry",
            "--key",
            "retention.ms",
        ],
        T,
    );
    assert_eq!(configs["value"], "86400000");
    // Every id the old broker reserved stays behind.
    assert!(new_producer_id(&broker) >= 1000);

    let data = broker.data_dir();
    assert!(data.join("internal.imported").exists());
    assert!(!data.join("internal").exists() && !data.join("producer-ids").exists());
    // Restarts (clean and crash) find everything in its new place.
    broker.stop();
    broker.restart();
    check(&broker);
    broker.kill9();
    broker.restart();
    check(&broker);
    assert!(new_producer_id(&broker) >= 1000);
}
