//! Cluster metadata: the records the controller quorum orders, and [`ClusterState`], the
//! state machine every node applies them to (the KRaft model: the log is the truth).
//!
//! Applying is deterministic and never fails: the controller validates a change before it
//! proposes it, and a record that no longer fits (it raced with another) is skipped and
//! logged, identically on every node. Invariants are asserted: leader epochs and partition
//! epochs only grow, the leader is an in-sync replica, the in-sync set is within the replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{BrokerEpoch, LeaderEpoch, NodeId, PartitionEpoch, PartitionKey, SiteId};
use crate::policy::{BrokerView, SitePolicy};

/// At most this many brokers: every map keyed by node stays small.
pub const MAX_BROKERS: usize = 256;
/// At most this many topics (including internal ones).
pub const MAX_TOPICS: usize = 10_000;
/// Producer ids are handed to brokers in blocks of this many.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// Where a node serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// Kafka clients (advertised `host:port`) of the default listener.
    pub kafka: String,
    /// Every Kafka listener by name (`clients`, `branches`...), advertised `host:port`: a
    /// client is told the addresses of the listener it came in on, as Kafka does.
    #[serde(default)]
    pub listeners: BTreeMap<String, String>,
    /// Followers fetch here (Kafka's inter-broker listener).
    pub replication: String,
    /// Quorum and controller RPCs.
    pub quorum: String,
}

// Externally tagged (serde's default): the quorum messages use postcard, which cannot decode
// internally tagged enums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// The first record of a cluster.
    ClusterFormed {
        cluster_id: Uuid,
        policy: SitePolicy,
    },
    /// A broker (re)starts: a new incarnation, whose epoch is this record's log index.
    BrokerRegistered {
        node: NodeId,
        site: SiteId,
        endpoints: Endpoints,
        /// Identifies the data directory: a different disk under the same id is refused.
        storage_id: Uuid,
        /// The broker's own `cluster.timing.session_timeout`, from which it derives its lease:
        /// controllers wait at least this long before fencing it (see
        /// [`crate::controller::Controller`]), so a configuration that differs between nodes
        /// slows fencing but never lets two leaders overlap.
        session_timeout_ms: u64,
    },
    /// The controller stopped hearing from this incarnation (or it cannot reach the other
    /// site): it leads nothing until it registers again.
    BrokerFenced {
        node: NodeId,
        epoch: BrokerEpoch,
    },
    /// Degraded mode begins: every broker of the site is fenced, partitions go on with what
    /// the other site holds.
    SiteFenced {
        site: SiteId,
        reason: String,
    },
    /// The site's brokers are back: `live` (incarnations the controller hears from) are
    /// unfenced, partitions take their replicas into the in-sync set again as they catch up,
    /// and degraded mode ends when every in-sync set spans both sites.
    SiteRestored {
        site: SiteId,
        live: Vec<(NodeId, BrokerEpoch)>,
    },
    TopicCreated {
        name: String,
        id: Uuid,
        /// Overrides of the broker defaults, under Kafka's names.
        configs: BTreeMap<String, String>,
        /// Replicas per partition; each partition starts led by its first replica.
        assignment: Vec<Vec<NodeId>>,
    },
    PartitionsCreated {
        topic: Uuid,
        assignment: Vec<Vec<NodeId>>,
    },
    TopicConfigsReplaced {
        topic: Uuid,
        configs: BTreeMap<String, String>,
    },
    TopicDeleted {
        topic: Uuid,
    },
    /// A new leader or in-sync set. Applied only against `expected` (the version it was
    /// computed from), so a change that raced with another is skipped.
    PartitionChanged {
        partition: PartitionKey,
        expected: PartitionEpoch,
        leader: Option<NodeId>,
        leader_epoch: LeaderEpoch,
        isr: Vec<NodeId>,
    },
    ProducerIdsAllocated {
        node: NodeId,
        first: i64,
        count: i64,
    },
    /// The services an incarnation runs beside Kafka (its Schema Registry's address), so that
    /// other brokers can send it what only it can answer. A record of its own, appended to
    /// this enum: `Endpoints` is part of `BrokerRegistered`, whose encoding metadata logs on
    /// disk already hold.
    BrokerServices {
        node: NodeId,
        epoch: BrokerEpoch,
        services: Services,
    },
    /// SCRAM credentials set and removed (Kafka's AlterUserScramCredentials), all or none.
    /// The first alteration also brings the cluster's decoy secret (see
    /// [`ClusterState::scram_decoy_secret`]).
    ScramCredentialsAltered {
        upserts: Vec<(String, sasl::Credential)>,
        deletions: Vec<(String, sasl::Mechanism)>,
        decoy_secret: Option<Vec<u8>>,
    },
    /// ACL bindings added (CreateAcls).
    AclsCreated {
        bindings: Vec<acl::AclBinding>,
    },
    /// ACL bindings removed (DeleteAcls: the filters resolved to bindings by the broker that
    /// asked; ones already gone are ignored).
    AclsDeleted {
        bindings: Vec<acl::AclBinding>,
    },
    /// A partition's replicas change (a reassignment starts, is retargeted, completes or is
    /// cancelled): the whole new state, applied only against `expected` like
    /// [`MetadataRecord::PartitionChanged`]. Computed by
    /// [`crate::controller::Controller::reassign`] and the controller's tick.
    ReplicasChanged {
        partition: PartitionKey,
        expected: PartitionEpoch,
        replicas: Vec<NodeId>,
        adding: Vec<NodeId>,
        removing: Vec<NodeId>,
        leader: Option<NodeId>,
        leader_epoch: LeaderEpoch,
        isr: Vec<NodeId>,
    },
}

