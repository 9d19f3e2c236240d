//! `clk bench kafka produce|consume`: load generator speaking the Kafka protocol to any broker.
//!
//! Produce: batches of random (incompressible) records are built once and sent again and again
//! (the broker assigns offsets), over `connections` connections to each partition leader, each
//! with up to `inflight` pipelined requests. Without `--rate-mb` it measures the maximum the
//! broker sustains; with it, requests are scheduled at a fixed offered load and latency is
//! measured from the scheduled time, so that queueing behind a slow request is counted
//! (no coordinated omission).
//!
//! Consume: fetches every partition from the earliest offset to the end seen at start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use kafka_client::{Connection, encode_batch};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    CreateTopicsRequest, FetchRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

use super::report::{Percentiles, latency_histogram, mb_per_s, percentiles, print};

/// Protocol versions this tool fills in completely (names, not topic ids).
const PRODUCE_V: i16 = 9;
const FETCH_V: i16 = 12;
const METADATA_V: i16 = 9;

#[derive(Subcommand)]
pub enum KafkaBench {
    /// Produce load: throughput, or latency at a fixed offered load.
    Produce(ProduceArgs),
    /// Consume a topic from the beginning as fast as possible.
    Consume(ConsumeArgs),
}

#[derive(Args)]
pub struct Common {
    /// A broker to bootstrap from (host:port).
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "clk-bench")]
    topic: String,
    /// The broker's Prometheus endpoint (http://host:port/metrics), to report its memory.
    #[arg(long)]
    metrics_url: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Connect over TLS trusting this CA (PEM), presenting `--tls-cert` and `--tls-key`
    /// (mTLS: a broker's SSL listener with `client_auth = "required"`).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_ca")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_ca")]
    tls_key: Option<std::path::PathBuf>,
}

impl Common {
    /// The TLS client for `--tls-*`, if given.
    fn tls(&self) -> anyhow::Result<Option<Arc<tls::TlsClient>>> {
        let (Some(ca), Some(certificate), Some(key)) =
            (&self.tls_ca, &self.tls_cert, &self.tls_key)
        else {
            return Ok(None);
        };
        let settings = tls::TlsSettings {
            certificate: certificate.clone(),
            key: key.clone(),
            client_ca: None,
            client_auth: tls::ClientAuth::None,
            server_ca: Some(ca.clone()),
            min_version: tls::MinVersion::Tls13,
            principal_mapping_rules: vec!["DEFAULT".into()],
            reload_check: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(10),
            crl: None,
        };
        Ok(Some(tls::TlsClient::load(settings)?))
    }
}

#[derive(Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    All,
    One,
}

#[derive(Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    /// Bytes per record value.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Records per batch (one batch per request).
    #[arg(long, default_value_t = 64)]
    batch_records: usize,
    #[arg(long, value_enum, default_value = "all")]
    acks: Acks,
    /// Partitions of the topic if this run creates it.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Connections per partition leader.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Pipelined requests per connection.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// How long to measure.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before measuring starts.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Offered load in MB/s of record values; without it, as fast as possible.
    #[arg(long)]
    rate_mb: Option<f64>,
    /// Key the records `k0`..`k<N-1>` (record i of every batch gets key `i % N`), so that
    /// every batch supersedes the last one: load for a compacted topic. Without it records
    /// have no key.
    #[arg(long)]
    keys: Option<usize>,
}

#[derive(Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// Bytes per partition per fetch.
    #[arg(long, default_value_t = 1 << 20)]
    max_bytes: i32,
}

