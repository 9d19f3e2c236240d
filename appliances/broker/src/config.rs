//! The broker's configuration file (TOML). Every setting has a default except `data_dir`, so
//! a minimal file is two lines. Topic defaults carry Kafka's names in comments so operators can
//! map them; per-topic overrides use Kafka's own names (see [`crate::topic_config`]).
//!
//! ```toml
//! node_id = 1
//! data_dir = "/var/lib/broker"
//! rack = "site-a"
//!
//! [kafka]
//! listen = "0.0.0.0:9092"
//! advertised = "broker-a1.hub.example:9092"
//!
//! [durability]
//! mode = "sync"          # acks=all answered after fdatasync (group commit)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use appconfig::{Validate, duration, size};
use serde::{Deserialize, Serialize};
use telemetry::LogFormat;

use durable_log::TimestampType;

/// Largest segment Kafka's 32-bit index positions allow.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;
/// Smallest segment accepted (small values only make sense in tests).
pub const MIN_SEGMENT_BYTES: u64 = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `node.id`: this broker's id in the cluster.
    #[serde(default = "default_node_id")]
    pub node_id: i32,
    /// Where logs, group state and metadata live.
    pub data_dir: PathBuf,
    /// `broker.rack`: the site, for rack-aware placement.
    #[serde(default)]
    pub rack: Option<String>,
    /// Fixed cluster id; generated at first start and kept in `data_dir` when absent.
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub kafka: KafkaListener,
    #[serde(default)]
    pub admin: AdminListener,
    #[serde(default)]
    pub durability: Durability,
    #[serde(default = "TopicDefaults::not_set")]
    pub topics: TopicDefaults,
    #[serde(default)]
    pub groups: GroupSettings,
    #[serde(default)]
    pub log: LogSettings,
    /// The stretched hub: the controller quorum and the sites. Absent, the broker is a
    /// one-node cluster (its own only voter).
    #[serde(default)]
    pub cluster: Option<quorum::config::ClusterConfig>,
    /// Where this broker serves the quorum protocol (with `[cluster]` only).
    #[serde(default)]
    pub quorum: quorum::config::QuorumListener,
    #[serde(default)]
    pub replication: ReplicationSettings,
    /// The Schema Registry's HTTP listener (Confluent's REST API); absent, no registry.
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryListener>,
    /// Certificates of the listeners whose `security` is `SSL` or `SASL_SSL` (needed when
    /// one is).
    #[serde(default)]
    pub tls: Option<tls::TlsSettings>,
    /// How clients of `SASL_PLAINTEXT` and `SASL_SSL` listeners log in.
    #[serde(default)]
    pub sasl: SaslSettings,
    /// ACLs: off by default (everyone may do everything); on, a principal may do only what a
    /// binding allows, super users everything.
    #[serde(default)]
    pub authorization: acl::AuthorizerSettings,
}

/// How the replication, quorum and registry links are secured (`PLAINTEXT` or `SSL`).
pub use tls::SecurityProtocol;

/// How a Kafka listener secures its connections, as Kafka names it (`listener.security.
/// protocol.map`): TLS or not, and a SASL login or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ListenerSecurity {
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    #[serde(rename = "SSL")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl ListenerSecurity {
    pub fn tls(self) -> bool {
        matches!(self, ListenerSecurity::Ssl | ListenerSecurity::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(
            self,
            ListenerSecurity::SaslPlaintext | ListenerSecurity::SaslSsl
        )
    }
}

impl From<SecurityProtocol> for ListenerSecurity {
    fn from(s: SecurityProtocol) -> Self {
        match s {
            SecurityProtocol::Plaintext => ListenerSecurity::Plaintext,
            SecurityProtocol::Ssl => ListenerSecurity::Ssl,
        }
    }
}

/// A SASL mechanism a listener offers (`sasl.enabled.mechanisms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// A password in clear: offered on `SASL_SSL` listeners only.
    #[serde(rename = "PLAIN")]
    Plain,
    /// A JWT from the identity provider (`[sasl.oauthbearer]`): `SASL_SSL` only.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The SCRAM mechanism, if this is one.
    pub fn scram(self) -> Option<sasl::Mechanism> {
        match self {
            SaslMechanism::ScramSha256 => Some(sasl::Mechanism::ScramSha256),
            SaslMechanism::ScramSha512 => Some(sasl::Mechanism::ScramSha512),
            SaslMechanism::Plain | SaslMechanism::OAuthBearer => None,
        }
    }
}

