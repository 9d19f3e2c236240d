//! The S3 gateway's configuration file (TOML).
//!
//! ```toml
//! data_dir = "/data/s3gw"
//! [s3]
//! listen = "0.0.0.0:9000"
//! domains = ["s3.hub.example"]      # virtual-host style: <bucket>.s3.hub.example
//! incomplete_upload_expiry_hours = 168   # multipart uploads never completed are removed
//! keep_free_mib = 256                # uploads that would leave less free space get 507
//! [[credentials]]                    # an administrator: every bucket, create/delete buckets
//! access_key = "hub-admin"
//! secret_key = "..."
//! [[credentials]]                    # a branch: may only write into one bucket
//! access_key = "branch-017"
//! secret_key = "..."
//! buckets = { "biometrics" = "write" }
//! principal = "User:branch-017"      # its HTTPS client certificate gets the same grants
//! [anonymous]                        # unsigned requests: refused unless a bucket allows it
//! buckets = { "firmware" = "read" }
//! ```
//!
//! Bucket names in grants are exact, or a prefix followed by `*` (`"branch-*"`).

use std::collections::BTreeMap;
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
    /// Access keys. Requests must be signed with one of them unless `anonymous` allows.
    /// Appliance images carry none: each VM gets its keys from cloud-init (`clk_config`).
    #[serde(default)]
    pub credentials: Vec<Credential>,
    #[serde(default)]
    pub anonymous: Anonymous,
    #[serde(default)]
    pub log: LogSettings,
    /// Certificate and key for `[s3] security = "SSL"` (HTTPS); with `client_ca`, client
    /// certificates too.
    #[serde(default)]
    pub tls: Option<tls::TlsSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Listener {
    pub listen: SocketAddr,
    /// Base domains for virtual-host style requests; path style always works.
    pub domains: Vec<String>,
    /// Multipart uploads neither completed nor aborted after this long are removed.
    pub incomplete_upload_expiry_hours: u32,
    /// Uploads that would leave less than this much free space on the data disk are refused
    /// (507 InsufficientStorage), so that deletes and completions still find room.
    pub keep_free_mib: u64,
    /// Connections at once, and from one address (`[s3.connections]`: `max_connections`,
    /// `max_connections_per_ip`, `max_connections_per_ip_overrides`).
    pub connections: admission::ConnectionLimits,
    /// `SSL`: HTTPS with `[tls]` (the seed's port 443).
    pub security: tls::SecurityProtocol,
}

impl Default for S3Listener {
    fn default() -> Self {
        S3Listener {
            listen: "0.0.0.0:9000".parse().expect("static"),
            domains: vec![],
            incomplete_upload_expiry_hours: 7 * 24,
            keep_free_mib: 256,
            connections: admission::ConnectionLimits::default(),
            security: tls::SecurityProtocol::Plaintext,
        }
    }
}

/// `[admin]`: metrics, health and the admin API (`POST /v1/tls`: renewed certificates).
pub type AdminListener = telemetry::AdminSettings<AdminPort>;
telemetry::admin_port!(AdminPort, 9645);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub access_key: String,
    pub secret_key: String,
    /// The branch principal (`User:branch-017`) these keys belong to: over HTTPS, a client
    /// certificate mapped to it gets these grants without signing, and a signed request
    /// from a certificate must use its own principal's keys.
    #[serde(default)]
    pub principal: Option<String>,
    /// Buckets this key may use and how. Absent: an administrator (all buckets, and
    /// creating and deleting buckets).
    pub buckets: Option<BTreeMap<String, Access>>,
}

/// What unsigned requests may do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anonymous {
    pub buckets: BTreeMap<String, Access>,
}

/// Access to a bucket's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// GET, HEAD, listings.
    Read,
    /// PUT, DELETE, copies into the bucket, multipart uploads; no reads.
    Write,
    ReadWrite,
}

impl Access {
    pub fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
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
            // s3s logs every client error (a 404, a refused signature) at ERROR; the gateway
            // counts those by status in its metrics and logs its own failures itself.
            level: "info,s3s::ops=off".into(),
        }
    }
}

impl S3gwConfig {
    /// Everything but the presence of access keys: what an image's baked configuration must
    /// satisfy (its keys come per VM).
    pub fn validate_baked(&self) -> Result<(), String> {
        self.s3.connections.check("s3.connections")?;
        self.admin.check(self.tls.as_ref())?;
        match (&self.tls, self.s3.security) {
            (None, tls::SecurityProtocol::Ssl) => {
                return Err("s3.security = \"SSL\" needs [tls] with certificate and key".into());
            }
            (Some(t), _) => t.check("tls")?,
            (None, _) => {}
        }
        for c in &self.credentials {
            if c.access_key.is_empty() || c.secret_key.len() < 8 {
                return Err(format!(
                    "credentials: access key {:?} needs a secret of at least 8 characters",
                    c.access_key
                ));
            }
        }
        let mut principals = std::collections::BTreeSet::new();
        for p in self
            .credentials
            .iter()
            .filter_map(|c| c.principal.as_deref())
        {
            if p.strip_prefix("User:").is_none_or(str::is_empty) || !principals.insert(p) {
                return Err(format!(
                    "credentials: principal {p:?} is not User:<name>, or is named by two credentials"
                ));
            }
        }
        let patterns = self
            .credentials
            .iter()
            .filter_map(|c| c.buckets.as_ref())
            .chain([&self.anonymous.buckets]);
        for p in patterns.flat_map(|b| b.keys()) {
            let name = p.strip_suffix('*').unwrap_or(p);
            if name.contains('*') || (name.is_empty() && p != "*") {
                return Err(format!(
                    "bucket grant {p:?}: a bucket name, or a prefix followed by one *"
                ));
            }
        }
        if let Some((b, _)) = self.anonymous.buckets.iter().find(|(_, a)| a.writes()) {
            return Err(format!(
                "anonymous.buckets: {b:?} may only be \"read\" (unsigned writes are never allowed)"
            ));
        }
        // Port 0 (pick a free port, for tests) never conflicts.
        if self.s3.listen.port() != 0 && self.s3.listen.port() == self.admin.listen.port() {
            return Err("s3.listen and admin.listen use the same port".into());
        }
        Ok(())
    }
}

impl appconfig::Validate for S3gwConfig {
    fn validate(&self) -> Result<(), String> {
        if self.credentials.is_empty() {
            return Err(
                "credentials: at least one access key is needed (on an appliance, give \
                 [[credentials]] in cloud-init's clk_config)"
                    .into(),
            );
        }
        self.validate_baked()
    }
}
