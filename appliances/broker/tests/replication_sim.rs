//! Deterministic simulation of partition replication across the two data sites: the broker's
//! own replica state machines (`broker::replica::Replica`) and the quorum's own pure
//! controller and metadata (`quorum::controller::Controller`, `ClusterState`), driven by a
//! seeded clock and a seeded scheduler that crashes brokers (losing what they had not
//! fsynced), cuts the links between sites (site-c holds the controller: the quorum itself is
//! simulated in `appliances/quorum/tests/sim.rs`), moves partitions to other replicas (an
//! operator's reassignments, retargeted and cancelled too; a removed replica deletes its
//! copy), lets producers write to whichever broker believes it leads, and lets followers
//! fetch, flush and truncate by leader epoch as the fetcher does.
//!
//! Checked at every step: a site cut off from both others stops acting as leader within its
//! lease (no split brain: before the others can have fenced it and elected new leaders); every
//! acknowledged record is in the log of every replica of the controller's in-sync set (so any
//! leader the controller may elect holds it), checked at every crash and truncation too; no
//! offset is acknowledged twice with different values. At the end, with every link healed and
//! every broker back: the hub leaves degraded mode by itself, every partition is fully in
//! sync, and every replica's log holds every acknowledged record.
//!
//! What it leaves to other tests: messages here arrive at once (no delays), the controller
//! never fails over (the quorum simulation covers that), and divergence is found from the
//! records' epochs rather than the log's epoch cache (the fetcher's own path is covered by
//! `durable-log`'s tests and the hub's torn-tail and cut tests).
//!
//! `REPLICATION_SIM_SEEDS` (default 60) seeds of 60 simulated seconds each run in CI; a longer
//! campaign: `REPLICATION_SIM_SEEDS=5000 cargo test --release -p broker --test replication_sim`.
//! A failing seed is printed; `REPLICATION_SIM_SEED=N` replays just that one.

use std::collections::BTreeMap;

use broker::replica::{Assignment, FetchRefusal, Replica, Role};
use quorum::controller::{Controller, Registration, Timing};
use quorum::ids::{BrokerEpoch, LeaderEpoch, NodeId, Offset, PartitionKey, SiteId};
use quorum::metadata::{ClusterState, Endpoints, MetadataRecord};
use quorum::policy::SitePolicy;
use uuid::Uuid;

const STEP_MS: u64 = 10;
const RUN_MS: u64 = 60_000;
const SETTLE_MS: u64 = 30_000;
/// Sites by index: the two data sites, then the controller's (the witness's) site.
const SITES: [&str; 3] = ["site-a", "site-b", "site-c"];
const CONTROLLER_SITE: usize = 2;
/// (node, site index)
const BROKERS: [(u32, usize); 4] = [(1, 0), (2, 0), (3, 1), (4, 1)];
const PARTITIONS: i32 = 3;
const MIN_INSYNC: usize = 2;
const LAG_TIME_MS: u64 = 1_000;
const ISR_RETRY_MS: u64 = 300;
const FETCH_MAX_RECORDS: usize = 8;
const TIMING: Timing = Timing {
    heartbeat_ms: 100,
    session_timeout_ms: 1_000,
    site_cut_timeout_ms: 1_000,
};

/// SplitMix64: a seed must replay the same run forever, whatever version of a random-number
/// crate the workspace moves to.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    epoch: LeaderEpoch,
    value: u64,
}

struct Pending {
    partition: i32,
    epoch: LeaderEpoch,
    offset: usize,
    value: u64,
}

struct Broker {
    id: NodeId,
    site: usize,
    storage: Uuid,
    alive: bool,
    down_until_ms: u64,
    /// Per partition: the log, and how much of it is fsynced.
    logs: BTreeMap<i32, Vec<Rec>>,
    durable: BTreeMap<i32, usize>,
    replicas: BTreeMap<i32, Replica>,
    epoch: Option<BrokerEpoch>,
    /// The metadata as this broker has applied it.
    view: ClusterState,
    lease_until_ms: u64,
    next_heartbeat_ms: u64,
    next_isr_check_ms: u64,
    reached_ms: BTreeMap<NodeId, u64>,
    pending: Vec<Pending>,
}

