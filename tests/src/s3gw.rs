//! An S3 gateway process for a test: its own data directory, an administrator key, a branch
//! key that may only write into `biometrics`, anonymous reads of `firmware`, virtual-host
//! style under `s3.test` (tests resolve it to 127.0.0.1 themselves); ports learned
//! from its "s3gw ready" log line; stopped by SIGKILL (crash) and restarted on the same ports.
//! A gateway can also run on a small disk of its own (a tmpfs), for tests that fill it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::broker::bin;
use crate::process::{NotReady, spawn_until_ready};
use crate::small_disk::SmallDisk;

pub const ACCESS_KEY: &str = "branch-017";
pub const SECRET_KEY: &str = "secret-for-branch-017";
/// May only write into `biometrics`.
pub const WRITER_KEY: &str = "branch-018";
pub const WRITER_SECRET: &str = "secret-for-branch-018";

pub struct S3gw {
    /// Declared first: unmounted before `dir` is removed.
    small_disk: Option<SmallDisk>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub s3: SocketAddr,
    pub admin: SocketAddr,
    starts: usize,
    /// `[s3] keep_free_mib`, when the test sets it.
    keep_free_mib: Option<u64>,
    /// A `[tls]` section: HTTPS (`[s3] security = "SSL"`).
    tls: Option<String>,
}

impl S3gw {
    pub fn start() -> S3gw {
        let mut g = S3gw::unstarted();
        g.launch();
        g
    }

    /// A gateway serving HTTPS with this `[tls]` section (without its header).
    pub fn start_https(tls: &str) -> S3gw {
        let mut g = S3gw::unstarted();
        g.tls = Some(tls.to_string());
        g.launch();
        g
    }

    /// A gateway whose data directory is a disk of `mib` MiB, keeping `keep_free_mib` free;
    /// `None` where a disk cannot be mounted (see [`SmallDisk`]).
    pub fn start_on_small_disk(mib: u64, keep_free_mib: u64) -> Option<S3gw> {
        let mut g = S3gw::unstarted();
        g.small_disk = Some(SmallDisk::mount(&g.data_dir(), mib)?);
        g.keep_free_mib = Some(keep_free_mib);
        g.launch();
        Some(g)
    }

    fn unstarted() -> S3gw {
        let dir = tempfile::Builder::new()
            .prefix("s3gw-test")
            .tempdir()
            .expect("temp dir");
        S3gw {
            small_disk: None,
            dir,
            child: None,
            s3: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
            starts: 0,
            keep_free_mib: None,
            tls: None,
        }
    }

    /// `[s3] keep_free_mib` from the next (re)start on.
    pub fn set_keep_free_mib(&mut self, mib: u64) {
        self.keep_free_mib = Some(mib);
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.admin)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.s3)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        crate::process::run_logs(self.dir.path(), "s3gw", self.starts)
    }

    fn launch(&mut self) {
        let config = self.dir.path().join("s3gw.toml");
        let keep_free = match self.keep_free_mib {
            Some(mib) => format!("keep_free_mib = {mib}\n"),
            None => String::new(),
        };
        let (security, tls) = match &self.tls {
            Some(t) => ("security = \"SSL\"\n", format!("[tls]\n{t}\n")),
            None => ("", String::new()),
        };
        let text = format!(
            "data_dir = \"{}\"\n[s3]\nlisten = \"{}\"\ndomains = [\"s3.test\"]\n{keep_free}{security}[admin]\nlisten = \"{}\"\n[log]\nformat = \"json\"\n\n\
             [[credentials]]\naccess_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\n\
             principal = \"User:hub-admin\"\n\
             [[credentials]]\naccess_key = \"{WRITER_KEY}\"\nsecret_key = \"{WRITER_SECRET}\"\n\
             principal = \"User:branch-018\"\n\
             buckets = {{ \"biometrics\" = \"write\" }}\n\
             [anonymous]\nbuckets = {{ \"firmware\" = \"read\" }}\n{tls}",
            self.data_dir().display(),
            self.s3,
            self.admin
        );
        std::fs::write(&config, text).expect("write config");
        self.starts += 1;
        let log = crate::process::run_log(self.dir.path(), "s3gw", self.starts);
        match spawn_until_ready(
            &bin("s3gw"),
            &config,
            &log,
            Duration::from_secs(60),
            ready_addresses,
        ) {
            Ok((child, (s3, admin))) => {
                self.s3 = s3;
                self.admin = admin;
                self.child = Some(child);
            }
            Err(NotReady(how)) => {
                panic!(
                    "s3gw did not become ready ({how}); its log:\n{}",
                    self.log()
                )
            }
        }
    }

    /// The gateway's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Crash it (SIGKILL) and reap it.
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

impl Drop for S3gw {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn ready_addresses(v: &serde_json::Value) -> Option<(SocketAddr, SocketAddr)> {
    if v.get("message")?.as_str()? != "s3gw ready" {
        return None;
    }
    Some((
        v.get("s3")?.as_str()?.parse().ok()?,
        v.get("admin")?.as_str()?.parse().ok()?,
    ))
}
