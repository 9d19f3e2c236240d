//! The witness in-process, over real TCP on 127.0.0.1, with two plain quorum members standing
//! in for the data sites' voters (node 1 at site-a, node 2 at site-b; the witness is node 100
//! at site-c). Raft runs with short timings; every wait is a condition with a deadline.
//!
//! `RUST_LOG=info cargo test -p witness --test witness` shows the nodes' logs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use quorum::config::ClusterConfig;
use quorum::controller::{ControllerRequest, ControllerResponse, Registration};
use quorum::ids::{NodeId, SiteId};
use quorum::metadata::{ClusterState, Endpoints};
use quorum::node::QuorumNode;
use quorum::raft::RaftMetrics;
use quorum::raft::frames::{self, HEADER_BYTES};
use quorum::raft::log_file::FsFile;
use quorum::raft::log_store::LogStore;
use quorum::raft::network::{Transport, TransportError};
use quorum::rpc::{self, Envelope, PROTOCOL_VERSION, Refusal, Request, Response};
use quorum::transport::{self, TcpTransport};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use witness::{WitnessConfig, WitnessHandle};

type Node = QuorumNode<TcpTransport>;

const CLUSTER: &str = "hub";
const WITNESS: NodeId = NodeId(100);
/// Generous: the machine may be busy compiling.
const DEADLINE: Duration = Duration::from_secs(30);

fn quiet_logs() {
    // Silent unless RUST_LOG asks (it overrides the filter).
    telemetry::init_logging(telemetry::LogFormat::Text, "off");
}

/// The `[cluster]` section every node shares, short timings included.
fn cluster_toml(name: &str, voters: &[(NodeId, String)]) -> String {
    let voters: Vec<String> = voters
        .iter()
        .map(|(id, addr)| format!("\"{id}@{addr}\""))
        .collect();
    format!(
        "[cluster]\nname = \"{name}\"\nvoters = [{}]\ndata_sites = [\"site-a\", \"site-b\"]\n\
         [cluster.timing]\nheartbeat = \"200ms\"\nsession_timeout = \"2s\"\n\
         site_cut_timeout = \"2s\"\nraft_heartbeat = \"100ms\"\n\
         election_timeout_min = \"300ms\"\nelection_timeout_max = \"600ms\"\n",
        voters.join(", ")
    )
}

fn witness_config(data_dir: &std::path::Path, listen: SocketAddr, cluster: &str) -> WitnessConfig {
    let text = format!(
        "node_id = {WITNESS}\nsite = \"site-c\"\ndata_dir = {:?}\n{cluster}\
         [quorum]\nlisten = \"{listen}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        data_dir.display().to_string()
    );
    appconfig::parse_str(&text, "witness test config").expect("a valid witness config")
}

/// A data site's voter: a plain quorum member on its own temporary directory.
struct Voter {
    node: Arc<Node>,
    stop: CancellationToken,
    serve: JoinHandle<()>,
    _dir: TempDir,
}