/// `[sasl]`: logins on `SASL_PLAINTEXT` and `SASL_SSL` listeners. Credentials live in the
/// cluster metadata (AlterUserScramCredentials), never in this file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaslSettings {
    /// `sasl.enabled.mechanisms`. PLAIN is offered on `SASL_SSL` listeners only (it sends
    /// the password itself).
    pub mechanisms: Vec<SaslMechanism>,
    /// `sasl.server.max.receive.size`: the largest request a connection may send before it
    /// has logged in; a larger one closes it.
    #[serde(with = "size")]
    pub max_receive_bytes: u64,
    /// `connection.failed.authentication.delay.ms`: a failed login is answered this late
    /// (then the connection is closed), so guessing passwords is slow.
    #[serde(with = "duration")]
    pub failed_authentication_delay: Duration,
    /// `connections.max.reauth.ms` (KIP-368): a login holds for this long, then the client
    /// must log in again on the same connection (with the same user) or be disconnected at
    /// its next request. A removed credential or changed password thus takes effect on live
    /// connections within this time. 0: a login holds for the connection's life.
    #[serde(with = "duration")]
    pub connections_max_reauth: Duration,
    /// How OAUTHBEARER tokens are checked (needed when `mechanisms` names it). A login with a
    /// token lasts at most until the token expires.
    pub oauthbearer: Option<sasl::oauthbearer::BearerSettings>,
}

impl Default for SaslSettings {
    fn default() -> Self {
        SaslSettings {
            mechanisms: vec![SaslMechanism::ScramSha256, SaslMechanism::ScramSha512],
            max_receive_bytes: 512 << 10,
            failed_authentication_delay: Duration::from_secs(1),
            connections_max_reauth: Duration::ZERO,
            oauthbearer: None,
        }
    }
}

/// A Kafka listener beside the default one (`[[kafka.listeners]]`), e.g. mTLS for branches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedListener {
    /// Its name (`branches`): clients that came in on it are told its addresses.
    pub name: String,
    pub listen: SocketAddr,
    /// `host:port` given to its clients; default: the bound address.
    #[serde(default)]
    pub advertised: Option<String>,
    #[serde(default)]
    pub security: ListenerSecurity,
}

/// The name of the default Kafka listener (`[kafka] listen`).
pub const DEFAULT_LISTENER: &str = "clients";

/// Where the broker serves the Schema Registry (`:8081` in the hub's port table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryListener {
    pub listen: SocketAddr,
    /// `host:port` other brokers forward registry requests to (this broker's registry
    /// writes while it leads `_schemas`). Default: the Kafka advertised host with the
    /// listener's port.
    #[serde(default)]
    pub advertised: Option<String>,
    /// The largest schema accepted (its JSON text); a larger one answers 42201. Enforced by
    /// the writer (the leader of `_schemas`): keep it the same on every broker.
    #[serde(default = "default_schema_bytes_max", with = "size")]
    pub schema_bytes_max: u64,
    /// Subjects the registry may hold; one more is refused (42205).
    #[serde(default = "default_subjects_max")]
    pub subjects_max: usize,
    /// `SSL`: HTTPS with `[tls]` (client certificates as `[tls] client_auth` says); writes
    /// forwarded to the writer go over HTTPS too, checked against `[tls] server_ca`.
    #[serde(default)]
    pub security: SecurityProtocol,
}

fn default_schema_bytes_max() -> u64 {
    1 << 20
}

fn default_subjects_max() -> usize {
    100_000
}

impl SchemaRegistryListener {
    /// The registry's limits from these settings.
    pub fn limits(&self) -> schema_registry::store::Limits {
        schema_registry::store::Limits {
            schema_bytes_max: self.schema_bytes_max as usize,
            subjects_max: self.subjects_max,
            ..Default::default()
        }
    }
}

