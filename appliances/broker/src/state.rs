//! Everything a request handler can reach: identity, topics and partitions, the group
//! coordinator, producer ids and metrics. One instance per running broker.

use std::sync::Arc;

use crate::config::BrokerConfig;
use crate::groups::GroupCoordinator;
use crate::metrics::Metrics;
use crate::producer_ids::ProducerIds;
use crate::topics::Topics;

pub struct BrokerState {
    pub config: BrokerConfig,
    pub node_id: i32,
    pub cluster_id: String,
    /// Where clients reach this broker: `(host, port)`.
    pub advertised: (String, u16),
    pub topics: Topics,
    pub groups: GroupCoordinator,
    pub producer_ids: ProducerIds,
    pub metrics: Arc<Metrics>,
}

impl BrokerState {
    /// In-sync replicas of every partition (replication arrives with the cluster).
    pub fn isr_size(&self) -> i32 {
        1
    }
}

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    /// Kafka's format: `/<ip>`.
    pub host: String,
}
