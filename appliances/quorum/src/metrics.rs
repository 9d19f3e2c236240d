//! A quorum member's Prometheus metrics (the witness's and every broker's): its view of the
//! quorum, read from openraft's metrics channel at each scrape (so a scrape never shows a
//! value older than the scrape).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;

use crate::raft::RaftMetrics;

/// `quorum_*` gauges from the Raft node's latest metrics.
#[derive(Debug)]
pub struct QuorumCollector {
    raft: watch::Receiver<RaftMetrics>,
}

impl QuorumCollector {
    pub fn new(raft: watch::Receiver<RaftMetrics>) -> QuorumCollector {
        QuorumCollector { raft }
    }
}

/// `(name, help, value)` for each gauge.
fn gauges(m: &RaftMetrics) -> [(&'static str, &'static str, i64); 6] {
    let membership = m.membership_config.membership();
    let is_leader = m.state == openraft::ServerState::Leader;
    [
        (
            "quorum_is_leader",
            "1 while this node leads the quorum (and runs the controller), else 0.",
            i64::from(is_leader),
        ),
        (
            "quorum_term",
            "The current Raft term.",
            m.current_term as i64,
        ),
        (
            "quorum_leader_id",
            "The node this one takes for the quorum's leader; -1 when it knows none.",
            m.current_leader.map_or(-1, |n| i64::from(n.0)),
        ),
        (
            "quorum_last_applied_index",
            "Index of the last metadata log entry applied on this node.",
            m.last_applied.map_or(0, |l| l.index as i64),
        ),
        (
            "quorum_voters",
            "Voters in the quorum's membership as this node knows it.",
            membership.voter_ids().count() as i64,
        ),
        (
            "quorum_learners",
            "Learners (brokers that follow the metadata log without voting).",
            membership.learner_ids().count() as i64,
        ),
    ]
}

impl Collector for QuorumCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Copied out so that the channel is not held borrowed while encoding.
        let values = gauges(&self.raft.borrow());
        for (name, help, value) in values {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let refused = ConstCounter::new(
            crate::transport::CONNECTIONS_REFUSED.load(std::sync::atomic::Ordering::Relaxed),
        );
        refused.encode(encoder.encode_descriptor(
            "quorum_connections_refused",
            "Connections to the quorum listener closed at accept: past 256 open, or 64 from one address.",
            None,
            refused.metric_type(),
        )?)?;
        Ok(())
    }
}