/// Partition replication between brokers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSettings {
    /// A Kafka listener for followers only (the inter-site trust zone). Without it followers
    /// fetch on the Kafka listener.
    pub listen: Option<SocketAddr>,
    /// `host:port` followers use for the replication listener.
    pub advertised: Option<String>,
    /// Kafka's `security.inter.broker.protocol`: the security of the listener followers
    /// fetch from (this one, or `[kafka]`'s when there is no separate one), and so how this
    /// broker connects to its peers. With `SSL`, followers present `[tls] certificate` as
    /// their client certificate and check the leader's against `[tls] server_ca`.
    pub security: SecurityProtocol,
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the in-sync
    /// set (unless it is the last copy in its site: then writes wait for it).
    #[serde(with = "duration")]
    pub lag_time: Duration,
    /// `replica.fetch.wait.max.ms`.
    #[serde(with = "duration")]
    pub fetch_wait: Duration,
    /// `replica.fetch.max.bytes` per fetch.
    #[serde(with = "size")]
    pub fetch_max_bytes: u64,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            security: SecurityProtocol::Plaintext,
            listen: None,
            advertised: None,
            lag_time: Duration::from_secs(10),
            fetch_wait: Duration::from_millis(500),
            fetch_max_bytes: 16 << 20,
        }
    }
}

fn default_node_id() -> i32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaListener {
    /// Address the Kafka protocol listener binds.
    pub listen: SocketAddr,
    /// `host:port` given to clients in metadata; defaults to the bound address (with the
    /// machine's host name when bound to all interfaces).
    pub advertised: Option<String>,
    /// `socket.request.max.bytes`: larger requests close the connection.
    #[serde(with = "size")]
    pub max_request_size: u64,
    /// Bytes of requests held in memory across all connections before reading pauses. Taken
    /// as request bytes arrive, not as sizes are announced; requests of at most 64 KiB
    /// (metadata, heartbeats, offsets, small produces) draw from a reserve of their own
    /// instead, so that large requests filling this budget never keep them waiting.
    #[serde(with = "size")]
    pub max_inflight_request_bytes: u64,
    /// Requests read ahead on one connection while earlier ones complete.
    pub pipeline_depth: usize,
    /// `connections.max.idle.ms`.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A request must arrive whole within this time of its first byte, or its connection is
    /// closed (and the memory it held is given back): a client that announces a large
    /// request and trickles it, or stalls, cannot hold memory or a connection for long.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Kafka connections open at once on each listener (`max.connections`).
    pub max_connections: usize,
    /// Kafka connections open at once from one client address (`max.connections.per.ip`).
    pub max_connections_per_ip: usize,
    /// `max.connections.per.ip.overrides`: `{ "10.1.7.1" = 4000 }`.
    pub max_connections_per_ip_overrides: std::collections::BTreeMap<std::net::IpAddr, usize>,
    /// Connections at once of one authenticated principal (a client certificate's or a SASL
    /// login's), across every listener; anonymous connections are bounded per address.
    pub max_connections_per_principal: usize,
    /// `{ "User:edge-hub" = 5000 }`.
    pub max_connections_per_principal_overrides: std::collections::BTreeMap<String, usize>,
    /// This listener's security protocol (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`).
    pub security: ListenerSecurity,
    /// More listeners, each with its own port, advertised address and security.
    pub listeners: Vec<NamedListener>,
}

impl KafkaListener {
    pub fn principal_limits(&self) -> admission::PrincipalLimits {
        admission::PrincipalLimits {
            max_connections_per_principal: self.max_connections_per_principal,
            max_connections_per_principal_overrides: self
                .max_connections_per_principal_overrides
                .clone(),
        }
    }

    pub fn connection_limits(&self) -> admission::ConnectionLimits {
        admission::ConnectionLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_connections_per_ip_overrides: self.max_connections_per_ip_overrides.clone(),
        }
    }
}

impl Default for KafkaListener {
    fn default() -> Self {
        KafkaListener {
            listen: "0.0.0.0:9092".parse().expect("static address"),
            advertised: None,
            max_request_size: 100 << 20,
            max_inflight_request_bytes: 512 << 20,
            pipeline_depth: 16,
            idle_timeout: Duration::from_secs(600),
            request_timeout: Duration::from_secs(30),
            max_connections: admission::ConnectionLimits::default().max_connections,
            max_connections_per_ip: admission::ConnectionLimits::default().max_connections_per_ip,
            max_connections_per_ip_overrides: Default::default(),
            max_connections_per_principal: admission::PrincipalLimits::default()
                .max_connections_per_principal,
            max_connections_per_principal_overrides: Default::default(),
            security: ListenerSecurity::Plaintext,
            listeners: Vec::new(),
        }
    }
}