struct Sim {
    rng: Rng,
    seed: u64,
    now_ms: u64,
    state: ClusterState,
    index: u64,
    ctl: Controller,
    brokers: BTreeMap<NodeId, Broker>,
    /// Cut site pairs (lower index first) and when each heals.
    cuts: BTreeMap<(usize, usize), u64>,
    /// Since when each data site has been cut off from both other sites.
    isolated_since: [Option<u64>; 2],
    topic: Uuid,
    acked: BTreeMap<(i32, usize), u64>,
    /// The metadata index and time of the last full check of `acked` against the logs.
    checked: (u64, u64),
    leaders: BTreeMap<(i32, LeaderEpoch), NodeId>,
    next_value: u64,
    faults: bool,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    acked: u64,
    crashes: u64,
    cuts: u64,
    truncations: u64,
    elections: u64,
    isolations: u64,
    /// Reassignments started (or retargeted, or cancelled) by the simulated operator.
    reassignments: u64,
    /// Replica sets that reached their target (completed, cancelled).
    moves_ended: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut state = ClusterState::default();
        let policy = SitePolicy {
            data_sites: vec![SiteId::new(SITES[0]), SiteId::new(SITES[1])],
            preferred_site: SiteId::new(SITES[0]),
        };
        state.apply(
            1,
            &Controller::formation(Uuid::from_u64_pair(seed, 1), policy),
        );
        let ctl = Controller::new(TIMING, SiteId::new(SITES[CONTROLLER_SITE]), &state, 0);
        let brokers = BROKERS
            .iter()
            .map(|(id, site)| {
                let b = Broker {
                    id: NodeId(*id),
                    site: *site,
                    storage: Uuid::from_u64_pair(seed, u64::from(*id) + 100),
                    alive: true,
                    down_until_ms: 0,
                    logs: BTreeMap::new(),
                    durable: BTreeMap::new(),
                    replicas: BTreeMap::new(),
                    epoch: None,
                    view: ClusterState::default(),
                    lease_until_ms: 0,
                    next_heartbeat_ms: 0,
                    next_isr_check_ms: 0,
                    reached_ms: BTreeMap::new(),
                    pending: vec![],
                };
                (NodeId(*id), b)
            })
            .collect();
        let mut sim = Sim {
            rng: Rng(seed),
            seed,
            now_ms: 0,
            state,
            index: 1,
            ctl,
            brokers,
            cuts: BTreeMap::new(),
            isolated_since: [None; 2],
            topic: Uuid::from_u64_pair(seed, 2),
            acked: BTreeMap::new(),
            checked: (0, 0),
            leaders: BTreeMap::new(),
            next_value: 1,
            faults: true,
            stats: Stats::default(),
        };
        for (id, _) in BROKERS {
            sim.heartbeat(NodeId(id));
        }
        let records = sim
            .ctl
            .create_topic(
                &sim.state,
                sim.topic,
                "t",
                PARTITIONS as u32,
                3,
                &BTreeMap::new(),
            )
            .expect("the topic is placed");
        sim.apply(records);
        sim
    }

    fn apply(&mut self, records: Vec<MetadataRecord>) {
        if records.is_empty() {
            return;
        }
        for r in &records {
            if let MetadataRecord::ReplicasChanged {
                adding, removing, ..
            } = r
                && adding.is_empty()
                && removing.is_empty()
            {
                self.stats.moves_ended += 1;
            }
        }
        self.index += 1;
        self.state.apply(self.index, &records);
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        a == b || !self.cuts.contains_key(&(a.min(b), a.max(b)))
    }

    fn key(&self, partition: i32) -> PartitionKey {
        PartitionKey {
            topic: self.topic,
            index: partition,
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "seed {} at {} ms: {what}\n(replay: REPLICATION_SIM_SEED={} cargo test -p broker --test replication_sim)",
            self.seed, self.now_ms, self.seed
        );
    }

    /// One step: faults, the controller, every broker in a random order, checks.
    fn step(&mut self) {
        self.now_ms += STEP_MS;
        if self.faults {
            self.faults_step();
        }
        self.cuts.retain(|_, until| *until > self.now_ms);
        if self.now_ms.is_multiple_of(100) {
            let records = self.ctl.tick(&self.state, self.now_ms);
            self.apply(records);
        }
        let mut order: Vec<NodeId> = self.brokers.keys().copied().collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        for id in order {
            self.broker_step(id);
        }
        self.acks();
        self.check();
    }

    fn faults_step(&mut self) {
        let ids: Vec<NodeId> = self.brokers.keys().copied().collect();
        for id in ids {
            let now = self.now_ms;
            let crash = self.rng.chance(0.0004);
            let down_ms = 200 + self.rng.below(3_000);
            let b = self.brokers.get_mut(&id).expect("broker");
            if b.alive && crash {
                self.stats.crashes += 1;
                for p in 0..PARTITIONS {
                    let durable = self.brokers[&id].durable.get(&p).copied().unwrap_or(0);
                    self.check_shrink(id, p, durable, "cut to its fsynced part by a crash");
                }
                let b = self.brokers.get_mut(&id).expect("broker");
                crash_broker(b, now + down_ms);
            } else if !b.alive && now >= b.down_until_ms {
                b.alive = true;
                b.next_heartbeat_ms = now;
            }
        }
        if self.rng.chance(0.002) {
            self.reassign();
        }
        if self.rng.chance(0.0015) {
            let pair = [(0, 1), (0, 2), (1, 2)][self.rng.below(3) as usize];
            let until = self.now_ms + 300 + self.rng.below(6_000);
            self.cuts.entry(pair).or_insert(until);
            self.stats.cuts += 1;
        }
    }

    /// An operator moves a partition to three of the four brokers in a random order (any three
    /// span both sites), or cancels the move in progress. The controller may refuse (the move
    /// would drop the last in-sync replica of a site, say): the operator is told, nothing
    /// changes.
    fn reassign(&mut self) {
        let p = self.rng.below(PARTITIONS as u64) as i32;
        let key = self.key(p);
        let moving = self.state.partition(key).expect("partition").reassigning();
        let target = if moving && self.rng.chance(0.3) {
            None
        } else {
            let mut ids: Vec<NodeId> = BROKERS.iter().map(|(id, _)| NodeId(*id)).collect();
            ids.remove(self.rng.below(ids.len() as u64) as usize);
            for i in (1..ids.len()).rev() {
                ids.swap(i, self.rng.below(i as u64 + 1) as usize);
            }
            Some(ids)
        };
        if let Ok(records) = self.ctl.reassign(&self.state, key, target.as_deref()) {
            self.stats.reassignments += u64::from(!records.is_empty());
            self.apply(records);
        }
    }

    fn broker_step(&mut self, id: NodeId) {
        if !self.brokers[&id].alive {
            return;
        }
        self.probe(id);
        if self.now_ms >= self.brokers[&id].next_heartbeat_ms {
            self.heartbeat(id);
        }
        let site = self.brokers[&id].site;
        if self.linked(site, CONTROLLER_SITE) && self.rng.chance(0.5) {
            self.brokers.get_mut(&id).expect("broker").view = self.state.clone();
        }
        self.reconcile(id);
        for p in 0..PARTITIONS {
            if self.rng.chance(0.5) {
                self.flush(id, p);
            }
            if self.rng.chance(0.6) {
                self.fetch(id, p);
            }
        }
        if self.now_ms >= self.brokers[&id].next_isr_check_ms {
            self.brokers.get_mut(&id).expect("broker").next_isr_check_ms = self.now_ms + 250;
            for p in 0..PARTITIONS {
                self.isr_upkeep(id, p);
            }
        }
        if self.faults {
            for p in 0..PARTITIONS {
                if self.rng.chance(0.15) {
                    self.produce(id, p);
                }
            }
        }
    }

    /// Who this broker reached (the reachability probes behind site-cut detection).
    fn probe(&mut self, id: NodeId) {
        let site = self.brokers[&id].site;
        let reached: Vec<NodeId> = self
            .brokers
            .values()
            .filter(|o| o.id != id && o.alive && self.linked(site, o.site))
            .map(|o| o.id)
            .collect();
        let now = self.now_ms;
        let b = self.brokers.get_mut(&id).expect("broker");
        for o in reached {
            b.reached_ms.insert(o, now);
        }
    }

    /// Register or heartbeat, as `cluster.rs` does: a lease from an answer counts only on
    /// metadata at least as new as the controller's.
    fn heartbeat(&mut self, id: NodeId) {
        let now = self.now_ms;
        let b = &self.brokers[&id];
        if !self.linked(b.site, CONTROLLER_SITE) {
            self.brokers.get_mut(&id).expect("broker").next_heartbeat_ms =
                now + TIMING.heartbeat_ms;
            return;
        }
        let site = SiteId::new(SITES[b.site]);
        let (epoch, storage) = (b.epoch, b.storage);
        let unreachable: Vec<NodeId> = self
            .brokers
            .keys()
            .filter(|o| **o != id)
            .filter(|o| {
                b.reached_ms
                    .get(o)
                    .is_none_or(|t| now.saturating_sub(*t) > TIMING.session_timeout_ms / 2)
            })
            .copied()
            .collect();
        let lease = match epoch {
            None => {
                let endpoints = Endpoints {
                    kafka: format!("b{id}:9092"),
                    replication: format!("b{id}:9092"),
                    quorum: format!("b{id}:9190"),
                    listeners: Default::default(),
                };
                let registration = Registration {
                    node: id,
                    site: site.clone(),
                    endpoints,
                    storage_id: storage,
                    session_timeout_ms: TIMING.session_timeout_ms,
                };
                match self.ctl.register(&self.state, now, &registration) {
                    Ok(records) => {
                        self.apply(records);
                        let epoch = self.state.brokers[&id].epoch;
                        // As the quorum node does: a registration is the first heartbeat.
                        self.ctl.heartbeat(&self.state, now, id, epoch, &[]);
                        self.brokers.get_mut(&id).expect("broker").epoch = Some(epoch);
                        true
                    }
                    Err(_) => false,
                }
            }
            Some(epoch) => {
                let fenced = self
                    .ctl
                    .heartbeat(&self.state, now, id, epoch, &unreachable);
                if fenced {
                    let b = self.brokers.get_mut(&id).expect("broker");
                    b.epoch = None;
                    b.lease_until_ms = 0;
                }
                !fenced
            }
        };
        let b = self.brokers.get_mut(&id).expect("broker");
        b.next_heartbeat_ms = now + TIMING.heartbeat_ms;
        if lease {
            b.view = self.state.clone();
            b.lease_until_ms = now + TIMING.lease_ms();
        }
    }

    /// Apply the broker's view to its replicas, as the replica manager does.
    fn reconcile(&mut self, id: NodeId) {
        if self.brokers[&id].epoch.is_none() {
            return;
        }
        for p in 0..PARTITIONS {
            let key = self.key(p);
            let b = &self.brokers[&id];
            let Some(ps) = b.view.partition(key) else {
                continue;
            };
            let a = Assignment {
                leader: ps.leader,
                leader_epoch: ps.leader_epoch,
                partition_epoch: ps.partition_epoch,
                replicas: ps.replicas.clone(),
                isr: ps.isr.clone(),
            };
            if a.replicas.contains(&id) {
                self.assign(id, p, &a);
            } else if b.logs.contains_key(&p) || b.replicas.contains_key(&p) {
                // Moved away: the replica manager deletes the copy.
                self.check_shrink(id, p, 0, "deleted as a replica moved away");
                let b = self.brokers.get_mut(&id).expect("broker");
                b.logs.remove(&p);
                b.durable.remove(&p);
                b.replicas.remove(&p);
                b.pending.retain(|w| w.partition != p);
            }
        }
    }

    fn assign(&mut self, id: NodeId, p: i32, a: &Assignment) {
        let now = self.now_ms;
        let b = self.brokers.get_mut(&id).expect("broker");
        let log_len = b.logs.entry(p).or_default().len();
        let durable = *b.durable.entry(p).or_default();
        let r = b.replicas.entry(p).or_insert_with(|| {
            Replica::new(
                id,
                Offset(0),
                Offset(log_len as i64),
                Offset(durable as i64),
            )
        });
        // A view older than what the replica applied is skipped, as an older state is.
        if a.leader_epoch < r.leader_epoch() {
            return;
        }
        r.assign(a, now);
    }

    /// Whether the broker may act as leader of `p` now (`Cluster::lease_valid`).
    fn acting_leader(&self, id: NodeId, p: i32) -> bool {
        let b = &self.brokers[&id];
        b.alive
            && self.now_ms < b.lease_until_ms
            && b.view
                .brokers
                .get(&id)
                .is_some_and(|i| !i.fenced && Some(i.epoch) == b.epoch)
            && b.replicas.get(&p).is_some_and(Replica::is_leader)
    }

    fn flush(&mut self, id: NodeId, p: i32) {
        let b = self.brokers.get_mut(&id).expect("broker");
        let len = b.logs.get(&p).map_or(0, Vec::len);
        b.durable.insert(p, len);
        if let Some(r) = b.replicas.get_mut(&p) {
            r.on_flush(Offset(len as i64));
        }
    }

    fn produce(&mut self, id: NodeId, p: i32) {
        if !self.acting_leader(id, p) {
            return;
        }
        let key = self.key(p);
        let value = self.next_value;
        let b = self.brokers.get_mut(&id).expect("broker");
        let r = b.replicas.get_mut(&p).expect("a leader's replica");
        // acks=all admission: the in-sync set must meet the (degraded-mode) minimum.
        let Some(ps) = b.view.partition(key) else {
            return;
        };
        let policy = b.view.policy.as_ref().expect("formed");
        let needed = policy.effective_min_insync(
            MIN_INSYNC,
            &ps.replicas,
            &b.view.fenced_sites,
            &b.view.broker_views(),
        );
        if r.isr().len() < needed {
            return;
        }
        let log = b.logs.entry(p).or_default();
        log.push(Rec {
            epoch: r.leader_epoch(),
            value,
        });
        r.on_append(Offset(log.len() as i64));
        b.pending.push(Pending {
            partition: p,
            epoch: r.leader_epoch(),
            offset: log.len() - 1,
            value,
        });
        self.next_value += 1;
    }

    /// A follower's fetch: only once what it holds is fsynced (it reports it as durable),
    /// to a leader it can reach that leads in the epoch it knows; divergence by leader epoch
    /// first (KIP-320, the KIP-279 cut), then records and the high watermark.
    fn fetch(&mut self, id: NodeId, p: i32) {
        let now = self.now_ms;
        let b = &self.brokers[&id];
        let Some(r) = b.replicas.get(&p) else { return };
        let Role::Follower { leader: Some(l) } = r.role() else {
            return;
        };
        let empty = vec![];
        let log = b.logs.get(&p).unwrap_or(&empty);
        if b.durable.get(&p).copied().unwrap_or(0) != log.len() {
            return;
        }
        let leader = &self.brokers[&l];
        if !self.linked(b.site, leader.site)
            || !self.acting_leader(l, p)
            || leader.replicas[&p].leader_epoch() != r.leader_epoch()
        {
            return;
        }
        let leader_log = leader.logs.get(&p).unwrap_or(&empty);
        if let Some(last) = log.last() {
            // The leader's largest epoch at or below the follower's last, and where that
            // epoch ends in each log (epochs never decrease along a log).
            let below = leader_log.partition_point(|r| r.epoch <= last.epoch);
            let epoch = below.checked_sub(1).map(|i| leader_log[i].epoch);
            let end_in = |l: &[Rec]| epoch.map_or(0, |e| l.partition_point(|r| r.epoch <= e));
            let cut = end_in(leader_log).min(end_in(log));
            if cut < log.len() {
                self.truncate(id, p, cut);
                return;
            }
        }
        let offset = log.len();
        // Log matching at the boundary: the last record held is the leader's.
        let matches = offset == 0 || leader_log.get(offset - 1) == log.last();
        let records: Vec<Rec> = leader_log
            .iter()
            .skip(offset)
            .take(FETCH_MAX_RECORDS)
            .cloned()
            .collect();
        if !matches {
            self.fail(format!(
                "broker {id}'s log of partition {p} differs from its leader {l}'s before {offset}"
            ));
        }
        let lr = self
            .brokers
            .get_mut(&l)
            .expect("leader")
            .replicas
            .get_mut(&p)
            .expect("leader replica");
        let leader_partition_epoch = lr.partition_epoch();
        let hw = match lr.on_follower_fetch(id, Offset(offset as i64), now) {
            Ok(_) => lr.high_watermark(),
            // The two disagree on the replicas: a reassignment added this one and the leader
            // has not applied it yet, or removed it and the follower has not. It is refused
            // and asks again, as the fetcher does.
            Err(FetchRefusal::UnknownReplica(_))
                if leader_partition_epoch != self.brokers[&id].replicas[&p].partition_epoch() =>
            {
                return;
            }
            Err(e) => self.fail(format!(
                "broker {l} refused broker {id}'s fetch at {offset} of partition {p} after the divergence check: {e}"
            )),
        };
        let b = self.brokers.get_mut(&id).expect("broker");
        let log = b.logs.entry(p).or_default();
        log.extend(records);
        let len = log.len();
        let r = b.replicas.get_mut(&p).expect("replica");
        r.on_append(Offset(len as i64));
        r.on_leader_high_watermark(hw);
    }

    fn truncate(&mut self, id: NodeId, p: i32, cut: usize) {
        self.stats.truncations += 1;
        self.check_shrink(id, p, cut, "truncated by leader epoch");
        let b = self.brokers.get_mut(&id).expect("broker");
        b.logs.get_mut(&p).expect("log").truncate(cut);
        let d = b.durable.entry(p).or_default();
        *d = (*d).min(cut);
        b.replicas
            .get_mut(&p)
            .expect("replica")
            .on_truncate(Offset(cut as i64));
    }

    /// The leader's in-sync upkeep: ask the controller for the set it wants.
    fn isr_upkeep(&mut self, id: NodeId, p: i32) {
        if !self.acting_leader(id, p) {
            return;
        }
        let now = self.now_ms;
        let key = self.key(p);
        let b = self.brokers.get_mut(&id).expect("broker");
        let r = b.replicas.get_mut(&p).expect("leader replica");
        let Some(isr) = r.wanted_isr(now, LAG_TIME_MS, ISR_RETRY_MS) else {
            return;
        };
        r.isr_requested(isr.clone(), now);
        let (epoch, leader_epoch, partition_epoch) =
            (b.epoch, r.leader_epoch(), r.partition_epoch());
        let site = b.site;
        let answer = match epoch {
            Some(epoch) if self.linked(site, CONTROLLER_SITE) => self
                .ctl
                .alter_isr(
                    &self.state,
                    id,
                    epoch,
                    key,
                    leader_epoch,
                    partition_epoch,
                    &isr,
                )
                .ok(),
            _ => None,
        };
        match answer {
            Some(records) => self.apply(records),
            // Unreachable controller, or refused (stale, or against the site policy): asked
            // again later from a fresh look.
            None => self
                .brokers
                .get_mut(&id)
                .expect("broker")
                .replicas
                .get_mut(&p)
                .expect("replica")
                .isr_request_failed(),
        }
    }

    /// Producers get their answer once the high watermark passes their record in the epoch
    /// they wrote in; a leadership lost first answers an error (not acknowledged).
    fn acks(&mut self) {
        let mut acked = vec![];
        for b in self.brokers.values_mut() {
            b.pending.retain(|w| {
                let Some(r) = b.replicas.get(&w.partition) else {
                    return false;
                };
                if !r.is_leader() || r.leader_epoch() != w.epoch {
                    return false;
                }
                if r.high_watermark().0 > w.offset as i64 {
                    acked.push((w.partition, w.offset, w.value));
                    return false;
                }
                true
            });
        }
        for (p, offset, value) in acked {
            if let Some(old) = self.acked.insert((p, offset), value)
                && old != value
            {
                self.fail(format!(
                    "partition {p} offset {offset} acknowledged as {old} and then as {value}"
                ));
            }
            self.stats.acked += 1;
        }
    }

    /// A log of the controller's in-sync set never loses an acknowledged record (the two ways
    /// a log shrinks: a crash and a truncation). Cheap, so checked at every shrink.
    fn check_shrink(&self, id: NodeId, p: i32, new_len: usize, how: &str) {
        let in_sync = self
            .state
            .partition(self.key(p))
            .is_some_and(|ps| ps.isr.contains(&id));
        let highest = self
            .acked
            .range((p, 0)..(p + 1, 0))
            .next_back()
            .map(|((_, o), _)| *o);
        if in_sync && highest.is_some_and(|o| o >= new_len) {
            self.fail(format!(
                "in-sync replica {id} of partition {p} {how} to {new_len}, below acknowledged offset {highest:?}"
            ));
        }
    }

    fn check(&mut self) {
        // No split brain: a site cut off from both others stops acting as leader (taking
        // writes of any acks level, serving followers) within its lease, before the others can
        // have fenced it and elected new leaders. (A leadership moved in good order overlaps
        // briefly with the old leader's stale view, as in Kafka: the old one can no longer
        // advance its high watermark, so acks=all is never answered there.)
        for site in 0..2 {
            let other = 1 - site;
            let isolated = !self.linked(site, other) && !self.linked(site, CONTROLLER_SITE);
            match (isolated, self.isolated_since[site]) {
                (true, None) => {
                    self.isolated_since[site] = Some(self.now_ms);
                    self.stats.isolations += 1;
                }
                (false, Some(_)) => self.isolated_since[site] = None,
                _ => {}
            }
        }
        for p in 0..PARTITIONS {
            let acting: Vec<NodeId> = self
                .brokers
                .keys()
                .copied()
                .filter(|id| self.acting_leader(*id, p))
                .collect();
            for id in acting {
                let site = self.brokers[&id].site;
                if let Some(since) = self.isolated_since[site]
                    && self.now_ms > since + TIMING.lease_ms()
                {
                    self.fail(format!(
                        "broker {id} still acts as leader of partition {p} {} ms after its site was cut off",
                        self.now_ms - since
                    ));
                }
                let epoch = self.brokers[&id].replicas[&p].leader_epoch();
                self.leaders.entry((p, epoch)).or_insert(id);
            }
        }
        self.stats.elections = self.leaders.len() as u64;
        // The full check (every acknowledged record on every in-sync replica) when the
        // metadata changed and at least every simulated second; shrinks are checked as they
        // happen.
        let (index, at_ms) = self.checked;
        if index == self.index && self.now_ms < at_ms + 1_000 {
            return;
        }
        self.checked = (self.index, self.now_ms);
        for p in 0..PARTITIONS {
            let ps = self
                .state
                .partition(self.key(p))
                .expect("partition")
                .clone();
            if let Some(l) = ps.leader
                && !ps.isr.contains(&l)
            {
                self.fail(format!(
                    "partition {p}'s leader {l} is not in its in-sync set {:?}",
                    ps.isr
                ));
            }
            for n in &ps.isr {
                let log = self.brokers[n].logs.get(&p).cloned().unwrap_or_default();
                for ((_, offset), value) in self.acked.range((p, 0)..(p + 1, 0)) {
                    if log.get(*offset).map(|r| r.value) != Some(*value) {
                        self.fail(format!(
                            "acknowledged record {value} at offset {offset} of partition {p} is missing from in-sync replica {n} (in-sync set {:?}, leader {:?} epoch {})",
                            ps.isr, ps.leader, ps.leader_epoch
                        ));
                    }
                }
            }
        }
    }

    /// Heal every link, restart every broker, stop producing, and let the hub settle.
    fn settle(&mut self) {
        self.faults = false;
        self.cuts.clear();
        let now = self.now_ms;
        for b in self.brokers.values_mut() {
            if !b.alive {
                b.alive = true;
                b.next_heartbeat_ms = now;
            }
        }
        let deadline = self.now_ms + SETTLE_MS;
        while self.now_ms < deadline {
            self.step();
            if self.settled() {
                break;
            }
        }
        if !self.settled() {
            let parts: Vec<_> = (0..PARTITIONS)
                .map(|p| self.state.partition(self.key(p)).cloned())
                .collect();
            self.fail(format!(
                "the hub did not settle within {SETTLE_MS} ms of healing: fenced sites {:?}, partitions {parts:?}\n{}",
                self.state.fenced_sites,
                self.describe()
            ));
        }
        for p in 0..PARTITIONS {
            let replicas = self
                .state
                .partition(self.key(p))
                .expect("partition")
                .replicas
                .clone();
            for b in replicas.iter().map(|n| &self.brokers[n]) {
                let log = b.logs.get(&p).cloned().unwrap_or_default();
                for ((_, offset), value) in self.acked.range((p, 0)..(p + 1, 0)) {
                    if log.get(*offset).map(|r| r.value) != Some(*value) {
                        self.fail(format!(
                            "after settling, broker {} lacks acknowledged {value} at {p}/{offset}",
                            b.id
                        ));
                    }
                }
            }
        }
    }

    /// Every broker's replicas, for failure messages.
    fn describe(&self) -> String {
        let mut out = String::new();
        for b in self.brokers.values() {
            out += &format!(
                "broker {} alive {} epoch {:?} lease {} view index {} fenced-in-view {:?}\n",
                b.id,
                b.alive,
                b.epoch,
                self.now_ms < b.lease_until_ms,
                b.view.applied_index,
                b.view.brokers.get(&b.id).map(|i| i.fenced)
            );
            for (p, r) in &b.replicas {
                out += &format!(
                    "  p{p}: {:?} epoch {} hw {} end {} durable {:?} isr {:?} lag {:?}\n",
                    r.role(),
                    r.leader_epoch(),
                    r.high_watermark(),
                    r.log_end(),
                    b.durable.get(p),
                    r.isr(),
                    r.follower_lag()
                );
            }
        }
        out
    }

    /// No site fenced, every partition led with every replica in sync and caught up.
    fn settled(&self) -> bool {
        self.state.fenced_sites.is_empty()
            && (0..PARTITIONS).all(|p| {
                let ps = self.state.partition(self.key(p)).expect("partition");
                let Some(l) = ps.leader else { return false };
                let end = self.brokers[&l].logs.get(&p).map_or(0, Vec::len);
                ps.isr.len() == ps.replicas.len()
                    && !ps.reassigning()
                    && ps
                        .replicas
                        .iter()
                        .all(|n| self.brokers[n].logs.get(&p).map_or(0, Vec::len) == end)
            })
    }
}

