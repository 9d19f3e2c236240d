//! The `[cluster]` and `[quorum]` sections every quorum member's configuration shares (the
//! broker's and the witness's), and their translation into a [`NodeConfig`].
//!
//! ```toml
//! [cluster]
//! name = "clickceler-hub"
//! voters = ["1@10.0.1.11:9190", "2@10.0.2.11:9190", "100@10.0.3.10:9190"]
//! data_sites = ["site-a", "site-b"]
//! preferred_site = "site-a"
//!
//! [quorum]
//! listen = "0.0.0.0:9190"
//! advertised = "10.0.1.11:9190"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use appconfig::duration;
use serde::{Deserialize, Serialize};

use crate::controller::Timing;
use crate::ids::{NodeId, SiteId};
use crate::node::{NodeConfig, RaftTiming};
use crate::policy::SitePolicy;

/// The default quorum port (inter-site and witness trust zones).
pub const QUORUM_PORT: u16 = 9190;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every node of one cluster carries the same name; messages from another are refused.
    #[serde(default = "default_name")]
    pub name: String,
    /// The voters the cluster is formed with, `id@host:port` (their quorum addresses). The
    /// same list on every node (required; usually one per data site plus the witness).
    pub voters: Vec<String>,
    /// The sites that hold data (Kafka's `broker.rack` values).
    pub data_sites: Vec<String>,
    /// The site that goes on when the data sites lose each other while both reach a witness
    /// that leads the quorum. Default: the first data site.
    #[serde(default)]
    pub preferred_site: Option<String>,
    #[serde(default)]
    pub timing: TimingConfig,
}

fn default_name() -> String {
    "clickceler-hub".into()
}

/// How fast failures are noticed. The defaults tolerate a loaded machine and a WAN; the
/// failover benchmark documents tuned values (writes resume within about 3 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingConfig {
    /// Brokers tell the controller they are alive this often.
    #[serde(with = "duration")]
    pub heartbeat: Duration,
    /// A broker not heard from for this long is fenced; brokers stop leading after 3/4 of it.
    #[serde(with = "duration")]
    pub session_timeout: Duration,
    /// Data sites that reach the controller but not each other for this long: one is fenced.
    #[serde(with = "duration")]
    pub site_cut_timeout: Duration,
    /// Raft heartbeats between quorum members.
    #[serde(with = "duration")]
    pub raft_heartbeat: Duration,
    /// A voter that hears no leader for a random time in this range starts an election.
    #[serde(with = "duration")]
    pub election_timeout_min: Duration,
    #[serde(with = "duration")]
    pub election_timeout_max: Duration,
}