pub async fn run(cmd: KafkaBench) -> anyhow::Result<()> {
    match cmd {
        KafkaBench::Produce(a) => produce(a).await,
        KafkaBench::Consume(a) => consume(a).await,
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Partition -> leader address, creating the topic if needed.
async fn leaders(
    bootstrap: &str,
    topic: &str,
    create_partitions: Option<i32>,
    tls: Option<&tls::TlsClient>,
) -> anyhow::Result<BTreeMap<i32, String>> {
    let conn = Connection::connect_with(bootstrap, "clk-bench", tls).await?;
    if let Some(partitions) = create_partitions {
        let req = CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(name(topic))
                    .with_num_partitions(partitions)
                    .with_replication_factor(-1),
            ])
            .with_timeout_ms(30_000);
        let resp = conn.request(req, 5).await?;
        let code = resp.topics.first().map_or(0, |t| t.error_code);
        // 36: TOPIC_ALREADY_EXISTS, fine for a repeated run.
        if code != 0 && code != 36 {
            bail!("creating topic {topic}: error code {code}");
        }
    }
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name(topic))),
        ]))
        .with_allow_auto_topic_creation(false);
    let meta = conn.request(req, METADATA_V).await?;
    let brokers = kafka_client::broker_addresses(&meta);
    let t = meta
        .topics
        .first()
        .context("no topic in the metadata response")?;
    if t.error_code != 0 {
        bail!("metadata for {topic}: error code {}", t.error_code);
    }
    t.partitions
        .iter()
        .map(|p| {
            let addr = brokers
                .get(&p.leader_id.0)
                .cloned()
                .with_context(|| format!("partition {} has no live leader", p.partition_index))?;
            Ok((p.partition_index, addr))
        })
        .collect()
}

