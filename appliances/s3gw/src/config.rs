//! The S3 gateway's configuration file (TOML).
//!
//! ```toml
//! data_dir = "/data/s3gw"
//! [s3]
//! listen = "0.0.0.0:9000"
//! domains = ["s3.hub.example"]      # virtual-host style: <bucket>.s3.hub.example
//! [[credentials]]
//! access_key = "branch-017"
//! secret_key = "..."
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3gwConfig {
    pub data_dir: PathBuf,
    #[serde(default)]
    pub s3: S3Listener,
    #[serde(default)]
    pub admin: AdminListener,
    /// Access keys. Requests must be signed with one of them (no anonymous access).
    pub credentials: Vec<Credential>,
    #[serde(default)]
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Listener {
    pub listen: SocketAddr,
    /// Base domains for virtual-host style requests; path style always works.
    pub domains: Vec<String>,
}

impl Default for S3Listener {
    fn default() -> Self {
        S3Listener {
            listen: "0.0.0.0:9000".parse().expect("static"),
            domains: vec![],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminListener {
    pub listen: SocketAddr,
}

impl Default for AdminListener {
    fn default() -> Self {
        AdminListener {
            listen: "0.0.0.0:9645".parse().expect("static"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub access_key: String,
    pub secret_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: telemetry::LogFormat,
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: telemetry::LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl appconfig::Validate for S3gwConfig {
    fn validate(&self) -> Result<(), String> {
        if self.credentials.is_empty() {
            return Err(
                "credentials: at least one access key is needed (anonymous access is refused)"
                    .into(),
            );
        }
        for c in &self.credentials {
            if c.access_key.is_empty() || c.secret_key.len() < 8 {
                return Err(format!(
                    "credentials: access key {:?} needs a secret of at least 8 characters",
                    c.access_key
                ));
            }
        }
        // Port 0 (pick a free port, for tests) never conflicts.
        if self.s3.listen.port() != 0 && self.s3.listen.port() == self.admin.listen.port() {
            return Err("s3.listen and admin.listen use the same port".into());
        }
        Ok(())
    }
}
