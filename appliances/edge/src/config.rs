//! The edge gateway's configuration file (TOML): its name, the local buffer (a one-node
//! broker, configured exactly as a broker is, under `[buffer]`), the hub it forwards to, and
//! how it forwards.
//!
//! ```toml
//! gateway = "branch-017"
//!
//! [buffer]
//! data_dir = "/data/buffer"
//! [buffer.kafka]
//! listen = "0.0.0.0:9092"
//!
//! [hub]
//! bootstrap = ["hub-a1.example:9093", "hub-b1.example:9093"]
//! security = "SSL"
//! [hub.tls]
//! certificate = "/etc/edge/branch-017.pem"
//! key = "/etc/edge/branch-017.key"
//! server_ca = "/etc/edge/hub-ca.pem"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use appconfig::{Validate, duration};
use broker::BrokerConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// This gateway's name, unique among the branches: every forwarded event carries it in
    /// its stream header (`<gateway>/<topic>/<partition>`), so it must never change once
    /// events have been forwarded.
    pub gateway: String,
    /// The local buffer: a one-node broker (no `[buffer.cluster]`), with its listeners,
    /// TLS, SASL and ACLs for the branch's applications.
    pub buffer: BrokerConfig,
    pub hub: HubSettings,
    #[serde(default)]
    pub forward: ForwardSettings,
    #[serde(default)]
    pub limits: LimitSettings,
    /// The branch database's transactional outbox, read when present.
    #[serde(default)]
    pub outbox: Option<OutboxSettings>,
    /// The HTTP ingest for devices without a Kafka client, served when present.
    #[serde(default)]
    pub http: Option<HttpSettings>,
    /// Large payloads to the hub's S3 gateway, the events carrying references, when present.
    #[serde(default)]
    pub claim_check: Option<ClaimCheckSettings>,
}

/// The hub's S3 gateway for claim checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimCheckSettings {
    /// `http://host:port` or `https://host:port` (over mutual TLS with `[hub.tls]` when it is
    /// set, the branch's certificate and the hub's CA; the system's CA roots otherwise).
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Payloads over this travel by claim check (and any event with a `clk-claim-check`
    /// header).
    #[serde(default = "default_claim_threshold", with = "appconfig::size")]
    pub threshold_bytes: u64,
    /// Payloads over this are uploaded in parts of this size (S3: at least 5 MiB).
    #[serde(default = "default_part_bytes", with = "appconfig::size")]
    pub part_bytes: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_claim_threshold() -> u64 {
    256 << 10
}

fn default_part_bytes() -> u64 {
    16 << 20
}

impl ClaimCheckSettings {
    fn check(&self) -> Result<(), String> {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(format!(
                "claim_check.endpoint: {:?} is not http://host:port or https://host:port",
                self.endpoint
            ));
        }
        if self.bucket.is_empty() || self.access_key.is_empty() || self.secret_key.is_empty() {
            return Err("claim_check needs bucket, access_key and secret_key".into());
        }
        if !(5 << 20..=1 << 30).contains(&self.part_bytes) {
            return Err("claim_check.part_bytes must be between 5MiB and 1GiB".into());
        }
        Ok(())
    }
}

/// The HTTP ingest: Confluent REST Proxy v2's produce (`POST /topics/<topic>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Where devices connect (REST Proxy's port is 8082).
    pub listen: std::net::SocketAddr,
    /// `SSL`: HTTPS with the buffer's `[buffer.tls]` (client certificates as it says).
    #[serde(default)]
    pub security: tls::SecurityProtocol,
    /// The largest request body taken.
    #[serde(default = "default_http_body_bytes", with = "appconfig::size")]
    pub body_bytes_max: u64,
    /// Records one request may hold.
    #[serde(default = "default_http_records")]
    pub records_max: usize,
}

fn default_http_body_bytes() -> u64 {
    8 << 20
}

fn default_http_records() -> usize {
    10_000
}

impl HttpSettings {
    fn check(&self, buffer: &BrokerConfig) -> Result<(), String> {
        if self.security == tls::SecurityProtocol::Ssl && buffer.tls.is_none() {
            return Err("http.security = \"SSL\" needs [buffer.tls]".into());
        }
        if !(1024..=256 << 20).contains(&self.body_bytes_max) {
            return Err("http.body_bytes_max must be between 1KiB and 256MiB".into());
        }
        if !(1..=100_000).contains(&self.records_max) {
            return Err("http.records_max must be between 1 and 100000".into());
        }
        Ok(())
    }
}

