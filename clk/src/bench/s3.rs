//! S3 load against any S3 endpoint (this gateway, MinIO, AWS): for each large object size,
//! `concurrency` workers PUT objects until `--bytes` are written, then GET them all back; then
//! the same for many small objects, reported in operations per second. Requests are SigV4
//! presigned (see the `s3-client` crate), bodies are streamed from one random buffer, so the
//! tool itself stays small next to what it measures. Everything it wrote is deleted at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use s3_client::S3Client;
use serde::Serialize;

use super::report::{Percentiles, latency_histogram, mb_per_s, percentiles, print};

#[derive(Args)]
pub struct S3Args {
    /// The S3 endpoint, e.g. http://127.0.0.1:9000 or https://s3.eu-west-1.amazonaws.com.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    endpoint: String,
    /// A bucket to use (created if missing); the objects written are deleted afterwards.
    #[arg(long, default_value = "clk-bench")]
    bucket: String,
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key: String,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Object sizes for the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1MiB,64MiB", value_parser = appconfig::size::parse)]
    sizes: Vec<u64>,
    /// Bytes written (then read) per throughput run.
    #[arg(long, default_value = "2GiB", value_parser = appconfig::size::parse)]
    bytes: u64,
    /// Size of the small objects of the operations-per-second run.
    #[arg(long, default_value = "4KiB", value_parser = appconfig::size::parse)]
    small_size: u64,
    /// Number of small objects.
    #[arg(long, default_value_t = 4000)]
    small_objects: usize,
    /// The disk's sequential write limit in MB/s (from `clk bench disk`), to report ratios.
    #[arg(long)]
    disk_mb_s: Option<f64>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Phase {
    objects: usize,
    mb_s: f64,
    ops_s: f64,
    latency: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    of_disk_limit: Option<f64>,
}

#[derive(Serialize)]
struct SizeReport {
    object_bytes: u64,
    put: Phase,
    get: Phase,
}

#[derive(Serialize)]
struct S3Report {
    bench: &'static str,
    endpoint: String,
    concurrency: usize,
    runs: Vec<SizeReport>,
}

pub async fn run(a: S3Args) -> anyhow::Result<()> {
    let client = S3Client::new(
        &a.endpoint,
        &a.bucket,
        &a.access_key,
        &a.secret_key,
        &a.region,
    )?;
    client.create_bucket().await?;
    let mut runs = vec![];
    let mut sizes: Vec<(u64, usize)> = a
        .sizes
        .iter()
        .map(|s| (*s, (a.bytes / s.max(&1)).max(1) as usize))
        .collect();
    sizes.push((a.small_size, a.small_objects));
    for (size, count) in sizes {
        let data = random(size as usize);
        let keys: Vec<String> = (0..count)
            .map(|i| format!("clk-bench/{size}/{i:08}"))
            .collect();
        // Large objects are bounded by the disk's bandwidth; small ones by its sync rate,
        // which `clk bench disk` reports separately.
        let disk = a.disk_mb_s.filter(|_| size >= 1 << 20);
        let put = phase(&client, &keys, a.concurrency, size, disk, {
            let data = data.clone();
            move |c: S3Client, key: String| {
                let data = data.clone();
                async move { c.put(&key, data).await }
            }
        })
        .await?;
        let get = phase(
            &client,
            &keys,
            a.concurrency,
            size,
            None,
            move |c: S3Client, key| async move {
                let n = c.get(&key).await?;
                anyhow::ensure!(n == size, "{key}: read {n} bytes, wrote {size}");
                Ok(())
            },
        )
        .await?;
        phase(
            &client,
            &keys,
            a.concurrency,
            0,
            None,
            |c: S3Client, key| async move { c.delete(&key).await },
        )
        .await?;
        runs.push(SizeReport {
            object_bytes: size,
            put,
            get,
        });
    }
    let report = S3Report {
        bench: "s3",
        endpoint: a.endpoint,
        concurrency: a.concurrency,
        runs,
    };
    if a.json {
        print(&report, true);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &S3Report) {
    println!(
        "S3 at {} with {} requests in flight",
        r.endpoint, r.concurrency
    );
    println!(
        "{:>10} {:>4} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "object", "op", "count", "MB/s", "ops/s", "p50 ms", "p99 ms", "max ms", "of disk"
    );
    for run in &r.runs {
        for (op, p) in [("PUT", &run.put), ("GET", &run.get)] {
            println!(
                "{:>10} {:>4} {:>7} {:>10.1} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                format!("{}", bytesize::ByteSize(run.object_bytes)),
                op,
                p.objects,
                p.mb_s,
                p.ops_s,
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms,
                p.of_disk_limit
                    .map_or(String::new(), |f| format!("{:.0} %", f * 100.0))
            );
        }
    }
}

/// Run `op` on every key with `concurrency` workers; throughput and latency.
async fn phase<F, Fut>(
    client: &S3Client,
    keys: &[String],
    concurrency: usize,
    object_bytes: u64,
    disk_mb_s: Option<f64>,
    op: F,
) -> anyhow::Result<Phase>
where
    F: Fn(S3Client, String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let keys: Arc<Vec<String>> = Arc::new(keys.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = vec![];
    for _ in 0..concurrency.max(1) {
        let (client, keys, next, op) = (client.clone(), keys.clone(), next.clone(), op.clone());
        workers.push(tokio::spawn(async move {
            let mut h = latency_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else {
                    return anyhow::Ok(h);
                };
                let t = Instant::now();
                op(client.clone(), key.clone()).await?;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
            }
        }));
    }
    let mut all: Histogram<u64> = latency_histogram();
    for w in workers {
        all.add(w.await??)?;
    }
    let elapsed: Duration = started.elapsed();
    let mb_s = mb_per_s(object_bytes * keys.len() as u64, elapsed);
    Ok(Phase {
        objects: keys.len(),
        mb_s,
        ops_s: keys.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: percentiles(&all),
        of_disk_limit: disk_mb_s.map(|d| mb_s / d),
    })
}

fn random(len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rand::fill(&mut v[..]);
    v.into()
}