/// At most this many replicas per partition while a reassignment holds the old and new ones
/// (checked by the controller when a move starts).
pub const REPLICAS_MAX: usize = 16;

/// See [`MetadataRecord::BrokerServices`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Services {
    /// The registry's base URL (`http://host:8081`).
    pub schema_registry: Option<String>,
}

/// At most this many users with SCRAM credentials.
pub const SCRAM_USERS_MAX: usize = 10_000;
/// The longest SCRAM user name accepted.
pub const SCRAM_USER_BYTES_MAX: usize = 256;

/// The longest service address accepted.
pub const SERVICE_ADDRESS_BYTES_MAX: usize = 512;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub node: NodeId,
    pub site: SiteId,
    pub endpoints: Endpoints,
    pub storage_id: Uuid,
    pub epoch: BrokerEpoch,
    pub fenced: bool,
    /// As registered (0 in snapshots written before it was recorded).
    #[serde(default)]
    pub session_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// During a reassignment: the target replicas first, then the ones being removed.
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    /// Replicas a reassignment adds (KIP-455): they fetch from the leader like any follower
    /// and join the in-sync set once caught up. Empty when no reassignment is in progress.
    /// (Snapshots are JSON; written before reassignments existed, they have neither field.)
    #[serde(default)]
    pub adding: Vec<NodeId>,
    /// Replicas a reassignment removes once every target replica is in sync.
    #[serde(default)]
    pub removing: Vec<NodeId>,
}

impl PartitionState {
    pub fn reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replicas once the reassignment in progress completes (the replicas when none is).
    pub fn target(&self) -> Vec<NodeId> {
        self.replicas_but(&self.removing)
    }

    /// A replica is out of the in-sync set (replicas a reassignment is adding do not count:
    /// they are still copying, and the move completes only once they are in).
    pub fn under_replicated(&self) -> bool {
        self.replicas
            .iter()
            .any(|n| !self.isr.contains(n) && !self.adding.contains(n))
    }

    /// The replicas before the reassignment in progress (the replicas when none is).
    pub fn original(&self) -> Vec<NodeId> {
        self.replicas_but(&self.adding)
    }