/// The branch PostgreSQL's outbox table, read by logical decoding (`pgoutput` through SQL
/// functions) into the buffer's `outbox.event.<aggregatetype>` topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// libpq-style connection string (`host=/run/postgresql dbname=branch user=edge`). The
    /// user needs the REPLICATION attribute, and to own the table if the gateway is to
    /// create the publication.
    pub connection: String,
    /// The outbox table (`schema.table`, Debezium's columns).
    #[serde(default = "default_outbox_table")]
    pub table: String,
    /// The logical replication slot the gateway reads and advances (created if missing).
    #[serde(default = "default_outbox_slot")]
    pub slot: String,
    /// The publication of the outbox table (created if missing).
    #[serde(default = "default_outbox_publication")]
    pub publication: String,
    /// How often the slot is read when it had nothing more.
    #[serde(default = "default_outbox_poll", with = "duration")]
    pub poll_interval: Duration,
    /// Changes read per round at most (whole transactions: a round may hold more).
    #[serde(default = "default_outbox_changes")]
    pub changes_max: u32,
    /// TLS to the database, required when set: the branch's certificate and key (presented
    /// if the server asks) and `server_ca`, the CA the database's certificate chains to; the
    /// connection string's host must be a name or address that certificate carries.
    #[serde(default)]
    pub tls: Option<tls::TlsSettings>,
}

fn default_outbox_table() -> String {
    "public.outbox".into()
}

fn default_outbox_slot() -> String {
    "clk_edge".into()
}

fn default_outbox_publication() -> String {
    "clk_outbox".into()
}

fn default_outbox_poll() -> Duration {
    Duration::from_millis(200)
}

fn default_outbox_changes() -> u32 {
    // Each read decodes from the slot's restart point: few large rounds cost less than many
    // small ones, and a round is buffered in slices, so its size costs no memory here.
    100_000
}

/// PostgreSQL identifiers the gateway names in SQL (slot, publication, table parts): plain
/// lower-case ones, so that they never need quoting rules.
fn is_pg_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl OutboxSettings {
    /// The table's schema and name.
    pub fn table_parts(&self) -> (&str, &str) {
        self.table
            .split_once('.')
            .unwrap_or(("public", &self.table))
    }

    fn check(&self) -> Result<(), String> {
        let (schema, table) = self.table_parts();
        for (what, name) in [
            ("outbox.slot", self.slot.as_str()),
            ("outbox.publication", self.publication.as_str()),
            ("outbox.table", schema),
            ("outbox.table", table),
        ] {
            if !is_pg_identifier(name) {
                return Err(format!(
                    "{what}: {name:?} must be 1 to 63 lower-case letters, digits and '_'"
                ));
            }
        }
        if self.connection.trim().is_empty() {
            return Err("outbox.connection must say how to reach the database".into());
        }
        if !(1..=1_000_000).contains(&self.changes_max) {
            return Err("outbox.changes_max must be between 1 and 1000000".into());
        }
        if self.poll_interval < Duration::from_millis(10) {
            return Err("outbox.poll_interval must be at least 10ms".into());
        }
        Ok(())
    }
}

/// How much the buffer holds before it refuses new events (seed 004: 3 days or 20 GiB,
/// whichever is reached first). The buffer's own time and size retention are off: it deletes
/// only what the hub acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    #[serde(with = "appconfig::size")]
    pub max_bytes: u64,
    #[serde(with = "duration")]
    pub max_age: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_bytes: 20 << 30,
            max_age: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

/// Where the hub is and how the gateway reaches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSettings {
    /// Brokers to ask for the hub's metadata (`host:port`), tried in turn.
    pub bootstrap: Vec<String>,
    /// `SSL`: mutual TLS with `[hub.tls]`'s certificate (the branch's).
    #[serde(default)]
    pub security: tls::SecurityProtocol,
    /// The branch's certificate and key, and `server_ca`, the hub's CA.
    #[serde(default)]
    pub tls: Option<tls::TlsSettings>,
    /// A request the hub has not answered within this is given up and sent again.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// The wait before trying again after the hub could not be reached or refused a batch
    /// for a reason that may pass (doubled up to `retry_backoff_max`).
    #[serde(default = "default_retry_backoff", with = "duration")]
    pub retry_backoff: Duration,
    #[serde(default = "default_retry_backoff_max", with = "duration")]
    pub retry_backoff_max: Duration,
    /// The hub's Schema Registry (`http://host:8081` or `https://...` with `[hub.tls]`),
    /// tried in turn. With it, topics with a `<topic>-value` Avro subject take only values
    /// valid against it, and JSON posted over HTTP is encoded with it.
    #[serde(default)]
    pub schema_registry: Vec<String>,
    /// How often the hub's schemas are read again (they are cached on disk meanwhile).
    #[serde(default = "default_schema_refresh", with = "duration")]
    pub schema_refresh: Duration,
}

