//! A stretched hub for a test: brokers at two data sites and a witness at a third, as
//! processes on loopback. Voters: the first broker of each site and the witness. Timing is
//! fast enough for tests and generous enough that a loaded CI machine does not fence a broker
//! by accident (a broker silent for 4 s is fenced).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::broker::Broker;
use crate::clients::metrics_text;
use crate::netns::Sites;
use crate::wait::wait_until;
use crate::witness::Witness;

pub const WITNESS_ID: u32 = 100;

/// What the hub looks like.
pub struct HubSpec {
    /// `(node id, site)` of each broker; the first of each site is a voter.
    pub brokers: Vec<(u32, &'static str)>,
    pub witness: bool,
    /// Extra broker configuration (`[topics]` defaults...).
    pub broker_extra: String,
    /// Each site in a network namespace of its own (links between sites can be cut).
    pub netns: bool,
    /// A `[tls]` section for every node: followers then fetch over mTLS from a replication
    /// listener of each broker's own, and the quorum's members talk over mTLS.
    pub tls: Option<String>,
}

impl HubSpec {
    /// Two brokers in site-a (1, 2), two in site-b (3, 4), the witness (100).
    pub fn two_by_two() -> HubSpec {
        HubSpec {
            brokers: vec![(1, "site-a"), (2, "site-a"), (3, "site-b"), (4, "site-b")],
            witness: true,
            broker_extra:
                "[topics]\npartitions = 6\nreplication_factor = 3\nmin_insync_replicas = 2\n".into(),
            netns: false,
            tls: None,
        }
    }

    /// [`HubSpec::two_by_two`] with each site in its own network namespace.
    pub fn two_by_two_in_namespaces() -> HubSpec {
        HubSpec {
            netns: true,
            ..HubSpec::two_by_two()
        }
    }
}

/// The namespace letter of a site name (`site-a` -> `a`); the witness's site is `c`.
fn letter(site: &str) -> &'static str {
    match site {
        "site-a" => "a",
        "site-b" => "b",
        _ => "c",
    }
}

pub struct Hub {
    /// Declared first: processes stop before their namespaces go.
    pub brokers: BTreeMap<u32, Broker>,
    pub witness: Option<Witness>,
    pub sites: BTreeMap<u32, &'static str>,
    cluster: String,
    quorum_ports: BTreeMap<u32, SocketAddr>,
    pub net: Option<Sites>,
    tls: Option<String>,
    /// Each broker's replication listener, when it has one of its own.
    pub replication_addrs: BTreeMap<u32, String>,
}

/// A free loopback address for a node to bind later. Taken below the kernel's ephemeral
/// range (32768 and up by default): a port from there can be handed, between this check and
/// the node's bind, to any process's outgoing connection or `bind(0)` (a hub test lost its
/// quorum port so). Each test process starts at its own place in the range.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return l.local_addr().expect("a bound address");
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

