//! Arbitrary Kafka requests through the broker's handlers: a frame (as `kafka_request` reads
//! it) is decoded, handled by an in-process broker on a real data directory (one topic `t`
//! with two partitions to aim at), and its response encoded for the request's version. A
//! handler must answer with a Kafka error, never panic, hang in its ordered phase, or build a
//! response its version cannot carry (the connection would be closed instead of answered).
//!
//! Seed it with the `kafka_request` corpus: `cargo fuzz run kafka_handlers
//! corpus/kafka_handlers corpus/kafka_request`.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use broker::api::{self, Reply};
use broker::frame::{self, Decoded};
use broker::session::{Listener, ListenerRole, Session};
use broker::state::BrokerState;
use kafka_protocol::messages::RequestKind;
use libfuzzer_sys::fuzz_target;

struct World {
    runtime: tokio::runtime::Runtime,
    state: Arc<BrokerState>,
    _broker: broker::BrokerHandle,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        // tmpfs where there is one: fsync is then free and the fuzzer runs at memory speed.
        let dir = tempfile::Builder::new()
            .prefix("kafka-handlers-fuzz")
            .tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" })
            .unwrap();
        let config: broker::BrokerConfig = toml::from_str(&format!(
            "node_id = 1\ndata_dir = {:?}\n[kafka]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [groups]\ninitial_rebalance_delay = \"0s\"\n",
            dir.path().display().to_string()
        ))
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime.block_on(broker::start(config)).unwrap();
        let state = Arc::clone(handle.state());
        runtime
            .block_on(state.topics.create(
                broker::topics::NewTopic {
                    name: "t".into(),
                    partitions: 2,
                    replication_factor: -1,
                    configs: Default::default(),
                },
                false,
            ))
            .unwrap();
        World { runtime, state, _broker: handle, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let Decoded::Request(req) = frame::decode(bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    if !worth_running(&req.body) {
        return;
    }
    let w = world();
    let (api_key, version, correlation_id) = (req.api_key, req.version, req.header.correlation_id);
    let client = Session::new(
        Arc::new(Listener {
            name: "clients".into(),
            role: ListenerRole::Clients,
            serves_replication: true,
            security: broker::config::ListenerSecurity::Plaintext,
        }),
        "127.0.0.1:40000".parse().expect("an address"),
    );
    w.runtime.block_on(async {
        let completion =
            tokio::time::timeout(Duration::from_secs(5), api::handle(&w.state, &client, *req))
                .await
                .expect("a handler's ordered phase must not hang");
        // The second phase may rightly wait (a fetch's long poll, a join waiting for the
        // group); dropping it then is what a disconnecting client does.
        if let Ok(Reply::Send(response)) =
            tokio::time::timeout(Duration::from_millis(200), completion).await
        {
            if let Err(e) = frame::encode_response(api_key, version, correlation_id, &response) {
                panic!(
                    "{api_key:?} v{version}: the response cannot be encoded: {e:#}\n{response:?}"
                );
            }
        }
    });
});

/// Requests that would only make the run slow or blind: deleting topics (the seed topic would
/// go) and creating more than a few partitions (a directory each; 10 000 are allowed).
fn worth_running(body: &RequestKind) -> bool {
    match body {
        RequestKind::DeleteTopics(_) => false,
        RequestKind::CreateTopics(r) => {
            r.topics
                .iter()
                .map(|t| t.num_partitions.max(1) as i64)
                .sum::<i64>()
                <= 16
                && r.topics.iter().all(|t| t.assignments.len() <= 16)
        }
        RequestKind::CreatePartitions(r) => r.topics.iter().all(|t| t.count <= 16),
        _ => true,
    }
}