    fn replicas_but(&self, left_out: &[NodeId]) -> Vec<NodeId> {
        self.replicas
            .iter()
            .filter(|n| !left_out.contains(n))
            .copied()
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicState {
    pub name: Arc<str>,
    pub id: Uuid,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionState>,
}

impl TopicState {
    pub fn replication_factor(&self) -> usize {
        self.partitions.first().map_or(0, |p| p.replicas.len())
    }
}

/// Everything the quorum has decided, as of `applied_index`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: Option<Uuid>,
    pub policy: Option<SitePolicy>,
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    pub fenced_sites: BTreeSet<SiteId>,
    pub topics: BTreeMap<Uuid, Arc<TopicState>>,
    pub topic_names: BTreeMap<Arc<str>, Uuid>,
    /// The next producer id no broker has been given.
    pub next_producer_id: i64,
    /// Log index of the last record applied (0 before the first).
    pub applied_index: u64,
    /// What each broker announced last (kept across its restarts until it announces again).
    #[serde(default)]
    pub services: BTreeMap<NodeId, Services>,
    /// SCRAM credentials by user and mechanism (never a password: salted and iterated keys).
    #[serde(default)]
    pub scram: BTreeMap<String, BTreeMap<sasl::Mechanism, sasl::Credential>>,
    /// The secret from which every broker derives the same decoy credential for a user that
    /// does not exist, so that no broker's answers tell whether a user exists. Random, made
    /// by the controller with the first credential (before that no user exists to hide).
    #[serde(default)]
    pub scram_decoy_secret: Option<Vec<u8>>,
    /// Who may do what (checked by every broker when `[authorization]` is on).
    #[serde(default)]
    pub acls: acl::Acls,
}

/// Why a record was skipped when applied (the same on every node).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Skipped {
    #[error("unknown topic {0}")]
    UnknownTopic(Uuid),
    #[error("unknown partition {0}")]
    UnknownPartition(PartitionKey),
    #[error("topic name {0} is taken")]
    NameTaken(String),
    #[error("partition {partition} is at epoch {current:?}, the change expected {expected:?}")]
    StaleChange {
        partition: PartitionKey,
        current: PartitionEpoch,
        expected: PartitionEpoch,
    },
    #[error("broker {0} is not registered, or registered again since")]
    StaleBroker(NodeId),
    #[error("too many {0}")]
    Limit(String),
    #[error("the cluster is already formed")]
    AlreadyFormed,
}

impl ClusterState {
    /// Apply the records of the log entry at `index`, in order. A skipped record changes
    /// nothing; the others apply.
    pub fn apply(&mut self, index: u64, records: &[MetadataRecord]) -> Vec<Result<(), Skipped>> {
        self.advance(index);
        records.iter().map(|r| self.apply_one(index, r)).collect()
    }

    /// An entry without records (a leader's first, a membership change) was applied.
    pub fn advance(&mut self, index: u64) {
        assert!(
            index >= self.applied_index,
            "metadata applied out of order: {index} after {}",
            self.applied_index
        );
        self.applied_index = index;
    }

