//! Deterministic simulation of the controller quorum: real `QuorumNode`s (openraft, the log
//! store on simulated disks, the controller service) on one thread under tokio's paused clock,
//! talking through a seeded network that delays, cuts links and loses answers; nodes crash
//! (losing what they had not synced, sometimes leaving a torn tail) and restart. openraft's
//! election randomness is seeded too, so a seed replays the same run.
//!
//! Checked: at most one leader per term; every acknowledged controller decision (a producer id
//! block, a topic) survives in the final state of every node; producer id blocks never
//! overlap; after healing, every node converges to the same state.
//!
//! Exact replays need tokio's randomness seeded too: `RUSTFLAGS="--cfg tokio_unstable"`.
//!
//! `QUORUM_SIM_SEEDS` sets how many seeds run (default 40, about half a minute here); a failing seed
//! is printed and replayed alone with `QUORUM_SIM_SEED=<n>`. Longer runs:
//! `QUORUM_SIM_SEEDS=500 cargo test --release -p quorum --test sim`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quorum::controller::{ControllerRequest, ControllerResponse, Registration, Timing};
use quorum::ids::{BrokerEpoch, NodeId, SiteId};
use quorum::metadata::{ClusterState, Endpoints};
use quorum::node::{NodeConfig, QuorumNode, RaftTiming};
use quorum::policy::SitePolicy;
use quorum::raft::log_file::SimFile;
use quorum::raft::network::{Transport, TransportError};
use quorum::raft::runtime::seed_thread_rng;
use quorum::rpc::{self, Envelope, PROTOCOL_VERSION, Request, Response};
use rand08::rngs::SmallRng;
use rand08::{Rng, SeedableRng};

type Node = Arc<QuorumNode<SimTransport>>;

/// The simulated network: which nodes are up, which links are cut, and a seeded generator for
/// delays and losses.
struct Net {
    rng: Mutex<SmallRng>,
    nodes: Mutex<HashMap<NodeId, Node>>,
    cut: Mutex<BTreeSet<(NodeId, NodeId)>>,
}

impl Net {
    fn is_cut(&self, a: NodeId, b: NodeId) -> bool {
        let cut = self.cut.lock();
        cut.contains(&(a, b)) || cut.contains(&(b, a))
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.rng.lock().gen_range(1..15))
    }

    fn chance(&self, p: f64) -> bool {
        self.rng.lock().gen_bool(p)
    }
}

struct SimTransport {
    net: Arc<Net>,
    from: NodeId,
}

impl Transport for SimTransport {
    async fn call(
        &self,
        to: NodeId,
        _addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        // Through the wire format, so that what is simulated is what is sent.
        let bytes = rpc::encode(&Envelope {
            version: PROTOCOL_VERSION,
            cluster: "sim".into(),
            from: self.from,
            body: request,
        });
        let envelope = rpc::decode_request(&bytes).expect("a request decodes");
        tokio::time::sleep(self.net.delay()).await;
        let target = self.net.nodes.lock().get(&to).cloned();
        let Some(target) = target.filter(|_| !self.net.is_cut(self.from, to)) else {
            return Err(TransportError::Unreachable(to, "cut or down".into()));
        };
        let answer = tokio::time::timeout(timeout, target.handle(envelope))
            .await
            .map_err(|_| TransportError::Timeout(to, timeout))?;
        let bytes = rpc::encode(&Envelope {
            version: PROTOCOL_VERSION,
            cluster: "sim".into(),
            from: to,
            body: answer,
        });
        tokio::time::sleep(self.net.delay()).await;
        // The answer may be lost: the link was cut meanwhile, or by chance.
        if self.net.is_cut(self.from, to) || self.net.chance(0.01) {
            return Err(TransportError::Timeout(to, timeout));
        }
        Ok(rpc::decode::<Response>(&bytes)
            .expect("an answer decodes")
            .body)
    }
}

struct Disk {
    log: SimFile,
    snapshot: SimFile,
}

