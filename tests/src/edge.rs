//! An edge gateway process for a test: its buffer's data directory and configuration, ports
//! learned from its "edge ready" log line, and kill -9 and restart on the same ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::broker::bin;
use crate::process::{NotReady, spawn_until_ready};

const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Edge {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub kafka: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTP ingest, when the configuration has `[http]`.
    pub http: Option<SocketAddr>,
    hub: String,
    extra: String,
    starts: usize,
}

impl Edge {
    /// Start a gateway forwarding to `hub` (`host:port`); `extra` is TOML appended to the
    /// generated configuration (`[forward]`, `[buffer.topics]`...).
    pub fn start(hub: &str, extra: &str) -> Edge {
        let dir = tempfile::Builder::new()
            .prefix("edge-test")
            .tempdir()
            .expect("temp dir");
        let mut e = Edge {
            dir,
            child: None,
            kafka: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
            http: None,
            hub: hub.to_string(),
            extra: extra.to_string(),
            starts: 0,
        };
        e.launch();
        e
    }

    pub fn bootstrap(&self) -> String {
        self.kafka.to_string()
    }

    /// `http://<ingest>/topics/<topic>`.
    pub fn http_url(&self, topic: &str) -> String {
        let http = self
            .http
            .expect("the gateway serves HTTP ([http] in its configuration)");
        format!("http://{http}/topics/{topic}")
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.admin)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the gateway logged so far (all runs).
    pub fn log(&self) -> String {
        crate::process::run_logs(self.dir.path(), "edge", self.starts)
    }

    fn write_config(&self) -> PathBuf {
        // Keys of `[hub]` in `extra` (`[hub]` then its keys and `[hub.tls]`) go under the
        // generated `[hub]`.
        let (hub_extra, extra) = match self.extra.split_once("[hub]\n") {
            Some((before, after)) => (after.to_string(), before.to_string()),
            None => (String::new(), self.extra.clone()),
        };
        let text = format!(
            r#"gateway = "branch-e2e"

[hub]
bootstrap = ["{hub}"]
request_timeout = "10s"
retry_backoff = "20ms"
retry_backoff_max = "500ms"
{hub_extra}

[buffer]
data_dir = "{data}"
[buffer.kafka]
listen = "{kafka}"
[buffer.admin]
listen = "{admin}"
token = "{token}"
[buffer.log]
format = "json"
level = "info,openraft=warn"

{extra}
"#,
            hub = self.hub,
            data = self.data_dir().display(),
            kafka = self.kafka,
            admin = self.admin,
            token = crate::ADMIN_TOKEN,
            extra = extra,
            hub_extra = hub_extra,
        );
        let path = self.dir.path().join("edge.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn launch(&mut self) {
        let config = self.write_config();
        self.starts += 1;
        let log_path = crate::process::run_log(self.dir.path(), "edge", self.starts);
        match spawn_until_ready(&bin("edge"), &config, &log_path, START_TIMEOUT, ready) {
            Ok((child, (kafka, admin, http))) => {
                self.kafka = kafka;
                self.admin = admin;
                self.http = http;
                self.child = Some(child);
            }
            Err(NotReady(how)) => {
                panic!(
                    "edge did not become ready ({how}); its log:\n{}",
                    self.log()
                )
            }
        }
    }

    /// Crash the gateway (SIGKILL) and reap it.
    pub fn kill9(&mut self) {
        crate::process::kill9(&mut self.child);
    }

    /// Start again on the same ports and data directory.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "kill the gateway before restarting it"
        );
        self.launch();
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `(kafka, admin, http)` from the JSON "edge ready" log line.
fn ready(v: &serde_json::Value) -> Option<(SocketAddr, SocketAddr, Option<SocketAddr>)> {
    let (kafka, admin) = crate::broker::kafka_and_admin(v, "edge ready")?;
    let http = v.get("http").and_then(|h| h.as_str()?.parse().ok());
    Some((kafka, admin, http))
}