/// `[admin]`: metrics, health and the admin API on 9644 (as Redpanda's).
pub type AdminListener = telemetry::AdminSettings<AdminPort>;
telemetry::admin_port!(AdminPort, 9644);

/// When acknowledged data is on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Durability {
    /// acks=all is answered only after fdatasync; consumers see only flushed data.
    #[default]
    Sync,
    /// Flush every `interval`: acks=all is answered after the write to the page cache, so up
    /// to one interval of acknowledged data can be lost with the machine (not the process).
    Interval {
        #[serde(with = "duration")]
        interval: Duration,
    },
}

/// Defaults for new topics (Kafka broker settings `num.partitions`, `log.retention.ms`...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    /// `auto.create.topics.enable`.
    pub auto_create: bool,
    /// `num.partitions`.
    pub partitions: i32,
    /// `default.replication.factor`. Not set: 1 for a lone broker, 3 in a stretched hub
    /// (two data sites: 2 + 1 over the sites).
    #[serde(default = "not_set_i16")]
    pub replication_factor: i16,
    /// `min.insync.replicas`. Not set: 1 for a lone broker, 2 in a stretched hub.
    #[serde(default = "not_set_i32")]
    pub min_insync_replicas: i32,
    /// `log.retention.ms` ("forever" for -1).
    #[serde(with = "duration::forever")]
    pub retention: Option<Duration>,
    /// `log.retention.bytes` ("unlimited" for -1).
    #[serde(with = "size::unlimited")]
    pub retention_bytes: Option<u64>,
    /// `log.segment.bytes`.
    #[serde(with = "size")]
    pub segment_bytes: u64,
    /// `log.roll.ms`.
    #[serde(with = "duration")]
    pub segment_age: Duration,
    /// `message.max.bytes`.
    #[serde(with = "size")]
    pub max_message_bytes: u64,
    /// `log.message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `log.index.interval.bytes`.
    #[serde(with = "size")]
    pub index_interval_bytes: u64,
    /// `producer.id.expiration.ms`.
    #[serde(with = "duration")]
    pub producer_id_expiration: Duration,
    /// `log.retention.check.interval.ms`.
    #[serde(with = "duration")]
    pub retention_check_interval: Duration,
    /// `log.cleaner.backoff.ms`: how often the log cleaner looks for compacted partitions
    /// dirty enough to clean.
    #[serde(with = "duration")]
    pub cleaner_check_interval: Duration,
    /// `clk.stream.dedup` for topics that do not set it: recognise the batches edge
    /// gateways send again by their stream and sequence headers, past producer expiry (on
    /// the hub that branches forward to).
    pub stream_dedup: bool,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
        TopicDefaults {
            auto_create: true,
            partitions: 1,
            replication_factor: 1,
            min_insync_replicas: 1,
            retention: Some(WEEK),
            retention_bytes: None,
            segment_bytes: 1 << 30,
            segment_age: WEEK,
            max_message_bytes: 1_048_588,
            timestamp_type: TimestampType::CreateTime,
            index_interval_bytes: 4096,
            producer_id_expiration: Duration::from_secs(24 * 3600),
            retention_check_interval: Duration::from_secs(300),
            cleaner_check_interval: Duration::from_secs(15),
            stream_dedup: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSettings {
    /// `group.initial.rebalance.delay.ms`: how long an empty group waits for more members.
    #[serde(with = "duration")]
    pub initial_rebalance_delay: Duration,
    /// `group.min.session.timeout.ms`.
    #[serde(with = "duration")]
    pub min_session_timeout: Duration,
    /// `group.max.session.timeout.ms`.
    #[serde(with = "duration")]
    pub max_session_timeout: Duration,
    /// `group.max.size` (0: unlimited).
    pub max_size: usize,
    /// `offsets.retention.minutes`: offsets of an empty group are dropped after this.
    #[serde(with = "duration")]
    pub offsets_retention: Duration,
    /// `offsets.topic.num.partitions`: partitions of the internal offsets log.
    pub offsets_partitions: i32,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            initial_rebalance_delay: Duration::from_secs(3),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(1800),
            max_size: 0,
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            offsets_partitions: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `broker=debug,info`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl BrokerConfig {
    /// A configuration with defaults, for tests and the in-process lab.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        BrokerConfig {
            tls: None,
            sasl: SaslSettings::default(),
            authorization: Default::default(),
            node_id: default_node_id(),
            data_dir: data_dir.into(),
            rack: None,
            cluster_id: None,
            kafka: KafkaListener::default(),
            admin: AdminListener::default(),
            durability: Durability::default(),
            topics: TopicDefaults::default(),
            groups: GroupSettings::default(),
            log: LogSettings::default(),
            cluster: None,
            quorum: quorum::config::QuorumListener::default(),
            replication: ReplicationSettings::default(),
            schema_registry: None,
        }
    }

    /// Listener names unique and plain, `[tls]` present (and sound) when a listener uses it.
    fn check_listeners(&self) -> Result<(), String> {
        let mut names = vec![DEFAULT_LISTENER, "replication"];
        for l in &self.kafka.listeners {
            let plain = !l.name.is_empty()
                && l.name.len() <= 64
                && l.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !plain {
                return Err(format!(
                    "kafka.listeners: name {:?} must be 1 to 64 letters, digits, '_' or '-'",
                    l.name
                ));
            }
            if names.contains(&l.name.as_str()) {
                return Err(format!("kafka.listeners: the name {:?} is taken", l.name));
            }
            names.push(&l.name);
            if let Some(a) = &l.advertised {
                check_host_port(&format!("kafka.listeners.{}.advertised", l.name), a)?;
            }
        }
        if self.replication.listen.is_none()
            && ListenerSecurity::from(self.replication.security) != self.kafka.security
        {
            return Err(if self.kafka.security.sasl() {
                "followers do not log in with SASL: give them a replication.listen of their own when kafka.security is SASL_*".into()
            } else {
                "replication.security must be kafka.security when followers fetch on the [kafka] listener (no replication.listen)".into()
            });
        }
        self.check_sasl()?;
        self.authorization.check("authorization")?;
        if self.authorization.enabled
            && self.cluster.is_some()
            && self.replication.security == SecurityProtocol::Plaintext
        {
            return Err("authorization.enabled needs replication.security = \"SSL\": followers must fetch as their certificate's principal (listed in authorization.super_users), not anonymously".into());
        }
        let registry = self.schema_registry.as_ref().map(|r| r.security.into());
        let ssl = [self.kafka.security, self.replication.security.into()]
            .into_iter()
            .chain(registry)
            .chain(self.kafka.listeners.iter().map(|l| l.security))
            .any(ListenerSecurity::tls);
        if let Some(t) = &self.tls
            && self.replication.security == SecurityProtocol::Ssl
            && t.server_ca.is_none()
            && t.client_ca.is_none()
        {
            return Err("replication.security = \"SSL\": [tls] needs server_ca (or client_ca) to check other brokers".into());
        }
        match &self.tls {
            None if ssl => {
                Err("a listener has security = \"SSL\" or \"SASL_SSL\": [tls] needs certificate and key".into())
            }
            Some(t) => t.check("tls"),
            None => Ok(()),
        }
    }

    fn check_sasl(&self) -> Result<(), String> {
        let sasl = &self.sasl;
        let any_sasl = std::iter::once(self.kafka.security)
            .chain(self.kafka.listeners.iter().map(|l| l.security))
            .any(ListenerSecurity::sasl);
        if any_sasl && sasl.mechanisms.is_empty() {
            return Err("a listener is SASL_*: sasl.mechanisms must name at least one".into());
        }
        if let Some(o) = &sasl.oauthbearer {
            o.check("sasl.oauthbearer")?;
        }
        if sasl.mechanisms.contains(&SaslMechanism::OAuthBearer) && sasl.oauthbearer.is_none() {
            return Err("sasl.mechanisms names OAUTHBEARER: [sasl.oauthbearer] must say how tokens are checked".into());
        }
        let plain_text_sasl = std::iter::once(self.kafka.security)
            .chain(self.kafka.listeners.iter().map(|l| l.security))
            .any(|s| s == ListenerSecurity::SaslPlaintext);
        if plain_text_sasl && !sasl.mechanisms.iter().any(|m| m.scram().is_some()) {
            return Err("a SASL_PLAINTEXT listener offers SCRAM only (PLAIN and OAUTHBEARER need TLS): sasl.mechanisms names no SCRAM mechanism".into());
        }
        if sasl.max_receive_bytes < 1024 {
            return Err("sasl.max_receive_bytes must be at least 1KiB".into());
        }
        if sasl.failed_authentication_delay > Duration::from_secs(60) {
            return Err("sasl.failed_authentication_delay must be at most 60s".into());
        }
        let reauth = sasl.connections_max_reauth;
        if !reauth.is_zero() && reauth < Duration::from_secs(1) {
            return Err("sasl.connections_max_reauth must be 0 (off) or at least 1s".into());
        }
        Ok(())
    }

    /// The `(host, port)` clients are told to connect to.
    pub fn advertised_endpoint(&self, bound: SocketAddr) -> (String, u16) {
        advertised_endpoint(self.kafka.advertised.as_deref(), bound)
    }
}