struct Cluster {
    net: Arc<Net>,
    configs: BTreeMap<NodeId, NodeConfig>,
    disks: BTreeMap<NodeId, Disk>,
    /// (term -> leader) as observed.
    leaders: BTreeMap<u64, NodeId>,
}

const WITNESS: NodeId = NodeId(100);

fn config(node: NodeId, site: &str, voters: &BTreeMap<NodeId, String>) -> NodeConfig {
    NodeConfig {
        node,
        cluster_name: "sim".into(),
        site: SiteId::new(site),
        advertised: format!("sim:{node}"),
        voters: voters.clone(),
        policy: SitePolicy {
            data_sites: vec![SiteId::new("a"), SiteId::new("b")],
            preferred_site: SiteId::new("a"),
        },
        timing: Timing {
            heartbeat_ms: 200,
            session_timeout_ms: 2000,
            site_cut_timeout_ms: 2000,
        },
        raft: RaftTiming {
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
        },
        formation_cluster_id: None,
    }
}

impl Cluster {
    /// Voters 1 (site a), 2 (site b) and the witness, or 1, 3 (a), 2, 4 (b) and the witness;
    /// learners 11 (a) and 21 (b).
    fn new(seed: u64, five_voters: bool) -> Cluster {
        let mut voter_sites = vec![(NodeId(1), "a"), (NodeId(2), "b"), (WITNESS, "c")];
        if five_voters {
            voter_sites.extend([(NodeId(3), "a"), (NodeId(4), "b")]);
        }
        let voters: BTreeMap<NodeId, String> = voter_sites
            .iter()
            .map(|(n, _)| (*n, format!("sim:{n}")))
            .collect();
        let mut configs = BTreeMap::new();
        for (n, site) in voter_sites
            .iter()
            .copied()
            .chain([(NodeId(11), "a"), (NodeId(21), "b")])
        {
            configs.insert(n, config(n, site, &voters));
        }
        let disks = configs
            .keys()
            .map(|n| {
                (
                    *n,
                    Disk {
                        log: SimFile::default(),
                        snapshot: SimFile::default(),
                    },
                )
            })
            .collect();
        Cluster {
            net: Arc::new(Net {
                rng: Mutex::new(SmallRng::seed_from_u64(seed)),
                nodes: Mutex::new(HashMap::new()),
                cut: Mutex::new(BTreeSet::new()),
            }),
            configs,
            disks,
            leaders: BTreeMap::new(),
        }
    }

    async fn start(&self, n: NodeId) {
        let disk = &self.disks[&n];
        let node = QuorumNode::start(
            self.configs[&n].clone(),
            Box::new(disk.log.clone()),
            Box::new(disk.snapshot.clone()),
            Arc::new(SimTransport {
                net: Arc::clone(&self.net),
                from: n,
            }),
        )
        .await
        .expect("a node starts on its own disk");
        self.net.nodes.lock().insert(n, node);
    }

    /// Stop a node abruptly: what its disks had not synced is lost (a torn part may remain).
    async fn crash(&self, n: NodeId) {
        let node = self.net.nodes.lock().remove(&n);
        if let Some(node) = node {
            node.shutdown().await;
        }
        let torn = self.net.rng.lock().gen_range(0..64);
        self.disks[&n].log.crash(torn);
        self.disks[&n].snapshot.crash(0);
    }

    fn node(&self, n: NodeId) -> Option<Node> {
        self.net.nodes.lock().get(&n).cloned()
    }

    fn live(&self) -> Vec<Node> {
        let nodes = self.net.nodes.lock();
        let mut v: Vec<Node> = nodes.values().cloned().collect();
        v.sort_by_key(|n| n.id());
        v
    }

    /// Record who leads in which term; two leaders in one term is split brain.
    fn observe_leaders(&mut self) {
        for node in self.live() {
            let m = node.metrics();
            if m.state == openraft::ServerState::Leader {
                let prev = self.leaders.insert(m.current_term, node.id());
                assert!(
                    prev.is_none_or(|p| p == node.id()),
                    "two leaders in term {}: {prev:?} and {}",
                    m.current_term,
                    node.id()
                );
            }
        }
    }
}

