//! The broker's Schema Registry with confluent-kafka's own client and Avro serdes (PyPI):
//! schemas registered by the serializer, records read back by the deserializer, an
//! incompatible change refused with 409, a compatible one read by an old reader, and every id
//! kept across a restart (the state is the `_schemas` topic).

use std::time::Duration;

use e2e::clients::python;
use e2e::hub::free_addr;
use e2e::{Broker, wait_until};

const T: Duration = Duration::from_secs(120);

fn get(url: &str) -> Option<serde_json::Value> {
    let out = std::process::Command::new("curl")
        .args(["-fsS", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

#[test]
fn confluent_kafka_avro_serdes_register_evolve_and_are_refused_incompatible_changes() {
    let registry = free_addr();
    let mut b = Broker::start_with(&format!("[schema_registry]\nlisten = \"{registry}\"\n"));
    let url = format!("http://{registry}");
    wait_until("the registry answers", T, || {
        get(&format!("{url}/subjects"))
    });
    let r = python(
        "ck_avro.py",
        &[
            "--bootstrap",
            &b.bootstrap(),
            "--registry",
            &url,
            "--topic",
            "readings",
        ],
        T,
    );
    assert_eq!(r["v1"]["version"], 1, "{r}");
    assert_eq!(r["v2"]["version"], 2, "{r}");
    assert_eq!(r["refused"]["status"], 409, "{r}");
    let old = r["read_old"].as_array().unwrap();
    let new = r["read_new"].as_array().unwrap();
    assert_eq!(old.len(), 10, "{r}");
    assert!(
        old.iter().all(|v| v.get("unit").is_none()),
        "the old reader drops the new field: {r}"
    );
    assert_eq!(
        new[0]["unit"], "C",
        "V1 records read with V2 get the default: {r}"
    );
    assert_eq!(new[9]["unit"], "K", "{r}");

    let metric = |name: &str| e2e::clients::metric(&b.metrics_url(), name);
    assert_eq!(metric("schema_registry_subjects"), Some(1.0));
    assert_eq!(metric("schema_registry_schemas"), Some(2.0));

    // A restart rebuilds the registry from `_schemas`: the same ids and versions.
    b.stop();
    b.restart();
    wait_until("the registry answers again", T, || {
        get(&format!("{url}/subjects/readings-value/versions"))
            .filter(|v| v.as_array().is_some_and(|a| a.len() == 2))
    });
    let latest = get(&format!("{url}/subjects/readings-value/versions/latest")).unwrap();
    assert_eq!(latest["id"], r["v2"]["id"], "{latest}");
    let v1 = get(&format!("{url}/schemas/ids/{}", r["v1"]["id"])).unwrap();
    assert!(v1["schema"].as_str().unwrap().contains("Reading"), "{v1}");
}
