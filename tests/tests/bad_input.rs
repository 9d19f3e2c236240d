//! Malformed, hostile and slow clients: each gets a Kafka error code or a closed connection,
//! never a panic, a hang or a damaged log, and the broker keeps serving everyone else.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::clients::{kcat, metric};
use e2e::{Broker, wait_until};
use kafka_client::encode_batch;

const LIMITS: &str = "[kafka]\nmax_request_size = \"2MiB\"\nidle_timeout = \"1s\"\n";

#[derive(Debug, PartialEq)]
enum Outcome {
    Closed,
    Response(Vec<u8>),
}

/// Send raw bytes on a new connection; report the response frame or the connection closing.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Outcome {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The broker may close before reading everything: a failed write is a close too.
    if s.write_all(bytes).is_err() {
        return Outcome::Closed;
    }
    let mut size = [0u8; 4];
    match s.read_exact(&mut size) {
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            panic!(
                "no response and no close within 10s for {:?}",
                &bytes[..bytes.len().min(32)]
            )
        }
        Err(_) => Outcome::Closed,
        Ok(()) => {
            let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
            s.read_exact(&mut frame).unwrap();
            Outcome::Response(frame)
        }
    }
}

/// A request frame with a v1 header (`client_id` "t") and `body`.
fn frame(api_key: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&api_key.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&correlation.to_be_bytes());
    f.extend_from_slice(&1i16.to_be_bytes());
    f.push(b't');
    f.extend_from_slice(body);
    let mut out = (f.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&f);
    out
}

fn still_serves(b: &Broker) {
    let bootstrap = b.bootstrap();
    let out = kcat(&["-b", &bootstrap, "-L"], None, Duration::from_secs(30));
    assert!(out.contains("1 brokers"), "{out}");
    assert!(!b.log().contains("panicked"), "{}", b.log());
}

#[test]
fn malformed_frames_close_the_connection() {
    let b = Broker::start_with(LIMITS);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "larger than max_request_size",
            (3i32 << 20).to_be_bytes().to_vec(),
        ),
        ("negative size", (-7i32).to_be_bytes().to_vec()),
        ("too short for a header", vec![0, 0, 0, 3, 0, 3, 0]),
        ("unknown API key", frame(999, 0, 1, &[])),
        ("unsupported Metadata version", frame(3, 99, 1, &[])),
        // Metadata v1: a topic array of 5 entries with no entries.
        ("truncated body", frame(3, 1, 1, &5i32.to_be_bytes())),
        // Produce v3 with a transactional id length pointing far past the end.
        ("lengths past the end", frame(0, 3, 1, &[0x7f, 0x00, 0, 1])),
    ];
    for (what, bytes) in cases {
        assert_eq!(exchange(b.kafka, &bytes), Outcome::Closed, "{what}");
    }
    still_serves(&b);
}

#[test]
fn api_versions_from_the_future_get_unsupported_version_in_v0() {
    let b = Broker::start();
    let Outcome::Response(resp) = exchange(b.kafka, &frame(18, 42, 77, &[])) else {
        panic!("ApiVersions must be answered");
    };
    assert_eq!(
        i32::from_be_bytes(resp[0..4].try_into().unwrap()),
        77,
        "correlation id"
    );
    assert_eq!(
        i16::from_be_bytes(resp[4..6].try_into().unwrap()),
        35,
        "UNSUPPORTED_VERSION"
    );
    let keys = i32::from_be_bytes(resp[6..10].try_into().unwrap());
    assert!(
        keys > 20,
        "the v0 answer still lists the supported APIs ({keys})"
    );
}

#[test]
fn random_frames_never_crash_or_hang_the_broker() {
    let b = Broker::start_with(LIMITS);
    // A fixed-seed generator: a failure is reproducible.
    let mut seed: u64 = 0x5eed_cafe;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..300 {
        let api = (next() % 70) as i16;
        let version = (next() % 14) as i16;
        let len = (next() % 300) as usize;
        let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Both outcomes are legitimate for random input; what matters is getting one.
        let _ = exchange(b.kafka, &frame(api, version, i, &body));
    }
    still_serves(&b);
}