fn endpoints(n: NodeId) -> Endpoints {
    Endpoints {
        kafka: format!("sim:{n}"),
        replication: format!("sim:{n}"),
        quorum: format!("sim:{n}"),
        listeners: Default::default(),
    }
}

/// What the simulated clients were told was done.
#[derive(Default)]
struct Acknowledged {
    producer_blocks: Vec<(i64, i64)>,
    topics: Vec<(String, uuid::Uuid)>,
}

async fn run_seed(seed: u64) {
    seed_thread_rng(seed);
    let five = seed.is_multiple_of(3);
    let mut cluster = Cluster::new(seed, five);
    let all: Vec<NodeId> = cluster.configs.keys().copied().collect();
    for n in &all {
        cluster.start(*n).await;
    }
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let epochs: Arc<Mutex<BTreeMap<NodeId, BrokerEpoch>>> = Arc::default();
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut crashed: BTreeSet<NodeId> = BTreeSet::new();
    let mut counter = 0u32;
    let mut crashes = 0u32;
    // 40 simulated seconds of faults and client requests.
    for step in 0..400 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.observe_leaders();
        // Faults.
        let roll: f64 = rng.r#gen();
        if roll < 0.03 && crashed.len() < 2 {
            let victim = all[rng.gen_range(0..all.len())];
            if crashed.insert(victim) {
                cluster.crash(victim).await;
                crashes += 1;
            }
        } else if roll < 0.08 && !crashed.is_empty() {
            let back = *crashed
                .iter()
                .nth(rng.gen_range(0..crashed.len()))
                .expect("one");
            crashed.remove(&back);
            cluster.start(back).await;
        } else if roll < 0.12 {
            let a = all[rng.gen_range(0..all.len())];
            let b = all[rng.gen_range(0..all.len())];
            if a != b {
                cluster.net.cut.lock().insert((a, b));
            }
        } else if roll < 0.16 {
            cluster.net.cut.lock().clear();
        }
        // Clients: the two learners act as brokers (register, heartbeat, ask for producer ids,
        // create topics); answers they get are what must survive.
        for broker in [NodeId(11), NodeId(21)] {
            let Some(node) = cluster.node(broker) else {
                epochs.lock().remove(&broker);
                continue;
            };
            let epoch = epochs.lock().get(&broker).copied();
            let request = match epoch {
                None => ControllerRequest::Register(Registration {
                    node: broker,
                    site: node.config().site.clone(),
                    endpoints: endpoints(broker),
                    storage_id: uuid::Uuid::from_u128(broker.0 as u128),
                    session_timeout_ms: node.config().timing.session_timeout_ms,
                }),
                Some(epoch) if step % 7 == 0 => ControllerRequest::AllocateProducerIds {
                    node: broker,
                    epoch,
                },
                Some(_) if step % 23 == 0 => {
                    counter += 1;
                    ControllerRequest::CreateTopic {
                        name: format!("t{counter}"),
                        id: None,
                        partitions: 2,
                        replication_factor: 1,
                        configs: BTreeMap::new(),
                        validate_only: false,
                    }
                }
                Some(epoch) => ControllerRequest::Heartbeat {
                    node: broker,
                    epoch,
                    unreachable: vec![],
                },
            };
            let acked = Arc::clone(&acked);
            let epochs = Arc::clone(&epochs);
            let name = match &request {
                ControllerRequest::CreateTopic { name, .. } => Some(name.clone()),
                _ => None,
            };
            tokio::spawn(async move {
                match node.controller_call(request, Duration::from_secs(2)).await {
                    Ok(ControllerResponse::Registered { epoch, .. }) => {
                        epochs.lock().insert(broker, epoch);
                    }
                    Ok(ControllerResponse::Heartbeat { fenced: true, .. }) => {
                        epochs.lock().remove(&broker);
                    }
                    Ok(ControllerResponse::ProducerIds { first, count, .. }) => {
                        acked.lock().producer_blocks.push((first, count));
                    }
                    Ok(ControllerResponse::TopicCreated { id, .. }) => {
                        acked
                            .lock()
                            .topics
                            .push((name.expect("a topic request"), id));
                    }
                    _ => {}
                }
            });
        }
    }
    // Heal everything and let the cluster converge.
    cluster.net.cut.lock().clear();
    for n in std::mem::take(&mut crashed) {
        cluster.start(n).await;
    }
    let converged = wait_converged(&cluster).await;
    cluster.observe_leaders();
    let state = converged.unwrap_or_else(|why| panic!("seed {seed}: no convergence: {why}"));
    check(seed, &state, &acked.lock());
    let (blocks, topics) = {
        let a = acked.lock();
        (a.producer_blocks.len(), a.topics.len())
    };
    eprintln!(
        "seed {seed}: {} voters, {} terms, {} crashes, applied index {}, acknowledged {} producer id blocks and {} topics",
        if five { 5 } else { 3 },
        cluster.leaders.len(),
        crashes,
        state.applied_index,
        blocks,
        topics
    );
    for node in cluster.live() {
        node.shutdown().await;
    }
}