    fn apply_one(&mut self, index: u64, record: &MetadataRecord) -> Result<(), Skipped> {
        match record {
            MetadataRecord::ClusterFormed { cluster_id, policy } => {
                if self.cluster_id.is_some() {
                    return Err(Skipped::AlreadyFormed);
                }
                self.cluster_id = Some(*cluster_id);
                self.policy = Some(policy.clone());
                Ok(())
            }
            MetadataRecord::BrokerRegistered {
                node,
                site,
                endpoints,
                storage_id,
                session_timeout_ms,
            } => self.register(
                index,
                BrokerInfo {
                    node: *node,
                    site: site.clone(),
                    endpoints: endpoints.clone(),
                    storage_id: *storage_id,
                    epoch: BrokerEpoch(index),
                    fenced: self.fenced_sites.contains(site),
                    session_timeout_ms: *session_timeout_ms,
                },
            ),
            MetadataRecord::BrokerFenced { node, epoch } => {
                let b = self
                    .brokers
                    .get_mut(node)
                    .filter(|b| b.epoch == *epoch)
                    .ok_or(Skipped::StaleBroker(*node))?;
                b.fenced = true;
                Ok(())
            }
            MetadataRecord::SiteFenced { site, .. } => {
                for b in self.brokers.values_mut().filter(|b| &b.site == site) {
                    b.fenced = true;
                }
                self.fenced_sites.insert(site.clone());
                Ok(())
            }
            MetadataRecord::SiteRestored { site, live } => {
                self.fenced_sites.remove(site);
                for (node, epoch) in live {
                    if let Some(b) = self.brokers.get_mut(node).filter(|b| b.epoch == *epoch) {
                        b.fenced = false;
                    }
                }
                Ok(())
            }
            MetadataRecord::TopicCreated {
                name,
                id,
                configs,
                assignment,
            } => self.create_topic(name, *id, configs, assignment),
            MetadataRecord::PartitionsCreated { topic, assignment } => {
                let t = self.topic_mut(topic)?;
                t.partitions
                    .extend(assignment.iter().map(|r| new_partition(r)));
                Ok(())
            }
            MetadataRecord::TopicConfigsReplaced { topic, configs } => {
                self.topic_mut(topic)?.configs = configs.clone();
                Ok(())
            }
            MetadataRecord::TopicDeleted { topic } => {
                let t = self
                    .topics
                    .remove(topic)
                    .ok_or(Skipped::UnknownTopic(*topic))?;
                self.topic_names.remove(&t.name);
                Ok(())
            }
            MetadataRecord::PartitionChanged {
                partition,
                expected,
                leader,
                leader_epoch,
                isr,
            } => self.change_partition(*partition, *expected, *leader, *leader_epoch, isr),
            MetadataRecord::ProducerIdsAllocated { node, first, count } => {
                assert!(
                    *first >= self.next_producer_id && *count > 0,
                    "producer ids allocated twice: {first}+{count} to node {node} at index {index}, \
                     but {} were given already",
                    self.next_producer_id
                );
                self.next_producer_id = first + count;
                Ok(())
            }
            MetadataRecord::BrokerServices {
                node,
                epoch,
                services,
            } => {
                self.brokers
                    .get(node)
                    .filter(|b| b.epoch == *epoch)
                    .ok_or(Skipped::StaleBroker(*node))?;
                let long = services
                    .schema_registry
                    .as_ref()
                    .is_some_and(|u| u.len() > SERVICE_ADDRESS_BYTES_MAX);
                if long {
                    return Err(Skipped::Limit("bytes in a service address".into()));
                }
                self.services.insert(*node, services.clone());
                Ok(())
            }
            MetadataRecord::ScramCredentialsAltered {
                upserts,
                deletions,
                decoy_secret,
            } => self.alter_scram(upserts, deletions, decoy_secret.as_deref()),
            MetadataRecord::AclsCreated { bindings } => {
                let new = bindings.iter().filter(|b| !self.acls.contains(b)).count();
                if self.acls.len() + new > acl::BINDINGS_MAX {
                    return Err(Skipped::Limit("ACL bindings".into()));
                }
                self.acls = self.acls.changed(bindings, &[]);
                Ok(())
            }
            MetadataRecord::AclsDeleted { bindings } => {
                self.acls = self.acls.changed(&[], bindings);
                Ok(())
            }
            MetadataRecord::ReplicasChanged {
                partition,
                expected,
                replicas,
                adding,
                removing,
                leader,
                leader_epoch,
                isr,
            } => {
                let p = self.partition_mut(*partition, *expected)?;
                let next = PartitionState {
                    replicas: replicas.clone(),
                    isr: isr.clone(),
                    leader: *leader,
                    leader_epoch: *leader_epoch,
                    partition_epoch: p.partition_epoch.next(),
                    adding: adding.clone(),
                    removing: removing.clone(),
                };
                check_partition_change(*partition, p, &next);
                *p = next;
                Ok(())
            }
        }
    }

    fn alter_scram(
        &mut self,
        upserts: &[(String, sasl::Credential)],
        deletions: &[(String, sasl::Mechanism)],
        decoy_secret: Option<&[u8]>,
    ) -> Result<(), Skipped> {
        let new_users = upserts
            .iter()
            .filter(|(u, _)| !self.scram.contains_key(u))
            .map(|(u, _)| u)
            .collect::<BTreeSet<_>>()
            .len();
        if self.scram.len() + new_users > SCRAM_USERS_MAX {
            return Err(Skipped::Limit("users with SCRAM credentials".into()));
        }
        if self.scram_decoy_secret.is_none() {
            self.scram_decoy_secret = decoy_secret.map(<[u8]>::to_vec);
        }
        for (user, mechanism) in deletions {
            if let Some(m) = self.scram.get_mut(user) {
                m.remove(mechanism);
                if m.is_empty() {
                    self.scram.remove(user);
                }
            }
        }
        for (user, c) in upserts {
            self.scram
                .entry(user.clone())
                .or_default()
                .insert(c.mechanism, c.clone());
        }
        Ok(())
    }

