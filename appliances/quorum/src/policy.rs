//! The site policy of the stretched hub, named in one place (as Garage names its quorum
//! policy) and shared by everything that replicates: the controller places replicas, validates
//! in-sync set changes and elects leaders with it; every partition leader computes its high
//! watermark and admits acks=all writes with it.
//!
//! The rules, for RPO=0 across two data sites:
//! - Placement puts replicas of every partition in every data site (RF 3: 2+1, the larger
//!   share alternating by partition; RF 4: 2+2).
//! - The high watermark is what every in-sync replica has fsynced, and while both sites are
//!   up the in-sync set holds a replica in each of them, so an acknowledged write is on disk in
//!   both sites.
//! - The in-sync set may lose its last replica in a site only when the controller has fenced
//!   that replica's broker (dead, cut off, or its whole site fenced). A follower that merely
//!   lags never lowers the rule: writes wait for it.
//! - Only an in-sync replica on an unfenced broker may lead: no unclean election, ever.
//! - With a site fenced (degraded mode), the in-sync minimum drops to what the surviving
//!   site holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, SiteId};

/// Which sites hold data and who goes on when they lose each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SitePolicy {
    /// The sites whose brokers hold partition data (the witness's site is not one).
    pub data_sites: Vec<SiteId>,
    /// When the data sites lose each other while both still reach the controller (its leader
    /// is then the witness), this site goes on and the other is fenced. When the controller
    /// leader is in a data site, that site goes on: the other cannot reach the controller.
    pub preferred_site: SiteId,
}

/// Where a broker is and whether the controller has fenced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerView<'a> {
    pub site: &'a SiteId,
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("replication factor {rf} needs {needed} brokers in site {site}, which has {has}")]
    NotEnoughBrokers {
        rf: usize,
        site: SiteId,
        needed: usize,
        has: usize,
    },
    #[error("replication factor must be at least 1")]
    ZeroReplicationFactor,
    #[error("no data site has a live broker")]
    NoBrokers,
    #[error("the in-sync set must be a non-empty subset of the replicas and hold the leader")]
    NotASubset,
    #[error("broker {0} is fenced: it cannot join an in-sync set")]
    FencedJoin(NodeId),
    #[error(
        "the in-sync set would lose its last replica in site {site} while broker(s) {nodes:?} there are not fenced"
    )]
    WouldLoseSite { site: SiteId, nodes: Vec<NodeId> },
    #[error("broker {0} is not registered in a data site")]
    UnknownBroker(NodeId),
    #[error("broker {0} is named twice")]
    RepeatedBroker(NodeId),
    #[error("no replica in data site {0}: an acknowledged write must be on disk in every site")]
    MissingSite(SiteId),
    #[error("{got} replicas: a partition has 1 to {max}")]
    ReplicaCount { got: usize, max: usize },
}

impl SitePolicy {
    /// A one-site cluster (a single broker, or brokers without a witness).
    pub fn single_site(site: SiteId) -> SitePolicy {
        SitePolicy {
            data_sites: vec![site.clone()],
            preferred_site: site,
        }
    }

    pub fn is_data_site(&self, site: &SiteId) -> bool {
        self.data_sites.contains(site)
    }