fn produce(b: &Broker, records: Bytes, acks: i16) -> i16 {
    b.produce_raw("bad", records, acks)
}

#[test]
fn bad_batches_get_kafka_error_codes_and_leave_the_log_intact() {
    let b = Broker::start_with("[topics]\nmax_message_bytes = \"64KiB\"\n");
    let bootstrap = b.bootstrap();
    kcat(
        &["-b", &bootstrap, "-P", "-t", "bad"],
        Some(b"good\n"),
        Duration::from_secs(30),
    );
    let batch = |n: usize| {
        encode_batch(
            &[(None, Some(Bytes::from(vec![b'x'; n])))],
            1_800_000_000_000,
            None,
        )
    };
    let mut corrupt = batch(100).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(produce(&b, Bytes::from(corrupt), -1), 2, "CORRUPT_MESSAGE");
    let mut truncated = batch(100).to_vec();
    truncated.truncate(truncated.len() - 10);
    assert_eq!(
        produce(&b, Bytes::from(truncated), -1),
        2,
        "CORRUPT_MESSAGE"
    );
    let mut old_magic = batch(100).to_vec();
    old_magic[16] = 1;
    assert_eq!(
        produce(&b, Bytes::from(old_magic), -1),
        43,
        "UNSUPPORTED_FOR_MESSAGE_FORMAT"
    );
    assert_eq!(produce(&b, batch(100_000), -1), 10, "MESSAGE_TOO_LARGE");
    assert_eq!(produce(&b, batch(100), 5), 21, "INVALID_REQUIRED_ACKS");
    assert_eq!(
        produce(&b, batch(100), -1),
        0,
        "a good batch after all that"
    );
    let out = kcat(
        &[
            "-b", &bootstrap, "-C", "-t", "bad", "-e", "-q", "-f", "%o %S\n",
        ],
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out, "0 4\n1 100\n");
}

#[test]
fn idle_and_slow_connections_are_closed() {
    let b = Broker::start_with(LIMITS);
    let started = Instant::now();
    let mut idle = TcpStream::connect(b.kafka).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        idle.read(&mut [0u8; 1]).unwrap(),
        0,
        "an idle connection is closed"
    );
    // A frame that never finishes arriving (slowloris) is closed the same way.
    let mut slow = TcpStream::connect(b.kafka).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(&frame(3, 1, 1, &[])[..6]).unwrap();
    assert_eq!(
        slow.read(&mut [0u8; 1]).unwrap(),
        0,
        "a stalled frame is closed"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    still_serves(&b);
}

#[test]
fn a_claimed_huge_frame_does_not_allocate_it() {
    let b = Broker::start_with("[kafka]\nmax_request_size = \"100MiB\"\nidle_timeout = \"2s\"\n");
    let rss = || metric(&b.metrics_url(), "process_resident_memory_bytes").unwrap();
    let before = rss();
    // Twenty connections each announce a 90 MiB request and send ten bytes of it.
    let streams: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(b.kafka).unwrap();
            s.write_all(&(90i32 << 20).to_be_bytes()).unwrap();
            s.write_all(&[0u8; 10]).unwrap();
            s
        })
        .collect();
    wait_until(
        "the broker to read the announced sizes",
        Duration::from_secs(10),
        || (metric(&b.metrics_url(), "broker_connections").unwrap_or(0.0) >= 20.0).then_some(()),
    );
    let during = rss();
    assert!(
        during - before < 64.0 * 1024.0 * 1024.0,
        "RSS grew by {} bytes",
        during - before
    );
    for mut s in streams {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(s.read(&mut [0u8; 1]).unwrap_or(0), 0);
    }
    still_serves(&b);
}

