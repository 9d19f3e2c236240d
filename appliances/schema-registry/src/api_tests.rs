//! The REST API route by route, over an in-memory log: the answers' shapes and codes that
//! Confluent's clients depend on.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde_json::{Value as Json, json};

use crate::api::{Answer, Backend, Registry, Request, Writer};
use crate::error::RegistryError;
use crate::records::{RawRecord, Record};
use crate::store::{Limits, Store};

/// `_schemas` in memory; shared with the server's tests.
pub(crate) struct MemLog {
    store: Arc<RwLock<Store>>,
    records: Mutex<Vec<RawRecord>>,
    pub(crate) writer: Mutex<Writer>,
    pub(crate) reads_here: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Backend for MemLog {
    fn writer(&self) -> Writer {
        self.writer.lock().clone()
    }
    fn reads_here(&self) -> bool {
        self.reads_here.load(std::sync::atomic::Ordering::Relaxed)
    }
    async fn catch_up(&self) -> Result<(), RegistryError> {
        Ok(())
    }
    async fn write(&self, records: Vec<Record>) -> Result<(), RegistryError> {
        for r in records {
            let (k, v) = r.encode();
            self.store
                .write()
                .apply(Record::decode(&k, v.as_deref()).unwrap());
            self.records.lock().push((k, v));
        }
        Ok(())
    }
}

pub(crate) fn registry() -> (Registry, Arc<MemLog>) {
    let store = Arc::new(RwLock::new(Store::new(Limits::default())));
    let log = Arc::new(MemLog {
        store: Arc::clone(&store),
        records: Mutex::new(vec![]),
        writer: Mutex::new(Writer::Local),
        reads_here: true.into(),
    });
    (
        Registry::new(store, Arc::clone(&log) as Arc<dyn Backend>),
        log,
    )
}

async fn call(r: &Registry, method: &str, target: &str, body: Json) -> (u16, Json) {
    let (path, query) = target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)));
    let body = if body.is_null() {
        vec![]
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    match r
        .handle(Request {
            method,
            path,
            query,
            body: &body,
            forwarded: false,
        })
        .await
    {
        Answer::Json(status, json) => (status, json),
        Answer::Forward(url) => panic!("forwarded to {url}"),
    }
}

const V1: &str =
    r#"{"type":"record","name":"Reading","fields":[{"name":"value","type":"double"}]}"#;
const V2: &str = r#"{"type":"record","name":"Reading","fields":[{"name":"value","type":"double"},{"name":"unit","type":"string","default":"C"}]}"#;
const BAD: &str = r#"{"type":"record","name":"Reading","fields":[{"name":"value","type":"double"},{"name":"site","type":"string"}]}"#;

