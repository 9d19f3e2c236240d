//! Every listener of the broker (Kafka plaintext, mTLS and SASL, the Schema Registry, the
//! admin port), the S3 gateway (S3 and admin) and the witness (quorum and admin) attacked at
//! once, as an attacker would: hundreds of idle connections per listener from many
//! addresses, requests that announce 90 MiB or 1 GiB and stall after 1 MiB, frames trickled
//! a byte at a time, and random bytes. Meanwhile real clients are served, round after round:
//! a confluent-kafka producer keeps its acknowledged records coming with no error (every one
//! read back afterwards), kcat reads metadata over plaintext and mTLS, curl reads the
//! registry's subjects, every admin port's metrics and the S3 gateway's answer. Each
//! process's peak memory (VmHWM) stays bounded.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::acked::{Producer, read_acked, settled, verify};
use e2e::clients::{http_status as curl, kcat, metric, noise};
use e2e::hub::free_addr;
use e2e::witness::Witness;
use e2e::{Broker, S3gw, wait_until};
use tls::test_pki::{TestPki, Usage, Validity};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const T: Duration = Duration::from_secs(90);
/// Idle connections held open per listener, spread over as many source addresses as
/// `SOURCES` (so the per-address limits are not what stops them).
const IDLE_PER_LISTENER: usize = 300;
const SOURCES: usize = 30;
/// Stalled large requests, trickling connections and random-bytes connections per listener.
const STALLED_PER_LISTENER: usize = 8;
const TRICKLES_PER_LISTENER: usize = 8;
const RANDOM_PER_LISTENER: usize = 16;
/// Peak resident memory allowed to each process under the whole attack. A broker serving
/// this load alone peaks near 60 MiB; memory reserved for what attackers announce would
/// take 90 MiB per stalled Kafka request (24 of them) and blow far past this.
const BROKER_PEAK_MIB_MAX: u64 = 400;
const SIDE_PEAK_MIB_MAX: u64 = 200;

#[derive(Clone, Copy)]
enum Speaks {
    Kafka,
    Http,
    /// A TLS listener: what stalls there is a handshake.
    Tls,
}

/// A connection from loopback address 127.0.3.`n` (its own client address).
async fn connect_from(n: usize, to: SocketAddr) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(SocketAddr::from(([127, 0, 3, (n % SOURCES) as u8 + 1], 0)))
        .ok()?;
    s.connect(to).await.ok()
}

/// The first bytes of a request that announces far more than it will send.
fn large_head(speaks: Speaks) -> Vec<u8> {
    match speaks {
        Speaks::Kafka => (90i32 << 20).to_be_bytes().to_vec(),
        Speaks::Http => b"PUT /bucket/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n".to_vec(),
        // A TLS record header announcing a 16 KiB handshake record.
        Speaks::Tls => vec![0x16, 0x03, 0x01, 0x40, 0x00],
    }
}

