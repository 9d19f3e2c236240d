//! The gateway's own Prometheus metrics, prefixed `edge_`, served on the buffer's admin port
//! beside the broker's (`broker_*`: what the branch's applications produced).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub topic: String,
    /// `unreachable`, `dropped`, `retriable`, `producer_lost`, `refused`, `local`, `journal`,
    /// `claim_check`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParkLabel {
    pub topic: String,
    /// The hub's error name (`MessageTooLarge`, `InvalidRecord`...), or `behind_parked_key`
    /// for a record held back behind a parked one of its key.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

#[derive(Default)]
pub struct EdgeMetrics {
    /// HTTP ingest requests by the status they were answered with.
    pub http_requests: Family<StatusLabel, Counter>,
    /// Events the HTTP ingest stored.
    pub http_records: Family<TopicLabel, Counter>,
    pub forwarded_records: Family<TopicLabel, Counter>,
    pub forward_errors: Family<ErrorLabel, Counter>,
    /// Records in the buffer the hub has not acknowledged yet, per local partition.
    pub unforwarded_records: Family<StreamLabel, Gauge>,
    pub new_producers: Counter,
    /// Records removed from the buffer before they were forwarded (by an operator).
    pub lost_locally: Counter,
    pub streams: Gauge,
    /// The buffer's size on disk.
    pub buffer_bytes: Gauge,
    /// How long the oldest event the hub has not acknowledged has waited.
    pub oldest_unforwarded_age_seconds: Gauge,
    /// Events refused because the buffer was full.
    pub ingest_refused: Family<TopicLabel, Counter>,
    /// Outbox events buffered (each once, whatever the slot delivered again).
    pub outbox_events: Counter,
    /// The commit LSN through which the outbox is buffered (and the slot may advance).
    pub outbox_buffered_lsn: Gauge,
    /// WAL the branch database keeps for the gateway's slot (from its restart position).
    pub outbox_retained_wal_bytes: Gauge,
    /// Outbox sessions that failed (database unreachable, bad rows, buffer full).
    pub outbox_errors: Counter,
    /// Transactions the slot delivered again (after a PostgreSQL crash) and that were skipped.
    pub outbox_redelivered_transactions: Counter,
    /// Outbox rows that were no valid event, sent to `outbox.invalid`.
    pub outbox_invalid_rows: Counter,
    /// Payloads sent by claim check (each time their batch was sent), and the bytes uploaded
    /// (a payload the S3 gateway holds already, whole, is not uploaded again).
    pub claim_checks: Family<TopicLabel, Counter>,
    pub claim_check_bytes: Counter,
    /// `<topic>-value` Avro subjects the gateway validates against.
    pub schema_subjects: Gauge,
    /// Failed reads of the hub's schema registry (the cached schemas stay in use).
    pub schema_refresh_errors: Counter,
    /// Records refused because their value did not match the topic's schema.
    pub schema_refused_records: Family<TopicLabel, Counter>,
    /// Records parked at the branch now, per local partition.
    pub parked_records: Family<StreamLabel, Gauge>,
    /// Records parked, by why.
    pub parked_total: Family<ParkLabel, Counter>,
    /// Parked records an operator released that the hub took.
    pub released_records: Family<TopicLabel, Counter>,
    /// Parked records an operator dropped.
    pub dropped_records: Family<TopicLabel, Counter>,
}