/// Peak resident memory of the broker, sampled from its Prometheus endpoint.
struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(url: Option<String>) -> Option<RssSampler> {
        let url = url?;
        let peak = Arc::new(AtomicU64::new(0));
        let p = Arc::clone(&peak);
        let task = tokio::spawn(async move {
            loop {
                if let Some(v) = scrape_rss(&url).await {
                    p.fetch_max(v, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Some(RssSampler { peak, task })
    }

    fn stop(self) -> f64 {
        self.task.abort();
        self.peak.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// `process_resident_memory_bytes` from a Prometheus text endpoint (plain HTTP/1.0).
async fn scrape_rss(url: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let mut s = tokio::net::TcpStream::connect(hostport).await.ok()?;
    s.write_all(
        format!(
            "GET /{} HTTP/1.0\r\nHost: {hostport}\r\n\r\n",
            path.trim_start_matches('/')
        )
        .as_bytes(),
    )
    .await
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find(|l| l.starts_with("process_resident_memory_bytes "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

#[derive(Default)]
struct Totals {
    records: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

#[derive(Serialize)]
struct ProduceReport {
    bench: &'static str,
    bootstrap: String,
    topic: String,
    partitions: usize,
    acks: Acks,
    record_size: usize,
    batch_records: usize,
    connections: usize,
    inflight: usize,
    offered_mb_s: Option<f64>,
    seconds: f64,
    records: u64,
    records_per_s: f64,
    mb_per_s: f64,
    requests_per_s: f64,
    errors: u64,
    latency: Percentiles,
    broker_peak_rss_mb: Option<f64>,
}

async fn produce(a: ProduceArgs) -> anyhow::Result<()> {
    let tls = a.common.tls()?;
    let leaders = leaders(
        &a.common.bootstrap,
        &a.common.topic,
        Some(a.partitions),
        tls.as_deref(),
    )
    .await?;
    let records: Vec<(Option<Bytes>, Option<Bytes>)> = (0..a.batch_records)
        .map(|i| {
            let mut v = vec![0u8; a.record_size];
            rand::fill(&mut v[..]);
            let key = a.keys.map(|n| Bytes::from(format!("k{}", i % n.max(1))));
            (key, Some(Bytes::from(v)))
        })
        .collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let batch = encode_batch(&records, now_ms, None);
    let acks: i16 = match a.acks {
        Acks::All => -1,
        Acks::One => 1,
    };
    let batch_value_bytes = (a.record_size * a.batch_records) as u64;
    // Scheduling for a fixed offered load: request n goes out at start + n * interval.
    let interval = a
        .rate_mb
        .map(|mb| Duration::from_secs_f64(batch_value_bytes as f64 / (mb * 1e6)));

    // Connections per leader, each with its share of the leader's partitions.
    let mut by_leader: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (p, addr) in &leaders {
        by_leader.entry(addr.clone()).or_default().push(*p);
    }
    let totals = Arc::new(Totals::default());
    let histogram = Arc::new(Mutex::new(latency_histogram()));
    let sequence = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let stop_at = measure_from + a.duration;
    let rss = RssSampler::start(a.common.metrics_url.clone());
    let mut workers = Vec::new();
    for (addr, partitions) in by_leader {
        for c in 0..a.connections {
            // Spread partitions over connections; with more connections than partitions,
            // several connections share one.
            let mine: Vec<i32> = if a.connections <= partitions.len() {
                partitions
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % a.connections == c)
                    .map(|(_, p)| *p)
                    .collect()
            } else {
                vec![partitions[c % partitions.len()]]
            };
            let conn =
                Arc::new(Connection::connect_with(&addr, "clk-bench", tls.as_deref()).await?);
            let version = conn.version_for::<ProduceRequest>(PRODUCE_V)?;
            let ctx = Worker {
                conn,
                version,
                topic: a.common.topic.clone(),
                partitions: mine,
                batch: batch.clone(),
                acks,
                records_per_batch: a.batch_records as u64,
                value_bytes: batch_value_bytes,
                inflight: Arc::new(Semaphore::new(a.inflight)),
                totals: Arc::clone(&totals),
                histogram: Arc::clone(&histogram),
                sequence: Arc::clone(&sequence),
                interval,
                start,
                measure_from,
                stop_at,
            };
            workers.push(tokio::spawn(ctx.run()));
        }
    }
    for w in workers {
        w.await??;
    }
    let elapsed = stop_at.min(Instant::now()) - measure_from;
    let h = histogram.lock().await;
    let records = totals.records.load(Ordering::Relaxed);
    let report = ProduceReport {
        bench: "kafka-produce",
        bootstrap: a.common.bootstrap.clone(),
        topic: a.common.topic.clone(),
        partitions: leaders.len(),
        acks: a.acks,
        record_size: a.record_size,
        batch_records: a.batch_records,
        connections: a.connections,
        inflight: a.inflight,
        offered_mb_s: a.rate_mb,
        seconds: elapsed.as_secs_f64(),
        records,
        records_per_s: records as f64 / elapsed.as_secs_f64(),
        mb_per_s: mb_per_s(totals.bytes.load(Ordering::Relaxed), elapsed),
        requests_per_s: totals.requests.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        errors: totals.errors.load(Ordering::Relaxed),
        latency: percentiles(&h),
        broker_peak_rss_mb: rss.map(RssSampler::stop),
    };
    print(&report, a.common.json);
    Ok(())
}

struct Worker {
    conn: Arc<Connection>,
    version: i16,
    topic: String,
    partitions: Vec<i32>,
    batch: Bytes,
    acks: i16,
    records_per_batch: u64,
    value_bytes: u64,
    inflight: Arc<Semaphore>,
    totals: Arc<Totals>,
    histogram: Arc<Mutex<Histogram<u64>>>,
    sequence: Arc<AtomicU64>,
    interval: Option<Duration>,
    start: Instant,
    measure_from: Instant,
    stop_at: Instant,
}

impl Worker {
    async fn run(self) -> anyhow::Result<()> {
        let me = Arc::new(self);
        let mut next_partition = 0usize;
        let mut pending = Vec::new();
        loop {
            // The time this request is due: now (closed loop) or its slot (fixed rate).
            let due = match me.interval {
                Some(interval) => {
                    let n = me.sequence.fetch_add(1, Ordering::Relaxed);
                    let due = me.start + interval.mul_f64(n as f64);
                    tokio::time::sleep_until(due.into()).await;
                    due
                }
                None => Instant::now(),
            };
            if due >= me.stop_at {
                break;
            }
            let permit = Arc::clone(&me.inflight).acquire_owned().await?;
            let partition = me.partitions[next_partition % me.partitions.len()];
            next_partition += 1;
            let req = ProduceRequest::default()
                .with_acks(me.acks)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(name(&me.topic))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(partition)
                                .with_records(Some(me.batch.clone())),
                        ]),
                ]);
            let response = me.conn.send_at(req, me.version).await?;
            let w = Arc::clone(&me);
            pending.push(tokio::spawn(async move {
                let result = response.await;
                let done = Instant::now();
                drop(permit);
                let failed = match &result {
                    Ok(r) => r
                        .responses
                        .iter()
                        .flat_map(|t| &t.partition_responses)
                        .any(|p| p.error_code != 0),
                    Err(_) => true,
                };
                if due < w.measure_from || done > w.stop_at {
                    return;
                }
                if failed {
                    w.totals.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                w.totals.requests.fetch_add(1, Ordering::Relaxed);
                w.totals
                    .records
                    .fetch_add(w.records_per_batch, Ordering::Relaxed);
                w.totals.bytes.fetch_add(w.value_bytes, Ordering::Relaxed);
                let us = done.duration_since(due).as_micros() as u64;
                let _ = w.histogram.lock().await.record(us.max(1));
            }));
            pending.retain(|t| !t.is_finished());
        }
        for t in pending {
            let _ = t.await;
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct ConsumeReport {
    bench: &'static str,
    bootstrap: String,
    topic: String,
    partitions: usize,
    seconds: f64,
    records: u64,
    records_per_s: f64,
    mb_per_s: f64,
    broker_peak_rss_mb: Option<f64>,
}

async fn consume(a: ConsumeArgs) -> anyhow::Result<()> {
    let tls = a.common.tls()?;
    let leaders = leaders(&a.common.bootstrap, &a.common.topic, None, tls.as_deref()).await?;
    let rss = RssSampler::start(a.common.metrics_url.clone());
    let totals = Arc::new(Totals::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (partition, addr) in leaders.clone() {
        let topic = a.common.topic.clone();
        let totals = Arc::clone(&totals);
        let max_bytes = a.max_bytes;
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let conn = Connection::connect_with(&addr, "clk-bench", tls.as_deref()).await?;
            let (mut offset, end) = (
                list_offset(&conn, &topic, partition, -2).await?,
                list_offset(&conn, &topic, partition, -1).await?,
            );
            while offset < end {
                let req = FetchRequest::default()
                    .with_replica_id((-1).into())
                    .with_max_wait_ms(100)
                    .with_min_bytes(1)
                    .with_max_bytes(max_bytes)
                    .with_topics(vec![
                        FetchTopic::default()
                            .with_topic(name(&topic))
                            .with_partitions(vec![
                                FetchPartition::default()
                                    .with_partition(partition)
                                    .with_fetch_offset(offset)
                                    .with_partition_max_bytes(max_bytes),
                            ]),
                    ]);
                let resp = conn.request(req, FETCH_V).await?;
                let data = resp
                    .responses
                    .first()
                    .and_then(|t| t.partitions.first())
                    .context("empty fetch response")?;
                if data.error_code != 0 {
                    bail!(
                        "fetch {topic}-{partition} at {offset}: error code {}",
                        data.error_code
                    );
                }
                let mut records = data.records.clone().unwrap_or_default();
                totals
                    .bytes
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                for b in RecordBatchDecoder::decode_batch_info(&mut records)? {
                    totals
                        .records
                        .fetch_add(b.record_count as u64, Ordering::Relaxed);
                    offset = offset.max(b.min_offset + i64::from(b.record_count));
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let records = totals.records.load(Ordering::Relaxed);
    let report = ConsumeReport {
        bench: "kafka-consume",
        bootstrap: a.common.bootstrap.clone(),
        topic: a.common.topic.clone(),
        partitions: leaders.len(),
        seconds: elapsed.as_secs_f64(),
        records,
        records_per_s: records as f64 / elapsed.as_secs_f64(),
        mb_per_s: mb_per_s(totals.bytes.load(Ordering::Relaxed), elapsed),
        broker_peak_rss_mb: rss.map(RssSampler::stop),
    };
    print(&report, a.common.json);
    Ok(())
}

/// ListOffsets: `-2` earliest, `-1` latest.
async fn list_offset(
    conn: &Connection,
    topic: &str,
    partition: i32,
    spec: i64,
) -> anyhow::Result<i64> {
    let req = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(spec),
                ]),
        ]);
    let resp = conn.request(req, 5).await?;
    let p = resp
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .context("empty ListOffsets response")?;
    if p.error_code != 0 {
        bail!(
            "ListOffsets {topic}-{partition}: error code {}",
            p.error_code
        );
    }
    Ok(p.offset)
}