fn default_schema_refresh() -> Duration {
    Duration::from_secs(30)
}

/// How local topics are forwarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardSettings {
    /// The local topics forwarded; empty: every topic but the internal ones.
    pub topics: Vec<String>,
    /// A local topic forwarded to a hub topic of another name (`{ "local" = "hub" }`).
    pub rename: BTreeMap<String, String>,
    /// Records per round (Kafka's `batch.size` by count; the seed's 500).
    pub batch_records: usize,
    /// Bytes of local records read per round at most.
    pub batch_bytes: u64,
    /// How long a round waits to fill up (`linger.ms`).
    #[serde(with = "duration")]
    pub linger: Duration,
    /// How often the local topics are listed for new ones.
    #[serde(with = "duration")]
    pub discover_interval: Duration,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            topics: Vec::new(),
            rename: BTreeMap::new(),
            batch_records: 500,
            batch_bytes: 1 << 20,
            linger: Duration::from_secs(1),
            discover_interval: Duration::from_secs(1),
        }
    }
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_retry_backoff() -> Duration {
    Duration::from_millis(100)
}

fn default_retry_backoff_max() -> Duration {
    Duration::from_secs(5)
}

/// The buffer's segments at most: acknowledged data stays until its segment is rolled.
const BUFFER_SEGMENT_BYTES_MAX: u64 = 64 << 20;
const BUFFER_SEGMENT_AGE_MAX: Duration = Duration::from_secs(3600);

impl EdgeConfig {
    /// The hub topic a local topic is forwarded to.
    pub fn hub_topic<'a>(&'a self, local: &'a str) -> &'a str {
        self.forward.rename.get(local).map_or(local, String::as_str)
    }

    /// Whether a local topic is forwarded at all (never the buffer's internal topics).
    pub fn forwards(&self, local: &str) -> bool {
        let internal = local.starts_with("__") || local == broker::schemas::SCHEMAS_TOPIC;
        !internal
            && (self.forward.topics.is_empty() || self.forward.topics.iter().any(|t| t == local))
    }
}

impl Validate for EdgeConfig {
    fn complete(&mut self) {
        self.buffer.complete();
        // Unforwarded events are never removed by age or size: `[limits]` acts on ingest.
        self.buffer.topics.retention = None;
        self.buffer.topics.retention_bytes = None;
        // What the hub acknowledged leaves with whole segments, and a log keeps its active
        // one: small segments, rolled often, so that acknowledged data does not fill the
        // buffer's disk limit.
        let t = &mut self.buffer.topics;
        t.segment_bytes = t.segment_bytes.min(BUFFER_SEGMENT_BYTES_MAX);
        t.segment_age = t.segment_age.min(BUFFER_SEGMENT_AGE_MAX);
    }

    fn validate(&self) -> Result<(), String> {
        // The stream header is `<gateway>/<topic>/<partition>`: no `/` in the name.
        if self.gateway.is_empty()
            || self.gateway.len() > 128
            || !self
                .gateway
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(format!(
                "gateway = {:?} must be 1 to 128 characters of letters, digits, '.', '_' and '-'",
                self.gateway
            ));
        }
        if self.buffer.cluster.is_some() {
            return Err("[buffer.cluster]: the buffer is a one-node broker".into());
        }
        if !matches!(self.buffer.durability, broker::config::Durability::Sync) {
            return Err(
                "[buffer.durability] mode must be \"sync\": an event is acknowledged once it is fsynced"
                    .into(),
            );
        }
        self.buffer
            .validate()
            .map_err(|e| format!("[buffer] {e}"))?;
        self.hub.check()?;
        if self.limits.max_bytes < 1 << 20 || self.limits.max_age < Duration::from_secs(1) {
            return Err(
                "limits.max_bytes must be at least 1MiB and limits.max_age at least 1s".into(),
            );
        }
        if let Some(o) = &self.outbox {
            o.check()?;
        }
        if let Some(h) = &self.http {
            h.check(&self.buffer)?;
        }
        if let Some(c) = &self.claim_check {
            c.check()?;
        }
        self.forward.check()
    }
}

