//! The cluster as one quorum member sees it, for operators (`clk cluster status`, the admin
//! port's `GET /v1/cluster`): the quorum (voters, learners, who leads), the data sites and
//! their brokers, and whether the hub is degraded. Computed from the applied metadata and
//! the Raft metrics of the node asked; any broker or the witness answers the same once it has
//! applied the same index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{NodeId, SiteId};
use crate::metadata::ClusterState;
use crate::policy::SitePolicy;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_name: String,
    pub cluster_id: Option<Uuid>,
    /// The node that answered, and the metadata index it had applied.
    pub answered_by: NodeId,
    pub applied_index: u64,
    pub quorum: QuorumStatus,
    pub sites: Vec<SiteStatus>,
    /// Sites the controller fenced: degraded mode while not empty.
    pub fenced_sites: Vec<SiteId>,
    pub preferred_site: Option<SiteId>,
    /// The answering node's `[cluster]` `data_sites` / `preferred_site` differ from the
    /// cluster's site policy, which was fixed when the cluster formed (the configuration of
    /// the voter that formed it): editing them later changes nothing.
    #[serde(default)]
    pub configured_policy_differs: bool,
    pub partitions: PartitionStatus,
    /// A site is fenced, or an in-sync set misses a data site its replicas span
    /// (acknowledged writes of such a partition are on disk in one site only).
    pub degraded: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuorumStatus {
    /// The Raft leader, which runs the controller.
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: BTreeMap<NodeId, String>,
    pub learners: BTreeMap<NodeId, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteStatus {
    pub site: SiteId,
    pub data_site: bool,
    pub fenced: bool,
    pub brokers: Vec<BrokerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerStatus {
    pub node: NodeId,
    pub fenced: bool,
    pub kafka: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub total: usize,
    /// A replica is out of the in-sync set (replicas a reassignment is adding do not count
    /// until it completes: they are still copying).
    pub under_replicated: usize,
    /// The in-sync set misses a data site the replicas span.
    pub degraded: usize,
    /// No leader.
    pub offline: usize,
    /// A reassignment is moving the partition's replicas.
    #[serde(default)]
    pub reassigning: usize,
}

impl ClusterStatus {
    /// `state` as applied on `node`, with its view of the quorum and the site policy its
    /// configuration names.
    pub fn of(
        cluster_name: &str,
        node: NodeId,
        state: &ClusterState,
        quorum: QuorumStatus,
        configured: &SitePolicy,
    ) -> ClusterStatus {
        let partitions = partition_status(state);
        let fenced_sites: Vec<SiteId> = state.fenced_sites.iter().cloned().collect();
        ClusterStatus {
            cluster_name: cluster_name.to_string(),
            cluster_id: state.cluster_id,
            answered_by: node,
            applied_index: state.applied_index,
            quorum,
            sites: sites(state),
            degraded: !fenced_sites.is_empty() || partitions.degraded > 0,
            fenced_sites,
            preferred_site: state.policy.as_ref().map(|p| p.preferred_site.clone()),
            configured_policy_differs: state.policy.as_ref().is_some_and(|p| p != configured),
            partitions,
        }
    }
}

fn sites(state: &ClusterState) -> Vec<SiteStatus> {
    let mut sites: BTreeMap<SiteId, SiteStatus> = BTreeMap::new();
    let data_sites = state.policy.as_ref().map(|p| p.data_sites.clone());
    for site in data_sites.iter().flatten() {
        sites.insert(site.clone(), site_status(state, site));
    }
    for b in state.brokers.values() {
        let entry = sites
            .entry(b.site.clone())
            .or_insert_with(|| site_status(state, &b.site));
        entry.brokers.push(BrokerStatus {
            node: b.node,
            fenced: b.fenced,
            kafka: b.endpoints.kafka.clone(),
            epoch: b.epoch.0,
        });
    }
    sites.into_values().collect()
}

fn site_status(state: &ClusterState, site: &SiteId) -> SiteStatus {
    SiteStatus {
        site: site.clone(),
        data_site: state.policy.as_ref().is_some_and(|p| p.is_data_site(site)),
        fenced: state.fenced_sites.contains(site),
        brokers: Vec::new(),
    }
}

fn partition_status(state: &ClusterState) -> PartitionStatus {
    let mut s = PartitionStatus::default();
    let Some(policy) = &state.policy else {
        return s;
    };
    let views = state.broker_views();
    for p in state.topics.values().flat_map(|t| &t.partitions) {
        s.total += 1;
        s.under_replicated += usize::from(p.under_replicated());
        s.reassigning += usize::from(p.reassigning());
        s.degraded += usize::from(policy.is_degraded(&p.replicas, &p.isr, &views));
        s.offline += usize::from(p.leader.is_none());
    }
    s
}
