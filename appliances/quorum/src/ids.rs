//! Typed identities and positions, so that an offset is never mistaken for an epoch nor a node
//! id for a partition index. Each converts to the Kafka wire type only at the protocol edge.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A node of the cluster: a broker or the witness. Kafka's broker ids are int32 >= 0, so every
/// node id fits one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The largest id a Kafka client accepts.
    pub const MAX: u32 = i32::MAX as u32;

    pub fn kafka(self) -> i32 {
        debug_assert!(self.0 <= Self::MAX);
        self.0 as i32
    }

    /// A Kafka broker id from the wire, if it is one.
    pub fn from_kafka(id: i32) -> Option<NodeId> {
        u32::try_from(id).ok().map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A site (Kafka's `broker.rack`): `site-a`, `site-b` hold data, the witness has its own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SiteId(pub Arc<str>);

impl SiteId {
    pub fn new(name: &str) -> SiteId {
        SiteId(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A partition's leader epoch: bumped by the controller at every leader change (and when a
/// site is fenced), so that a deposed leader's requests and a stale follower's fetches are
/// recognised and refused. Only ever grows.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LeaderEpoch(pub i32);

impl LeaderEpoch {
    pub fn next(self) -> LeaderEpoch {
        LeaderEpoch(self.0.checked_add(1).expect("leader epoch overflow"))
    }
}

impl fmt::Display for LeaderEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Version of a partition's replica set and in-sync set (Kafka's partition epoch): an ISR
/// change is accepted only against the version it was computed from.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct PartitionEpoch(pub i32);

impl PartitionEpoch {
    pub fn next(self) -> PartitionEpoch {
        PartitionEpoch(self.0.checked_add(1).expect("partition epoch overflow"))
    }
}

/// A broker's incarnation: the index of the metadata log entry that registered it. A restart
/// registers again and gets a larger one, so requests of an earlier life are refused.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct BrokerEpoch(pub u64);

impl fmt::Display for BrokerEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An offset in a partition's log.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(pub i64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One partition of one topic, by topic id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionKey {
    pub topic: uuid::Uuid,
    pub index: i32,
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_only_grow_and_ids_map_to_kafka() {
        assert_eq!(LeaderEpoch(3).next(), LeaderEpoch(4));
        assert!(LeaderEpoch(4) > LeaderEpoch(3));
        assert_eq!(NodeId(7).kafka(), 7);
        assert_eq!(NodeId::from_kafka(-1), None);
        assert_eq!(NodeId::from_kafka(5), Some(NodeId(5)));
    }
}
