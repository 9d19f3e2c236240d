//! The edge gateway between a branch's clients and the hub: every event a client was told is
//! stored reaches the hub exactly once, on the hub partition Kafka's default partitioner
//! gives its key, in order per key, through the faults a branch lives with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use e2e::acked::{self, Producer};
use e2e::clients::{http_json, http_post, kcat_consume_all, metric};
use e2e::edge::Edge;
use e2e::postgres::Postgres;
use e2e::proxy::ChaosProxy;
use e2e::{Broker, wait_until};

const T: Duration = Duration::from_secs(180);
const HUB_PARTITIONS: i32 = 3;
const TOPIC: &str = "readings";

/// Records the gateway's forwarders had acknowledged by the hub (since its last start).
fn forwarded(edge: &Edge) -> u64 {
    let name = format!("edge_forwarded_records_total{{topic=\"{TOPIC}\"}}");
    metric(&edge.metrics_url(), &name).unwrap_or(0.0) as u64
}

/// Records of local partition `p` the hub has not acknowledged yet.
fn unforwarded(edge: &Edge, p: i32) -> Option<u64> {
    let name = format!("edge_unforwarded_records{{topic=\"{TOPIC}\",partition=\"{p}\"}}");
    metric(&edge.metrics_url(), &name).map(|v| v as u64)
}

/// The hub has acknowledged everything both local partitions hold.
fn drained(edge: &Edge) -> bool {
    unforwarded(edge, 0) == Some(0) && unforwarded(edge, 1) == Some(0)
}

fn wait_forwarded(edge: &Edge, n: u64) {
    wait_until(&format!("{n} records forwarded"), T, || {
        (forwarded(edge) >= n).then_some(())
    });
}

/// `(partition, key, value)` of every record of `topic` at `bootstrap`, in offset order.
fn records(bootstrap: &str) -> Vec<(i32, String, String)> {
    kcat_consume_all(bootstrap, TOPIC, "%p %k %s\n", T)
        .iter()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            let p = it.next().unwrap().parse().unwrap();
            (
                p,
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
            )
        })
        .collect()
}

/// Each key's values in the order their partition holds them.
fn per_key(records: &[(i32, String, String)]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (_, k, v) in records {
        out.entry(k.clone()).or_default().push(v.clone());
    }
    out
}

/// An address where nothing listens: the proxy's target while the WAN is cut.
fn nowhere() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn every_acknowledged_event_reaches_the_hub_once_in_order_through_crashes_and_cuts() {
    let proxy = ChaosProxy::start();
    let mut hub = Broker::start_with(&format!(
        "[kafka]\nadvertised = \"{}\"\n[topics]\npartitions = {HUB_PARTITIONS}\n",
        proxy.addr
    ));
    proxy.set_target(hub.kafka);
    // The hub stores every 4th batch the gateway sends, but its answer never arrives: the
    // gateway must send it again and the hub recognise it.
    proxy.lose_produce_responses(4);
    let mut edge = Edge::start(
        &proxy.addr.to_string(),
        "[buffer.topics]\npartitions = 2\n[forward]\nlinger = \"20ms\"\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let acked_file = dir.path().join("acked");
    let producer = idempotent_producer(&edge, &acked_file, 2000);

    // Forwarding while answers are lost, then the gateway killed mid-forward.
    wait_forwarded(&edge, 1500);
    assert!(proxy.lost_responses() > 0, "no answer was lost");
    edge.kill9();
    edge.restart();
    wait_forwarded(&edge, 500);

    // The WAN cut: the gateway goes on acknowledging what it buffers.
    proxy.set_target(nowhere());
    proxy.cut_all();
    let during = producer.acked_count();
    producer.wait_acked(during + 2000, T);
    proxy.set_target(hub.kafka);

    // The hub broker crashes and comes back while the backlog drains.
    let before = forwarded(&edge);
    wait_forwarded(&edge, before + 500);
    hub.kill9();
    hub.restart();
    let after = producer.acked_count();
    producer.wait_acked(after + 1000, T);
    let report = producer.stop(T);

    // Everything acknowledged is in the buffer, once; the hub then holds exactly the buffer.
    let acks = acked::read_acked(&acked_file);
    wait_until("the gateway to have forwarded its whole buffer", T, || {
        drained(&edge).then_some(())
    });
    let at_hub = records(&hub.bootstrap());
    let sent = report["sent"].as_u64().unwrap();
    check_at_hub(&at_hub, acks.iter().map(|a| a.value.as_str()), sent);
    let by_partition: BTreeMap<i32, usize> = at_hub.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.0).or_default() += 1;
        m
    });
    eprintln!(
        "{} acknowledged ({report}), at the hub {by_partition:?}, {} answers lost",
        acks.len(),
        proxy.lost_responses()
    );
}

/// An idempotent acks=all producer of `TOPIC` at the gateway, `rate` records/s, writing what
/// was acknowledged to `acked_file`; it reconnects at once after the gateway restarts.
fn idempotent_producer(edge: &Edge, acked_file: &std::path::Path, rate: u32) -> Producer {
    let rate = rate.to_string();
    let args = [
        "--bootstrap",
        &edge.bootstrap(),
        "--topic",
        TOPIC,
        "--rate",
        &rate,
    ];
    let flags = ["--idempotence", "--fast-reconnect"];
    let all: Vec<&str> = args.iter().chain(flags.iter()).copied().collect();
    Producer::start(acked_file, &all)
}

/// The number in a value `<padding>v-<n>`.
fn number(value: &str) -> u64 {
    let (_, n) = value.rsplit_once('-').expect("<prefix>-<n>");
    n.parse().expect("a number")
}

/// What the hub must hold: every value of `must` (what the producers were told is stored),
/// nothing twice, nothing that was never sent (numbers below `sent`, or at 10 000 and above:
/// the later kcat runs), each record on the hub partition Kafka's partitioner gives its key,
/// and each key's events in the order they were sent.
fn check_at_hub<'a>(
    at_hub: &[(i32, String, String)],
    must: impl Iterator<Item = &'a str>,
    sent: u64,
) {
    let values: HashSet<&str> = at_hub.iter().map(|(_, _, v)| v.as_str()).collect();
    assert_eq!(values.len(), at_hub.len(), "an event is at the hub twice");
    for v in must {
        assert!(
            values.contains(v),
            "{v} was acknowledged but is not at the hub"
        );
    }
    for (p, k, v) in at_hub {
        let n = number(v);
        assert!(n < sent || n >= 10_000, "{v} was never sent");
        let want = edge::partitioner::hub_partition(Some(k.as_bytes()), -1, HUB_PARTITIONS);
        assert_eq!(
            *p, want,
            "{v} (key {k}) is on hub partition {p}, not {want}"
        );
    }
    for (k, vs) in per_key(at_hub) {
        let ns: Vec<u64> = vs.iter().map(|v| number(v)).collect();
        assert!(
            ns.is_sorted(),
            "key {k}: its events are out of order at the hub: {ns:?}"
        );
    }
}

/// Produce `values` (`key:value` lines) to the gateway with kcat.
fn produce(edge: &Edge, from: usize, to: usize) {
    let input: String = (from..to).map(|i| format!("{}:v-{i}\n", i % 16)).collect();
    kcat_keyed(edge, &input);
}