impl Default for TimingConfig {
    fn default() -> Self {
        let t = Timing::default();
        let r = RaftTiming::default();
        TimingConfig {
            heartbeat: Duration::from_millis(t.heartbeat_ms),
            session_timeout: Duration::from_millis(t.session_timeout_ms),
            site_cut_timeout: Duration::from_millis(t.site_cut_timeout_ms),
            raft_heartbeat: Duration::from_millis(r.heartbeat_ms),
            election_timeout_min: Duration::from_millis(r.election_min_ms),
            election_timeout_max: Duration::from_millis(r.election_max_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuorumListener {
    pub listen: SocketAddr,
    /// `host:port` other nodes use; defaults to the bound address.
    pub advertised: Option<String>,
    /// `SSL`: mTLS between the quorum's members with the node's `[tls]` certificate, which
    /// must name the host of `advertised` and allow client authentication too; peers must
    /// present a certificate chaining to `[tls] client_ca` (whatever `client_auth` says for
    /// other listeners), and are checked against `server_ca` (default `client_ca`). Every
    /// node of a cluster must agree.
    pub security: tls::SecurityProtocol,
}

impl Default for QuorumListener {
    fn default() -> Self {
        QuorumListener {
            listen: SocketAddr::from(([0, 0, 0, 0], QUORUM_PORT)),
            advertised: None,
            security: tls::SecurityProtocol::Plaintext,
        }
    }
}

/// The quorum listener's TLS, both ways: as the server of its peers' calls, and as their
/// client.
#[derive(Clone)]
pub struct QuorumTls {
    pub server: std::sync::Arc<tls::TlsServer>,
    pub client: std::sync::Arc<tls::TlsClient>,
}

impl QuorumTls {
    /// The TLS `listener` asks for (none for `PLAINTEXT`), from the node's `[tls]`.
    pub fn load(
        listener: &QuorumListener,
        settings: Option<&tls::TlsSettings>,
    ) -> Result<Option<QuorumTls>, String> {
        if listener.security == tls::SecurityProtocol::Plaintext {
            return Ok(None);
        }
        let settings = settings.ok_or("quorum.security = \"SSL\" needs [tls]")?;
        if settings.client_ca.is_none() {
            return Err(
                "quorum.security = \"SSL\" needs [tls] client_ca: every member proves itself"
                    .into(),
            );
        }
        let server = tls::TlsServer::load(tls::TlsSettings {
            client_auth: tls::ClientAuth::Required,
            ..settings.clone()
        })
        .map_err(|e| format!("[tls] for the quorum: {e}"))?;
        let client = tls::TlsClient::load(settings.clone())
            .map_err(|e| format!("[tls] for the quorum: {e}"))?;
        Ok(Some(QuorumTls { server, client }))
    }

    /// Reload the certificate files when they change, until `shutdown`.
    pub fn watch(&self, shutdown: &tokio_util::sync::CancellationToken) {
        let what = "quorum [tls]".to_string();
        tokio::spawn(std::sync::Arc::clone(&self.server).watch(what, shutdown.clone()));
        tokio::spawn(std::sync::Arc::clone(&self.client).watch(shutdown.clone()));
    }
}

/// Parse `id@host:port`.
pub fn parse_voter(text: &str) -> Result<(NodeId, String), String> {
    let (id, addr) = text
        .split_once('@')
        .ok_or_else(|| format!("voter {text:?} must be id@host:port"))?;
    let id: u32 = id
        .parse()
        .ok()
        .filter(|i| *i <= NodeId::MAX)
        .ok_or_else(|| format!("voter {text:?}: {id:?} is not a node id"))?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("voter {text:?}: {addr:?} must be host:port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("voter {text:?}: {addr:?} must be host:port"));
    }
    Ok((NodeId(id), addr.to_string()))
}

impl ClusterConfig {
    /// Check the section; `node` and `site` are the node's own id and site.
    pub fn validate(&self, node: NodeId, site: &str, is_witness: bool) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("cluster.name must not be empty".into());
        }
        let voters = self.voters()?;
        if voters.is_empty() {
            return Err("cluster.voters must name at least one voter".into());
        }
        if self.data_sites.is_empty() || self.data_sites.iter().any(String::is_empty) {
            return Err("cluster.data_sites must name the sites that hold data".into());
        }
        if let Some(p) = &self.preferred_site
            && !self.data_sites.contains(p)
        {
            return Err(format!(
                "cluster.preferred_site {p:?} is not one of cluster.data_sites"
            ));
        }
        // A witness outside cluster.voters is a replacement: it follows the log once an
        // operator makes it a voter (`clk cluster replace-voter`), and never forms a cluster.
        let _ = node;
        if is_witness {
            if self.data_sites.iter().any(|s| s == site) {
                return Err(format!(
                    "the witness's site {site:?} must not be a data site"
                ));
            }
        } else if !self.data_sites.iter().any(|s| s == site) {
            return Err(format!(
                "this broker's rack {site:?} is not one of cluster.data_sites"
            ));
        }
        let t = &self.timing;
        if t.heartbeat.is_zero() || t.session_timeout < t.heartbeat * 3 {
            return Err("cluster.timing.session_timeout must be at least 3 heartbeats".into());
        }
        if t.election_timeout_min <= t.raft_heartbeat * 2
            || t.election_timeout_max <= t.election_timeout_min
        {
            return Err(
                "cluster.timing: raft_heartbeat < election_timeout_min / 2 < election_timeout_max / 2 is needed"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn voters(&self) -> Result<BTreeMap<NodeId, String>, String> {
        let mut out = BTreeMap::new();
        for v in &self.voters {
            let (id, addr) = parse_voter(v)?;
            if out.insert(id, addr).is_some() {
                return Err(format!("cluster.voters names node {id} twice"));
            }
        }
        Ok(out)
    }

    pub fn policy(&self) -> SitePolicy {
        let data_sites: Vec<SiteId> = self.data_sites.iter().map(|s| SiteId::new(s)).collect();
        let preferred = self
            .preferred_site
            .as_deref()
            .map(SiteId::new)
            .unwrap_or_else(|| data_sites[0].clone());
        SitePolicy {
            data_sites,
            preferred_site: preferred,
        }
    }

    /// The node configuration for node `node` at `site`, reachable at `advertised`.
    pub fn node_config(
        &self,
        node: NodeId,
        site: &str,
        advertised: &str,
    ) -> Result<NodeConfig, String> {
        let voters = self.voters()?;
        if voters.is_empty() {
            return Err("cluster.voters must name at least one voter".into());
        }
        let t = &self.timing;
        Ok(NodeConfig {
            node,
            cluster_name: self.name.clone(),
            site: SiteId::new(site),
            advertised: advertised.to_string(),
            voters,
            policy: self.policy(),
            timing: Timing {
                heartbeat_ms: t.heartbeat.as_millis() as u64,
                session_timeout_ms: t.session_timeout.as_millis() as u64,
                site_cut_timeout_ms: t.site_cut_timeout.as_millis() as u64,
            },
            raft: RaftTiming {
                heartbeat_ms: t.raft_heartbeat.as_millis() as u64,
                election_min_ms: t.election_timeout_min.as_millis() as u64,
                election_max_ms: t.election_timeout_max.as_millis() as u64,
            },
            formation_cluster_id: None,
        })
    }

    /// Where other nodes reach `node`: the `[quorum] advertised` address if set, else its own
    /// entry in `cluster.voters` (where the others already look for it), else the bound
    /// address when it is a specific one.
    pub fn advertised(
        &self,
        node: NodeId,
        listener: &QuorumListener,
        bound: SocketAddr,
    ) -> Result<String, String> {
        if let Some(a) = &listener.advertised {
            return Ok(a.clone());
        }
        if let Some(a) = self.voters()?.get(&node) {
            return Ok(a.clone());
        }
        if bound.ip().is_unspecified() {
            return Err(format!(
                "quorum.advertised must be set: this node listens on {bound}, which other nodes cannot connect to"
            ));
        }
        Ok(bound.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterConfig {
        toml::from_str(
            r#"
            voters = ["1@a1:9190", "2@b1:9190", "100@w:9190"]
            data_sites = ["site-a", "site-b"]
            [timing]
            session_timeout = "3s"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_stretched_cluster_parses_and_checks() {
        let c = sample();
        assert_eq!(c.name, "clickceler-hub");
        c.validate(NodeId(1), "site-a", false).unwrap();
        c.validate(NodeId(100), "site-c", true).unwrap();
        assert!(c.validate(NodeId(1), "site-z", false).is_err());
        // A replacement witness is not among the voters the cluster was formed with.
        c.validate(NodeId(7), "site-c", true).unwrap();
        assert!(c.validate(NodeId(100), "site-a", true).is_err());
        let n = c.node_config(NodeId(1), "site-a", "a1:9190").unwrap();
        let any: SocketAddr = "0.0.0.0:9190".parse().unwrap();
        assert_eq!(
            c.advertised(NodeId(1), &QuorumListener::default(), any)
                .unwrap(),
            "a1:9190"
        );
        assert!(
            c.advertised(NodeId(7), &QuorumListener::default(), any)
                .is_err()
        );
        assert_eq!(n.voters.len(), 3);
        assert_eq!(n.policy.preferred_site.as_str(), "site-a");
        assert_eq!(n.timing.session_timeout_ms, 3000);
    }

    #[test]
    fn bad_voters_are_named() {
        for bad in ["x@a:1", "1a:1", "1@a", "1@:9190", "1@a:notaport"] {
            assert!(parse_voter(bad).is_err(), "{bad}");
        }
        let mut c = sample();
        c.voters.push("1@again:9190".into());
        assert!(
            c.validate(NodeId(1), "site-a", false)
                .unwrap_err()
                .contains("twice")
        );
    }
}