    /// Replicas for partition `index` of a topic: `rf` brokers spread over the data sites
    /// (each site gets `rf / sites`, the remainder going to sites in turn by partition),
    /// round-robin within a site from a per-topic start. The first replica is the preferred
    /// leader; it alternates between sites by partition.
    pub fn place(
        &self,
        rf: usize,
        index: u32,
        topic_seed: u32,
        brokers: &BTreeMap<NodeId, BrokerView<'_>>,
    ) -> Result<Vec<NodeId>, PolicyError> {
        if rf == 0 {
            return Err(PolicyError::ZeroReplicationFactor);
        }
        let sites: Vec<(&SiteId, Vec<NodeId>)> = self
            .data_sites
            .iter()
            .map(|s| {
                let nodes = brokers
                    .iter()
                    .filter(|(_, b)| b.site == s && !b.fenced)
                    .map(|(id, _)| *id)
                    .collect();
                (s, nodes)
            })
            .filter(|(_, nodes): &(_, Vec<NodeId>)| !nodes.is_empty())
            .collect();
        if sites.is_empty() {
            return Err(PolicyError::NoBrokers);
        }
        let n = sites.len();
        let first_site = index as usize % n;
        let mut per_site: Vec<Vec<NodeId>> = vec![Vec::new(); n];
        for (k, slot) in (0..rf).map(|k| (k, (first_site + k) % n)) {
            let (site, nodes) = &sites[slot];
            let taken = per_site[slot].len();
            if taken >= nodes.len() {
                return Err(PolicyError::NotEnoughBrokers {
                    rf,
                    site: (*site).clone(),
                    needed: taken + 1,
                    has: nodes.len(),
                });
            }
            let start = (topic_seed as usize + index as usize / n + k / n) % nodes.len();
            let mut pick = (start + taken) % nodes.len();
            while per_site[slot].contains(&nodes[pick]) {
                pick = (pick + 1) % nodes.len();
            }
            per_site[slot].push(nodes[pick]);
        }
        // Interleave by site, starting with the preferred leader's site.
        let mut replicas = Vec::with_capacity(rf);
        for round in 0..rf {
            for s in 0..n {
                let slot = (first_site + s) % n;
                if let Some(id) = per_site[slot].get(round) {
                    replicas.push(*id);
                }
            }
        }
        Ok(replicas)
    }

    /// Whether `replicas` (an operator's reassignment target) is a placement this policy
    /// accepts: 1 to `max` distinct brokers registered in data sites, at least one in every
    /// data site that has brokers (the site rule needs a copy in each). Fenced brokers are accepted: the
    /// reassignment waits for them to come back and catch up.
    pub fn check_assignment(
        &self,
        replicas: &[NodeId],
        max: usize,
        brokers: &BTreeMap<NodeId, BrokerView<'_>>,
    ) -> Result<(), PolicyError> {
        if replicas.is_empty() || replicas.len() > max {
            return Err(PolicyError::ReplicaCount {
                got: replicas.len(),
                max,
            });
        }
        for (i, n) in replicas.iter().enumerate() {
            if replicas[..i].contains(n) {
                return Err(PolicyError::RepeatedBroker(*n));
            }
            if brokers.get(n).is_none_or(|b| !self.is_data_site(b.site)) {
                return Err(PolicyError::UnknownBroker(*n));
            }
        }
        for site in &self.data_sites {
            let in_site = |n: &NodeId| brokers.get(n).is_some_and(|b| b.site == site);
            let site_has_brokers = brokers.keys().any(in_site);
            if site_has_brokers && !replicas.iter().any(in_site) {
                return Err(PolicyError::MissingSite(site.clone()));
            }
        }
        Ok(())
    }

    /// Whether a partition's in-sync set may change from `old` to `new`. Growing is allowed
    /// for unfenced brokers (the leader vouches that a returning replica has caught up; a
    /// fenced one cannot be fetching); shrinking may not remove the last replica of a site
    /// unless every removed replica there is fenced.
    pub fn check_isr_change(
        &self,
        replicas: &[NodeId],
        leader: Option<NodeId>,
        old: &[NodeId],
        new: &[NodeId],
        brokers: &BTreeMap<NodeId, BrokerView<'_>>,
    ) -> Result<(), PolicyError> {
        let subset = !new.is_empty()
            && new.iter().all(|n| replicas.contains(n))
            && leader.is_none_or(|l| new.contains(&l));
        if !subset {
            return Err(PolicyError::NotASubset);
        }
        if let Some(joining) = new
            .iter()
            .find(|n| !old.contains(n) && brokers.get(n).is_none_or(|b| b.fenced))
        {
            return Err(PolicyError::FencedJoin(*joining));
        }
        for site in &self.data_sites {
            let in_site = |n: &&NodeId| brokers.get(n).is_some_and(|b| b.site == site);
            let kept = new.iter().filter(in_site).count();
            let removed_live: Vec<NodeId> = old
                .iter()
                .filter(in_site)
                .filter(|n| !new.contains(n))
                .filter(|n| brokers.get(n).is_some_and(|b| !b.fenced))
                .copied()
                .collect();
            if kept == 0 && !removed_live.is_empty() {
                return Err(PolicyError::WouldLoseSite {
                    site: site.clone(),
                    nodes: removed_live,
                });
            }
        }
        Ok(())
    }

