//! The witness's configuration file (TOML). See `appliances/witness/witness.toml` for a
//! commented example.
//!
//! ```toml
//! node_id = 100
//! site = "site-c"
//! data_dir = "/data/witness"
//! [cluster]
//! name = "clickceler-hub"
//! voters = ["1@10.0.1.11:9190", "2@10.0.2.11:9190", "100@10.0.3.10:9190"]
//! data_sites = ["site-a", "site-b"]
//! [quorum]
//! listen = "0.0.0.0:9190"
//! [admin]
//! listen = "0.0.0.0:9646"
//! ```

use std::path::PathBuf;

use quorum::config::{ClusterConfig, QuorumListener};
use quorum::ids::NodeId;
use serde::{Deserialize, Serialize};

/// The default admin port (the broker has 9644, the S3 gateway 9645).
pub const ADMIN_PORT: u16 = 9646;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// This node's id: must be one of `cluster.voters`.
    pub node_id: u32,
    /// The witness's own site, never one of `cluster.data_sites` (a witness in a data site
    /// would fall with it, and the quorum with them).
    pub site: String,
    /// Holds the quorum's log and snapshot, and the directory's identity (`meta.json`).
    pub data_dir: PathBuf,
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub quorum: QuorumListener,
    #[serde(default)]
    pub admin: AdminListener,
    #[serde(default)]
    pub log: LogSettings,
    /// The certificate for `[quorum] security = "SSL"` (from cloud-init, never in the image).
    #[serde(default)]
    pub tls: Option<tls::TlsSettings>,
}

/// `[admin]`: `/metrics`, `/health`, `/ready` and the quorum's admin API.
pub type AdminListener = telemetry::AdminSettings<WitnessAdminPort>;
telemetry::admin_port!(WitnessAdminPort, ADMIN_PORT);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: telemetry::LogFormat,
    /// A `tracing` filter: `info`, `quorum=debug,info`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: telemetry::LogFormat::Text,
            // openraft logs every vote and election step at INFO (dozens of lines per
            // election); its warnings still show, and the quorum metrics count the rest.
            level: "info,openraft=warn".into(),
        }
    }
}

impl WitnessConfig {
    pub fn node(&self) -> NodeId {
        NodeId(self.node_id)
    }
}

fn check_host_port(what: &str, text: &str) -> Result<(), String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{what} {text:?} must be host:port")),
    }
}

impl appconfig::Validate for WitnessConfig {
    fn validate(&self) -> Result<(), String> {
        if self.node_id > NodeId::MAX {
            return Err(format!(
                "node_id {} is too large (at most {})",
                self.node_id,
                NodeId::MAX
            ));
        }
        if self.site.trim().is_empty() {
            return Err("site must name the witness's own site (not a data site)".into());
        }
        self.cluster.validate(self.node(), &self.site, true)?;
        if let Some(t) = &self.tls {
            t.check("tls")?;
        }
        if self.quorum.security == tls::SecurityProtocol::Ssl
            && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
        {
            return Err("quorum.security = \"SSL\" needs [tls] with client_ca".into());
        }
        if let Some(a) = &self.quorum.advertised {
            check_host_port("quorum.advertised", a)?;
            let listed = self.cluster.voters()?.remove(&self.node());
            if let Some(listed) = listed.filter(|l| l != a) {
                return Err(format!(
                    "quorum.advertised {a:?} differs from node {}'s entry {listed:?} in \
                     cluster.voters, which is where the other nodes reach the witness",
                    self.node_id
                ));
            }
        }
        // Port 0 (pick a free port, for tests) never conflicts.
        let (q, a) = (self.quorum.listen.port(), self.admin.listen.port());
        if q != 0 && q == a {
            return Err("quorum.listen and admin.listen use the same port".into());
        }
        self.admin.check(self.tls.as_ref())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use appconfig::Validate;

    use super::*;

    const SAMPLE: &str = r#"
        node_id = 100
        site = "site-c"
        data_dir = "/data/witness"
        [cluster]
        voters = ["1@a1:9190", "2@b1:9190", "100@w1:9190"]
        data_sites = ["site-a", "site-b"]
    "#;

    fn parse(extra: &str) -> Result<WitnessConfig, String> {
        appconfig::parse_str(&format!("{SAMPLE}{extra}"), "test.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_the_advertised_address() {
        let c = parse("").unwrap();
        assert_eq!(c.quorum.listen.port(), quorum::config::QUORUM_PORT);
        assert_eq!(c.admin.listen.port(), ADMIN_PORT);
        let any: std::net::SocketAddr = "0.0.0.0:9190".parse().unwrap();
        assert_eq!(
            c.cluster.advertised(c.node(), &c.quorum, any).unwrap(),
            "w1:9190"
        );
        let c = parse("[quorum]\nadvertised = \"w1:9190\"\n").unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn mistakes_are_named() {
        for (extra, expected) in [
            ("[quorum]\nadvertised = \"w2:9190\"\n", "differs"),
            ("[quorum]\nadvertised = \"w1\"\n", "host:port"),
            ("[admin]\nlisten = \"0.0.0.0:9190\"\n", "same port"),
            ("lisen = 1\n", "unknown field"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(expected), "{extra}: {e}");
        }
        let e =
            appconfig::parse_str::<WitnessConfig>(&SAMPLE.replace("site-c", "site-a"), "test.toml")
                .unwrap_err();
        assert!(e.to_string().contains("must not be a data site"), "{e}");
        // A witness outside cluster.voters is a replacement, waiting to be made a voter.
        appconfig::parse_str::<WitnessConfig>(
            &SAMPLE.replace("node_id = 100", "node_id = 7"),
            "test.toml",
        )
        .unwrap();
        let e = appconfig::parse_str::<WitnessConfig>(
            &SAMPLE.replace("site = \"site-c\"", "site = \" \""),
            "test.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("site"), "{e}");
    }
}
