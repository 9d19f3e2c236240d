//! The broker's Schema Registry with confluent-kafka's own client and Avro serdes (PyPI):
//! schemas registered by the serializer, records read back by the deserializer, an
//! incompatible change refused with 409, a compatible one read by an old reader, and every id
//! kept across a restart (the state is the `_schemas` topic).

use std::time::Duration;

use e2e::clients::{http_json, python};
use e2e::hub::free_addr;
use e2e::{Broker, wait_until};

const T: Duration = Duration::from_secs(120);

/// A successful answer's JSON.
fn get(url: &str) -> Option<serde_json::Value> {
    let (code, v) = http_json("GET", url, None);
    ((200..400).contains(&code) && !v.is_null()).then_some(v)
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

/// `method` with a JSON body; the answer's JSON (which it must be).
fn send(method: &str, url: &str, body: &str) -> serde_json::Value {
    let (code, v) = http_json(method, url, Some(body));
    assert!(!v.is_null(), "{method} {url}: {code} and no JSON answer");
    v
}

fn register(url: &str, subject: &str, record: &str) -> i64 {
    let schema =
        format!(r#"{{"type":"record","name":"{record}","fields":[{{"name":"f","type":"long"}}]}}"#);
    let body = serde_json::json!({ "schema": schema }).to_string();
    let r = send("POST", &format!("{url}/subjects/{subject}/versions"), &body);
    r["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("registering {subject}: {r}"))
}

/// The `_schemas` topic is compacted (small segments here, so that the cleaner gets to it):
/// superseded records go, every id still resolves after a restart, and the id of a schema
/// deleted for good is never handed out again.
#[test]
fn ids_survive_compaction_of_the_schemas_topic_and_are_never_reused() {
    let registry = free_addr();
    let mut b = Broker::start_with(&format!(
        "[schema_registry]\nlisten = \"{registry}\"\nschema_bytes_max = 4096\n\
         [topics]\nsegment_bytes = 16384\ncleaner_check_interval = \"200ms\"\n"
    ));
    let url = format!("http://{registry}");
    wait_until("the registry answers", T, || {
        get(&format!("{url}/subjects"))
    });
    // Each round supersedes the global compatibility record and adds a subject.
    let mut ids = Vec::new();
    for i in 0..120 {
        let level = if i % 2 == 0 { "FULL" } else { "BACKWARD" };
        let body = format!(r#"{{"compatibility":"{level}"}}"#);
        send("PUT", &format!("{url}/config"), &body);
        ids.push(register(&url, &format!("s{i}"), &format!("R{i}")));
    }
    // The superseded compatibility records go (the newest of every key stays).
    let removed =
        || e2e::clients::metric(&b.metrics_url(), "broker_log_cleaner_records_removed_total");
    wait_until("compaction of _schemas", T, || {
        removed().filter(|r| *r >= 50.0)
    });
    // The newest schema is deleted for good: its id must not come back.
    let last = *ids.last().unwrap();
    send("DELETE", &format!("{url}/subjects/s119"), "");
    send("DELETE", &format!("{url}/subjects/s119?permanent=true"), "");
    b.stop();
    b.restart();
    // Ready means the registry has read `_schemas` back: every id resolves at once.
    let ready = b.metrics_url().replace("/metrics", "/ready");
    wait_until("the broker is ready", T, || {
        (http_json("GET", &ready, None).0 == 200).then_some(())
    });
    for (i, id) in ids.iter().enumerate().take(119) {
        let s = get(&format!("{url}/schemas/ids/{id}")).unwrap_or_else(|| panic!("id {id} lost"));
        assert!(
            s["schema"].as_str().unwrap().contains(&format!("\"R{i}\"")),
            "{s}"
        );
    }
    assert_eq!(
        get(&format!("{url}/config")).unwrap()["compatibilityLevel"],
        "BACKWARD"
    );
    let fresh = register(&url, "after", "Fresh");
    assert!(
        fresh > last,
        "id {fresh} reused (the deleted schema had {last})"
    );
    // A schema over the configured limit (schema_bytes_max = 4096) is refused as invalid.
    let fields: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"name":"field_number_{i}","type":"long"}}"#))
        .collect();
    let huge = format!(
        r#"{{"type":"record","name":"Huge","fields":[{}]}}"#,
        fields.join(",")
    );
    let body = serde_json::json!({ "schema": huge }).to_string();
    let r = send("POST", &format!("{url}/subjects/huge/versions"), &body);
    assert_eq!(r["error_code"], 42201, "{r}");
}

/// The npm client `@kafkajs/confluent-schema-registry`, with kafkajs carrying the records
/// (`tests/node`, installed by scripts/test with `npm ci`).
#[test]
fn the_npm_client_registers_encodes_and_decodes_through_kafkajs() {
    let registry = free_addr();
    let b = Broker::start_with(&format!("[schema_registry]\nlisten = \"{registry}\"\n"));
    let url = format!("http://{registry}");
    wait_until("the registry answers", T, || {
        get(&format!("{url}/subjects"))
    });
    let bootstrap = b.bootstrap();
    let args = [
        "--registry",
        &url,
        "--bootstrap",
        &bootstrap,
        "--topic",
        "node-readings",
    ];
    let r = e2e::clients::node("sr_client.js", &args, T);
    assert_eq!(r["again"], r["id"], "the same schema keeps its id: {r}");
    assert_eq!(
        r["decoded"],
        serde_json::json!({"site": "A", "value": 1.5}),
        "{r}"
    );
    assert_eq!(r["refused"], 409, "{r}");
    assert_eq!(r["latest"], r["v2"], "{r}");
    assert_ne!(r["v2"], r["id"], "{r}");
    assert_eq!(r["decoded_after_evolution"], r["decoded"], "{r}");
}
