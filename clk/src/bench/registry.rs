//! Schema Registry load against any Confluent-compatible registry (the broker's, Confluent's):
//! `concurrency` workers, each on one keep-alive HTTP/1.1 connection, register `--schemas`
//! distinct Avro schemas (each under its own subject, as producers of many topics do), then
//! look ids up (`GET /schemas/ids/{id}`, what a deserializer does on a cache miss) `--lookups`
//! times. Reports operations per second and latency percentiles; the subjects it made are
//! deleted (soft, then permanently) at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::report::{Percentiles, latency_histogram, percentiles, print};

#[derive(Args)]
pub struct RegistryArgs {
    /// The registry, host:port (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: String,
    /// Requests in flight (one connection each).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Distinct schemas registered.
    #[arg(long, default_value_t = 2000)]
    schemas: usize,
    /// Id look-ups.
    #[arg(long, default_value_t = 50000)]
    lookups: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Phase {
    requests: usize,
    ops_s: f64,
    latency: Percentiles,
}

#[derive(Serialize)]
struct RegistryReport {
    bench: &'static str,
    addr: String,
    concurrency: usize,
    register: Phase,
    lookup_by_id: Phase,
}

/// One keep-alive connection.
struct Conn {
    addr: String,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            addr: addr.to_string(),
            sender,
        })
    }

    async fn call(&mut self, method: Method, path: &str, body: String) -> anyhow::Result<String> {
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", &self.addr)
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(Full::new(Bytes::from(body)))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        anyhow::ensure!(status == StatusCode::OK, "{method} {path}: {status} {body}");
        Ok(body)
    }
}

fn subject(run: u128, i: usize) -> String {
    format!("clk-bench-{run}-{i}")
}

fn schema(run: u128, i: usize) -> String {
    let avro = format!(
        r#"{{"type":"record","name":"Bench{i}","namespace":"clk.bench.r{run}","fields":[{{"name":"id","type":"long"}},{{"name":"site","type":"string"}},{{"name":"value","type":"double","default":0.0}}]}}"#
    );
    serde_json::json!({ "schema": avro }).to_string()
}

pub async fn run(a: RegistryArgs) -> anyhow::Result<()> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(a.schemas)));
    let register = phase(&a.addr, a.concurrency, a.schemas, {
        let ids = Arc::clone(&ids);
        move |mut c: Conn, i| {
            let ids = Arc::clone(&ids);
            async move {
                let path = format!("/subjects/{}/versions", subject(run, i));
                let answer = c.call(Method::POST, &path, schema(run, i)).await?;
                let id = serde_json::from_str::<serde_json::Value>(&answer)?["id"]
                    .as_i64()
                    .with_context(|| format!("no id in {answer}"))?;
                ids.lock().expect("not poisoned").push(id);
                Ok(c)
            }
        }
    })
    .await?;
    let ids: Arc<Vec<i64>> = Arc::new(std::mem::take(&mut *ids.lock().expect("not poisoned")));
    let lookup_by_id = phase(&a.addr, a.concurrency, a.lookups, {
        let ids = Arc::clone(&ids);
        move |mut c: Conn, i| {
            let id = ids[i.wrapping_mul(7919) % ids.len()];
            async move {
                c.call(Method::GET, &format!("/schemas/ids/{id}"), String::new())
                    .await?;
                Ok(c)
            }
        }
    })
    .await?;
    // Clean up: soft delete, then permanent.
    for permanent in [false, true] {
        phase(
            &a.addr,
            a.concurrency,
            a.schemas,
            move |mut c: Conn, i| async move {
                let path = format!("/subjects/{}?permanent={permanent}", subject(run, i));
                c.call(Method::DELETE, &path, String::new()).await?;
                Ok(c)
            },
        )
        .await?;
    }
    let report = RegistryReport {
        bench: "registry",
        addr: a.addr,
        concurrency: a.concurrency,
        register,
        lookup_by_id,
    };
    print(&report, a.json);
    Ok(())
}

/// Run `op(i)` for `i` in `0..count` with `concurrency` workers, each on its own connection.
async fn phase<F, Fut>(addr: &str, concurrency: usize, count: usize, op: F) -> anyhow::Result<Phase>
where
    F: Fn(Conn, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<Conn>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = vec![];
    for _ in 0..concurrency.max(1) {
        let (next, op, addr) = (Arc::clone(&next), op.clone(), addr.to_string());
        workers.push(tokio::spawn(async move {
            let mut h = latency_histogram();
            let mut conn = Conn::open(&addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(h);
                }
                let t = Instant::now();
                conn = op(conn, i).await?;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
            }
        }));
    }
    let mut all = latency_histogram();
    for w in workers {
        all.add(w.await??)?;
    }
    let elapsed: Duration = started.elapsed();
    Ok(Phase {
        requests: count,
        ops_s: count as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: percentiles(&all),
    })
}