/// The `(host, port)` a listener bound at `bound` is advertised as.
pub fn advertised_endpoint(advertised: Option<&str>, bound: SocketAddr) -> (String, u16) {
    {
        if let Some(adv) = advertised
            && let Some((host, port)) = adv.rsplit_once(':')
            && let Ok(port) = port.parse()
        {
            return (host.trim_matches(['[', ']']).to_string(), port);
        }
        let host = if bound.ip().is_unspecified() {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        } else {
            bound.ip().to_string()
        };
        (host, bound.port())
    }
}

impl TopicDefaults {
    /// The defaults with the topology-dependent settings left for [`Validate::complete`].
    fn not_set() -> TopicDefaults {
        TopicDefaults {
            replication_factor: not_set_i16(),
            min_insync_replicas: not_set_i32(),
            ..TopicDefaults::default()
        }
    }
}

fn check_host_port(what: &str, value: &str) -> Result<(), String> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} = {value:?} must be host:port"))
    }
}

/// A setting left out of the file, resolved by [`Validate::complete`] (never seen after it).
fn not_set_i16() -> i16 {
    0
}

fn not_set_i32() -> i32 {
    0
}

impl Validate for BrokerConfig {
    /// Topic defaults that depend on the topology: a stretched hub (two data sites) gets
    /// RF 3 and min in-sync 2, so acks=all is on disk in both sites; a lone broker 1 and 1.
    fn complete(&mut self) {
        let stretched = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.data_sites.len() >= 2);
        let t = &mut self.topics;
        if t.replication_factor == not_set_i16() {
            t.replication_factor = if stretched { 3 } else { 1 };
        }
        if t.min_insync_replicas == not_set_i32() {
            let min = if stretched { 2 } else { 1 };
            t.min_insync_replicas = min.min(i32::from(t.replication_factor.max(1)));
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.node_id < 0 {
            return Err(format!("node_id = {} must be >= 0", self.node_id));
        }
        self.admin.check(self.tls.as_ref())?;
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir must not be empty".into());
        }
        if let Some(adv) = &self.kafka.advertised {
            check_host_port("kafka.advertised", adv)?;
        }
        if self.kafka.max_request_size < 1024 || self.kafka.max_request_size > i32::MAX as u64 {
            return Err("kafka.max_request_size must be between 1KiB and 2GiB".into());
        }
        self.kafka.connection_limits().check("kafka")?;
        self.check_listeners()?;
        if self.kafka.request_timeout < Duration::from_millis(100) {
            return Err("kafka.request_timeout must be at least 100ms".into());
        }
        if self.kafka.max_inflight_request_bytes < self.kafka.max_request_size {
            return Err(
                "kafka.max_inflight_request_bytes must be >= kafka.max_request_size".into(),
            );
        }
        if !(1..=1024).contains(&self.kafka.pipeline_depth) {
            return Err("kafka.pipeline_depth must be between 1 and 1024".into());
        }
        if let Durability::Interval { interval } = self.durability
            && interval < Duration::from_millis(1)
        {
            return Err("durability.interval must be at least 1ms".into());
        }
        let t = &self.topics;
        if t.partitions < 1 {
            return Err("topics.partitions must be >= 1".into());
        }
        if t.replication_factor < 1 {
            return Err("topics.replication_factor must be >= 1".into());
        }
        if t.min_insync_replicas < 1 {
            return Err("topics.min_insync_replicas must be >= 1".into());
        }
        if t.min_insync_replicas > i32::from(t.replication_factor) {
            return Err(format!(
                "topics.min_insync_replicas = {} is above topics.replication_factor = {}: every acks=all write would be refused",
                t.min_insync_replicas, t.replication_factor
            ));
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&t.segment_bytes) {
            return Err(format!(
                "topics.segment_bytes must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}"
            ));
        }
        if t.max_message_bytes < 1024 || t.max_message_bytes > self.kafka.max_request_size {
            return Err(
                "topics.max_message_bytes must be between 1KiB and kafka.max_request_size".into(),
            );
        }
        if t.index_interval_bytes == 0 {
            return Err("topics.index_interval_bytes must be > 0".into());
        }
        let g = &self.groups;
        if g.min_session_timeout > g.max_session_timeout {
            return Err(
                "groups.min_session_timeout must not exceed groups.max_session_timeout".into(),
            );
        }
        if g.initial_rebalance_delay > Duration::from_secs(300) {
            return Err("groups.initial_rebalance_delay must be at most 5m".into());
        }
        if !(1..=1024).contains(&g.offsets_partitions) {
            return Err("groups.offsets_partitions must be between 1 and 1024".into());
        }
        if let Some(c) = &self.cluster {
            let site = self
                .rack
                .as_deref()
                .ok_or("rack (the site) is required with [cluster]")?;
            c.validate(quorum::ids::NodeId(self.node_id as u32), site, false)?;
        }
        let r = &self.replication;
        if r.fetch_max_bytes < 1024 || r.fetch_max_bytes > i32::MAX as u64 {
            return Err("replication.fetch_max_bytes must be between 1KiB and 2GiB".into());
        }
        if r.lag_time < Duration::from_millis(100) {
            return Err("replication.lag_time must be at least 100ms".into());
        }
        // A caught-up follower's fetch waits this long for data: were it as long as the lag
        // time, an idle follower would look lagging and leave the in-sync set (Kafka checks
        // the same of replica.fetch.wait.max.ms).
        if r.fetch_wait >= r.lag_time {
            return Err(format!(
                "replication.fetch_wait ({:?}) must be shorter than replication.lag_time ({:?})",
                r.fetch_wait, r.lag_time
            ));
        }
        if let Some(listen) = r.listen
            && listen.ip().is_unspecified()
            && r.advertised.is_none()
        {
            return Err(format!(
                "replication.advertised must be set: the replication listener {listen} is not an address followers can connect to"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults() {
        let c: BrokerConfig = appconfig::parse_str("data_dir = \"/tmp/x\"\n", "t").unwrap();
        assert_eq!(c.kafka.listen.port(), 9092);
        assert_eq!(c.durability, Durability::Sync);
        assert_eq!(c.groups.initial_rebalance_delay, Duration::from_secs(3));
    }

    #[test]
    fn replication_defaults_follow_the_topology() {
        let lone: BrokerConfig = appconfig::parse_str("data_dir = \"/tmp/x\"\n", "t").unwrap();
        assert_eq!(
            (
                lone.topics.replication_factor,
                lone.topics.min_insync_replicas
            ),
            (1, 1)
        );
        let hub = "node_id = 1\ndata_dir = \"/tmp/x\"\nrack = \"site-a\"\n[cluster]\n\
                   voters = [\"1@a:9190\", \"3@b:9190\", \"100@c:9190\"]\n\
                   data_sites = [\"site-a\", \"site-b\"]\n";
        let c: BrokerConfig = appconfig::parse_str(hub, "t").unwrap();
        assert_eq!(
            (c.topics.replication_factor, c.topics.min_insync_replicas),
            (3, 2)
        );
        let set = format!("{hub}[topics]\nreplication_factor = 4\nmin_insync_replicas = 3\n");
        let c: BrokerConfig = appconfig::parse_str(&set, "t").unwrap();
        assert_eq!(
            (c.topics.replication_factor, c.topics.min_insync_replicas),
            (4, 3)
        );
        // One copy asked for in a hub: the in-sync minimum follows it down.
        let one = format!("{hub}[topics]\nreplication_factor = 1\n");
        let c: BrokerConfig = appconfig::parse_str(&one, "t").unwrap();
        assert_eq!(
            (c.topics.replication_factor, c.topics.min_insync_replicas),
            (1, 1)
        );
        let e = appconfig::parse_str::<BrokerConfig>(
            &format!("{hub}[topics]\nreplication_factor = 2\nmin_insync_replicas = 3\n"),
            "t",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("above topics.replication_factor"),
            "{e}"
        );
    }

    #[test]
    fn sasl_listeners_are_checked() {
        let base = "data_dir = \"/tmp/x\"\n[[kafka.listeners]]\nname = \"apps\"\n\
                    listen = \"127.0.0.1:9094\"\nsecurity = \"SASL_PLAINTEXT\"\n";
        let c: BrokerConfig = appconfig::parse_str(base, "t").unwrap();
        assert_eq!(c.sasl.max_receive_bytes, 512 << 10);
        assert_eq!(c.sasl.connections_max_reauth, Duration::ZERO);
        let refused = |text: &str, why: &str| {
            let e = appconfig::parse_str::<BrokerConfig>(text, "t").unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        };
        refused(
            &format!("{base}[sasl]\nmechanisms = []\n"),
            "sasl.mechanisms must name at least one",
        );
        refused(
            &format!("{base}[sasl]\nmechanisms = [\"PLAIN\"]\n"),
            "offers SCRAM only",
        );
        refused(
            &format!("{base}[sasl]\nconnections_max_reauth = \"100ms\"\n"),
            "0 (off) or at least 1s",
        );
        // Followers do not log in: SASL on the listener they fetch from needs one of theirs.
        refused(
            "data_dir = \"/tmp/x\"\n[kafka]\nsecurity = \"SASL_PLAINTEXT\"\n",
            "followers do not log in with SASL",
        );
        refused(
            "data_dir = \"/tmp/x\"\n[[kafka.listeners]]\nname = \"b\"\n\
             listen = \"127.0.0.1:9094\"\nsecurity = \"SASL_SSL\"\n",
            "[tls] needs certificate and key",
        );
        let separate = "data_dir = \"/tmp/x\"\n[kafka]\nsecurity = \"SASL_PLAINTEXT\"\n\
                        [replication]\nlisten = \"127.0.0.1:9095\"\n";
        appconfig::parse_str::<BrokerConfig>(separate, "t").unwrap();
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
            node_id = 3
            data_dir = "/data"
            rack = "site-b"
            [kafka]
            listen = "127.0.0.1:19092"
            advertised = "b3.hub:9093"
            max_request_size = "50MiB"
            request_timeout = "10s"
            max_connections_per_ip = 50
            max_connections_per_ip_overrides = { "10.1.7.1" = 400 }
            [durability]
            mode = "interval"
            interval = "200ms"
            [topics]
            partitions = 6
            retention = "forever"
            retention_bytes = "10GiB"
            timestamp_type = "LogAppendTime"
            [log]
            format = "json"
        "#;
        let c: BrokerConfig = appconfig::parse_str(text, "t").unwrap();
        assert_eq!(
            c.durability,
            Durability::Interval {
                interval: Duration::from_millis(200)
            }
        );
        assert_eq!(c.kafka.request_timeout, Duration::from_secs(10));
        let limits = c.kafka.connection_limits();
        assert_eq!(limits.max_connections_per_ip, 50);
        assert_eq!(
            limits.max_connections_per_ip_overrides,
            [("10.1.7.1".parse().unwrap(), 400)].into()
        );
        assert_eq!(c.topics.retention, None);
        assert_eq!(c.topics.retention_bytes, Some(10 << 30));
        assert_eq!(c.topics.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(
            c.advertised_endpoint(c.kafka.listen),
            ("b3.hub".into(), 9093)
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = appconfig::parse_str::<BrokerConfig>(
            "data_dir = \"/d\"\n[topics]\npartitions = 0\n",
            "f",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "config f: topics.partitions must be >= 1");
        let e = appconfig::parse_str::<BrokerConfig>(
            "data_dir = \"/d\"\n[durability]\nmode = \"sometimes\"\n",
            "f",
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = appconfig::parse_str::<BrokerConfig>(
            "data_dir = \"/d\"\n[kafka]\nadvertised = \"nohost\"\n",
            "f",
        )
        .unwrap_err();
        assert!(e.to_string().contains("must be host:port"), "{e}");
        let e = appconfig::parse_str::<BrokerConfig>(
            "data_dir = \"/d\"\n[replication]\nfetch_wait = \"10s\"\n",
            "f",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("fetch_wait (10s) must be shorter than replication.lag_time (10s)"),
            "{e}"
        );
    }
}
