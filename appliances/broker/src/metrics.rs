//! The broker's Prometheus metrics. Names follow the `kafka_server_*`-like conventions
//! operators know, prefixed `broker_`, with per-topic and per-API labels.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    pub api: &'static str,
}

/// Why a connection was refused or closed by the broker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub listener: String,
    pub reason: &'static str,
}

/// A SASL login's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabel {
    pub listener: String,
    pub mechanism: &'static str,
    /// `success` or `failure`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub api: &'static str,
    /// Kafka's error name, e.g. `OutOfOrderSequenceNumber`.
    pub error: String,
}

fn latency_histogram() -> Histogram {
    // 50us .. ~26s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

pub struct Metrics {
    pub bytes_in: Family<TopicLabel, Counter>,
    pub bytes_out: Family<TopicLabel, Counter>,
    pub records_in: Family<TopicLabel, Counter>,
    pub records_out: Family<TopicLabel, Counter>,
    pub produce_duplicates: Counter,
    pub requests: Family<ApiLabel, Counter>,
    pub request_errors: Family<ErrorLabel, Counter>,
    pub request_latency: Family<ApiLabel, Histogram, fn() -> Histogram>,
    pub flush_latency: Histogram,
    /// One append to a partition's log (the page-cache write, leader or follower).
    pub append_latency: Histogram,
    pub commit_wait: Histogram,
    pub connections: Gauge,
    pub connections_accepted: Counter,
    /// Refused at accept (`max_connections`, `max_connections_per_ip`).
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Closed for what the client did (a request not received within `request_timeout`,
    /// larger than allowed, malformed).
    pub connections_closed: Family<ReasonLabel, Counter>,
    /// SASL logins (and re-authentications), by listener, mechanism and outcome.
    pub sasl_authentications: Family<LoginLabel, Counter>,
    pub partitions: Gauge,
    pub offline_partitions: Gauge,
    pub groups: Gauge,
    pub rebalances: Counter,
    pub cleaner_passes: Counter,
    pub cleaner_records_removed: Counter,
    pub cleaner_bytes_reclaimed: Counter,
    pub cleaner_failures: Counter,
}

impl Metrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            records_in: Family::default(),
            records_out: Family::default(),
            produce_duplicates: Counter::default(),
            requests: Family::default(),
            request_errors: Family::default(),
            request_latency: Family::new_with_constructor(latency_histogram),
            flush_latency: latency_histogram(),
            append_latency: latency_histogram(),
            commit_wait: latency_histogram(),
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            sasl_authentications: Family::default(),
            partitions: Gauge::default(),
            offline_partitions: Gauge::default(),
            groups: Gauge::default(),
            rebalances: Counter::default(),
            cleaner_passes: Counter::default(),
            cleaner_records_removed: Counter::default(),
            cleaner_bytes_reclaimed: Counter::default(),
            cleaner_failures: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("broker");
        r.register(
            "bytes_in",
            "Record bytes appended, per topic",
            m.bytes_in.clone(),
        );
        r.register(
            "bytes_out",
            "Record bytes sent to consumers, per topic",
            m.bytes_out.clone(),
        );
        r.register(
            "records_in",
            "Records appended, per topic",
            m.records_in.clone(),
        );
        r.register(
            "records_out",
            "Records sent to consumers (whole batches), per topic",
            m.records_out.clone(),
        );
        r.register(
            "produce_duplicates",
            "Retried producer batches answered with their original offsets (idempotence)",
            m.produce_duplicates.clone(),
        );
        r.register(
            "requests",
            "Kafka requests handled, per API",
            m.requests.clone(),
        );
        r.register(
            "request_errors",
            "Per-partition or request errors returned, per API and error",
            m.request_errors.clone(),
        );
        r.register(
            "request_latency_seconds",
            "Time from request decoded to response ready, per API",
            m.request_latency.clone(),
        );
        r.register(
            "flush_latency_seconds",
            "Duration of one group-commit fdatasync pass",
            m.flush_latency.clone(),
        );
        r.register(
            "append_latency_seconds",
            "Duration of one append to a partition's log, leader or follower: the write into the page cache under the partition's locks (a disk whose write-back holds up writes shows here before any fdatasync)",
            m.append_latency.clone(),
        );
        r.register(
            "commit_wait_seconds",
            "acks=all: time from the leader's write to the high watermark passing it (every in-sync replica has it on disk); writes waiting on a lagging replica of the other site show here",
            m.commit_wait.clone(),
        );
        r.register(
            "connections",
            "Open Kafka connections",
            m.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "Kafka connections accepted",
            m.connections_accepted.clone(),
        );
        r.register(
            "connections_refused",
            "Kafka connections refused at accept, by listener and limit",
            m.connections_refused.clone(),
        );
        r.register(
            "connections_closed",
            "Kafka connections closed by the broker for the client's behaviour, by listener and reason",
            m.connections_closed.clone(),
        );
        r.register(
            "sasl_authentications",
            "SASL logins and re-authentications, by listener, mechanism and result (success or failure)",
            m.sasl_authentications.clone(),
        );
        r.register("partitions", "Partitions hosted", m.partitions.clone());
        r.register(
            "offline_partitions",
            "Partitions whose log is offline after a storage error",
            m.offline_partitions.clone(),
        );
        r.register(
            "groups",
            "Consumer groups known to the coordinator",
            m.groups.clone(),
        );
        r.register(
            "rebalances",
            "Consumer group rebalances completed",
            m.rebalances.clone(),
        );
        r.register(
            "log_cleaner_passes",
            "Compaction passes swapped in (cleanup.policy=compact)",
            m.cleaner_passes.clone(),
        );
        r.register(
            "log_cleaner_records_removed",
            "Records removed by compaction (superseded, expired tombstones, keyless)",
            m.cleaner_records_removed.clone(),
        );
        r.register(
            "log_cleaner_bytes_reclaimed",
            "Bytes of segment files reclaimed by compaction",
            m.cleaner_bytes_reclaimed.clone(),
        );
        r.register(
            "log_cleaner_failures",
            "Compaction passes that failed (the partition is retried at the next check)",
            m.cleaner_failures.clone(),
        );
        m
    }

    pub fn observe_flush(&self, d: Duration) {
        self.flush_latency.observe(d.as_secs_f64());
    }

    pub fn observe_append(&self, d: Duration) {
        self.append_latency.observe(d.as_secs_f64());
    }

    pub fn observe_commit_wait(&self, d: Duration) {
        self.commit_wait.observe(d.as_secs_f64());
    }

    /// Count a connection closed by the broker for the client's behaviour.
    pub fn connection_closed(&self, listener: &str, reason: &'static str) {
        let listener = listener.to_string();
        self.connections_closed
            .get_or_create(&ReasonLabel { listener, reason })
            .inc();
    }

    /// Count an error code returned by `api`.
    pub fn note_error(&self, api: &'static str, code: i16) {
        let error = match kafka_protocol::error::ResponseError::try_from_code(code) {
            Some(e) => format!("{e:?}"),
            None => code.to_string(),
        };
        self.request_errors
            .get_or_create(&ErrorLabel { api, error })
            .inc();
    }

    pub fn topic(&self, topic: &str) -> TopicLabel {
        TopicLabel {
            topic: topic.to_string(),
        }
    }
}