    fn register(&mut self, index: u64, info: BrokerInfo) -> Result<(), Skipped> {
        if !self.brokers.contains_key(&info.node) && self.brokers.len() >= MAX_BROKERS {
            return Err(Skipped::Limit("brokers".into()));
        }
        if let Some(old) = self.brokers.insert(info.node, info) {
            assert!(old.epoch.0 < index, "broker epochs only grow");
        }
        Ok(())
    }

    fn create_topic(
        &mut self,
        name: &str,
        id: Uuid,
        configs: &BTreeMap<String, String>,
        assignment: &[Vec<NodeId>],
    ) -> Result<(), Skipped> {
        if self.topic_names.contains_key(name) || self.topics.contains_key(&id) {
            return Err(Skipped::NameTaken(name.to_string()));
        }
        if self.topics.len() >= MAX_TOPICS {
            return Err(Skipped::Limit("topics".into()));
        }
        let t = TopicState {
            name: name.into(),
            id,
            configs: configs.clone(),
            partitions: assignment.iter().map(|r| new_partition(r)).collect(),
        };
        self.topic_names.insert(Arc::clone(&t.name), id);
        self.topics.insert(id, Arc::new(t));
        Ok(())
    }

    fn change_partition(
        &mut self,
        key: PartitionKey,
        expected: PartitionEpoch,
        leader: Option<NodeId>,
        leader_epoch: LeaderEpoch,
        isr: &[NodeId],
    ) -> Result<(), Skipped> {
        let p = self.partition_mut(key, expected)?;
        let next = PartitionState {
            leader,
            leader_epoch,
            isr: isr.to_vec(),
            partition_epoch: p.partition_epoch.next(),
            ..p.clone()
        };
        check_partition_change(key, p, &next);
        *p = next;
        Ok(())
    }

    /// The partition `key` for a change computed against its epoch `expected`.
    fn partition_mut(
        &mut self,
        key: PartitionKey,
        expected: PartitionEpoch,
    ) -> Result<&mut PartitionState, Skipped> {
        let t = self.topic_mut(&key.topic)?;
        let p = usize::try_from(key.index)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
            .ok_or(Skipped::UnknownPartition(key))?;
        if p.partition_epoch != expected {
            return Err(Skipped::StaleChange {
                partition: key,
                current: p.partition_epoch,
                expected,
            });
        }
        Ok(p)
    }

    fn topic_mut(&mut self, id: &Uuid) -> Result<&mut TopicState, Skipped> {
        self.topics
            .get_mut(id)
            .map(Arc::make_mut)
            .ok_or(Skipped::UnknownTopic(*id))
    }

    pub fn topic_by_name(&self, name: &str) -> Option<&Arc<TopicState>> {
        self.topic_names
            .get(name)
            .and_then(|id| self.topics.get(id))
    }

    pub fn partition(&self, key: PartitionKey) -> Option<&PartitionState> {
        let t = self.topics.get(&key.topic)?;
        usize::try_from(key.index)
            .ok()
            .and_then(|i| t.partitions.get(i))
    }

    /// Every broker's site and fencing, as the policy functions take them.
    pub fn broker_views(&self) -> BTreeMap<NodeId, BrokerView<'_>> {
        self.brokers
            .iter()
            .map(|(id, b)| {
                (
                    *id,
                    BrokerView {
                        site: &b.site,
                        fenced: b.fenced,
                    },
                )
            })
            .collect()
    }

    /// Every partition, with its key.
    pub fn partitions(&self) -> impl Iterator<Item = (PartitionKey, &PartitionState)> {
        self.topics.values().flat_map(|t| {
            t.partitions.iter().enumerate().map(|(i, p)| {
                let key = PartitionKey {
                    topic: t.id,
                    index: i as i32,
                };
                (key, p)
            })
        })
    }

    /// The partitions a node holds a replica of.
    pub fn partitions_of(
        &self,
        node: NodeId,
    ) -> impl Iterator<Item = (PartitionKey, &PartitionState)> {
        self.partitions()
            .filter(move |(_, p)| p.replicas.contains(&node))
    }
}

