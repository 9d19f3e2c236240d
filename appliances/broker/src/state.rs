//! Everything a request handler can reach: identity, the cluster (metadata and controller),
//! topics and this broker's partitions, the group coordinator, producer ids and metrics. One
//! instance per running broker.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use quorum::ids::{NodeId, PartitionKey};
use quorum::metadata::{BrokerInfo, ClusterState};

use crate::cluster::Cluster;
use crate::config::BrokerConfig;
use crate::groups::GroupCoordinator;
use crate::metrics::Metrics;
use crate::producer_ids::ProducerIds;
use crate::replica_manager::{OFFSETS_TOPIC, ReplicaManager};
use crate::topics::Topics;

pub struct BrokerState {
    pub config: BrokerConfig,
    pub node_id: i32,
    /// Kafka's form of the cluster id.
    pub cluster_id: String,
    /// Where clients reach this broker: `(host, port)`.
    pub advertised: (String, u16),
    pub cluster: Arc<Cluster>,
    pub replicas: Arc<ReplicaManager>,
    pub topics: Topics,
    pub groups: GroupCoordinator,
    pub producer_ids: ProducerIds,
    pub metrics: Arc<Metrics>,
    /// `[authorization]`, shared with every request's [`crate::authz::Access`].
    pub authorizer: Arc<acl::AuthorizerSettings>,
    /// OAUTHBEARER's token checks (`[sasl.oauthbearer]`).
    pub bearer: Option<Arc<sasl::oauthbearer::Verifier>>,
    /// Connections per authenticated principal, across listeners.
    pub principals: Arc<admission::Principals>,
    /// Whether produce requests may append now (an embedding appliance's limits).
    pub ingest: Option<Arc<dyn IngestGate>>,
    /// What an embedding appliance checks in records before they are appended.
    pub record_check: Option<Arc<dyn RecordCheck>>,
    /// acks=all produce requests waiting for the outcome of their records.
    pub produce_waits: ProduceWaits,
}

/// How many acks=all produce requests wait for the outcome of their records. A stopping
/// broker lets them learn it (from the new leaders, as a follower) before its fetchers stop.
pub struct ProduceWaits(Arc<tokio::sync::watch::Sender<usize>>);

impl Default for ProduceWaits {
    fn default() -> Self {
        ProduceWaits(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

/// One waiting request, counted until dropped (answered, or its connection gone).
pub struct ProduceWait(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for ProduceWait {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl ProduceWaits {
    /// Count a request from before its appends: its answer may wait behind earlier ones on
    /// its connection, but its records are in the log already.
    pub fn enter(&self) -> ProduceWait {
        self.0.send_modify(|n| *n += 1);
        ProduceWait(Arc::clone(&self.0))
    }

    /// Wait until none is waiting, for at most `timeout`; whether none is.
    pub async fn settled(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// An embedding appliance's say over produce requests: the edge gateway refuses events while
/// its buffer is full.
pub trait IngestGate: Send + Sync {
    /// `Err(why)` refuses an append to `topic` (`KAFKA_STORAGE_ERROR`, retriable: clients
    /// wait and try again, so they block until there is room, with `why` in the answer).
    fn admit(&self, topic: &str) -> Result<(), String>;
}

/// An embedding appliance's check of the records themselves before they are appended: the
/// edge gateway validates values against their topic's registered Avro schema. Runs in the
/// produce handler before the append, under no lock, and only on topics it `checks`.
pub trait RecordCheck: Send + Sync {
    /// Whether `topic`'s records are checked (asked for every append: cheap).
    fn checks(&self, topic: &str) -> bool;
    /// The records refused (`INVALID_RECORD`), by their index among the request's records for
    /// the partition, with why; empty when all pass.
    fn check(&self, topic: &str, records: &[kafka_protocol::records::Record])
    -> Vec<(i32, String)>;
}

/// `host:port` split for Kafka's metadata answers.
pub fn host_port(endpoint: &str) -> (String, i32) {
    match endpoint.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse().unwrap_or(-1),
        ),
        None => (endpoint.to_string(), -1),
    }
}

/// Where a broker serves clients of `listener`: that listener's advertised address, or its
/// default listener's when it has no listener of that name (as Kafka answers on listeners a
/// broker lacks, clients then reach its default one).
pub fn client_endpoint(b: &BrokerInfo, listener: &str) -> (String, i32) {
    host_port(
        b.endpoints
            .listeners
            .get(listener)
            .unwrap_or(&b.endpoints.kafka),
    )
}

impl BrokerState {
    pub fn me(&self) -> NodeId {
        self.cluster.me
    }

    pub fn metadata(&self) -> Arc<ClusterState> {
        self.cluster.state()
    }

    /// The broker a Kafka client should talk to for group `group`: the leader of the group's
    /// offsets partition, with its client endpoint.
    pub fn coordinator_for(
        &self,
        group: &str,
        listener: &str,
    ) -> Result<(NodeId, String, i32), i16> {
        let state = self.metadata();
        let unavailable = ResponseError::CoordinatorNotAvailable.code();
        let topic = state.topic_by_name(OFFSETS_TOPIC).ok_or(unavailable)?;
        let key = PartitionKey {
            topic: topic.id,
            index: self.groups.partition_of(group),
        };
        let leader = state
            .partition(key)
            .and_then(|p| p.leader)
            .ok_or(unavailable)?;
        let b = state.brokers.get(&leader).ok_or(unavailable)?;
        let (host, port) = client_endpoint(b, listener);
        Ok((leader, host, port))
    }

    /// Brokers a client may be told about: registered and not fenced.
    pub fn live_brokers(&self, state: &ClusterState) -> Vec<BrokerInfo> {
        state
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .cloned()
            .collect()
    }
}