    /// Who may lead: in-sync replicas on unfenced brokers, the preferred (first) replica first.
    /// Empty means the partition stays offline until one of them returns (never unclean).
    pub fn eligible_leaders(
        &self,
        replicas: &[NodeId],
        isr: &[NodeId],
        brokers: &BTreeMap<NodeId, BrokerView<'_>>,
    ) -> Vec<NodeId> {
        replicas
            .iter()
            .filter(|n| isr.contains(n))
            .filter(|n| brokers.get(n).is_some_and(|b| !b.fenced))
            .copied()
            .collect()
    }

    /// The in-sync minimum for acks=all: the topic's `min.insync.replicas`, lowered in degraded
    /// mode to the replicas the unfenced sites hold (so a survivor with one copy still takes
    /// writes, counted as degraded).
    pub fn effective_min_insync(
        &self,
        min_insync: usize,
        replicas: &[NodeId],
        fenced_sites: &BTreeSet<SiteId>,
        brokers: &BTreeMap<NodeId, BrokerView<'_>>,
    ) -> usize {
        let surviving = replicas
            .iter()
            .filter(|n| {
                brokers
                    .get(n)
                    .is_some_and(|b| !fenced_sites.contains(b.site))
            })
            .count();
        min_insync.min(surviving).max(1)
    }