impl Voter {
    async fn start(
        cluster: &ClusterConfig,
        id: NodeId,
        site: &str,
        listener: TcpListener,
    ) -> Voter {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let addr = listener.local_addr().expect("bound").to_string();
        let file = |name: &str| Box::new(FsFile::open(&dir.path().join(name)).expect("a file"));
        let node = QuorumNode::start(
            cluster.node_config(id, site, &addr).unwrap(),
            file("log"),
            file("snapshot"),
            Arc::new(TcpTransport::new(&cluster.name, id)),
        )
        .await
        .expect("a voter starts");
        let stop = CancellationToken::new();
        let serve = tokio::spawn(transport::serve(
            listener,
            Arc::clone(&node),
            None,
            stop.clone(),
        ));
        Voter {
            node,
            stop,
            serve,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.serve.await.expect("the serve task ends");
        self.node.shutdown().await;
    }
}

/// Voters 1 (site-a) and 2 (site-b) and the witness.
struct Hub {
    voters: BTreeMap<NodeId, Voter>,
    witness: Option<WitnessHandle>,
    witness_config: WitnessConfig,
    _witness_dir: TempDir,
}

impl Hub {
    async fn start() -> Hub {
        quiet_logs();
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (l1, l2, lw) = (
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
        );
        let addr = |l: &TcpListener| l.local_addr().unwrap().to_string();
        let cluster_text = cluster_toml(
            CLUSTER,
            &[
                (NodeId(1), addr(&l1)),
                (NodeId(2), addr(&l2)),
                (WITNESS, addr(&lw)),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let config = witness_config(dir.path(), lw.local_addr().unwrap(), &cluster_text);
        let witness = witness::start_with_listener(config.clone(), lw)
            .await
            .expect("the witness starts");
        let cluster = &config.cluster;
        let mut voters = BTreeMap::new();
        voters.insert(
            NodeId(1),
            Voter::start(cluster, NodeId(1), "site-a", l1).await,
        );
        voters.insert(
            NodeId(2),
            Voter::start(cluster, NodeId(2), "site-b", l2).await,
        );
        Hub {
            voters,
            witness: Some(witness),
            witness_config: config,
            _witness_dir: dir,
        }
    }

    fn witness(&self) -> &WitnessHandle {
        self.witness.as_ref().expect("the witness runs")
    }

    fn voter(&self, id: u32) -> &Arc<Node> {
        &self.voters[&NodeId(id)].node
    }

    async fn stop(mut self) {
        if let Some(w) = self.witness.take() {
            w.shutdown().await.expect("the witness stops cleanly");
        }
        for (_, v) in std::mem::take(&mut self.voters) {
            v.stop().await;
        }
    }
}

async fn wait_metrics(node: &Node, what: &str, f: impl Fn(&RaftMetrics) -> bool) -> RaftMetrics {
    let mut rx = node.raft.metrics();
    match tokio::time::timeout(DEADLINE, rx.wait_for(|m| f(m))).await {
        Ok(Ok(m)) => m.clone(),
        _ => panic!(
            "node {}: no {what} within {DEADLINE:?}: {:?}",
            node.id(),
            node.metrics()
        ),
    }
}

async fn wait_state(
    node: &Node,
    what: &str,
    f: impl Fn(&ClusterState) -> bool,
) -> Arc<ClusterState> {
    let mut rx = node.subscribe();
    match tokio::time::timeout(DEADLINE, rx.wait_for(|s| f(s))).await {
        Ok(Ok(s)) => Arc::clone(&s),
        _ => panic!(
            "node {}: no {what} within {DEADLINE:?}: {:?}",
            node.id(),
            node.state()
        ),
    }
}

/// `(status, body)` of a GET on the admin port.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: witness\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("the admin port answers")
        .expect("an HTTP exchange");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {out}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

fn metric(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn register(node: u32) -> ControllerRequest {
    ControllerRequest::Register(Registration {
        node: NodeId(node),
        site: SiteId::new("site-a"),
        // Nothing listens there: the controller adds it as a learner that never answers,
        // which the quorum tolerates.
        endpoints: Endpoints {
            kafka: "127.0.0.1:1".into(),
            replication: "127.0.0.1:1".into(),
            quorum: "127.0.0.1:1".into(),
            listeners: Default::default(),
        },
        storage_id: uuid::Uuid::from_u128(u128::from(node)),
        session_timeout_ms: 6000,
    })
}

/// Register broker `broker` through `via`; the index its registration was applied at.
async fn register_through(via: &Node, broker: u32) -> u64 {
    match via.controller_call(register(broker), DEADLINE).await {
        Ok(ControllerResponse::Registered { index, .. }) => index,
        other => panic!(
            "registering broker {broker} through node {}: {other:?}",
            via.id()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_keeps_the_quorum_when_a_data_sites_voter_stops() {
    let mut hub = Hub::start().await;
    let w = Arc::clone(hub.witness().node());
    let m = wait_metrics(&w, "leader", |m| m.current_leader.is_some()).await;
    let formed = wait_state(&w, "ClusterFormed", |s| s.cluster_id.is_some()).await;
    eprintln!("leader {:?} in term {}", m.current_leader, m.current_term);

    let admin = hub.witness().admin_addr;
    assert_eq!(http_get(admin, "/ready").await.0, 200);
    assert_eq!(http_get(admin, "/health").await.0, 200);
    let (status, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&metrics, "quorum_voters"), Some(3), "{metrics}");
    assert_eq!(metric(&metrics, "quorum_learners"), Some(0), "{metrics}");
    assert!(
        metric(&metrics, "quorum_term").is_some_and(|t| t >= 1),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "quorum_leader_id").is_some_and(|l| l >= 1),
        "{metrics}"
    );
    assert!(metric(&metrics, "quorum_last_applied_index").is_some_and(|i| i >= 1));
    assert!(metric(&metrics, "process_resident_memory_bytes").is_some());
    assert!(metric(&metrics, "data_disk_available_bytes").is_some());

    // Site A's voter goes: voter 2 and the witness are still a majority of three.
    hub.voters.remove(&NodeId(1)).expect("voter 1").stop().await;
    let index = register_through(hub.voter(2), 11).await;
    assert!(
        w.wait_applied(index, DEADLINE).await,
        "the witness applies the registration"
    );
    let state = w.state();
    assert!(state.brokers.contains_key(&NodeId(11)), "{state:?}");
    assert_eq!(state.cluster_id, formed.cluster_id);
    let m = wait_metrics(&w, "leader among 2 and 100", |m| {
        matches!(m.current_leader, Some(NodeId(2)) | Some(WITNESS))
    })
    .await;
    eprintln!(
        "after voter 1 stopped: leader {:?} in term {}",
        m.current_leader, m.current_term
    );
    // The controller added the new broker as a learner; the witness follows that change too.
    wait_metrics(&w, "the broker as a learner", |m| {
        m.membership_config
            .membership()
            .learner_ids()
            .any(|n| n == NodeId(11))
    })
    .await;
    let (_, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(metric(&metrics, "quorum_learners"), Some(1), "{metrics}");
    assert_eq!(metric(&metrics, "quorum_voters"), Some(3), "{metrics}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_witness_keeps_its_vote_and_log_and_catches_up() {
    let mut hub = Hub::start().await;
    let before = {
        let w = hub.witness().node();
        wait_state(w, "ClusterFormed", |s| s.cluster_id.is_some()).await;
        w.metrics()
    };
    let formed = hub.witness().node().state();
    assert!(!hub.witness().node().status().configured_policy_differs);
    let quorum_addr = hub.witness().quorum_addr;
    hub.witness.take().unwrap().shutdown().await.unwrap();
    // What it voted and logged is on its disk.
    let (vote, last) = persisted(&hub.witness_config.data_dir).await;
    assert!(
        vote.is_some_and(|v| v >= before.vote),
        "vote on disk {vote:?}, {before:?}"
    );
    assert!(
        last >= before.last_log_index,
        "log on disk up to {last:?}, {before:?}"
    );

    // The data sites go on without it, and commit something it has not seen.
    let index = register_through(hub.voter(1), 11).await;

    // Restarted with another preferred site in its file: the site policy was fixed when the
    // cluster formed, and the witness says that its file differs rather than applying it.
    let mut config = hub.witness_config.clone();
    config.quorum.listen = quorum_addr;
    config.cluster.preferred_site = Some("site-b".into());
    let restarted = witness::start(config).await.expect("the witness restarts");
    let w = Arc::clone(restarted.node());
    hub.witness = Some(restarted);
    // Straight from its own disk, before any leader spoke to it.
    let at_start = w.metrics();
    assert!(
        at_start.vote.leader_id.term >= before.vote.leader_id.term,
        "{at_start:?}"
    );
    assert!(at_start.current_term >= before.current_term);
    assert!(
        at_start.last_log_index >= before.last_log_index,
        "{at_start:?} / {before:?}"
    );
    // Then it rejoins: what was committed while it was away reaches it.
    assert!(
        w.wait_applied(index, DEADLINE).await,
        "the witness catches up to {index}"
    );
    let state = w.state();
    assert!(state.brokers.contains_key(&NodeId(11)), "{state:?}");
    assert_eq!(state.cluster_id, formed.cluster_id, "the same cluster");
    let status = w.status();
    assert!(status.configured_policy_differs, "{status:?}");
    assert_eq!(status.preferred_site, Some(SiteId::new("site-a")));
    wait_metrics(&w, "a leader", |m| m.current_leader.is_some()).await;
    hub.stop().await;
}

/// The vote and the last log index in a stopped witness's quorum log.
async fn persisted(data_dir: &std::path::Path) -> (Option<openraft::Vote<NodeId>>, Option<u64>) {
    let file = FsFile::open(&data_dir.join("quorum/log")).expect("the quorum log exists");
    let mut log = LogStore::open(Box::new(file)).expect("the quorum log opens");
    let vote = log.read_vote().await.expect("a readable vote");
    (vote, log.last_log_id().map(|l| l.index))
}

/// A witness alone (its peers' addresses lead nowhere): enough to test what it refuses.
async fn lonely_witness(dir: &std::path::Path, cluster: &str) -> anyhow::Result<WitnessHandle> {
    quiet_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let text = cluster_toml(
        cluster,
        &[
            (NodeId(1), "127.0.0.1:1".into()),
            (NodeId(2), "127.0.0.1:1".into()),
            (WITNESS, addr.to_string()),
        ],
    );
    witness::start_with_listener(witness_config(dir, addr, &text), listener).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_cluster_or_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = lonely_witness(dir.path(), CLUSTER)
        .await
        .expect("a new directory");
    let e = lonely_witness(dir.path(), CLUSTER)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{e:#}").contains("in use by another witness"),
        "{e:#}"
    );
    first.shutdown().await.unwrap();

    let e = lonely_witness(dir.path(), "other")
        .await
        .err()
        .expect("refused");
    let text = format!("{e:#}");
    assert!(
        text.contains("belongs to cluster \"hub\"") && text.contains("\"other\""),
        "{text}"
    );
    // The refusal left the directory as it was: its own cluster still starts on it.
    let again = lonely_witness(dir.path(), CLUSTER)
        .await
        .expect("its own cluster");
    again.shutdown().await.unwrap();
}

/// Whether the peer closed the connection (EOF or reset) within the deadline.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
        Ok(Ok(0)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
        _ => false,
    }
}

/// One whole frame (header and payload), as the quorum protocol sends them.
async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut frame = vec![0u8; HEADER_BYTES];
    s.read_exact(&mut frame).await?;
    let header: [u8; HEADER_BYTES] = frame[..].try_into().expect("a header");
    let len = frames::payload_len(&header).expect("a sane length");
    frame.resize(HEADER_BYTES + len, 0);
    s.read_exact(&mut frame[HEADER_BYTES..]).await?;
    Ok(frame)
}

async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_the_witness_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let w = lonely_witness(dir.path(), CLUSTER).await.unwrap();
    let addr = w.quorum_addr;

    // Another protocol: its first bytes read as an absurd frame length.
    let mut s = send_raw(addr, b"GET / HTTP/1.1\r\nHost: witness\r\n\r\n").await;
    assert!(closed_by_peer(&mut s).await, "HTTP on the quorum port");
    // A frame whose checksum is wrong, and one that is sound but holds no envelope.
    let mut s = send_raw(addr, &[4, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9]).await;
    assert!(closed_by_peer(&mut s).await, "bad checksum");
    let mut s = send_raw(addr, &frames::encode(&[0xff; 16])).await;
    assert!(closed_by_peer(&mut s).await, "undecodable envelope");

    // Well-framed, but from another cluster: refused with the reason.
    let stranger = TcpTransport::new("other", NodeId(7));
    match stranger
        .call(WITNESS, &addr.to_string(), Request::Ping, DEADLINE)
        .await
    {
        Err(TransportError::Refused(_, Refusal::Cluster { expected, got })) => {
            assert_eq!((expected.as_str(), got.as_str()), (CLUSTER, "other"));
        }
        other => panic!("another cluster's ping: {other:?}"),
    }
    // Another protocol version: refused too.
    let old = rpc::encode(&Envelope {
        version: PROTOCOL_VERSION + 1,
        cluster: CLUSTER.into(),
        from: NodeId(1),
        body: Request::Ping,
    });
    let mut s = send_raw(addr, &old).await;
    let answer = tokio::time::timeout(DEADLINE, read_frame(&mut s))
        .await
        .expect("an answer")
        .expect("a whole frame");
    match rpc::decode::<Response>(&answer).map(|e| e.body) {
        Ok(Response::Refused(Refusal::Version { .. })) => {}
        other => panic!("another version's ping: {other:?}"),
    }

    // Members are still served, and the witness is still ready.
    let member = TcpTransport::new(CLUSTER, NodeId(1));
    let pong = member
        .call(WITNESS, &addr.to_string(), Request::Ping, DEADLINE)
        .await;
    assert!(matches!(pong, Ok(Response::Pong)), "{pong:?}");
    assert_eq!(http_get(w.admin_addr, "/ready").await.0, 200);
    w.shutdown().await.unwrap();
}

/// A stranger opening idle sockets from one address takes at most that address's share of
/// the quorum listener's connections (64): the rest are closed as they arrive, and members
/// (from another address) are served. (Connections used to wait for one of 64 slots, so 64
/// idle sockets locked the members out until their idle timeout, two minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_never_lock_members_out() {
    let dir = tempfile::tempdir().unwrap();
    let w = lonely_witness(dir.path(), CLUSTER).await.unwrap();
    let addr = w.quorum_addr;
    let mut idle = Vec::new();
    for _ in 0..64 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(s.connect(addr).await.unwrap());
    }
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut one_more = s.connect(addr).await.unwrap();
    assert!(
        closed_by_peer(&mut one_more).await,
        "the 65th from one address"
    );
    let member = TcpTransport::new(CLUSTER, NodeId(1));
    let pong = member
        .call(WITNESS, &addr.to_string(), Request::Ping, DEADLINE)
        .await;
    assert!(matches!(pong, Ok(Response::Pong)), "{pong:?}");
    let metrics = http_get(w.admin_addr, "/metrics").await.1;
    assert!(
        metrics.contains("quorum_connections_refused_total 1"),
        "{metrics}"
    );
    drop(idle);
    w.shutdown().await.unwrap();
}
