//! Sites as network namespaces, so a test cuts the links between them as a WAN would fail:
//! `ip link set ... down`. Each site has one address (on its loopback) that every process of
//! the site binds; the three sites are joined pairwise by veth links (a-b, a-c, b-c), routes
//! send each site's traffic over its own link, and nothing forwards: with link a-b down, sites
//! A and B cannot reach each other at all, while both still reach C. The test itself (clients,
//! metrics) reaches every site over a link of its own from the root namespace, which no cut
//! touches, as branches would still reach a cut-off site.
//!
//! Needs root (CI and the development machines run tests as root). Namespaces are removed when
//! the value drops.

use std::process::Command;

/// The three sites: `a`, `b` (data) and `c` (the witness).
pub const SITES: [&str; 3] = ["a", "b", "c"];

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
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/32", Sites::addr(s)),
                "dev",
                "lo",
            ]);
        }
        for (k, (x, y)) in [("a", "b"), ("a", "c"), ("b", "c")].into_iter().enumerate() {
            let (dx, dy) = (sites.dev(x, y), sites.dev(y, x));
            ip(&[
                "link",
                "add",
                &dx,
                "netns",
                &sites.ns(x),
                "type",
                "veth",
                "peer",
                "name",
                &dy,
                "netns",
                &sites.ns(y),
            ]);
            for (site, dev, host, other) in [(x, &dx, 1, y), (y, &dy, 2, x)] {
                let ns = sites.ns(site);
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("10.78.{k}.{host}/30"),
                    "dev",
                    dev,
                ]);
                ip(&["-n", &ns, "link", "set", dev, "up"]);
                let gw = format!("10.78.{k}.{}", 3 - host);
                ip(&[
                    "-n",
                    &ns,
                    "route",
                    "add",
                    &Sites::addr(other),
                    "via",
                    &gw,
                    "dev",
                    dev,
                ]);
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
            ip(&[
                "route",
                "replace",
                &Sites::addr(s),
                "via",
                &format!("10.79.{k}.2"),
                "dev",
                &root_dev,
            ]);
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

    fn dev(&self, from: &str, to: &str) -> String {
        format!("{}{from}{to}", self.prefix)
    }

    /// Take the link between two sites down (both directions).
    pub fn cut(&self, x: &str, y: &str) {
        ip(&["-n", &self.ns(x), "link", "set", &self.dev(x, y), "down"]);
    }

    pub fn heal(&self, x: &str, y: &str) {
        ip(&["-n", &self.ns(x), "link", "set", &self.dev(x, y), "up"]);
        ip(&["-n", &self.ns(y), "link", "set", &self.dev(y, x), "up"]);
        // The route over the link went away with it.
        let k = [("a", "b"), ("a", "c"), ("b", "c")]
            .iter()
            .position(|p| *p == (x, y) || *p == (y, x))
            .expect("a pair");
        for (site, other, host) in [
            (x, y, if x < y { 1 } else { 2 }),
            (y, x, if x < y { 2 } else { 1 }),
        ] {
            let gw = format!("10.78.{k}.{}", 3 - host);
            let _ = Command::new("ip")
                .args([
                    "-n",
                    &self.ns(site),
                    "route",
                    "replace",
                    &Sites::addr(other),
                    "via",
                    &gw,
                    "dev",
                    &self.dev(site, other),
                ])
                .output();
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
