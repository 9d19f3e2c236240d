//! The stretched hub as one broker sees it, computed from the applied metadata and the local
//! replicas at each scrape:
//!
//! - `broker_cluster_*`: the whole cluster (the same on every broker): brokers live and
//!   fenced, fenced sites, degraded mode and degraded partitions (in-sync set missing a site),
//!   under-replicated, under-min-in-sync, offline and reassigning partitions, the controller;
//! - `broker_lease_valid`: whether this broker may lead now;
//! - `broker_under_replicated_partitions`: partitions led here missing in-sync replicas;
//! - `broker_follower_lag_records_max`: how far the furthest-behind follower of a partition
//!   led here is.
//!
//! The collector is registered before the broker has joined the cluster (the admin server
//! starts first) and answers nothing until [`ClusterCollector::attach`].

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use quorum::metadata::ClusterState;

use crate::cluster::Cluster;
use crate::config::TopicDefaults;
use crate::replica_manager::ReplicaManager;
use crate::topic_config;

struct Sources {
    cluster: Arc<Cluster>,
    replicas: Arc<ReplicaManager>,
    defaults: TopicDefaults,
}

#[derive(Default)]
pub struct ClusterCollector {
    sources: OnceLock<Sources>,
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCollector")
    }
}

/// Counts over every partition of the metadata.
#[derive(Default)]
struct PartitionCounts {
    under_replicated: i64,
    under_min_insync: i64,
    degraded: i64,
    offline: i64,
    reassigning: i64,
}

fn count_partitions(state: &ClusterState, defaults: &TopicDefaults) -> PartitionCounts {
    let mut c = PartitionCounts::default();
    let Some(policy) = &state.policy else {
        return c;
    };
    let views = state.broker_views();
    for t in state.topics.values() {
        let min = topic_config::resolve(&t.configs, defaults)
            .1
            .min_insync_replicas;
        for p in &t.partitions {
            c.under_replicated += i64::from(p.under_replicated());
            c.reassigning += i64::from(p.reassigning());
            let needed = policy.effective_min_insync(
                min.max(1) as usize,
                &p.replicas,
                &state.fenced_sites,
                &views,
            );
            c.under_min_insync += i64::from(p.isr.len() < needed);
            c.degraded += i64::from(policy.is_degraded(&p.replicas, &p.isr, &views));
            c.offline += i64::from(p.leader.is_none());
        }
    }
    c
}

impl ClusterCollector {
    /// Start answering, once the broker has joined and opened its partitions.
    pub fn attach(
        &self,
        cluster: Arc<Cluster>,
        replicas: Arc<ReplicaManager>,
        defaults: TopicDefaults,
    ) {
        let _ = self.sources.set(Sources {
            cluster,
            replicas,
            defaults,
        });
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.sources.get() else {
            return Ok(());
        };
        let state = s.cluster.state();
        let counts = count_partitions(&state, &s.defaults);
        let live = state.brokers.values().filter(|b| !b.fenced).count() as i64;
        let fenced = state.brokers.len() as i64 - live;
        let leader = s.cluster.node.leader().map_or(-1, |(n, _)| i64::from(n.0));
        let e = &mut encoder;
        gauge(
            e,
            "broker_cluster_brokers_live",
            "Registered brokers the controller has not fenced.",
            live,
        )?;
        gauge(
            e,
            "broker_cluster_brokers_fenced",
            "Registered brokers the controller fenced (silent, cut off, or of a fenced site).",
            fenced,
        )?;
        gauge(
            e,
            "broker_cluster_fenced_sites",
            "Data sites fenced by the controller: degraded mode while above 0.",
            state.fenced_sites.len() as i64,
        )?;
        gauge(
            e,
            "broker_cluster_degraded",
            "1 while the hub is degraded: a site is fenced, or an in-sync set misses a site (acknowledged writes are then on disk in one site only). Alarm on it.",
            i64::from(!state.fenced_sites.is_empty() || counts.degraded > 0),
        )?;
        gauge(
            e,
            "broker_cluster_degraded_partitions",
            "Partitions whose in-sync set misses a data site their replicas span.",
            counts.degraded,
        )?;
        gauge(
            e,
            "broker_cluster_under_replicated_partitions",
            "Partitions with fewer in-sync replicas than replicas.",
            counts.under_replicated,
        )?;
        gauge(
            e,
            "broker_cluster_under_min_isr_partitions",
            "Partitions with fewer in-sync replicas than their (degraded-mode) minimum: acks=all writes to them are refused.",
            counts.under_min_insync,
        )?;
        gauge(
            e,
            "broker_cluster_offline_partitions",
            "Partitions without a leader (no in-sync replica is live).",
            counts.offline,
        )?;
        gauge(
            e,
            "broker_cluster_reassigning_partitions",
            "Partitions whose replicas a reassignment is moving.",
            counts.reassigning,
        )?;
        gauge(
            e,
            "broker_cluster_controller_id",
            "The node leading the metadata quorum (the active controller); -1 when unknown.",
            leader,
        )?;
        gauge(
            e,
            "broker_lease_valid",
            "1 while this broker may lead (its last heartbeat answered in time), else 0.",
            i64::from(s.cluster.lease_valid()),
        )?;
        let lag = s.replicas.follower_lag();
        let under = lag
            .iter()
            .filter(|(_, _, _, in_sync)| !in_sync)
            .map(|(p, ..)| p.key())
            .collect::<std::collections::BTreeSet<_>>()
            .len() as i64;
        gauge(
            e,
            "broker_under_replicated_partitions",
            "Partitions led here with replicas outside the in-sync set.",
            under,
        )?;
        let max_lag = lag
            .iter()
            .map(|(_, _, behind, _)| *behind)
            .max()
            .unwrap_or(0);
        gauge(
            e,
            "broker_follower_lag_records_max",
            "The largest number of records any follower of a partition led here is behind.",
            max_lag,
        )?;
        Ok(())
    }
}