    /// A partition is degraded while its in-sync set misses a data site its replicas span:
    /// acknowledged writes are then on disk in one site only.
    pub fn is_degraded(
        &self,
        replicas: &[NodeId],
        isr: &[NodeId],
        brokers: &BTreeMap<NodeId, BrokerView<'_>>,
    ) -> bool {
        let sites_of = |nodes: &[NodeId]| -> BTreeSet<&SiteId> {
            nodes
                .iter()
                .filter_map(|n| brokers.get(n).map(|b| b.site))
                .filter(|s| self.is_data_site(s))
                .collect()
        };
        sites_of(isr) != sites_of(replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(s: &str) -> SiteId {
        SiteId::new(s)
    }

    fn two_sites() -> SitePolicy {
        SitePolicy {
            data_sites: vec![site("a"), site("b")],
            preferred_site: site("a"),
        }
    }

    /// Brokers 1-4 in site a, 5-8 in site b.
    fn brokers<'a>(
        a: &'a SiteId,
        b: &'a SiteId,
        fenced: &[u32],
    ) -> BTreeMap<NodeId, BrokerView<'a>> {
        (1..=8)
            .map(|i| {
                let s = if i <= 4 { a } else { b };
                (
                    NodeId(i),
                    BrokerView {
                        site: s,
                        fenced: fenced.contains(&i),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn placement_spans_both_sites_and_alternates_the_larger_share() {
        let (a, b) = (site("a"), site("b"));
        let view = brokers(&a, &b, &[]);
        let p = two_sites();
        for index in 0..16 {
            let r = p.place(3, index, 7, &view).unwrap();
            assert_eq!(r.len(), 3);
            let distinct: BTreeSet<_> = r.iter().collect();
            assert_eq!(distinct.len(), 3, "{r:?}");
            let in_a = r.iter().filter(|n| n.0 <= 4).count();
            assert!(in_a == 1 || in_a == 2, "{r:?}");
            // The preferred leader alternates: even partitions lead in a, odd in b.
            assert_eq!(r[0].0 <= 4, index % 2 == 0, "{index}: {r:?}");
            assert_eq!(in_a == 2, index % 2 == 0);
        }
        let r4 = p.place(4, 0, 0, &view).unwrap();
        assert_eq!(r4.iter().filter(|n| n.0 <= 4).count(), 2);
    }

    #[test]
    fn placement_refuses_what_the_sites_cannot_hold() {
        let (a, b) = (site("a"), site("b"));
        let view: BTreeMap<_, _> = brokers(&a, &b, &[])
            .into_iter()
            .filter(|(n, _)| n.0 == 1 || n.0 == 5)
            .collect();
        let p = two_sites();
        assert!(p.place(2, 0, 0, &view).is_ok());
        assert!(matches!(
            p.place(3, 0, 0, &view),
            Err(PolicyError::NotEnoughBrokers { .. })
        ));
        let single = SitePolicy::single_site(a.clone());
        let one: BTreeMap<_, _> = view.into_iter().filter(|(n, _)| n.0 == 1).collect();
        assert_eq!(single.place(1, 3, 9, &one).unwrap(), vec![NodeId(1)]);
    }

    #[test]
    fn a_lagging_follower_never_removes_the_last_copy_in_its_site() {
        let (a, b) = (site("a"), site("b"));
        let p = two_sites();
        let replicas = [NodeId(1), NodeId(2), NodeId(5)];
        let isr = replicas;
        // Dropping the only site-b replica while its broker lives: refused.
        let live = brokers(&a, &b, &[]);
        let err = p
            .check_isr_change(
                &replicas,
                Some(NodeId(1)),
                &isr,
                &[NodeId(1), NodeId(2)],
                &live,
            )
            .unwrap_err();
        assert!(matches!(err, PolicyError::WouldLoseSite { .. }), "{err}");
        // Dropping a second copy in site a: allowed.
        p.check_isr_change(
            &replicas,
            Some(NodeId(1)),
            &isr,
            &[NodeId(1), NodeId(5)],
            &live,
        )
        .unwrap();
        // Its broker fenced: allowed (degraded).
        let fenced = brokers(&a, &b, &[5]);
        p.check_isr_change(
            &replicas,
            Some(NodeId(1)),
            &isr,
            &[NodeId(1), NodeId(2)],
            &fenced,
        )
        .unwrap();
        assert!(p.is_degraded(&replicas, &[NodeId(1), NodeId(2)], &fenced));
        assert!(!p.is_degraded(&replicas, &isr, &fenced));
        // A fenced broker cannot join.
        assert_eq!(
            p.check_isr_change(
                &replicas,
                Some(NodeId(1)),
                &[NodeId(1), NodeId(2)],
                &isr,
                &fenced
            ),
            Err(PolicyError::FencedJoin(NodeId(5)))
        );
        // The leader must stay in the set.
        assert_eq!(
            p.check_isr_change(
                &replicas,
                Some(NodeId(1)),
                &isr,
                &[NodeId(2), NodeId(5)],
                &live
            ),
            Err(PolicyError::NotASubset)
        );
    }

    #[test]
    fn only_unfenced_in_sync_replicas_lead_and_degraded_minimum_drops() {
        let (a, b) = (site("a"), site("b"));
        let p = two_sites();
        let replicas = [NodeId(1), NodeId(5), NodeId(2)];
        let view = brokers(&a, &b, &[1, 2]);
        assert_eq!(
            p.eligible_leaders(&replicas, &[NodeId(1), NodeId(5)], &view),
            vec![NodeId(5)]
        );
        assert!(
            p.eligible_leaders(&replicas, &[NodeId(1), NodeId(2)], &view)
                .is_empty()
        );
        let fenced_sites: BTreeSet<SiteId> = [a.clone()].into();
        assert_eq!(
            p.effective_min_insync(2, &replicas, &fenced_sites, &view),
            1
        );
        assert_eq!(
            p.effective_min_insync(2, &replicas, &BTreeSet::new(), &view),
            2
        );
    }
}
