//! A witness process for a test: its own data directory, the quorum address it was given (a
//! voter's address is in every node's configuration, so it is fixed up front), the admin
//! address learned from its "witness ready" log line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::broker::bin;
use crate::process::{NotReady, spawn_in_until_ready};

const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Witness {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub quorum: SocketAddr,
    pub admin: SocketAddr,
    config: String,
    starts: usize,
    netns: Option<String>,
}

impl Witness {
    /// Start witness `node_id` at `site` on quorum address `quorum`; `cluster` is the
    /// `[cluster]` section every node shares.
    pub fn start(node_id: u32, site: &str, quorum: SocketAddr, cluster: &str) -> Witness {
        Witness::start_in(None, node_id, site, quorum, cluster)
    }

    /// [`Witness::start`] inside network namespace `netns`.
    pub fn start_in(
        netns: Option<&str>,
        node_id: u32,
        site: &str,
        quorum: SocketAddr,
        cluster: &str,
    ) -> Witness {
        Witness::start_with_tls(netns, node_id, site, quorum, cluster, None)
    }

    /// [`Witness::start_in`]; with `tls` (a `[tls]` section), the quorum listener on mTLS.
    pub fn start_with_tls(
        netns: Option<&str>,
        node_id: u32,
        site: &str,
        quorum: SocketAddr,
        cluster: &str,
        tls: Option<&str>,
    ) -> Witness {
        let dir = tempfile::Builder::new()
            .prefix("witness-test")
            .tempdir()
            .expect("temp dir");
        let (security, tls) = match tls {
            Some(t) => ("security = \"SSL\"\n", t),
            None => ("", ""),
        };
        let config = format!(
            "node_id = {node_id}\nsite = \"{site}\"\ndata_dir = \"{}\"\n[quorum]\nlisten = \"{quorum}\"\n{security}[admin]\nlisten = \"{}:0\"\ntoken = \"{}\"\n[log]\nformat = \"json\"\nlevel = \"info,openraft=warn\"\n{cluster}\n{tls}\n",
            dir.path().join("data").display(),
            quorum.ip(),
            crate::ADMIN_TOKEN,
        );
        let mut w = Witness {
            dir,
            child: None,
            quorum,
            admin: "127.0.0.1:0".parse().expect("addr"),
            config,
            starts: 0,
            netns: netns.map(str::to_string),
        };
        w.launch();
        w
    }

    fn launch(&mut self) {
        let path = self.dir.path().join("witness.toml");
        std::fs::write(&path, &self.config).expect("write config");
        self.starts += 1;
        let log = crate::process::run_log(self.dir.path(), "witness", self.starts);
        match spawn_in_until_ready(
            self.netns.as_deref(),
            &bin("witness"),
            &path,
            &log,
            START_TIMEOUT,
            ready_admin,
        ) {
            Ok((child, admin)) => {
                self.admin = admin;
                self.child = Some(child);
            }
            Err(NotReady(how)) => {
                panic!(
                    "witness did not become ready ({how}); its log:\n{}",
                    self.log()
                )
            }
        }
    }

    /// The witness's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    pub fn log(&self) -> String {
        crate::process::run_logs(self.dir.path(), "witness", self.starts)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.admin)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kill9(&mut self) {
        crate::process::kill9(&mut self.child);
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the witness first");
        // Its admin port is learned again; the quorum port is the one in the voters list.
        self.launch();
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn ready_admin(v: &serde_json::Value) -> Option<SocketAddr> {
    if v.get("message")?.as_str()? != "witness ready" {
        return None;
    }
    v.get("admin")?.as_str()?.parse().ok()
}
