//! Arbitrary bytes as an HTTP request to the Schema Registry's REST API, as its listener hands
//! them over: a method, a raw (percent-encoded) path with a query, and a body, answered by
//! `Registry::handle` over an in-memory `_schemas` log that already holds a few schemas. Every
//! answer must be a status with a JSON body (Confluent's error shape for errors), never a
//! panic or a hang; whatever a request writes must decode and apply again.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use parking_lot::RwLock;
use schema_registry::api::{Answer, Backend, Registry, Request, Writer};
use schema_registry::error::RegistryError;
use schema_registry::records::Record;
use schema_registry::store::{Limits, Store};

struct MemLog(Arc<RwLock<Store>>);

#[async_trait::async_trait]
impl Backend for MemLog {
    fn writer(&self) -> Writer {
        Writer::Local
    }
    async fn catch_up(&self) -> Result<(), RegistryError> {
        Ok(())
    }
    async fn write(&self, records: Vec<Record>) -> Result<(), RegistryError> {
        for r in records {
            let (k, v) = r.encode();
            let decoded = Record::decode(&k, v.as_deref()).expect("written records decode");
            self.0.write().apply(decoded);
        }
        Ok(())
    }
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "HEAD"];
const SEED: &str = r#"{"schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"int\"}]}"}"#;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    // "<path>[?query]\n<body>"
    let (target, body) = text.split_once('\n').unwrap_or((&text, ""));
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let store = Arc::new(RwLock::new(Store::new(Limits { schema_bytes_max: 64 << 10, ..Limits::default() })));
    let registry = Registry::new(Arc::clone(&store), Arc::new(MemLog(store)));
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        for subject in ["s", "t"] {
            let seed = Request { method: "POST", path: &format!("/subjects/{subject}/versions"), query: None, body: SEED.as_bytes(), forwarded: false };
            assert!(matches!(registry.handle(seed).await, Answer::Json(200, _)));
        }
        let method = METHODS[m as usize % METHODS.len()];
        // What the listener's gate sees of the request first.
        let segs = schema_registry::gate::segments(path);
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let _ = schema_registry::gate::Action::of(method, &segs);
        let req = Request { method, path, query, body: body.as_bytes(), forwarded: false };
        match registry.handle(req).await {
            Answer::Json(status, json) => {
                assert!((200..600).contains(&status));
                if status >= 400 {
                    assert!(json.get("error_code").is_some() && json.get("message").is_some(), "{json}");
                }
            }
            Answer::Forward(_) => unreachable!("this registry writes"),
        }
    });
});