/// The hub's producer-state expiry passes while a batch the hub stored waits for its answer:
/// the gateway sends it again under a producer id the hub no longer knows, and only the
/// stream and sequence headers (`clk.stream.dedup`) tell the hub it holds it already.
#[test]
fn a_batch_sent_again_after_the_hub_forgot_its_producer_is_stored_once() {
    let proxy = ChaosProxy::start();
    // Producer state older than 1ms is forgotten when the hub reopens its logs.
    let mut hub = Broker::start_with(&format!(
        "[kafka]\nadvertised = \"{}\"\n[topics]\npartitions = {HUB_PARTITIONS}\nproducer_id_expiration = \"1ms\"\nstream_dedup = true\n",
        proxy.addr
    ));
    proxy.set_target(hub.kafka);
    let edge = Edge::start(
        &proxy.addr.to_string(),
        "[buffer.topics]\npartitions = 2\n[forward]\nlinger = \"20ms\"\n",
    );
    produce(&edge, 0, 200);
    wait_forwarded(&edge, 200);

    // Every answer is lost now: the hub stores the next batches, the gateway never hears.
    proxy.lose_produce_responses(1);
    produce(&edge, 200, 300);
    wait_until("a batch stored and sent again", T, || {
        (proxy.lost_responses() >= 3).then_some(())
    });
    // The WAN goes down; meanwhile the hub restarts and forgets the gateway's producers.
    proxy.set_target(nowhere());
    proxy.cut_all();
    proxy.lose_produce_responses(0);
    hub.stop();
    hub.restart();
    proxy.set_target(hub.kafka);

    wait_until("the gateway to have forwarded its whole buffer", T, || {
        drained(&edge).then_some(())
    });
    let at_hub = records(&hub.bootstrap());
    assert_eq!(at_hub.len(), 300, "the hub holds every event once");
    let all: Vec<String> = (0..300).map(|i| format!("v-{i}")).collect();
    check_at_hub(&at_hub, all.iter().map(String::as_str), 300);
}