/// A client that closes its connection while its Fetch waits for data (a follower moving to a
/// new connection, a consumer going away) frees the connection at once, not when the long
/// poll's wait (two minutes here, longer than the deadline below) would have ended.
#[test]
fn a_fetch_waiting_for_data_ends_with_its_connection() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    // No idle timeout within the test: only the client's leaving may end the connection.
    let b = Broker::start_with("[kafka]\nidle_timeout = \"300s\"\n");
    let bootstrap = b.bootstrap();
    kcat(
        &["-b", &bootstrap, "-P", "-t", "idle", "-X", "acks=all"],
        Some(b"one\n"),
        Duration::from_secs(30),
    );
    let connections = || metric(&b.metrics_url(), "broker_connections").unwrap_or(-1.0);
    wait_until(
        "kcat's connections to close",
        Duration::from_secs(20),
        || (connections() == 0.0).then_some(()),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let conn = kafka_client::Connection::connect(&b.kafka.to_string(), "leaver")
            .await
            .expect("connect");
        let partition = FetchPartition::default()
            .with_partition(0)
            .with_fetch_offset(1)
            .with_partition_max_bytes(1 << 20);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(120_000)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("idle")))
                    .with_partitions(vec![partition]),
            ]);
        let waiting = conn.send_at(request, 4).await.expect("send the fetch");
        wait_until("the fetch's connection", Duration::from_secs(20), || {
            (connections() == 1.0).then_some(())
        });
        drop(waiting);
        drop(conn);
    });
    wait_until(
        "the connection of the waiting fetch to close",
        Duration::from_secs(30),
        || (connections() == 0.0).then_some(()),
    );
    still_serves(&b);
}

/// A connection to `to` from the loopback address `src` (a client address of its own, for the
/// per-address limits).
fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from((src, 0))).unwrap();
        s.connect(to).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Whether the broker closed `s` (a read ends with EOF or a reset, not a timeout).
fn closed_by_broker(s: &mut TcpStream) -> bool {
    match s.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn request_memory(b: &Broker, pool: &str) -> f64 {
    metric(
        &b.metrics_url(),
        &format!("broker_request_memory_bytes{{pool=\"{pool}\"}}"),
    )
    .unwrap_or(-1.0)
}

/// The attack the security issue reports: six connections each announce a 90 MiB request
/// and send 1 MiB of it. Reserving announced sizes from the 512 MiB budget made the sixth wait,
/// and every later request behind it, until the idle timeout. Memory is now taken as bytes
/// arrive: the six hold their 6 MiB (with no deadline within the test), and everyone else is
/// served as usual.
#[test]
fn announced_sizes_cost_nothing_until_the_bytes_arrive() {
    let b = Broker::start_with("[kafka]\nidle_timeout = \"300s\"\nrequest_timeout = \"300s\"\n");
    let chunk = vec![0u8; 1 << 20];
    let attackers: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(b.kafka).unwrap();
            s.write_all(&(90i32 << 20).to_be_bytes()).unwrap();
            s.write_all(&chunk).unwrap();
            s
        })
        .collect();
    wait_until(
        "the broker to read what the six sent",
        Duration::from_secs(20),
        || (request_memory(&b, "large") >= 6.0 * f64::from(1 << 20)).then_some(()),
    );
    let held = request_memory(&b, "large");
    assert!(held < 6.0 * 2.0 * f64::from(1 << 20), "{held} bytes held");
    still_serves(&b);
    // A record large enough to need the large budget goes through too.
    let bootstrap = b.bootstrap();
    let mut record = vec![b'x'; 200 << 10];
    record.push(b'\n');
    kcat(
        &["-b", &bootstrap, "-P", "-t", "served", "-X", "acks=all"],
        Some(&record),
        Duration::from_secs(30),
    );
    drop(attackers);
}

/// Large requests that fill the whole budget (one that sends all but a byte of it and stalls)
/// keep no small request waiting: those draw from a reserve of their own.
#[test]
fn small_requests_are_served_while_large_ones_fill_the_budget() {
    let b = Broker::start_with(
        "[kafka]\nmax_request_size = \"4MiB\"\nmax_inflight_request_bytes = \"4MiB\"\nidle_timeout = \"300s\"\nrequest_timeout = \"300s\"\n",
    );
    let mut filler = TcpStream::connect(b.kafka).unwrap();
    filler.write_all(&(4i32 << 20).to_be_bytes()).unwrap();
    filler.write_all(&vec![0u8; (4 << 20) - 1]).unwrap();
    wait_until(
        "the large budget to be full",
        Duration::from_secs(20),
        || (request_memory(&b, "large") == f64::from(4 << 20)).then_some(()),
    );
    still_serves(&b);
    drop(filler);
}

