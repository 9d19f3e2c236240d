//! TLS handshakes per second against a broker's SSL listener: `--concurrency` loops each
//! connect, complete an mTLS handshake (TLS 1.3, a fresh one every time: no resumption), make
//! one ApiVersions round trip (so the broker has verified the client certificate and served
//! it, as for any Kafka client's first request), then close. What branches reconnecting at
//! once after a WAN outage cost the hub.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::report::{Percentiles, latency_histogram, percentiles, print};

#[derive(Args)]
pub struct HandshakeArgs {
    /// The TLS listener (host:port; the host must be in the server certificate's SANs).
    #[arg(long)]
    addr: String,
    #[arg(long)]
    tls_ca: PathBuf,
    #[arg(long)]
    tls_cert: PathBuf,
    #[arg(long)]
    tls_key: PathBuf,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct HandshakeResult {
    handshakes: u64,
    failures: u64,
    handshakes_per_s: f64,
    concurrency: usize,
    latency: Percentiles,
}

pub async fn run(a: HandshakeArgs) -> anyhow::Result<()> {
    let tls = tls::TlsClient::load(tls::TlsSettings {
        certificate: a.tls_cert.clone(),
        key: a.tls_key.clone(),
        client_ca: None,
        client_auth: tls::ClientAuth::None,
        server_ca: Some(a.tls_ca.clone()),
        min_version: tls::MinVersion::Tls13,
        principal_mapping_rules: vec!["DEFAULT".into()],
        reload_check: Duration::from_secs(3600),
        handshake_timeout: Duration::from_secs(10),
        crl: None,
    })?;
    let start = Instant::now();
    let deadline = start + a.duration;
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (tls, addr) = (Arc::clone(&tls), a.addr.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = latency_histogram();
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let began = Instant::now();
                let connected = kafka_client::Connection::connect_with(
                    &addr,
                    "clk-bench-handshakes",
                    Some(&tls),
                );
                match connected.await {
                    Ok(_connection) => h
                        .record(began.elapsed().as_micros().max(1) as u64)
                        .expect("in range"),
                    Err(_) => failures += 1,
                }
            }
            (h, failures)
        }));
    }
    let mut all = latency_histogram();
    let mut failures = 0;
    for t in tasks {
        let (h, f) = t.await?;
        all.add(&h).expect("same bounds");
        failures += f;
    }
    let elapsed = start.elapsed();
    print(
        &HandshakeResult {
            handshakes: all.len(),
            failures,
            handshakes_per_s: all.len() as f64 / elapsed.as_secs_f64(),
            concurrency: a.concurrency,
            latency: percentiles(&all),
        },
        a.json,
    );
    Ok(())
}