impl HubSettings {
    fn check(&self) -> Result<(), String> {
        if self.bootstrap.is_empty() {
            return Err("hub.bootstrap must name at least one broker".into());
        }
        for b in &self.bootstrap {
            if b.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!("hub.bootstrap: {b:?} is not host:port"));
            }
        }
        if self.security == tls::SecurityProtocol::Ssl && self.tls.is_none() {
            return Err("hub.security = \"SSL\" needs [hub.tls] (the branch's certificate and the hub's CA)".into());
        }
        if let Some(t) = &self.tls
            && t.server_ca.is_none()
            && t.client_ca.is_none()
        {
            return Err("[hub.tls] needs server_ca, the CA the hub's certificates chain to".into());
        }
        for u in &self.schema_registry {
            let https = u.starts_with("https://");
            if !(https || u.starts_with("http://")) {
                return Err(format!(
                    "hub.schema_registry: {u:?} is not http://host:port or https://host:port"
                ));
            }
            if https && self.tls.is_none() {
                return Err(format!("hub.schema_registry: {u:?} needs [hub.tls]"));
            }
        }
        if self.schema_refresh < Duration::from_secs(1) {
            return Err("hub.schema_refresh must be at least 1s".into());
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err("hub.request_timeout must be at least 100ms".into());
        }
        if self.retry_backoff.is_zero() || self.retry_backoff > self.retry_backoff_max {
            return Err(
                "hub.retry_backoff must be above 0 and at most hub.retry_backoff_max".into(),
            );
        }
        Ok(())
    }
}

impl ForwardSettings {
    fn check(&self) -> Result<(), String> {
        for t in self
            .topics
            .iter()
            .chain(self.rename.keys())
            .chain(self.rename.values())
        {
            if broker::topics::validate_name(t).is_err() {
                return Err(format!("forward: {t:?} is not a topic name"));
            }
        }
        if !(1..=10_000).contains(&self.batch_records) {
            return Err("forward.batch_records must be between 1 and 10000".into());
        }
        if !(1024..=64 << 20).contains(&self.batch_bytes) {
            return Err("forward.batch_bytes must be between 1KiB and 64MiB".into());
        }
        if self.linger > Duration::from_secs(60) {
            return Err("forward.linger must be at most 60s".into());
        }
        if self.discover_interval < Duration::from_millis(10) {
            return Err("forward.discover_interval must be at least 10ms".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
gateway = "branch-017"
[buffer]
data_dir = "/tmp/x"
[hub]
bootstrap = ["hub:9092"]
"#;

    #[test]
    fn a_minimal_file_is_enough() {
        let c: EdgeConfig = appconfig::parse_str(MINIMAL, "t").unwrap();
        assert_eq!(c.forward.batch_records, 500);
        assert_eq!(c.buffer.topics.replication_factor, 1);
        assert!(c.forwards("readings"));
        assert!(!c.forwards("__consumer_offsets"));
        assert_eq!(c.hub_topic("readings"), "readings");
        // The buffer deletes only what the hub acknowledged, in small segments.
        assert_eq!(c.buffer.topics.retention, None);
        assert_eq!(c.buffer.topics.segment_bytes, BUFFER_SEGMENT_BYTES_MAX);
        assert_eq!(c.limits.max_bytes, 20 << 30);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (MINIMAL.replace("branch-017", "a/b"), "gateway"),
            (MINIMAL.replace("hub:9092", "hub"), "host:port"),
            (
                format!("{MINIMAL}[buffer.durability]\nmode = \"interval\"\ninterval = \"1s\"\n"),
                "sync",
            ),
            (format!("{MINIMAL}security = \"SSL\"\n"), "[hub.tls]"),
            (
                format!("{MINIMAL}[forward]\nbatch_records = 0\n"),
                "batch_records",
            ),
            (
                format!("{MINIMAL}[forward]\nrename = {{ a = \"b c\" }}\n"),
                "topic name",
            ),
            (
                format!("{MINIMAL}[outbox]\nconnection = \"dbname=b\"\nslot = \"Edge\"\n"),
                "outbox.slot",
            ),
        ];
        for (text, expected) in cases {
            let e = appconfig::parse_str::<EdgeConfig>(&text, "t").unwrap_err();
            assert!(e.to_string().contains(expected), "{text}: {e}");
        }
    }
}