/// Wait (simulated time) until every node has applied the same state.
async fn wait_converged(cluster: &Cluster) -> Result<Arc<ClusterState>, String> {
    let mut last = String::new();
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let states: Vec<(NodeId, Arc<ClusterState>)> =
            cluster.live().iter().map(|n| (n.id(), n.state())).collect();
        let first = &states[0].1;
        let leader = cluster.live().iter().find_map(|n| n.leader());
        if leader.is_some() && states.iter().all(|(_, s)| s == first) {
            return Ok(Arc::clone(first));
        }
        last = states
            .iter()
            .map(|(n, s)| format!("{n}@{}", s.applied_index))
            .collect::<Vec<_>>()
            .join(" ");
    }
    Err(last)
}

fn check(seed: u64, state: &ClusterState, acked: &Acknowledged) {
    let mut blocks = acked.producer_blocks.clone();
    blocks.sort();
    for w in blocks.windows(2) {
        assert!(
            w[0].0 + w[0].1 <= w[1].0,
            "seed {seed}: producer id blocks overlap: {w:?}"
        );
    }
    for (first, count) in &blocks {
        assert!(
            first + count <= state.next_producer_id,
            "seed {seed}: acknowledged producer ids {first}+{count} lost (next {})",
            state.next_producer_id
        );
    }
    for (name, id) in &acked.topics {
        assert_eq!(
            state.topic_by_name(name).map(|t| t.id),
            Some(*id),
            "seed {seed}: acknowledged topic {name} lost"
        );
    }
    assert!(state.cluster_id.is_some(), "seed {seed}: never formed");
}

fn seeds() -> Vec<u64> {
    if let Ok(one) = std::env::var("QUORUM_SIM_SEED") {
        return vec![one.parse().expect("QUORUM_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("QUORUM_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    (1..=n).collect()
}

/// A panic in any node's task (an invariant asserted while applying, say) fails the seed,
/// even though it happened in a spawned task.
static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[test]
fn quorum_survives_crashes_cuts_and_lost_answers() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));
    if std::env::var_os("QUORUM_SIM_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "quorum=trace,openraft=info",
            ))
            .with_test_writer()
            .try_init();
    }
    for seed in seeds() {
        eprintln!("quorum simulation seed {seed}");
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all().start_paused(true);
        // tokio's own randomness (the branch order of `select!`) is seeded only with
        // `--cfg tokio_unstable`; without it a seed replays the same faults and requests but
        // not always the same interleaving (the regression of seed 42 replayed every time).
        #[cfg(tokio_unstable)]
        builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
        let rt = builder.build().expect("a runtime");
        rt.block_on(run_seed(seed));
        drop(rt);
        assert!(
            !PANICKED.load(std::sync::atomic::Ordering::SeqCst),
            "seed {seed}: a node panicked (see above)"
        );
    }
}