fn new_partition(replicas: &[NodeId]) -> PartitionState {
    PartitionState {
        replicas: replicas.to_vec(),
        isr: replicas.to_vec(),
        leader: replicas.first().copied(),
        leader_epoch: LeaderEpoch(0),
        partition_epoch: PartitionEpoch(0),
        adding: Vec::new(),
        removing: Vec::new(),
    }
}

/// The invariants of a partition's change from `old` to `new` (the controller computed it
/// from `old`; a violation is a bug there, and applying it would break every node alike).
fn check_partition_change(key: PartitionKey, old: &PartitionState, new: &PartitionState) {
    let (leader, isr, replicas) = (new.leader, &new.isr, &new.replicas);
    assert!(
        new.leader_epoch >= old.leader_epoch,
        "leader epoch of {key} would go back from {} to {}",
        old.leader_epoch,
        new.leader_epoch
    );
    assert!(
        leader == old.leader || leader.is_none() || new.leader_epoch > old.leader_epoch,
        "{key}: a new leader {leader:?} needs a new epoch (still {})",
        old.leader_epoch
    );
    assert!(!replicas.is_empty(), "{key}: no replicas");
    let distinct: BTreeSet<&NodeId> = replicas.iter().collect();
    assert!(
        distinct.len() == replicas.len(),
        "{key}: replicas {replicas:?} repeat a node"
    );
    let within = |set: &[NodeId]| set.iter().all(|n| replicas.contains(n));
    assert!(
        within(isr) && within(&new.adding) && within(&new.removing),
        "{key}: in-sync set {isr:?}, adding {:?} or removing {:?} outside the replicas {replicas:?}",
        new.adding,
        new.removing
    );
    assert!(
        new.adding.iter().all(|n| !new.removing.contains(n)),
        "{key}: a replica both added and removed"
    );
    assert!(
        leader.is_none_or(|l| isr.contains(&l)),
        "{key}: leader {leader:?} is not in sync ({isr:?})"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u32) -> Endpoints {
        Endpoints {
            kafka: format!("b{n}:9092"),
            replication: format!("b{n}:9092"),
            quorum: format!("b{n}:9190"),
            listeners: Default::default(),
        }
    }

    /// Apply one record as one entry.
    fn apply1(s: &mut ClusterState, index: u64, r: &MetadataRecord) -> Result<(), Skipped> {
        s.apply(index, std::slice::from_ref(r)).remove(0)
    }

    fn formed() -> ClusterState {
        let mut s = ClusterState::default();
        let policy = SitePolicy {
            data_sites: vec![SiteId::new("a"), SiteId::new("b")],
            preferred_site: SiteId::new("a"),
        };
        apply1(
            &mut s,
            1,
            &MetadataRecord::ClusterFormed {
                cluster_id: Uuid::nil(),
                policy,
            },
        )
        .unwrap();
        for (i, site) in [(1, "a"), (2, "a"), (5, "b")] {
            let index = s.applied_index + 1;
            apply1(
                &mut s,
                index,
                &MetadataRecord::BrokerRegistered {
                    node: NodeId(i),
                    site: SiteId::new(site),
                    endpoints: endpoints(i),
                    storage_id: Uuid::nil(),
                    session_timeout_ms: 6000,
                },
            )
            .unwrap();
        }
        s
    }

    fn one_partition(s: &mut ClusterState, replicas: &[u32]) -> PartitionKey {
        let id = Uuid::from_u128(8);
        let index = s.applied_index + 1;
        let assignment = vec![replicas.iter().map(|n| NodeId(*n)).collect()];
        apply1(
            s,
            index,
            &MetadataRecord::TopicCreated {
                name: "moved".into(),
                id,
                configs: BTreeMap::new(),
                assignment,
            },
        )
        .unwrap();
        PartitionKey {
            topic: id,
            index: 0,
        }
    }

    fn replicas_changed(
        expected: i32,
        replicas: &[u32],
        adding: &[u32],
        isr: &[u32],
    ) -> MetadataRecord {
        let ids = |v: &[u32]| v.iter().map(|n| NodeId(*n)).collect::<Vec<_>>();
        MetadataRecord::ReplicasChanged {
            partition: PartitionKey {
                topic: Uuid::from_u128(8),
                index: 0,
            },
            expected: PartitionEpoch(expected),
            replicas: ids(replicas),
            adding: ids(adding),
            removing: vec![],
            leader: Some(NodeId(1)),
            leader_epoch: LeaderEpoch(0),
            isr: ids(isr),
        }
    }

    #[test]
    fn a_replica_change_applies_once_against_its_epoch_and_keeps_the_move_across_isr_changes() {
        let mut s = formed();
        let key = one_partition(&mut s, &[1, 5]);
        let start = replicas_changed(0, &[1, 5, 2], &[2], &[1, 5]);
        apply1(&mut s, 20, &start).unwrap();
        assert!(matches!(
            apply1(&mut s, 21, &start),
            Err(Skipped::StaleChange { .. })
        ));
        // An in-sync set change during the move keeps the move.
        let join = MetadataRecord::PartitionChanged {
            partition: key,
            expected: PartitionEpoch(1),
            leader: Some(NodeId(1)),
            leader_epoch: LeaderEpoch(0),
            isr: vec![NodeId(1), NodeId(5), NodeId(2)],
        };
        apply1(&mut s, 22, &join).unwrap();
        let p = s.partition(key).unwrap();
        assert_eq!(p.adding, vec![NodeId(2)]);
        assert_eq!(p.target(), vec![NodeId(1), NodeId(5), NodeId(2)]);
        assert_eq!(p.original(), vec![NodeId(1), NodeId(5)]);
        assert!(!p.under_replicated());
        // A snapshot written before moves existed reads as no move in progress.
        let mut json = serde_json::to_value(p).unwrap();
        let fields = json.as_object_mut().unwrap();
        fields.remove("adding");
        fields.remove("removing");
        let old: PartitionState = serde_json::from_value(json).unwrap();
        assert!(!old.reassigning());
    }

    #[test]
    #[should_panic(expected = "outside the replicas")]
    fn a_replica_change_with_an_in_sync_replica_outside_the_replicas_is_a_bug() {
        let mut s = formed();
        one_partition(&mut s, &[1, 5]);
        let _ = apply1(&mut s, 20, &replicas_changed(0, &[1, 5], &[], &[1, 5, 2]));
    }

    #[test]
    fn topics_partitions_and_changes_apply_in_order() {
        let mut s = formed();
        let id = Uuid::from_u128(7);
        let r = vec![NodeId(1), NodeId(5), NodeId(2)];
        apply1(
            &mut s,
            10,
            &MetadataRecord::TopicCreated {
                name: "t".into(),
                id,
                configs: BTreeMap::new(),
                assignment: vec![r.clone()],
            },
        )
        .unwrap();
        let key = PartitionKey {
            topic: id,
            index: 0,
        };
        let p = s.partition(key).unwrap();
        assert_eq!((p.leader, p.isr.clone()), (Some(NodeId(1)), r.clone()));
        // A change computed from epoch 0 applies once; the same change again is stale.
        let change = MetadataRecord::PartitionChanged {
            partition: key,
            expected: PartitionEpoch(0),
            leader: Some(NodeId(5)),
            leader_epoch: LeaderEpoch(1),
            isr: vec![NodeId(5), NodeId(2)],
        };
        apply1(&mut s, 11, &change).unwrap();
        assert!(matches!(
            apply1(&mut s, 12, &change),
            Err(Skipped::StaleChange { .. })
        ));
        let p = s.partition(key).unwrap();
        assert_eq!(
            (p.leader, p.leader_epoch),
            (Some(NodeId(5)), LeaderEpoch(1))
        );
        assert_eq!(s.applied_index, 12);
        // Names are unique; deleting frees the name.
        assert!(
            apply1(
                &mut s,
                13,
                &MetadataRecord::TopicCreated {
                    name: "t".into(),
                    id: Uuid::from_u128(8),
                    configs: BTreeMap::new(),
                    assignment: vec![],
                }
            )
            .is_err()
        );
        apply1(&mut s, 14, &MetadataRecord::TopicDeleted { topic: id }).unwrap();
        assert!(s.topic_by_name("t").is_none());
    }

    #[test]
    fn fencing_follows_incarnations_and_sites() {
        let mut s = formed();
        let epoch = s.brokers[&NodeId(5)].epoch;
        // A registration again is a new incarnation: the old epoch's fence is stale.
        apply1(
            &mut s,
            20,
            &MetadataRecord::BrokerRegistered {
                node: NodeId(5),
                site: SiteId::new("b"),
                endpoints: endpoints(5),
                storage_id: Uuid::nil(),
                session_timeout_ms: 6000,
            },
        )
        .unwrap();
        assert!(
            apply1(
                &mut s,
                21,
                &MetadataRecord::BrokerFenced {
                    node: NodeId(5),
                    epoch
                }
            )
            .is_err()
        );
        assert!(!s.brokers[&NodeId(5)].fenced);
        apply1(
            &mut s,
            22,
            &MetadataRecord::SiteFenced {
                site: SiteId::new("b"),
                reason: "lost".into(),
            },
        )
        .unwrap();
        assert!(s.brokers[&NodeId(5)].fenced);
        // Registering while its site is fenced keeps a broker fenced until the site returns.
        apply1(
            &mut s,
            23,
            &MetadataRecord::BrokerRegistered {
                node: NodeId(5),
                site: SiteId::new("b"),
                endpoints: endpoints(5),
                storage_id: Uuid::nil(),
                session_timeout_ms: 6000,
            },
        )
        .unwrap();
        assert!(s.brokers[&NodeId(5)].fenced);
    }

    #[test]
    #[should_panic(expected = "would go back")]
    fn leader_epochs_never_go_back() {
        let mut s = formed();
        let id = Uuid::from_u128(1);
        apply1(
            &mut s,
            10,
            &MetadataRecord::TopicCreated {
                name: "t".into(),
                id,
                configs: BTreeMap::new(),
                assignment: vec![vec![NodeId(1), NodeId(5)]],
            },
        )
        .unwrap();
        let key = PartitionKey {
            topic: id,
            index: 0,
        };
        apply1(
            &mut s,
            11,
            &MetadataRecord::PartitionChanged {
                partition: key,
                expected: PartitionEpoch(0),
                leader: Some(NodeId(5)),
                leader_epoch: LeaderEpoch(3),
                isr: vec![NodeId(5)],
            },
        )
        .unwrap();
        let _ = apply1(
            &mut s,
            12,
            &MetadataRecord::PartitionChanged {
                partition: key,
                expected: PartitionEpoch(1),
                leader: Some(NodeId(1)),
                leader_epoch: LeaderEpoch(2),
                isr: vec![NodeId(1), NodeId(5)],
            },
        );
    }

    #[test]
    fn scram_credentials_are_set_and_removed_and_the_first_decoy_secret_stays() {
        use sasl::{Credential, Mechanism};
        let mut s = formed();
        let c = |m| Credential::derive(m, b"pw", b"salt", 4096);
        let alter = |upserts, deletions, secret: &[u8]| MetadataRecord::ScramCredentialsAltered {
            upserts,
            deletions,
            decoy_secret: Some(secret.to_vec()),
        };
        let both = vec![
            ("u".to_string(), c(Mechanism::ScramSha256)),
            ("u".to_string(), c(Mechanism::ScramSha512)),
        ];
        apply1(&mut s, 10, &alter(both, vec![], b"first")).unwrap();
        assert_eq!(s.scram["u"].len(), 2);
        let drop_256 = vec![("u".to_string(), Mechanism::ScramSha256)];
        apply1(&mut s, 11, &alter(vec![], drop_256, b"second")).unwrap();
        assert_eq!(
            s.scram["u"].keys().collect::<Vec<_>>(),
            [&Mechanism::ScramSha512]
        );
        assert_eq!(s.scram_decoy_secret.as_deref(), Some(&b"first"[..]));
        let drop_512 = vec![("u".to_string(), Mechanism::ScramSha512)];
        apply1(&mut s, 12, &alter(vec![], drop_512, b"x")).unwrap();
        assert!(s.scram.is_empty(), "a user without credentials is gone");

        // One user too many is refused whole, the same on every node.
        for i in 0..SCRAM_USERS_MAX {
            s.scram.entry(format!("user-{i}")).or_default();
        }
        let one_more = vec![("late".to_string(), c(Mechanism::ScramSha256))];
        let r = apply1(&mut s, 13, &alter(one_more, vec![], b"x"));
        assert!(matches!(r, Err(Skipped::Limit(_))), "{r:?}");
        assert!(!s.scram.contains_key("late"));
    }
}