/// With the hub out of reach, the buffer fills to its limit and then refuses new events (the
/// producer is told, nothing it was told is stored goes missing); once the hub is back the
/// buffer drains, removes what the hub acknowledged, and takes events again.
#[test]
fn a_full_buffer_refuses_events_until_the_hub_drains_it() {
    let proxy = ChaosProxy::start();
    let hub = Broker::start_with(&format!(
        "[kafka]\nadvertised = \"{}\"\n[topics]\npartitions = {HUB_PARTITIONS}\n",
        proxy.addr
    ));
    // The WAN is down from the start.
    proxy.set_target(nowhere());
    let edge = Edge::start(
        &proxy.addr.to_string(),
        "[buffer.topics]\npartitions = 2\nsegment_bytes = \"64KiB\"\n[limits]\nmax_bytes = \"2MiB\"\n[forward]\nlinger = \"20ms\"\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let acked_file = dir.path().join("acked");
    let produce_ck = |count: &str, prefix: &str| {
        Producer::start(
            &acked_file,
            &[
                "--bootstrap",
                &edge.bootstrap(),
                "--topic",
                TOPIC,
                "--count",
                count,
                "--prefix",
                prefix,
                "--value-bytes",
                "1000",
                "--config",
                "message.timeout.ms=3000",
            ],
        )
        .finish(T)
    };
    // 3 MB into a buffer of 2 MiB: taken (the limit is measured every second, so a burst
    // may pass it by a second's worth), then the buffer is full.
    let filled = produce_ck("3000", "v");
    assert_eq!(filled["acked"], 3000, "{filled}");
    wait_until("the buffer to measure itself full", T, || {
        let bytes = metric(&edge.metrics_url(), "edge_buffer_bytes")?;
        (bytes >= (2 << 20) as f64).then_some(())
    });
    let refused = produce_ck("200", "w");
    assert_eq!(
        refused["acked"], 0,
        "the full buffer took events: {refused}"
    );
    let counted = format!("edge_ingest_refused_total{{topic=\"{TOPIC}\"}}");
    assert!(metric(&edge.metrics_url(), &counted).unwrap_or(0.0) > 0.0);
    let acks = acked::read_acked(&acked_file);
    assert_eq!(acks.len(), 3000);

    // The hub comes back: the buffer drains and removes what the hub acknowledged.
    proxy.set_target(hub.kafka);
    wait_until("the buffer to drain below its limit", T, || {
        let drained = drained(&edge);
        let bytes = metric(&edge.metrics_url(), "edge_buffer_bytes")?;
        // What is left is the active segments (a log keeps its last one).
        (drained && bytes < (3 << 19) as f64).then_some(())
    });
    produce(&edge, 10_000, 10_100);

    wait_until("the events taken after the drain at the hub", T, || {
        let r = records(&hub.bootstrap());
        (r.iter().filter(|(_, _, v)| number(v) >= 10_000).count() >= 100).then_some(())
    });
    let at_hub = records(&hub.bootstrap());
    check_at_hub(&at_hub, acks.iter().map(|a| a.value.as_str()), 3000);
    eprintln!(
        "{} acknowledged before the buffer was full, {} at the hub",
        acks.len(),
        at_hub.len()
    );
}

/// The gateway forwards over mutual TLS with the branch's certificate: the hub's listener
/// for branches takes it; a gateway whose certificate the hub's CA did not issue forwards
/// nothing (its events stay in its buffer, the refusals counted).
#[test]
fn the_gateway_forwards_over_mutual_tls_with_the_branch_certificate() {
    use tls::test_pki::{TestPki, Usage, Validity};
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("broker", &["127.0.0.1"]);
    let branches = e2e::hub::free_addr();
    // The hub's S3 gateway, taking only clients with a certificate of the hub's CA; the
    // branch's credential (`biometrics` = write, principal User:branch-018) goes with its
    // certificate.
    let s3_server = pki.server("s3gw", &["127.0.0.1", "localhost"]);
    let s3 = e2e::S3gw::start_https(&format!(
        "certificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"required\"\n",
        s3_server.certificate.display(),
        s3_server.key.display(),
        pki.ca.display(),
    ));
    let s3_endpoint = format!("https://localhost:{}", s3.s3.port());
    let client_tls = |cert: &tls::test_pki::Issued| {
        let settings: tls::TlsSettings = serde_json::from_value(serde_json::json!({
            "certificate": cert.certificate, "key": cert.key, "server_ca": pki.ca,
        }))
        .unwrap();
        tls::TlsClient::load(settings).unwrap().client_config()
    };
    let admin = pki.client("admin", "hub-admin", Validity::Current, Usage::ClientAuth);
    let s3_as = |cert: &tls::test_pki::Issued, key: &str, secret: &str| {
        let tls = Some(client_tls(cert));
        s3_client::S3Client::with_tls(&s3_endpoint, "biometrics", key, secret, "us-east-1", tls)
            .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (key, secret) = (e2e::s3gw::ACCESS_KEY, e2e::s3gw::SECRET_KEY);
    rt.block_on(s3_as(&admin, key, secret).create_bucket())
        .unwrap();
    let hub = Broker::start_with(&format!(
        "[topics]\npartitions = {HUB_PARTITIONS}\n\
         [[kafka.listeners]]\nname = \"branches\"\nlisten = \"{branches}\"\nsecurity = \"SSL\"\n\
         [tls]\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"required\"\n",
        server.certificate.display(),
        server.key.display(),
        pki.ca.display()
    ));
    // A gateway presenting `cert` to the hub's listener for branches.
    let gateway = |cert: &tls::test_pki::Issued| {
        let hub_tls = format!(
            "[hub]\nsecurity = \"SSL\"\n[hub.tls]\ncertificate = \"{}\"\nkey = \"{}\"\nserver_ca = \"{}\"\n",
            cert.certificate.display(),
            cert.key.display(),
            pki.ca.display()
        );
        let claim_check = format!(
            "[claim_check]\nendpoint = \"{s3_endpoint}\"\nbucket = \"biometrics\"\n\
             access_key = \"{}\"\nsecret_key = \"{}\"\n",
            e2e::s3gw::WRITER_KEY,
            e2e::s3gw::WRITER_SECRET
        );
        Edge::start(
            &branches.to_string(),
            &format!("{hub_tls}[forward]\nlinger = \"20ms\"\n{claim_check}"),
        )
    };
    let branch = pki.client(
        "branch-018",
        "branch-018",
        Validity::Current,
        Usage::ClientAuth,
    );
    let edge = gateway(&branch);
    produce(&edge, 0, 100);
    // Marked for a claim check: the payload goes to the hub's S3 gateway over mutual TLS
    // with the branch's certificate (and the branch's write-only credential).
    let args = [
        "-b",
        &edge.bootstrap(),
        "-P",
        "-t",
        TOPIC,
        "-K:",
        "-H",
        "clk-claim-check=1",
    ];
    e2e::clients::kcat(&args, Some(b"scan:v-100\n"), T);
    wait_forwarded(&edge, 101);
    let at_hub = records(&hub.bootstrap());
    let (scan, others): (Vec<_>, Vec<_>) = at_hub.into_iter().partition(|r| r.1 == "scan");
    let all: Vec<String> = (0..100).map(|i| format!("v-{i}")).collect();
    check_at_hub(&others, all.iter().map(String::as_str), 100);
    let reference: serde_json::Value = serde_json::from_str(&scan[0].2).unwrap();
    assert_eq!(reference["bucket"], "biometrics", "{reference}");
    let object = reference["key"].as_str().unwrap();
    let (key, secret) = (e2e::s3gw::ACCESS_KEY, e2e::s3gw::SECRET_KEY);
    let stored = rt.block_on(s3_as(&admin, key, secret).stored_sha256(object));
    assert_eq!(
        stored.unwrap(),
        Some(s3_client::S3Client::expected_sha256(b"v-100", 16 << 20)),
        "the payload is in the hub's S3 gateway, whole"
    );

    // A certificate from another CA: the hub refuses the handshake.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::new(other_dir.path(), "other");
    let rogue = gateway(&other.client(
        "branch-666",
        "branch-666",
        Validity::Current,
        Usage::ClientAuth,
    ));
    produce(&rogue, 1000, 1010);
    let unreachable =
        format!("edge_forward_errors_total{{topic=\"{TOPIC}\",reason=\"unreachable\"}}");
    wait_until("the stranger's attempts to fail", T, || {
        metric(&rogue.metrics_url(), &unreachable).filter(|n| *n >= 3.0)
    });
    assert_eq!(forwarded(&rogue), 0);
    assert_eq!(
        records(&hub.bootstrap()).len(),
        101,
        "the stranger's events reached the hub"
    );
}

/// Debezium's outbox table, and the Debezium router's topics for its two aggregate types.
const OUTBOX_TABLE: &str = "CREATE TABLE outbox (id uuid PRIMARY KEY, \
    aggregatetype varchar(255) NOT NULL, aggregateid varchar(255) NOT NULL, \
    type varchar(255) NOT NULL, payload jsonb);";
const OUTBOX_TOPICS: [&str; 2] = ["outbox.event.order", "outbox.event.invoice"];
const AGGREGATES: u64 = 20;

/// Insert outbox events `from..to` (`{"n": <n>}` for aggregate `agg-<n % 20>`, its type
/// `order` or `invoice` by aggregate), 1 to `per_txn_max` in each transaction.
fn insert_outbox(pg: &Postgres, from: u64, to: u64, per_txn_max: u64) {
    let mut sql = String::new();
    let mut i = from;
    while i < to {
        let end = (i + 1 + i % per_txn_max).min(to);
        sql += &format!(
            "INSERT INTO outbox SELECT md5(n::text)::uuid, \
             CASE WHEN n % {AGGREGATES} < 10 THEN 'order' ELSE 'invoice' END, \
             'agg-' || (n % {AGGREGATES}), 'Created', jsonb_build_object('n', n) \
             FROM generate_series({i}, {last}) n;\n",
            last = end - 1
        );
        i = end;
    }
    pg.sql(&sql);
}

/// Outbox events the hub acknowledged (since the gateway's last start).
fn outbox_forwarded(edge: &Edge) -> u64 {
    OUTBOX_TOPICS
        .iter()
        .map(|t| {
            edge_metric(
                edge,
                &format!("edge_forwarded_records_total{{topic=\"{t}\"}}"),
            )
        })
        .sum()
}

fn edge_metric(edge: &Edge, name: &str) -> u64 {
    metric(&edge.metrics_url(), name).unwrap_or(0.0) as u64
}

/// The gateway has buffered every outbox transaction the database flushed so far.
fn wait_outbox_buffered(edge: &Edge, pg: &Postgres) {
    let flushed = pg.sql("SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn");
    let flushed: u64 = flushed.parse().expect("an LSN as a number");
    wait_until("the outbox to be buffered", T, || {
        (edge_metric(edge, "edge_outbox_buffered_lsn") >= flushed).then_some(())
    });
}

/// The WAL the gateway's slot holds back, in bytes, after a checkpoint.
fn retained_wal(pg: &Postgres) -> u64 {
    pg.sql(
        "CHECKPOINT; SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
         FROM pg_replication_slots WHERE slot_name = 'clk_edge'",
    )
    .parse()
    .expect("bytes")
}

/// Where the gateway's slot stands (`confirmed_flush_lsn`), as a number.
fn slot_confirmed_lsn(pg: &Postgres) -> u64 {
    pg.sql(
        "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots \
         WHERE slot_name = 'clk_edge'",
    )
    .parse()
    .expect("an LSN as a number")
}

/// `(topic, partition, key, n)` of every outbox event at the hub.
fn outbox_at_hub(bootstrap: &str) -> Vec<(String, i32, String, u64)> {
    let mut out = Vec::new();
    for topic in OUTBOX_TOPICS {
        for line in kcat_consume_all(bootstrap, topic, "%p %k %s\n", T) {
            let mut it = line.splitn(3, ' ');
            let p = it.next().unwrap().parse().unwrap();
            let k = it.next().unwrap().to_string();
            let payload: serde_json::Value = serde_json::from_str(it.next().unwrap()).unwrap();
            out.push((topic.to_string(), p, k, payload["n"].as_u64().unwrap()));
        }
    }
    out
}

/// The outbox, a Kafka client and devices over HTTP feed the gateway at once, through a WAN
/// cut, kill -9 of the gateway, `pg_ctl -m immediate` and a hub broker crash: the hub holds
/// every committed outbox row, every acknowledged Kafka record and every accepted HTTP event,
/// once each, in order per key.
#[test]
fn outbox_events_reach_the_hub_once_in_order_through_wan_cuts_and_crashes_of_both_ends() {
    const CUT_EVENTS: u64 = 100_000;
    let proxy = ChaosProxy::start();
    let mut hub = Broker::start_with(&format!(
        "[kafka]\nadvertised = \"{}\"\n[topics]\npartitions = {HUB_PARTITIONS}\n",
        proxy.addr
    ));
    proxy.set_target(hub.kafka);
    let pg = Postgres::start();
    pg.sql(OUTBOX_TABLE);
    let mut edge = Edge::start(
        &proxy.addr.to_string(),
        &format!(
            "[buffer.topics]\npartitions = 2\n[forward]\nlinger = \"20ms\"\n\
             [outbox]\nconnection = \"{}\"\npoll_interval = \"50ms\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n",
            pg.connection()
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let acked_file = dir.path().join("acked");
    let producer = idempotent_producer(&edge, &acked_file, 1000);

    // Rows committed before the gateway created its slot are not read: start once it read
    // the slot.
    wait_until("the gateway to read its slot", T, || {
        (edge_metric(&edge, "edge_outbox_buffered_lsn") > 0).then_some(())
    });

    // Forwarding as events are committed.
    insert_outbox(&pg, 0, 2_000, 5);
    wait_outbox_buffered(&edge, &pg);

    // The WAN cut while 10^5 events are committed; the gateway is killed while it buffers
    // them. The slot's WAL is released all the same.
    proxy.set_target(nowhere());
    proxy.cut_all();
    let before: u64 = pg
        .sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        .parse()
        .unwrap();
    let inserts = std::thread::scope(|s| {
        let inserting = s.spawn(|| insert_outbox(&pg, 2_000, 2_000 + CUT_EVENTS, 50));
        wait_until("outbox events to be buffered", T, || {
            (edge_metric(&edge, "edge_outbox_events_total") >= CUT_EVENTS / 4).then_some(())
        });
        edge.kill9();
        edge.restart();
        inserting.join()
    });
    inserts.expect("inserting");
    wait_outbox_buffered(&edge, &pg);
    let after: u64 = pg
        .sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        .parse()
        .unwrap();
    let written = after - before;
    let retained = wait_until("the slot to release the buffered WAL", T, || {
        let r = retained_wal(&pg);
        (r < written / 4).then_some(r)
    });
    eprintln!("during the cut: {written} bytes of WAL written, {retained} retained");
    const DEVICE_EVENTS: usize = 200;
    for from in (0..DEVICE_EVENTS).step_by(20) {
        let records: Vec<String> = (from..from + 20)
            .map(|i| format!(r#"{{"key":"dev-{}","value":{{"n":{i}}}}}"#, i % 5))
            .collect();
        let body = format!(r#"{{"records":[{}]}}"#, records.join(","));
        let (status, answer) = http_post(&edge.http_url("devices"), JSON_V2, body.as_bytes());
        assert_eq!(status, 200, "{answer}");
    }

    // PostgreSQL crashes after the slot advanced: the slot goes back to where PostgreSQL last
    // saved it (the checkpoint above, usually) and delivers those transactions again; the
    // gateway buffers none of them twice. PostgreSQL also saves a slot at once when an advance
    // moves its restart point: if the last one did, the slot keeps its place and nothing comes
    // again. The slot is read before the counter: the gateway counts redelivered transactions
    // before it advances the slot past them, so a slot found in place with nothing counted
    // means nothing came again.
    let total = 2_000 + CUT_EVENTS + 3_000;
    insert_outbox(&pg, 2_000 + CUT_EVENTS, total, 5);
    wait_outbox_buffered(&edge, &pg);
    let buffered = edge_metric(&edge, "edge_outbox_buffered_lsn");
    pg.crash_and_restart();
    let redelivered = wait_until("the slot's transactions to come again", T, || {
        let kept = slot_confirmed_lsn(&pg) >= buffered;
        match edge_metric(&edge, "edge_outbox_redelivered_transactions_total") {
            0 if kept => Some(0),
            0 => None,
            n => Some(n),
        }
    });
    eprintln!("after the crash: {redelivered} transactions delivered again");
    // A row whose aggregatetype makes no topic name goes to outbox.invalid; the rows after
    // it flow on.
    pg.sql(
        "INSERT INTO outbox VALUES (gen_random_uuid(), 'bad type', 'agg-x', 'Created', \
         '{\"bad\": true}');",
    );
    let total = total + 1_000;
    insert_outbox(&pg, total - 1_000, total, 5);
    wait_outbox_buffered(&edge, &pg);
    assert_eq!(edge_metric(&edge, "edge_outbox_invalid_rows_total"), 1);

    // The WAN is back; the hub broker crashes while the backlog drains.
    proxy.set_target(hub.kafka);
    wait_until("forwarding to resume", T, || {
        (outbox_forwarded(&edge) > 0).then_some(())
    });
    hub.kill9();
    hub.restart();
    let at_hub = wait_until("the hub to hold every outbox event", T, || {
        let r = outbox_at_hub(&hub.bootstrap());
        (r.len() as u64 >= total).then_some(r)
    });
    check_outbox_at_hub(&at_hub, total);
    let invalid = wait_until("the invalid row at the hub", T, || {
        let r = kcat_consume_all(&hub.bootstrap(), "outbox.invalid", "%h %s\n", T);
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert!(
        invalid[0].contains("clk-outbox-error=aggregatetype makes no topic name")
            && invalid[0].ends_with(r#"{"bad": true}"#),
        "{invalid:?}"
    );
    let report = producer.stop(T);
    let acks = acked::read_acked(&acked_file);
    wait_until("the gateway to have forwarded its whole buffer", T, || {
        drained(&edge).then_some(())
    });
    let sent = report["sent"].as_u64().unwrap();
    check_at_hub(
        &records(&hub.bootstrap()),
        acks.iter().map(|a| a.value.as_str()),
        sent,
    );
    let devices = kcat_consume_all(&hub.bootstrap(), "devices", "%s\n", T);
    let mut ns: Vec<u64> = devices
        .iter()
        .map(|v| {
            serde_json::from_str::<serde_json::Value>(v).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    ns.sort();
    assert_eq!(
        ns,
        (0..DEVICE_EVENTS as u64).collect::<Vec<_>>(),
        "each HTTP event once"
    );
    eprintln!(
        "{total} outbox events, {} Kafka records, {DEVICE_EVENTS} HTTP events at the hub once \
         each; {} outbox transactions delivered again skipped",
        acks.len(),
        edge_metric(&edge, "edge_outbox_redelivered_transactions_total")
    );
}

/// The hub holds events `0..total` once each, each on its aggregate's topic, on the
/// partition Kafka's partitioner gives the aggregate, in commit order per aggregate.
fn check_outbox_at_hub(at_hub: &[(String, i32, String, u64)], total: u64) {
    let mut seen = HashSet::new();
    let mut per_key: HashMap<&str, Vec<u64>> = HashMap::new();
    for (topic, p, k, n) in at_hub {
        assert!(seen.insert(*n), "event {n} is at the hub twice");
        assert!(*n < total, "event {n} was never committed");
        let aggregate = n % AGGREGATES;
        assert_eq!(*k, format!("agg-{aggregate}"), "event {n}'s key");
        let want = if aggregate < 10 {
            OUTBOX_TOPICS[0]
        } else {
            OUTBOX_TOPICS[1]
        };
        assert_eq!(topic, want, "event {n}'s topic");
        let want = edge::partitioner::hub_partition(Some(k.as_bytes()), -1, HUB_PARTITIONS);
        assert_eq!(
            *p, want,
            "event {n} (key {k}) is on partition {p}, not {want}"
        );
        per_key.entry(k).or_default().push(*n);
    }
    assert_eq!(seen.len() as u64, total, "events are missing at the hub");
    for (k, ns) in per_key {
        assert!(
            ns.is_sorted(),
            "aggregate {k}: events out of order at the hub"
        );
    }
}

const JSON_V2: &str = "application/vnd.kafka.json.v2+json";
const BINARY_V2: &str = "application/vnd.kafka.binary.v2+json";

#[test]
fn devices_post_events_over_http_and_the_hub_gets_each_once() {
    use base64::Engine;
    let hub = Broker::start_with(&format!("[topics]\npartitions = {HUB_PARTITIONS}\n"));
    let edge = Edge::start(
        &hub.bootstrap(),
        "[buffer.topics]\npartitions = 2\n[forward]\nlinger = \"20ms\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nbody_bytes_max = \"64KiB\"\n",
    );

    // JSON events, keyed by device, in two requests; and binary ones (as Confluent
    // wire-format Avro would come), keyless.
    for (from, to) in [(0, 60), (60, 100)] {
        let records: Vec<String> = (from..to)
            .map(|i| format!(r#"{{"key":"dev-{}","value":{{"n":{i}}}}}"#, i % 5))
            .collect();
        let body = format!(r#"{{"records":[{}]}}"#, records.join(","));
        let (status, answer) = http_post(&edge.http_url("devices"), JSON_V2, body.as_bytes());
        assert_eq!(status, 200, "{answer}");
        let offsets = answer["offsets"].as_array().unwrap();
        assert_eq!(offsets.len(), to - from);
        assert!(offsets.iter().all(|o| o["offset"].is_i64()), "{answer}");
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let records: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"value":"{}"}}"#, b64(&format!("bin-{i}"))))
        .collect();
    let body = format!(r#"{{"records":[{}]}}"#, records.join(","));
    let (status, answer) = http_post(&edge.http_url("blobs"), BINARY_V2, body.as_bytes());
    assert_eq!(status, 200, "{answer}");

    // Bad requests get their status and Confluent's error code, and store nothing.
    let too_big = format!(r#"{{"records":[{{"value":"{}"}}]}}"#, "x".repeat(70 << 10));
    let bad: [(&str, &str, &[u8], u16); 6] = [
        ("devices", JSON_V2, b"{\"records\":[{\"value\":", 422),
        (
            "devices",
            JSON_V2,
            b"{\"records\":[{\"partition\":99}]}",
            404,
        ),
        (
            "devices",
            BINARY_V2,
            b"{\"records\":[{\"value\":\"not base64!\"}]}",
            422,
        ),
        ("devices", "text/plain", b"hello", 415),
        ("devices", JSON_V2, too_big.as_bytes(), 413),
        ("devices/partitions/0", JSON_V2, b"{\"records\":[{}]}", 404),
    ];
    for (topic, content_type, body, want) in bad {
        let (status, answer) = http_post(&edge.http_url(topic), content_type, body);
        assert_eq!(status, want, "{topic} {content_type}: {answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }
    let refused = metric(
        &edge.metrics_url(),
        "edge_http_requests_total{status=\"422\"}",
    );
    assert_eq!(refused, Some(2.0));

    // The hub holds each event once, JSON keys and values as their JSON text, each device's
    // events in order on the partition Kafka's partitioner gives its key.
    for (topic, n) in [("devices", 100), ("blobs", 10)] {
        let name = format!("edge_forwarded_records_total{{topic=\"{topic}\"}}");
        wait_until(&format!("{topic} forwarded"), T, || {
            (edge_metric(&edge, &name) >= n).then_some(())
        });
    }
    let devices = kcat_consume_all(&hub.bootstrap(), "devices", "%p|%k|%s\n", T);
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for line in &devices {
        let mut it = line.splitn(3, '|');
        let p: i32 = it.next().unwrap().parse().unwrap();
        let key = it.next().unwrap().to_string();
        let value: serde_json::Value = serde_json::from_str(it.next().unwrap()).unwrap();
        let want = edge::partitioner::hub_partition(Some(key.as_bytes()), -1, HUB_PARTITIONS);
        assert_eq!(p, want, "{line}");
        assert!(key.starts_with("\"dev-"), "{line}");
        per_key
            .entry(key)
            .or_default()
            .push(value["n"].as_u64().unwrap());
    }
    let mut all: Vec<u64> = per_key.values().flatten().copied().collect();
    all.sort();
    assert_eq!(all, (0..100).collect::<Vec<_>>(), "each event once");
    for (k, ns) in &per_key {
        assert!(ns.is_sorted(), "device {k}: out of order: {ns:?}");
    }
    let mut blobs = kcat_consume_all(&hub.bootstrap(), "blobs", "%s\n", T);
    blobs.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("bin-{i}")).collect();
    want.sort();
    assert_eq!(blobs, want);
}

const READING: &str = r#"{"type":"record","name":"Reading","fields":[{"name":"pump","type":"string"},{"name":"bar","type":"double"}]}"#;

/// Produce `value` to `topic` with kcat, acks=all; kcat's stderr (its delivery errors).
fn kcat_produce_one(bootstrap: &str, topic: &str, value: &str) -> String {
    let mut cmd = std::process::Command::new("kcat");
    cmd.args(["-b", bootstrap, "-P", "-t", topic, "-X", "acks=all"]);
    let out = e2e::clients::run(cmd, Some(format!("{value}\n").as_bytes()), T);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn values_of_a_topic_with_an_avro_schema_are_validated_at_the_branch_through_an_outage() {
    let registry = e2e::hub::free_addr();
    let mut hub = Broker::start_with(&format!(
        "[topics]\npartitions = {HUB_PARTITIONS}\n[schema_registry]\nlisten = \"{registry}\"\n"
    ));
    let url = format!("http://{registry}");
    let body = serde_json::json!({ "schema": READING }).to_string();
    let (status, answer) = wait_until("the hub's registry to register", T, || {
        let r = e2e::clients::http_json(
            "POST",
            &format!("{url}/subjects/readings-value/versions"),
            Some(&body),
        );
        (r.0 == 200).then_some(r)
    });
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_i64().unwrap() as u8;
    // A schema naming the Reading type by a reference to readings-value.
    let alarm = r#"{"type":"record","name":"Alarm","fields":[{"name":"level","type":"int"},{"name":"at","type":"Reading"}]}"#;
    let body = serde_json::json!({ "schema": alarm, "references": [
        {"name": "Reading", "subject": "readings-value", "version": 1}] })
    .to_string();
    let subjects = format!("{url}/subjects/alarms-value/versions");
    let (status, answer) = e2e::clients::http_json("POST", &subjects, Some(&body));
    assert_eq!(status, 200, "{answer}");
    // Its keys: Avro strings.
    let body = serde_json::json!({ "schema": r#""string""# }).to_string();
    let subjects = format!("{url}/subjects/alarms-key/versions");
    let (status, answer) = e2e::clients::http_json("POST", &subjects, Some(&body));
    assert_eq!(status, 200, "{answer}");
    let mut edge = Edge::start(
        &hub.bootstrap(),
        &format!(
            "[forward]\nlinger = \"20ms\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [hub]\nschema_registry = [\"{url}\"]\nschema_refresh = \"1s\"\n"
        ),
    );
    wait_until("the gateway to know the hub's schemas", T, || {
        (edge_metric(&edge, "edge_schema_subjects") == 3).then_some(())
    });
    let alarm = |key: &str, level: &str| {
        let body = format!(
            r#"{{"records":[{{"key":{key},"value":{{"level":{level},"at":{{"pump":"p1","bar":2.5}}}}}}]}}"#
        );
        http_post(&edge.http_url("alarms"), JSON_V2, body.as_bytes()).0
    };
    assert_eq!(
        alarm("\"pump-1\"", "3"),
        200,
        "encoded with the referenced type"
    );
    assert_eq!(alarm("\"pump-1\"", "\"high\""), 422);
    assert_eq!(alarm("17", "3"), 422, "a key the key subject does not take");
    let stderr = kcat_produce_one(&edge.bootstrap(), "alarms", "not avro");
    assert!(stderr.contains("failed to validate record"), "{stderr}");

    // JSON posted to the topic is encoded with its schema; what does not fit is refused, by
    // HTTP and by Kafka alike.
    let post = |edge: &Edge, from: usize| {
        let records: Vec<String> = (from..from + 20)
            .map(|i| {
                format!(
                    r#"{{"key":"p{}","value":{{"pump":"p{i}","bar":1.5}}}}"#,
                    i % 4
                )
            })
            .collect();
        let body = format!(r#"{{"records":[{}]}}"#, records.join(","));
        http_post(&edge.http_url("readings"), JSON_V2, body.as_bytes())
    };
    let refused = |edge: &Edge| {
        let bad = br#"{"records":[{"value":{"pump":"p1"}}]}"#;
        let (status, answer) = http_post(&edge.http_url("readings"), JSON_V2, bad);
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("does not match"),
            "{answer}"
        );
        let stderr = kcat_produce_one(&edge.bootstrap(), "readings", "not avro");
        assert!(stderr.contains("failed to validate record"), "{stderr}");
    };
    let (status, answer) = post(&edge, 0);
    assert_eq!(status, 200, "{answer}");
    refused(&edge);

    // The hub is gone and the gateway restarts: its schemas come from its disk.
    hub.kill9();
    edge.kill9();
    edge.restart();
    assert_eq!(edge_metric(&edge, "edge_schema_subjects"), 3);
    let (status, answer) = post(&edge, 20);
    assert_eq!(status, 200, "{answer}");
    refused(&edge);
    assert!(edge_metric(&edge, "edge_schema_refresh_errors_total") > 0);

    // Back: the hub holds the 40 valid events, each in Confluent's wire format.
    hub.restart();
    wait_until("the readings to be forwarded", T, || {
        (forwarded(&edge) >= 20).then_some(())
    });
    // Avro values are bytes, not text: kcat's output split at each newline (none of these
    // values holds one).
    let values = wait_until("the hub to hold every reading", T, || {
        let mut cmd = std::process::Command::new("kcat");
        cmd.args([
            "-b",
            &hub.bootstrap(),
            "-C",
            "-t",
            "readings",
            "-e",
            "-q",
            "-f",
            "%s\n",
        ]);
        let out = e2e::clients::run(cmd, None, T);
        let v: Vec<Vec<u8>> = out
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        (v.len() >= 40).then_some(v)
    });
    assert_eq!(values.len(), 40, "only the valid events, once each");
    for v in &values {
        assert!(v.starts_with(&[0, 0, 0, 0, id]), "{v:?}");
    }
}

/// The payload of claim-checked event `i`: 200 KiB, or 6 MiB (a multipart upload) for the
/// last one.
fn payload(i: usize, large: usize) -> Vec<u8> {
    let len = if i + 1 == large { 6 << 20 } else { 200 << 10 };
    e2e::clients::noise(i as u64 + 1, len)
}

#[test]
fn large_payloads_reach_the_hubs_s3_by_claim_check_once_through_a_cut_upload() {
    use base64::Engine;
    use e2e::s3gw::{ACCESS_KEY, S3gw, SECRET_KEY};
    const LARGE: usize = 12;
    let hub = Broker::start_with(&format!("[topics]\npartitions = {HUB_PARTITIONS}\n"));
    let mut s3 = S3gw::start();
    let client = s3_client::S3Client::new(
        &s3.endpoint(),
        "payloads",
        ACCESS_KEY,
        SECRET_KEY,
        "us-east-1",
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(client.create_bucket()).unwrap();
    let edge = Edge::start(
        &hub.bootstrap(),
        &format!(
            "[buffer.topics]\nmax_message_bytes = 8388608\n[forward]\nlinger = \"20ms\"\n\
             batch_records = 4\n[http]\nlisten = \"127.0.0.1:0\"\nbody_bytes_max = \"16MiB\"\n\
             [claim_check]\nendpoint = \"{}\"\nbucket = \"payloads\"\naccess_key = \"{ACCESS_KEY}\"\n\
             secret_key = \"{SECRET_KEY}\"\nthreshold_bytes = \"64KiB\"\npart_bytes = \"5MiB\"\n",
            s3.endpoint()
        ),
    );
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let post = |i: usize, value: &[u8]| {
        let key = b64(format!("k{i}").as_bytes());
        let body = format!(
            r#"{{"records":[{{"key":"{key}","value":"{}"}}]}}"#,
            b64(value)
        );
        let (status, answer) = http_post(&edge.http_url("scans"), BINARY_V2, body.as_bytes());
        assert_eq!(status, 200, "{answer}");
    };

    // Large and small events; the S3 gateway is killed while payloads are being uploaded,
    // and comes back.
    for i in 0..LARGE / 2 {
        post(i, &payload(i, LARGE));
        post(100 + i, format!("small-{i}").as_bytes());
    }
    wait_until("some payloads to be uploaded", T, || {
        (edge_metric(&edge, "edge_claim_checks_total{topic=\"scans\"}") >= 2).then_some(())
    });
    s3.kill9();
    for i in LARGE / 2..LARGE {
        post(i, &payload(i, LARGE));
        post(100 + i, format!("small-{i}").as_bytes());
    }
    wait_until("an upload to fail", T, || {
        let name = "edge_forward_errors_total{topic=\"scans\",reason=\"claim_check\"}";
        (edge_metric(&edge, name) > 0).then_some(())
    });
    s3.restart();

    // Every large event is a reference to its complete payload, every small one is itself.
    wait_until("every event to be forwarded", T, || {
        (edge_metric(&edge, "edge_forwarded_records_total{topic=\"scans\"}") >= 2 * LARGE as u64)
            .then_some(())
    });
    let at_hub = kcat_consume_all(&hub.bootstrap(), "scans", "%k|%s\n", T);
    assert_eq!(at_hub.len(), 2 * LARGE, "each event once");
    let mut keys = HashSet::new();
    for line in &at_hub {
        let (k, v) = line.split_once('|').unwrap();
        let i: usize = k[1..].parse().unwrap();
        if i >= 100 {
            assert_eq!(v, format!("small-{}", i - 100));
            continue;
        }
        let reference: serde_json::Value = serde_json::from_str(v).unwrap();
        let want = payload(i, LARGE);
        assert_eq!(reference["size"].as_u64(), Some(want.len() as u64), "{v}");
        assert_eq!(reference["bucket"], "payloads");
        assert_eq!(reference["content_type"], "application/octet-stream");
        let key = reference["key"].as_str().unwrap().to_string();
        let mut got = Vec::new();
        rt.block_on(client.get_with(&key, |c| got.extend_from_slice(c)))
            .unwrap();
        assert!(
            got == want,
            "event {i}: the object {key} is not its payload"
        );
        let sha: String = {
            use sha2::Digest;
            sha2::Sha256::digest(&want)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(reference["sha256"].as_str(), Some(sha.as_str()));
        // The checksum the gateway compares before uploading again is the one it keeps.
        let stored = rt.block_on(client.stored_sha256(&key)).unwrap();
        let expected = s3_client::S3Client::expected_sha256(&want, 5 << 20);
        assert_eq!(stored, Some(expected), "event {i}: {key}'s checksum");
        keys.insert(key);
    }
    assert_eq!(keys.len(), LARGE);
    // Each payload uploaded once at most: a batch sent again after the failed upload does
    // not upload the payloads the gateway holds already.
    let total: u64 = (0..LARGE).map(|i| payload(i, LARGE).len() as u64).sum();
    let uploaded = edge_metric(&edge, "edge_claim_check_bytes_total");
    assert!(
        uploaded <= total,
        "{uploaded} bytes uploaded for {total} bytes of payloads"
    );
    let objects = rt.block_on(client.list()).unwrap();
    assert_eq!(objects.len(), LARGE, "one object per payload: {objects:?}");
}

/// An admin call of the gateway: `method path` with the admin token and a JSON body.
fn edge_admin(
    edge: &Edge,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", edge.admin);
    let bearer = format!("Authorization: Bearer {}", e2e::ADMIN_TOKEN);
    e2e::clients::http_json_with(method, &url, body, &[&bearer])
}

/// `(key, records, reason)` of every parked key, by key.
fn parked_keys(edge: &Edge) -> BTreeMap<String, (u64, String)> {
    let (status, list) = edge_admin(edge, "GET", "/v1/parked", None);
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .expect("a list")
        .iter()
        .map(|v| {
            let key = v["key"].as_str().expect("text keys").to_string();
            let reason = v["reason"].as_str().unwrap().to_string();
            (key, (v["records"].as_u64().unwrap(), reason))
        })
        .collect()
}

/// `key:value` lines for kcat: events `from..to` keyed `k<i % 8>`, and after event
/// `poison_after` (when in range) a poison event of `poison_key`: 200 KB the hub refuses.
fn keyed_events(from: usize, to: usize, poison: &[(usize, usize)]) -> String {
    let mut out = String::new();
    for i in from..to {
        out.push_str(&format!("k{}:v-{i}\n", i % 8));
        for (after, key) in poison {
            if *after == i {
                // Random hex: lz4 cannot shrink it under the hub's limit.
                let hex: String = e2e::clients::noise(i as u64, 100_000)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                out.push_str(&format!("k{key}:poison-{i}-{hex}\n"));
            }
        }
    }
    out
}

fn kcat_keyed(edge: &Edge, input: &str) {
    let args = [
        "-b",
        &edge.bootstrap(),
        "-P",
        "-t",
        TOPIC,
        "-K:",
        "-X",
        "acks=all",
    ];
    e2e::clients::kcat(&args, Some(input.as_bytes()), T);
}

/// Each key's values at the hub (poison values shortened to `poison-<i>`).
fn hub_values(hub: &Broker) -> HashMap<String, Vec<String>> {
    let lines = kcat_consume_all(&hub.bootstrap(), TOPIC, "%k %s\n", T);
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for l in lines {
        let (k, v) = l.split_once(' ').expect("key and value");
        let v = match v.strip_prefix("poison-") {
            Some(rest) => format!("poison-{}", rest.split('-').next().unwrap()),
            None => v.to_string(),
        };
        out.entry(k.to_string()).or_default().push(v);
    }
    out
}

/// What key `k<key>` holds after events `0..to` with the poison events in `poison`.
fn expected_values(key: usize, to: usize, poison: &[(usize, usize)]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..to {
        if i % 8 == key {
            out.push(format!("v-{i}"));
        }
        if poison.contains(&(i, key)) {
            out.push(format!("poison-{i}"));
        }
    }
    out
}

/// An event the hub refuses for good (larger than the hub topic's `max.message.bytes`) is
/// parked at the branch, counted and listed; the events of its key wait behind it, in order,
/// through a crash of the gateway; every other key flows on. Released by an operator (after
/// the hub's limit is raised), the key's events reach the hub in order, once; dropped, they
/// never do, and the key's new events flow again.
#[test]
fn a_poison_event_waits_with_its_key_while_other_keys_flow_until_an_operator_acts() {
    let hub = Broker::start_with(&format!(
        "[topics]\npartitions = {HUB_PARTITIONS}\nmax_message_bytes = 65536\n"
    ));
    let mut edge = Edge::start(
        &hub.bootstrap(),
        "[buffer.topics]\npartitions = 2\n[forward]\nlinger = \"20ms\"\nbatch_bytes = 16384\n",
    );
    // k3 is poisoned after event 99, k5 after event 199.
    let poison = [(99, 3), (199, 5)];
    kcat_keyed(&edge, &keyed_events(0, 300, &poison));
    // k3: the poison event and the 25 of k3 after it; k5: the poison and 12 after it.
    let want = BTreeMap::from([
        ("k3".to_string(), (26, "MessageTooLarge".to_string())),
        ("k5".to_string(), (13, "MessageTooLarge".to_string())),
    ]);
    wait_until("the poison events and their keys parked", T, || {
        (parked_keys(&edge) == want && drained(&edge)).then_some(())
    });
    let at_hub = hub_values(&hub);
    for key in [0, 1, 2, 4, 6, 7] {
        assert_eq!(
            at_hub[&format!("k{key}")],
            expected_values(key, 300, &poison),
            "k{key} flows on"
        );
    }
    // Before the poison only.
    assert_eq!(at_hub["k3"], expected_values(3, 100, &[]));
    assert_eq!(at_hub["k5"], expected_values(5, 200, &[]));
    let parked_metric = |edge: &Edge| {
        (0..2)
            .map(|p| {
                let name = format!("edge_parked_records{{topic=\"{TOPIC}\",partition=\"{p}\"}}");
                metric(&edge.metrics_url(), &name).unwrap_or(0.0) as u64
            })
            .sum::<u64>()
    };
    assert_eq!(parked_metric(&edge), 39);

    // Parked keys survive a crash, and their new events still wait behind the poison.
    edge.kill9();
    edge.restart();
    kcat_keyed(&edge, &keyed_events(300, 320, &[]));
    // k3's 307 and 315, k5's 301, 309 and 317.
    let want = BTreeMap::from([
        ("k3".to_string(), (28, "MessageTooLarge".to_string())),
        ("k5".to_string(), (16, "MessageTooLarge".to_string())),
    ]);
    wait_until("new events parked behind the poison", T, || {
        (parked_keys(&edge) == want && drained(&edge)).then_some(())
    });
    // Only with the admin token.
    let k3 = format!(
        r#"{{"topic":"{TOPIC}","partition":{},"key":"k3"}}"#,
        local_partition(&edge, "k3")
    );
    let (status, _) = http_json(
        "POST",
        &format!("http://{}/v1/parked/release", edge.admin),
        Some(&k3),
    );
    assert_eq!(status, 401, "a release needs the admin's token");

    // The hub takes larger events now: k3 is released and reaches the hub whole, in order.
    let raised = e2e::clients::python(
        "ck_topic_config.py",
        &[
            "--bootstrap",
            &hub.bootstrap(),
            "--topic",
            TOPIC,
            "--set",
            "max.message.bytes=1048576",
        ],
        T,
    );
    assert_eq!(raised["max.message.bytes"], "1048576");
    // Through the operator's CLI.
    let partition = local_partition(&edge, "k3").to_string();
    let admin = edge.admin.to_string();
    let mut clk = std::process::Command::new(e2e::broker::bin("clk"));
    clk.args(["edge", "release", "--admin", &admin, "--topic", TOPIC])
        .args(["--partition", &partition, "--key", "k3"])
        .env("CLK_ADMIN_TOKEN", e2e::ADMIN_TOKEN);
    let out = e2e::clients::run(clk, None, T);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("k3 released", T, || {
        (!parked_keys(&edge).contains_key("k3")).then_some(())
    });
    // k5 is dropped: its poison and the events behind it never reach the hub.
    let k5 = format!(
        r#"{{"topic":"{TOPIC}","partition":{},"key":"k5"}}"#,
        local_partition(&edge, "k5")
    );
    assert_eq!(
        edge_admin(&edge, "POST", "/v1/parked/drop", Some(&k5)).0,
        202
    );
    wait_until("k5 dropped", T, || {
        parked_keys(&edge).is_empty().then_some(())
    });
    assert_eq!(
        edge_admin(&edge, "POST", "/v1/parked/drop", Some(&k5)).0,
        404
    );
    kcat_keyed(&edge, &keyed_events(320, 340, &[]));
    wait_until("the gateway to have forwarded its whole buffer", T, || {
        drained(&edge).then_some(())
    });

    let at_hub = hub_values(&hub);
    assert_eq!(
        at_hub["k3"],
        expected_values(3, 340, &poison),
        "k3 whole, in order, once"
    );
    let mut k5 = expected_values(5, 200, &[]);
    k5.extend(
        expected_values(5, 340, &[])
            .into_iter()
            .filter(|v| number(v) >= 320),
    );
    assert_eq!(at_hub["k5"], k5, "k5 without what was dropped");
    for key in [0, 1, 2, 4, 6, 7] {
        assert_eq!(
            at_hub[&format!("k{key}")],
            expected_values(key, 340, &poison),
            "k{key}"
        );
    }
    assert_eq!(parked_metric(&edge), 0);
    let counter = |name: &str| {
        let name = format!("{name}{{topic=\"{TOPIC}\"}}");
        metric(&edge.metrics_url(), &name).unwrap_or(0.0) as u64
    };
    assert_eq!(counter("edge_released_records_total"), 28);
    assert_eq!(counter("edge_dropped_records_total"), 16);
}

/// The local partition a key is buffered in (the gateway's two partitions, by Kafka's
/// default partitioner, as kcat's librdkafka picks them: consistent_random = murmur2).
fn local_partition(edge: &Edge, key: &str) -> i32 {
    let (_, list) = edge_admin(edge, "GET", "/v1/parked", None);
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["key"] == key)
        .map(|v| v["partition"].as_i64().unwrap() as i32)
        .unwrap_or_else(|| panic!("{key} is not parked: {list}"))
}

/// The gateway's own Kafka listeners are the broker's: the branch's applications log in with
/// SCRAM over TLS, or present a certificate of the hub's CA (mutual TLS); a wrong password,
/// a stranger's certificate, or no TLS at all get nothing into the buffer. What they were
/// told is stored reaches the hub.
#[test]
fn branch_applications_produce_to_the_gateway_with_scram_over_tls_or_a_certificate() {
    use tls::test_pki::{TestPki, Usage, Validity};
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("edge", &["127.0.0.1", "localhost"]);
    let hub = Broker::start_with(&format!("[topics]\npartitions = {HUB_PARTITIONS}\n"));
    let (scram, mtls) = (e2e::hub::free_addr(), e2e::hub::free_addr());
    let edge = Edge::start(
        &hub.bootstrap(),
        &format!(
            "[forward]\nlinger = \"20ms\"\n\
             [[buffer.kafka.listeners]]\nname = \"apps\"\nlisten = \"{scram}\"\nsecurity = \"SASL_SSL\"\n\
             [[buffer.kafka.listeners]]\nname = \"devices\"\nlisten = \"{mtls}\"\nsecurity = \"SSL\"\n\
             [buffer.tls]\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"requested\"\n\
             [buffer.sasl]\nmechanisms = [\"SCRAM-SHA-512\"]\nfailed_authentication_delay = \"100ms\"\n",
            server.certificate.display(),
            server.key.display(),
            pki.ca.display(),
        ),
    );
    // The branch's database agent's credential, set through Kafka's admin API on the
    // gateway's local (plain) listener.
    let bootstrap = edge.bootstrap();
    let args = [
        "--bootstrap",
        &bootstrap,
        "--upsert=outbox-agent:SCRAM-SHA-512:s3cret",
    ];
    e2e::clients::python("ck_scram.py", &args, T);
    let ca = format!("ssl.ca.location={}", pki.ca.display());
    let scram_login = |password: &str| {
        vec![
            "security.protocol=sasl_ssl".to_string(),
            "sasl.mechanism=SCRAM-SHA-512".into(),
            "sasl.username=outbox-agent".into(),
            format!("sasl.password={password}"),
            ca.clone(),
        ]
    };
    let device = pki.client("device", "pump-7", Validity::Current, Usage::ClientAuth);
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger_pki = TestPki::new(stranger_dir.path(), "other");
    let stranger = stranger_pki.client("device", "pump-666", Validity::Current, Usage::ClientAuth);
    let cert_login = |cert: &tls::test_pki::Issued| {
        vec![
            "security.protocol=ssl".to_string(),
            ca.clone(),
            format!("ssl.certificate.location={}", cert.certificate.display()),
            format!("ssl.key.location={}", cert.key.display()),
        ]
    };
    let produce = |addr: std::net::SocketAddr, config: &[String], from: usize| {
        let mut cmd = std::process::Command::new("kcat");
        cmd.args([
            "-b",
            &addr.to_string(),
            "-P",
            "-t",
            TOPIC,
            "-K:",
            "-X",
            "acks=all",
        ])
        .args(["-X", "message.timeout.ms=10000"]);
        for c in config {
            cmd.args(["-X", c]);
        }
        let input: String = (from..from + 50)
            .map(|i| format!("{}:v-{i}\n", i % 4))
            .collect();
        e2e::clients::run(cmd, Some(input.as_bytes()), T)
    };
    let ok = produce(scram, &scram_login("s3cret"), 0);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ok = produce(mtls, &cert_login(&device), 50);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Refused: a wrong password, a certificate of another CA, plain text on a TLS listener.
    for (addr, config) in [
        (scram, scram_login("guess")),
        (mtls, cert_login(&stranger)),
        (mtls, vec![]),
    ] {
        let refused = produce(addr, &config, 1000);
        assert!(!refused.status.success(), "{config:?} was let in");
    }
    wait_forwarded(&edge, 100);
    let at_hub = records(&hub.bootstrap());
    let all: Vec<String> = (0..100).map(|i| format!("v-{i}")).collect();
    check_at_hub(&at_hub, all.iter().map(String::as_str), 100);
    let logins = |result: &str| {
        let name = format!(
            "broker_sasl_authentications_total{{listener=\"apps\",mechanism=\"SCRAM-SHA-512\",result=\"{result}\"}}"
        );
        metric(&edge.metrics_url(), &name).unwrap_or(0.0)
    };
    assert!(logins("success") >= 1.0 && logins("failure") >= 1.0);
}

/// The outbox of a branch database that takes TCP connections over TLS only: the gateway
/// connects with `[outbox.tls]` (checking the database's certificate against the hub's CA),
/// and every row reaches the hub once; with a CA that did not sign the database's
/// certificate it reads nothing.
#[test]
fn the_outbox_is_read_over_tls_from_a_database_that_takes_nothing_else() {
    use tls::test_pki::{TestPki, Usage, Validity};
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let db = pki.server("branch-db", &["127.0.0.1"]);
    let pg = Postgres::start_with_tls(&db.certificate, &db.key);
    pg.sql(OUTBOX_TABLE);
    let hub = Broker::start_with(&format!("[topics]\npartitions = {HUB_PARTITIONS}\n"));
    let branch = pki.client("branch", "branch-017", Validity::Current, Usage::ClientAuth);
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::new(other_dir.path(), "other");
    let gateway = |ca: &std::path::Path| {
        Edge::start(
            &hub.bootstrap(),
            &format!(
                "[forward]\nlinger = \"20ms\"\n\
                 [outbox]\nconnection = \"{}\"\npoll_interval = \"50ms\"\n\
                 [outbox.tls]\ncertificate = \"{}\"\nkey = \"{}\"\nserver_ca = \"{}\"\n",
                pg.connection(),
                branch.certificate.display(),
                branch.key.display(),
                ca.display()
            ),
        )
    };
    // A stranger's CA first: the handshake fails, nothing is read.
    let doubting = gateway(&other.ca);
    wait_until("the TLS handshake to fail", T, || {
        (edge_metric(&doubting, "edge_outbox_errors_total") >= 2).then_some(())
    });
    assert!(doubting.log().contains("TLS"), "{}", doubting.log());
    drop(doubting);

    let edge = gateway(&pki.ca);
    // Rows committed before the gateway created its slot are not read.
    wait_until("the gateway to read its slot", T, || {
        (edge_metric(&edge, "edge_outbox_buffered_lsn") > 0).then_some(())
    });
    insert_outbox(&pg, 0, 200, 5);
    wait_until("the outbox to be forwarded", T, || {
        (outbox_forwarded(&edge) >= 200).then_some(())
    });
    let at_hub = wait_until("the hub to hold every outbox event", T, || {
        let r = outbox_at_hub(&hub.bootstrap());
        (r.len() >= 200).then_some(r)
    });
    check_outbox_at_hub(&at_hub, 200);
    assert_eq!(edge_metric(&edge, "edge_outbox_events_total"), 200);
}
