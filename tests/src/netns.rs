//! Sites as network namespaces, so a test cuts the links between them as a WAN would fail:
//! `ip link set ... down`. Each site has one address (on its loopback) that every process of
//! the site binds; the three sites are joined pairwise by veth links (a-b, a-c, b-c), routes
//! send each site's traffic over its own link, and nothing forwards: with link a-b down, sites
//! A and B cannot reach each other at all, while both still reach C. A second address per
//! site, with links of its own, is the replication network: brokers' replication listeners
//! bind it, so a test can cut replication alone. The test itself (clients,
//! metrics) reaches every site over a link of its own from the root namespace, which no cut
//! touches, as branches would still reach a cut-off site.
//!
//! Needs root (CI and the development machines run tests as root). Namespaces are removed when
//! the value drops.

use std::process::Command;

/// The three sites: `a`, `b` (data) and `c` (the witness).
pub const SITES: [&str; 3] = ["a", "b", "c"];

/// The pairs of sites, each joined by a link per network.
const PAIRS: [(&str, &str); 3] = [("a", "b"), ("a", "c"), ("b", "c")];

pub struct Sites {
    prefix: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn index(site: &str) -> usize {
    SITES.iter().position(|s| *s == site).expect("a site")
}

impl Sites {
    /// Whether network namespaces can be made here (root and `ip`).
    pub fn available() -> bool {
        nix::unistd::geteuid().is_root()
            && Command::new("ip")
                .args(["netns", "list"])
                .output()
                .is_ok_and(|o| o.status.success())
    }

    /// Create the namespaces and links (it changes the machine, so it is no `Default`).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Sites {
        let prefix = format!("h{}", std::process::id() % 10_000);
        let sites = Sites { prefix };
        for s in SITES {
            let ns = sites.ns(s);
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            for addr in [Sites::addr(s), Sites::replication_addr(s)] {
                ip(&["-n", &ns, "addr", "add", &format!("{addr}/32"), "dev", "lo"]);
            }
        }
        for (k, (x, y)) in PAIRS.into_iter().enumerate() {
            for net in [Net::Site, Net::Replication] {
                sites.join(net, k, x, y);
            }
        }
        for s in SITES {
            let (root_dev, site_dev) = (
                format!("{}r{s}", sites.prefix),
                format!("{}{s}r", sites.prefix),
            );
            let k = index(s);
            ip(&[
                "link",
                "add",
                &root_dev,
                "type",
                "veth",
                "peer",
                "name",
                &site_dev,
                "netns",
                &sites.ns(s),
            ]);
            ip(&["addr", "add", &format!("10.79.{k}.1/30"), "dev", &root_dev]);
            ip(&["link", "set", &root_dev, "up"]);
            for addr in [Sites::addr(s), Sites::replication_addr(s)] {
                ip(&[
                    "route",
                    "replace",
                    &addr,
                    "via",
                    &format!("10.79.{k}.2"),
                    "dev",
                    &root_dev,
                ]);
            }
            let ns = sites.ns(s);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.79.{k}.2/30"),
                "dev",
                &site_dev,
            ]);
            ip(&["-n", &ns, "link", "set", &site_dev, "up"]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "10.79.0.0/16",
                "via",
                &format!("10.79.{k}.1"),
                "dev",
                &site_dev,
            ]);
        }
        sites
    }

    /// The namespace of `site`.
    pub fn ns(&self, site: &str) -> String {
        format!("{}-{site}", self.prefix)
    }

    /// The address every process of `site` binds.
    pub fn addr(site: &str) -> String {
        format!("10.77.0.{}", index(site) + 1)
    }

    /// The address brokers of `site` bind for replication only (a network of its own
    /// between sites, as a separate inter-site link or VLAN would be).
    pub fn replication_addr(site: &str) -> String {
        format!("10.76.0.{}", index(site) + 1)
    }

    fn dev(&self, net: Net, from: &str, to: &str) -> String {
        let suffix = match net {
            Net::Site => "",
            Net::Replication => "x",
        };
        format!("{}{from}{to}{suffix}", self.prefix)
    }

    /// The veth link of `net` between sites `x` and `y` (pair number `k`), and routes over it
    /// to the other site's address on that network.
    fn join(&self, net: Net, k: usize, x: &str, y: &str) {
        let (dx, dy) = (self.dev(net, x, y), self.dev(net, y, x));
        let (nx, ny) = (self.ns(x), self.ns(y));
        ip(&[
            "link", "add", &dx, "netns", &nx, "type", "veth", "peer", "name", &dy, "netns", &ny,
        ]);
        for (site, dev, host) in [(x, &dx, 1), (y, &dy, 2)] {
            let subnet = net.subnet();
            let a = format!("{subnet}.{k}.{host}/30");
            ip(&["-n", &self.ns(site), "addr", "add", &a, "dev", dev]);
            ip(&["-n", &self.ns(site), "link", "set", dev, "up"]);
        }
        self.route(net, k, x, y);
    }

    /// Routes over the link of `net` between `x` and `y` (they go when the link goes down).
    fn route(&self, net: Net, k: usize, x: &str, y: &str) {
        for (site, other, host) in [(x, y, 1), (y, x, 2)] {
            let gw = format!("{}.{k}.{}", net.subnet(), 3 - host);
            let dev = self.dev(net, site, other);
            ip(&[
                "-n",
                &self.ns(site),
                "route",
                "replace",
                &net.addr(other),
                "via",
                &gw,
                "dev",
                &dev,
            ]);
        }
    }

    /// Take the links between two sites down (both networks, both directions).
    pub fn cut(&self, x: &str, y: &str) {
        for net in [Net::Site, Net::Replication] {
            self.link_down(net, x, y);
        }
    }

    pub fn heal(&self, x: &str, y: &str) {
        for net in [Net::Site, Net::Replication] {
            self.link_up(net, x, y);
        }
    }

    /// Take down only the replication network's link between two sites: the quorum and the
    /// clients still get through.
    pub fn cut_replication(&self, x: &str, y: &str) {
        self.link_down(Net::Replication, x, y);
    }

    pub fn heal_replication(&self, x: &str, y: &str) {
        self.link_up(Net::Replication, x, y);
    }

    fn link_down(&self, net: Net, x: &str, y: &str) {
        ip(&[
            "-n",
            &self.ns(x),
            "link",
            "set",
            &self.dev(net, x, y),
            "down",
        ]);
    }

    fn link_up(&self, net: Net, x: &str, y: &str) {
        ip(&["-n", &self.ns(x), "link", "set", &self.dev(net, x, y), "up"]);
        ip(&["-n", &self.ns(y), "link", "set", &self.dev(net, y, x), "up"]);
        let (k, (a, b)) = PAIRS
            .into_iter()
            .enumerate()
            .find(|(_, p)| *p == (x, y) || *p == (y, x))
            .expect("a pair");
        self.route(net, k, a, b);
    }
}

/// The networks between sites: the one every process uses, and one for replication only.
#[derive(Clone, Copy)]
enum Net {
    Site,
    Replication,
}

impl Net {
    fn subnet(self) -> &'static str {
        match self {
            Net::Site => "10.78",
            Net::Replication => "10.75",
        }
    }

    fn addr(self, site: &str) -> String {
        match self {
            Net::Site => Sites::addr(site),
            Net::Replication => Sites::replication_addr(site),
        }
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        for s in SITES {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}r{s}", self.prefix)])
                .output();
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(s)])
                .output();
        }
    }
}