fn crash_broker(b: &mut Broker, until_ms: u64) {
    b.alive = false;
    b.down_until_ms = until_ms;
    for (p, log) in b.logs.iter_mut() {
        log.truncate(b.durable.get(p).copied().unwrap_or(0));
    }
    b.replicas.clear();
    b.pending.clear();
    b.epoch = None;
    b.lease_until_ms = 0;
    b.reached_ms.clear();
}

fn run(seed: u64) -> Stats {
    let mut sim = Sim::new(seed);
    while sim.now_ms < RUN_MS {
        sim.step();
    }
    sim.settle();
    sim.stats
}

#[test]
fn replication_loses_no_acknowledged_record_under_crashes_and_cuts() {
    if let Ok(seed) = std::env::var("REPLICATION_SIM_SEED") {
        let stats = run(seed.parse().expect("REPLICATION_SIM_SEED is a number"));
        eprintln!("seed {seed}: {stats:?}");
        return;
    }
    let seeds: u64 = std::env::var("REPLICATION_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut total = Stats::default();
    for seed in 0..seeds {
        let s = run(seed);
        total.acked += s.acked;
        total.crashes += s.crashes;
        total.cuts += s.cuts;
        total.truncations += s.truncations;
        total.elections += s.elections;
        total.isolations += s.isolations;
        total.reassignments += s.reassignments;
        total.moves_ended += s.moves_ended;
    }
    eprintln!("{seeds} seeds: {total:?}");
    // The faults must have happened, or this test checks nothing.
    assert!(total.acked > seeds * 1_000, "{total:?}");
    assert!(
        total.crashes > seeds && total.cuts > seeds && total.truncations > 0,
        "{total:?}"
    );
    assert!(
        total.elections > seeds * u64::from(PARTITIONS as u32),
        "{total:?}"
    );
    assert!(
        total.reassignments > seeds && total.moves_ended > seeds,
        "{total:?}"
    );
}