/// Start every attack on `to`; the tasks run until the runtime is dropped.
fn attack(rt: &tokio::runtime::Runtime, to: SocketAddr, speaks: Speaks, seed: u64) {
    for i in 0..IDLE_PER_LISTENER {
        rt.spawn(async move {
            let _held = connect_from(i, to).await;
            std::future::pending::<()>().await
        });
    }
    for i in 0..STALLED_PER_LISTENER {
        rt.spawn(async move {
            let Some(mut s) = connect_from(i, to).await else {
                return;
            };
            let _ = s.write_all(&large_head(speaks)).await;
            let _ = s.write_all(&vec![b'x'; 1 << 20]).await;
            std::future::pending::<()>().await
        });
    }
    for i in 0..TRICKLES_PER_LISTENER {
        rt.spawn(async move {
            let Some(mut s) = connect_from(i, to).await else {
                return;
            };
            for b in large_head(speaks)
                .into_iter()
                .chain(std::iter::repeat(b'y'))
            {
                if s.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    for i in 0..RANDOM_PER_LISTENER {
        rt.spawn(async move {
            // Over and over: a connection, 64 KiB of noise, closed.
            for round in 0u64.. {
                let Some(mut s) = connect_from(i, to).await else {
                    return;
                };
                let _ = s
                    .write_all(&noise(seed + i as u64 * 1000 + round, 64 << 10))
                    .await;
                drop(s);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

/// Peak resident memory of process `pid` in MiB.
fn peak_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024
}

#[test]
fn every_listener_attacked_at_once_still_serves_real_clients_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("broker", &["127.0.0.1", "localhost"]);
    let branch = pki.client("branch", "branch-017", Validity::Current, Usage::ClientAuth);
    let (ssl, apps, registry) = (free_addr(), free_addr(), free_addr());
    let b = Broker::start_with(&format!(
        "[[kafka.listeners]]\nname = \"branches\"\nlisten = \"{ssl}\"\nsecurity = \"SSL\"\n\
         [[kafka.listeners]]\nname = \"apps\"\nlisten = \"{apps}\"\nsecurity = \"SASL_PLAINTEXT\"\n\
         [schema_registry]\nlisten = \"{registry}\"\n\
         [tls]\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"required\"\n",
        server.certificate.display(),
        server.key.display(),
        pki.ca.display(),
    ));
    let s3 = S3gw::start();
    let quorum = free_addr();
    let cluster = format!(
        "[cluster]\nname = \"abuse\"\nvoters = [\"1@{}\", \"2@{}\", \"100@{quorum}\"]\ndata_sites = [\"site-a\", \"site-b\"]\n",
        free_addr(),
        free_addr()
    );
    let witness = Witness::start(100, "site-c", quorum, &cluster);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let targets = [
        (b.kafka, Speaks::Kafka),
        (apps, Speaks::Kafka),
        (ssl, Speaks::Tls),
        (registry, Speaks::Http),
        (b.admin, Speaks::Http),
        (s3.s3, Speaks::Http),
        (s3.admin, Speaks::Http),
        (quorum, Speaks::Kafka),
        (witness.admin, Speaks::Http),
    ];
    for (i, (to, speaks)) in targets.iter().enumerate() {
        attack(&rt, *to, *speaks, i as u64 * 1_000_003);
    }

    // The attack landed: the broker holds the idle connections of two Kafka listeners at
    // least (those on the TLS listener wait in their handshakes).
    let open = || metric(&b.metrics_url(), "broker_connections").unwrap_or(0.0);
    wait_until("the attackers' connections to be open", T, || {
        (open() >= 2.0 * IDLE_PER_LISTENER as f64).then_some(())
    });

    // A producer on the plaintext listener, acknowledged records counted as they come.
    let bootstrap = b.bootstrap();
    let acked = dir.path().join("acked");
    let producer = Producer::start(
        &acked,
        &[
            "--bootstrap",
            &bootstrap,
            "--topic",
            "under-attack",
            "--rate",
            "200",
        ],
    );
    let tls_config = [
        "-X".to_string(),
        "security.protocol=ssl".into(),
        "-X".into(),
        format!("ssl.ca.location={}", pki.ca.display()),
        "-X".into(),
        format!("ssl.certificate.location={}", branch.certificate.display()),
        "-X".into(),
        format!("ssl.key.location={}", branch.key.display()),
    ];
    let ssl_bootstrap = ssl.to_string();
    for round in 1..=3 {
        producer.wait_acked(round * 300, T);
        let plain = kcat(&["-b", &bootstrap, "-L", "-m", "10"], None, T);
        assert!(plain.contains("under-attack"), "round {round}: {plain}");
        let mut args = vec!["-b", ssl_bootstrap.as_str(), "-L", "-m", "10"];
        args.extend(tls_config.iter().map(String::as_str));
        let secure = kcat(&args, None, T);
        assert!(secure.contains("under-attack"), "round {round}: {secure}");
        for (what, url) in [
            ("registry", format!("http://{registry}/subjects")),
            ("broker admin", format!("http://{}/metrics", b.admin)),
            ("s3gw admin", format!("http://{}/metrics", s3.admin)),
            ("witness admin", format!("http://{}/metrics", witness.admin)),
        ] {
            wait_until(&format!("round {round}: {what} to answer"), T, || {
                (curl(&url, &[]) == "200").then_some(())
            });
        }
        // The S3 gateway refuses an unsigned listing: an answer, and the right one.
        let listing = format!("http://{}/private", s3.s3);
        wait_until(
            &format!("round {round}: the S3 gateway to answer"),
            T,
            || (curl(&listing, &[]) == "403").then_some(()),
        );
    }
    let report = producer.stop(T);
    assert_eq!(report["error_count"], 0, "{report}");
    let acks = read_acked(&acked);
    let stored = settled(&bootstrap, "under-attack", &acks, T);
    assert!(verify(&acks, &stored) >= 900);

    for (what, pid, max) in [
        ("broker", b.pid(), BROKER_PEAK_MIB_MAX),
        ("s3gw", s3.pid(), SIDE_PEAK_MIB_MAX),
        ("witness", witness.pid(), SIDE_PEAK_MIB_MAX),
    ] {
        let peak = peak_mib(pid.expect("running"));
        eprintln!("{what}: peak RSS {peak} MiB under attack");
        assert!(peak <= max, "{what} peaked at {peak} MiB (max {max})");
    }
    drop(rt);
}