impl Hub {
    pub fn start(spec: HubSpec) -> Hub {
        let net = spec.netns.then(Sites::new);
        let site_of = |n: u32| {
            spec.brokers
                .iter()
                .find(|(m, _)| *m == n)
                .map_or("site-c", |(_, s)| *s)
        };
        let quorum_ports: BTreeMap<u32, SocketAddr> = spec
            .brokers
            .iter()
            .map(|(n, _)| *n)
            .chain(spec.witness.then_some(WITNESS_ID))
            .map(|n| match &net {
                // A fresh namespace has every port free.
                Some(_) => (
                    n,
                    format!("{}:{}", Sites::addr(letter(site_of(n))), 19000 + n)
                        .parse()
                        .expect("addr"),
                ),
                None => (n, free_addr()),
            })
            .collect();
        let mut voters: Vec<u32> = vec![];
        for (n, site) in &spec.brokers {
            if !spec.brokers.iter().any(|(m, s)| s == site && m < n) {
                voters.push(*n);
            }
        }
        if spec.witness {
            voters.push(WITNESS_ID);
        }
        let voter_list: Vec<String> = voters
            .iter()
            .map(|n| format!("\"{n}@{}\"", quorum_ports[n]))
            .collect();
        let cluster = format!(
            "[cluster]\nname = \"e2e\"\nvoters = [{}]\ndata_sites = [\"site-a\", \"site-b\"]\n[cluster.timing]\nheartbeat = \"200ms\"\nsession_timeout = \"4s\"\nsite_cut_timeout = \"4s\"\nraft_heartbeat = \"100ms\"\nelection_timeout_min = \"600ms\"\nelection_timeout_max = \"1200ms\"\n",
            voter_list.join(", ")
        );
        let witness = spec.witness.then(|| {
            let ns = net.as_ref().map(|n| n.ns("c"));
            Witness::start_with_tls(
                ns.as_deref(),
                WITNESS_ID,
                "site-c",
                quorum_ports[&WITNESS_ID],
                &cluster,
                spec.tls.as_deref(),
            )
        });
        let mut hub = Hub {
            brokers: BTreeMap::new(),
            witness,
            sites: spec.brokers.iter().copied().collect(),
            cluster,
            quorum_ports,
            net,
            tls: spec.tls.clone(),
            replication_addrs: BTreeMap::new(),
        };
        for (n, site) in &spec.brokers {
            let listen = match &hub.net {
                Some(_) => Some(format!(
                    "{}:{}",
                    Sites::replication_addr(letter(site)),
                    19100 + n
                )),
                None if spec.tls.is_some() => Some(free_addr().to_string()),
                None => None,
            };
            hub.replication_addrs.extend(listen.map(|l| (*n, l)));
        }
        // Brokers become ready only with a quorum: start them together.
        let extras: Vec<(u32, String)> = spec
            .brokers
            .iter()
            .map(|(n, _)| (*n, hub.broker_config(*n, &spec.broker_extra)))
            .collect();
        let placement: BTreeMap<u32, (String, String)> = match &hub.net {
            Some(net) => spec
                .brokers
                .iter()
                .map(|(n, site)| {
                    let l = letter(site);
                    (*n, (net.ns(l), Sites::addr(l)))
                })
                .collect(),
            None => BTreeMap::new(),
        };
        let placement = &placement;
        let started: Vec<(u32, Broker)> = std::thread::scope(|s| {
            let handles: Vec<_> = extras
                .iter()
                .map(|(n, extra)| {
                    s.spawn(move || {
                        let b = match placement.get(n) {
                            Some((ns, host)) => Broker::start_node_in(ns, host, *n, extra),
                            None => Broker::start_node(*n, extra),
                        };
                        (*n, b)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("broker start"))
                .collect()
        });
        hub.brokers.extend(started);
        hub
    }

    fn broker_config(&self, n: u32, extra: &str) -> String {
        // In namespaces, followers fetch over the replication network (which a test may cut
        // alone); the extra configuration then has no `[replication]` section of its own.
        let quorum_security = match &self.tls {
            Some(_) => "security = \"SSL\"\n",
            None => "",
        };
        let replication = match (self.replication_addrs.get(&n), &self.tls) {
            (Some(l), Some(tls)) => {
                format!("[replication]\nlisten = \"{l}\"\nsecurity = \"SSL\"\n{tls}\n")
            }
            (Some(l), None) => format!("[replication]\nlisten = \"{l}\"\n"),
            (None, _) => String::new(),
        };
        format!(
            "rack = \"{}\"\n[quorum]\nlisten = \"{}\"\n{quorum_security}[groups]\ninitial_rebalance_delay = \"0s\"\n{replication}{extra}\n{}",
            self.sites[&n], self.quorum_ports[&n], self.cluster
        )
    }

    /// Where node `n` (a broker or the witness) serves the quorum protocol.
    pub fn quorum_addr(&self, n: u32) -> SocketAddr {
        self.quorum_ports[&n]
    }

    /// The `[cluster]` section every node of this hub shares (for a node added later).
    pub fn cluster_section(&self) -> &str {
        &self.cluster
    }

    /// Bootstrap servers: every running broker.
    pub fn bootstrap(&mut self) -> String {
        let mut out = vec![];
        for b in self.brokers.values_mut() {
            if b.is_running() {
                out.push(b.bootstrap());
            }
        }
        out.join(",")
    }

    /// Brokers of `site`.
    pub fn site(&self, site: &str) -> Vec<u32> {
        self.sites
            .iter()
            .filter(|(_, s)| **s == site)
            .map(|(n, _)| *n)
            .collect()
    }

    /// kill -9 every broker of `site`.
    pub fn kill_site(&mut self, site: &str) {
        for n in self.site(site) {
            self.brokers.get_mut(&n).expect("broker").kill9();
        }
    }

    /// Restart every stopped broker of `site` (they rejoin together).
    pub fn restart_site(&mut self, site: &str) {
        let nodes = self.site(site);
        std::thread::scope(|s| {
            for (n, b) in self.brokers.iter_mut() {
                if nodes.contains(n) {
                    s.spawn(move || b.restart());
                }
            }
        });
    }

    /// The value of a metric on broker `n` (its admin endpoint).
    pub fn metric(&self, n: u32, name: &str) -> Option<f64> {
        crate::clients::metric(&self.brokers[&n].metrics_url(), name)
    }

    /// Wait until metric `name` of broker `n` satisfies `ok`.
    pub fn wait_metric(
        &self,
        n: u32,
        name: &str,
        timeout: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let url = self.brokers[&n].metrics_url();
        wait_until(&format!("{name} on broker {n}"), timeout, || {
            crate::clients::metric(&url, name).filter(|v| ok(*v))
        })
    }

    /// The node leading the quorum, as broker `n` reports it.
    pub fn controller(&self, n: u32) -> u32 {
        self.wait_metric(
            n,
            "broker_cluster_controller_id",
            Duration::from_secs(30),
            |v| v >= 0.0,
        ) as u32
    }

    /// The site of node `n` (`site-c` for the witness).
    pub fn site_of(&self, n: u32) -> &'static str {
        self.sites.get(&n).copied().unwrap_or("site-c")
    }

    /// Wait until broker `n` reports no under-replicated partitions and not degraded.
    pub fn wait_healthy(&self, n: u32, timeout: Duration) {
        let url = self.brokers[&n].metrics_url();
        wait_until(
            &format!("broker {n} to report the hub healthy"),
            timeout,
            || {
                let text = metrics_text(&url);
                let value = |name: &str| {
                    text.lines()
                        .find(|l| l.split_whitespace().next() == Some(name))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<f64>().ok())
                };
                // Its own lease first: a broker cut off still shows the healthy view it had.
                (value("broker_lease_valid") == Some(1.0)
                    && value("broker_cluster_under_replicated_partitions") == Some(0.0)
                    && value("broker_cluster_degraded") == Some(0.0))
                .then_some(())
            },
        );
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // A failed test keeps its processes' logs (target/test-logs/<pid>/) and shows their
        // last lines where CI prints the failure.
        if !std::thread::panicking() {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-logs")
            .join(std::process::id().to_string());
        let _ = std::fs::create_dir_all(&dir);
        let mut logs: Vec<(String, String)> = self
            .brokers
            .iter()
            .map(|(n, b)| (format!("broker-{n}"), b.log()))
            .collect();
        if let Some(w) = &self.witness {
            logs.push(("witness".into(), w.log()));
        }
        for (name, log) in logs {
            let _ = std::fs::write(dir.join(format!("{name}.log")), &log);
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!(
                "---- {name} (last lines; whole log in {}) ----",
                dir.display()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