/// A request that does not arrive whole within `request_timeout` closes its connection and
/// gives its memory back; a large request waiting for that memory then goes through.
#[test]
fn a_request_not_received_in_time_closes_its_connection_and_frees_its_memory() {
    let b = Broker::start_with(
        "[kafka]\nmax_request_size = \"2MiB\"\nmax_inflight_request_bytes = \"2MiB\"\nidle_timeout = \"300s\"\nrequest_timeout = \"2s\"\n",
    );
    let mut slow = TcpStream::connect(b.kafka).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(&(2i32 << 20).to_be_bytes()).unwrap();
    slow.write_all(&vec![0u8; (2 << 20) - 1]).unwrap();
    wait_until("the budget to be full", Duration::from_secs(20), || {
        (request_memory(&b, "large") == f64::from(2 << 20)).then_some(())
    });
    // A 600 KiB record needs the large budget: it waits until the slow request is dropped.
    let bootstrap = b.bootstrap();
    let mut big = vec![b'x'; 600 << 10];
    big.push(b'\n');
    kcat(
        &[
            "-b",
            &bootstrap,
            "-P",
            "-t",
            "big",
            "-X",
            "acks=all",
            "-X",
            "message.max.bytes=2000000",
        ],
        Some(&big),
        Duration::from_secs(60),
    );
    assert!(
        closed_by_broker(&mut slow),
        "the slow request's connection is closed"
    );
    let closed = metric(
        &b.metrics_url(),
        "broker_connections_closed_total{listener=\"clients\",reason=\"request_timeout\"}",
    );
    assert_eq!(closed, Some(1.0));
    wait_until(
        "the memory to be given back",
        Duration::from_secs(20),
        || (request_memory(&b, "large") == 0.0).then_some(()),
    );
    still_serves(&b);
}

/// No one address takes every connection: past `max_connections_per_ip` its connections are
/// closed as they arrive, past `max_connections` everyone's are, and other clients are served.
#[test]
fn connections_past_the_per_address_and_listener_limits_are_refused() {
    let b = Broker::start_with(
        "[kafka]\nmax_connections = 12\nmax_connections_per_ip = 8\nidle_timeout = \"300s\"\n",
    );
    let open = || metric(&b.metrics_url(), "broker_connections").unwrap_or(-1.0);
    let mut from_2: Vec<TcpStream> = (0..8)
        .map(|_| connect_from([127, 0, 0, 2], b.kafka))
        .collect();
    wait_until("eight connections", Duration::from_secs(20), || {
        (open() == 8.0).then_some(())
    });
    assert!(closed_by_broker(&mut connect_from([127, 0, 0, 2], b.kafka)));
    still_serves(&b);
    let from_3: Vec<TcpStream> = (0..4)
        .map(|_| connect_from([127, 0, 0, 3], b.kafka))
        .collect();
    wait_until("twelve connections", Duration::from_secs(20), || {
        (open() == 12.0).then_some(())
    });
    assert!(closed_by_broker(&mut connect_from([127, 0, 0, 4], b.kafka)));
    let refused = |reason: &str| {
        metric(
            &b.metrics_url(),
            &format!(
                "broker_connections_refused_total{{listener=\"clients\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(refused("max_connections_per_ip"), Some(1.0));
    assert_eq!(refused("max_connections"), Some(1.0));
    // Places come back as connections close.
    from_2.truncate(4);
    drop(from_3);
    wait_until("four connections", Duration::from_secs(20), || {
        (open() == 4.0).then_some(())
    });
    let mut again = connect_from([127, 0, 0, 2], b.kafka);
    again.write_all(&frame(18, 0, 7, &[])).unwrap();
    let mut size = [0u8; 4];
    again.read_exact(&mut size).unwrap();
    still_serves(&b);
}