#[tokio::test]
async fn register_look_up_and_evolve() {
    let (r, _) = registry();
    assert_eq!(
        call(
            &r,
            "POST",
            "/subjects/t-value/versions",
            json!({"schema": V1})
        )
        .await,
        (200, json!({"id": 1}))
    );
    assert_eq!(
        call(
            &r,
            "POST",
            "/subjects/t-value/versions",
            json!({"schema": V2})
        )
        .await,
        (200, json!({"id": 2}))
    );
    let (status, body) = call(
        &r,
        "POST",
        "/subjects/t-value/versions",
        json!({"schema": BAD}),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (409, json!(409)),
        "{body}"
    );
    assert_eq!(
        call(&r, "GET", "/subjects", Json::Null).await.1,
        json!(["t-value"])
    );
    assert_eq!(
        call(&r, "GET", "/subjects/t-value/versions", Json::Null)
            .await
            .1,
        json!([1, 2])
    );
    let (_, latest) = call(&r, "GET", "/subjects/t-value/versions/latest", Json::Null).await;
    assert_eq!(
        (latest["version"].clone(), latest["id"].clone()),
        (json!(2), json!(2))
    );
    let (_, raw) = call(&r, "GET", "/subjects/t-value/versions/1/schema", Json::Null).await;
    assert_eq!(raw["name"], "Reading");
    let (_, by_id) = call(&r, "GET", "/schemas/ids/1", Json::Null).await;
    assert_eq!(
        serde_json::from_str::<Json>(by_id["schema"].as_str().unwrap()).unwrap()["name"],
        "Reading"
    );
    assert_eq!(
        call(&r, "GET", "/schemas/ids/2/versions", Json::Null)
            .await
            .1,
        json!([{"subject": "t-value", "version": 2}])
    );
    let (_, found) = call(&r, "POST", "/subjects/t-value", json!({"schema": V1})).await;
    assert_eq!(
        (found["version"].clone(), found["id"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        call(&r, "POST", "/subjects/t-value", json!({"schema": BAD}))
            .await
            .1["error_code"],
        40403
    );
    assert_eq!(
        call(&r, "POST", "/subjects/nobody", json!({"schema": V1}))
            .await
            .1["error_code"],
        40401
    );
}

#[tokio::test]
async fn compatibility_answers_and_explains() {
    let (r, _) = registry();
    call(&r, "POST", "/subjects/s/versions", json!({"schema": V1})).await;
    assert_eq!(
        call(
            &r,
            "POST",
            "/compatibility/subjects/s/versions/latest",
            json!({"schema": V2})
        )
        .await,
        (200, json!({"is_compatible": true}))
    );
    let (status, body) = call(
        &r,
        "POST",
        "/compatibility/subjects/s/versions/1?verbose=true",
        json!({"schema": BAD}),
    )
    .await;
    assert_eq!((status, body["is_compatible"].clone()), (200, json!(false)));
    assert!(
        body["messages"][0]
            .as_str()
            .unwrap()
            .contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{body}"
    );
    assert_eq!(
        call(
            &r,
            "POST",
            "/compatibility/subjects/s/versions/7",
            json!({"schema": V2})
        )
        .await
        .1["error_code"],
        40402
    );
    assert_eq!(
        call(
            &r,
            "POST",
            "/compatibility/subjects/s/versions/x",
            json!({"schema": V2})
        )
        .await
        .1["error_code"],
        42202
    );
}

#[tokio::test]
async fn config_and_mode_per_subject_and_global() {
    let (r, _) = registry();
    assert_eq!(
        call(&r, "GET", "/config", Json::Null).await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        call(
            &r,
            "PUT",
            "/config/s",
            json!({"compatibility": "FULL_TRANSITIVE"})
        )
        .await
        .1,
        json!({"compatibility": "FULL_TRANSITIVE"})
    );
    assert_eq!(
        call(&r, "GET", "/config/s", Json::Null).await.1,
        json!({"compatibilityLevel": "FULL_TRANSITIVE"})
    );
    assert_eq!(
        call(&r, "GET", "/config/other", Json::Null).await.1["error_code"],
        40408
    );
    assert_eq!(
        call(&r, "GET", "/config/other?defaultToGlobal=true", Json::Null)
            .await
            .1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        call(&r, "PUT", "/config", json!({"compatibility": "LOOSE"}))
            .await
            .1["error_code"],
        42203
    );
    assert_eq!(
        call(&r, "DELETE", "/config/s", Json::Null).await.1,
        json!({"compatibilityLevel": "FULL_TRANSITIVE"})
    );
    assert_eq!(
        call(&r, "GET", "/mode", Json::Null).await.1,
        json!({"mode": "READWRITE"})
    );
    assert_eq!(
        call(&r, "PUT", "/mode/s", json!({"mode": "READONLY"}))
            .await
            .1,
        json!({"mode": "READONLY"})
    );
    assert_eq!(
        call(&r, "POST", "/subjects/s/versions", json!({"schema": V1}))
            .await
            .1["error_code"],
        42205
    );
    assert_eq!(
        call(&r, "PUT", "/mode", json!({"mode": "SOMETIMES"}))
            .await
            .1["error_code"],
        42204
    );
}

#[tokio::test]
async fn deletes_and_bad_requests() {
    let (r, log) = registry();
    call(&r, "POST", "/subjects/s/versions", json!({"schema": V1})).await;
    assert_eq!(
        call(
            &r,
            "DELETE",
            "/subjects/s/versions/1?permanent=true",
            Json::Null
        )
        .await
        .1["error_code"],
        40407
    );
    assert_eq!(
        call(&r, "DELETE", "/subjects/s", Json::Null).await.1,
        json!([1])
    );
    assert_eq!(
        call(&r, "GET", "/subjects?deleted=true", Json::Null)
            .await
            .1,
        json!(["s"])
    );
    assert_eq!(call(&r, "GET", "/subjects", Json::Null).await.1, json!([]));
    assert_eq!(
        call(&r, "DELETE", "/subjects/s?permanent=true", Json::Null)
            .await
            .1,
        json!([1])
    );
    assert_eq!(
        call(&r, "GET", "/schemas/ids/1", Json::Null).await.1["error_code"],
        40403
    );
    assert_eq!(
        call(
            &r,
            "POST",
            "/subjects/s/versions",
            json!({"schema": "{nope"})
        )
        .await
        .1["error_code"],
        42201
    );
    let (status, body) = call(
        &r,
        "POST",
        "/subjects/s/versions",
        json!({"schemaType": "JSON", "schema": "{}"}),
    )
    .await;
    assert_eq!((status, body["error_code"].clone()), (422, json!(42201)));
    let raw = b"not json";
    let Answer::Json(status, _) = r
        .handle(Request {
            method: "POST",
            path: "/subjects/s/versions",
            query: None,
            body: raw,
            forwarded: false,
        })
        .await
    else {
        panic!()
    };
    assert_eq!(status, 400);
    assert_eq!(call(&r, "GET", "/nothing/here", Json::Null).await.0, 404);
    assert_eq!(
        call(&r, "GET", "/schemas/types", Json::Null).await.1,
        json!(["AVRO"])
    );
    // A subject with a slash, percent-encoded in the path.
    assert_eq!(
        call(
            &r,
            "POST",
            "/subjects/a%2Fb/versions",
            json!({"schema": V1})
        )
        .await
        .1,
        json!({"id": 2})
    );
    assert_eq!(
        call(&r, "GET", "/subjects", Json::Null).await.1,
        json!(["a/b"])
    );
    // Writes elsewhere are forwarded; reads are answered here.
    *log.writer.lock() = Writer::Remote("http://10.0.0.2:8081".into());
    let body = serde_json::to_vec(&json!({"schema": V2})).unwrap();
    assert!(
        matches!(r.handle(Request { method: "POST", path: "/subjects/x/versions", query: None, body: &body, forwarded: false }).await, Answer::Forward(u) if u == "http://10.0.0.2:8081")
    );
    assert_eq!(
        call(&r, "GET", "/subjects", Json::Null).await.1,
        json!(["a/b"])
    );
    // Without a replica of the log here, reads are forwarded too; with no writer known they
    // answer 50003.
    log.reads_here
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let get = || Request {
        method: "GET",
        path: "/subjects",
        query: None,
        body: &[],
        forwarded: false,
    };
    assert!(matches!(r.handle(get()).await, Answer::Forward(u) if u == "http://10.0.0.2:8081"));
    *log.writer.lock() = Writer::Unknown;
    assert!(matches!(r.handle(get()).await, Answer::Json(_, j) if j["error_code"] == 50003));
}

/// The server spawns `handle` on the runtime: its future must be `Send` (no store guard held
/// across an await).
#[test]
fn handling_is_send() {
    fn send<T: Send>(_: &T) {}
    let (r, _) = registry();
    let fut = r.handle(Request {
        method: "GET",
        path: "/",
        query: None,
        body: &[],
        forwarded: false,
    });
    send(&fut);
}

/// Requests are counted by route template, never by raw path, with the store's size.
#[tokio::test]
async fn requests_are_counted_by_route_template() {
    let mut prom = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(crate::metrics::RegistryMetrics::register(&mut prom));
    let (r, _) = registry();
    let r = r.with_metrics(metrics);
    call(&r, "POST", "/subjects/a/versions", json!({"schema": V1})).await;
    call(&r, "POST", "/subjects/b/versions", json!({"schema": V1})).await;
    call(&r, "GET", "/subjects/zzz/versions/1", Json::Null).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &prom).unwrap();
    assert!(text.contains(r#"schema_registry_requests_total{method="POST",route="/subjects/{subject}/versions",status="200"} 2"#), "{text}");
    assert!(
        text.contains(r#"route="/subjects/{subject}/versions/{version}",status="404"} 1"#),
        "{text}"
    );
    assert!(text.contains("schema_registry_subjects 2"), "{text}");
    assert!(text.contains("schema_registry_schemas 1"), "{text}");
}