impl EdgeMetrics {
    /// Add these metrics (shared with the registry, not copied) to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let m = self;
        let r = registry.sub_registry_with_prefix("edge");
        r.register(
            "buffer_bytes",
            "The buffer's size on disk",
            m.buffer_bytes.clone(),
        );
        r.register(
            "oldest_unforwarded_age_seconds",
            "How long the oldest event the hub has not acknowledged has waited",
            m.oldest_unforwarded_age_seconds.clone(),
        );
        r.register(
            "ingest_refused",
            "Produce requests refused because the buffer was full",
            m.ingest_refused.clone(),
        );
        r.register(
            "forwarded_records",
            "Records the hub acknowledged",
            m.forwarded_records.clone(),
        );
        r.register(
            "forward_errors",
            "Forwarding attempts that stopped short, by reason",
            m.forward_errors.clone(),
        );
        r.register(
            "unforwarded_records",
            "Records in the buffer not yet acknowledged by the hub",
            m.unforwarded_records.clone(),
        );
        r.register(
            "new_producers",
            "Hub producer ids taken (at the start of a stream, or after the hub lost one)",
            m.new_producers.clone(),
        );
        r.register(
            "lost_locally",
            "Records removed from the buffer before they were forwarded",
            m.lost_locally.clone(),
        );
        r.register(
            "http_requests",
            "HTTP ingest requests, by the status answered",
            m.http_requests.clone(),
        );
        r.register(
            "http_records",
            "Events stored through the HTTP ingest",
            m.http_records.clone(),
        );
        r.register(
            "claim_checks",
            "Payloads sent by claim check (each time their batch was sent)",
            m.claim_checks.clone(),
        );
        r.register(
            "claim_check_bytes",
            "Bytes of payloads uploaded to the hub's S3 gateway",
            m.claim_check_bytes.clone(),
        );
        r.register(
            "schema_subjects",
            "Avro subjects of the hub the gateway validates values against",
            m.schema_subjects.clone(),
        );
        r.register(
            "schema_refresh_errors",
            "Failed reads of the hub's schema registry",
            m.schema_refresh_errors.clone(),
        );
        r.register(
            "schema_refused_records",
            "Records refused because their value did not match the topic's schema",
            m.schema_refused_records.clone(),
        );
        r.register(
            "outbox_events",
            "Outbox events buffered",
            m.outbox_events.clone(),
        );
        r.register(
            "outbox_buffered_lsn",
            "The commit LSN through which the outbox is buffered",
            m.outbox_buffered_lsn.clone(),
        );
        r.register(
            "outbox_retained_wal_bytes",
            "WAL the branch database keeps for the gateway's replication slot",
            m.outbox_retained_wal_bytes.clone(),
        );
        r.register(
            "outbox_redelivered_transactions",
            "Outbox transactions the replication slot delivered again, skipped as buffered already",
            m.outbox_redelivered_transactions.clone(),
        );
        r.register(
            "outbox_invalid_rows",
            "Outbox rows that were no valid event (a required column null, no topic name), sent to outbox.invalid",
            m.outbox_invalid_rows.clone(),
        );
        r.register(
            "outbox_errors",
            "Outbox reading attempts that failed",
            m.outbox_errors.clone(),
        );
        r.register(
            "streams",
            "Local partitions being forwarded",
            m.streams.clone(),
        );
        r.register(
            "parked_records",
            "Records parked at the branch (refused by the hub, or behind a refused one of their key)",
            m.parked_records.clone(),
        );
        r.register(
            "parked",
            "Records parked, by reason",
            m.parked_total.clone(),
        );
        r.register(
            "released_records",
            "Parked records released by an operator and taken by the hub",
            m.released_records.clone(),
        );
        r.register(
            "dropped_records",
            "Parked records dropped by an operator",
            m.dropped_records.clone(),
        );
    }

    pub fn refused(&self, topic: &str) {
        self.ingest_refused
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc();
    }

    pub fn refused_by_schema(&self, topic: &str, records: u64) {
        self.schema_refused_records
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc_by(records);
    }

    pub fn forwarded(&self, topic: &str, records: u64) {
        self.forwarded_records
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc_by(records);
    }

    pub fn error(&self, topic: &str, reason: &'static str) {
        self.forward_errors
            .get_or_create(&ErrorLabel {
                topic: topic.to_string(),
                reason,
            })
            .inc();
    }

    pub fn unforwarded(&self, topic: &str, partition: i32, records: i64) {
        self.unforwarded_records
            .get_or_create(&StreamLabel {
                topic: topic.to_string(),
                partition: partition.to_string(),
            })
            .set(records);
    }
}
