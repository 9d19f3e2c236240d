//! A broker process for a test: its own data directory and configuration, ports learned from
//! its "broker ready" log line (so tests run in parallel without port races), and the ways a
//! test ends a broker: SIGTERM (clean) or SIGKILL (crash), then restart on the same ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::{NotReady, spawn_in_until_ready};
use crate::small_disk::SmallDisk;

/// How long a start (including log recovery) may take in a debug build.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Directory of the workspace's binaries: `CLK_BIN_DIR`, else the profile directory this test
/// binary was built into.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CLK_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(Path::parent)
                .expect("target/<profile>/deps")
                .to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

pub struct Broker {
    /// Declared first: unmounted before `dir` is removed.
    pub small_disk: Option<SmallDisk>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub kafka: SocketAddr,
    pub admin: SocketAddr,
    extra: String,
    starts: usize,
    pub node_id: u32,
    /// The network namespace it runs in (a site of a netns test).
    netns: Option<String>,
}

impl Broker {
    /// Start a broker with default settings.
    pub fn start() -> Broker {
        Broker::start_with("")
    }

    /// Start a broker; `extra` is TOML appended to the generated configuration (sections such
    /// as `[topics]` or keys of `[kafka]` other than `listen`).
    pub fn start_with(extra: &str) -> Broker {
        let mut b = Broker::unstarted(extra);
        b.launch();
        b
    }

    /// A broker whose data directory is a disk of `mib` MiB; `None` where a disk cannot be
    /// mounted (see [`SmallDisk`]).
    pub fn start_on_small_disk(mib: u64, extra: &str) -> Option<Broker> {
        let mut b = Broker::unstarted(extra);
        b.small_disk = Some(SmallDisk::mount(&b.data_dir(), mib)?);
        b.launch();
        Some(b)
    }

    /// Start broker `node_id` of a cluster (`extra` holds its `rack`, `[cluster]` and
    /// `[quorum]`). It becomes ready only once a majority of the quorum's voters run.
    pub fn start_node(node_id: u32, extra: &str) -> Broker {
        let mut b = Broker::unstarted(extra);
        b.node_id = node_id;
        b.launch();
        b
    }

    /// Start broker `node_id` inside network namespace `netns`, listening on `host`.
    pub fn start_node_in(netns: &str, host: &str, node_id: u32, extra: &str) -> Broker {
        let mut b = Broker::unstarted(extra);
        b.node_id = node_id;
        b.netns = Some(netns.to_string());
        b.kafka = format!("{host}:0").parse().expect("addr");
        b.admin = format!("{host}:0").parse().expect("addr");
        b.launch();
        b
    }

    /// Start a broker on a data directory unpacked from `archive` (a `.tar.gz` holding a
    /// `data/` directory: another version's data, say).
    pub fn start_from_archive(archive: &Path, extra: &str) -> Broker {
        let mut b = Broker::unstarted(extra);
        let status = std::process::Command::new("tar")
            .arg("xzf")
            .arg(archive)
            .arg("-C")
            .arg(b.dir.path())
            .status()
            .expect("run tar");
        assert!(status.success(), "unpacking {}", archive.display());
        b.launch();
        b
    }

    fn unstarted(extra: &str) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("broker-test")
            .tempdir()
            .expect("temp dir");
        Broker {
            small_disk: None,
            dir,
            child: None,
            kafka: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
            extra: extra.to_string(),
            starts: 0,
            node_id: 1,
            netns: None,
        }
    }

    pub fn bootstrap(&self) -> String {
        self.kafka.to_string()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One Produce request of `records` (an encoded batch) to partition 0 of `topic`, on a
    /// connection of its own; the partition's error code (0 when written).
    pub fn produce_raw(&self, topic: &'static str, records: bytes::Bytes, acks: i16) -> i16 {
        self.produce_raw_to(topic, 0, records, acks)
            .unwrap_or_else(|e| panic!("produce to {topic}: {e:#}"))
    }

    /// [`Broker::produce_raw`] to partition `partition`; an error when the broker would not
    /// take the request at all (refused or closed the connection).
    pub fn produce_raw_to(
        &self,
        topic: &'static str,
        partition: i32,
        records: bytes::Bytes,
        acks: i16,
    ) -> anyhow::Result<i16> {
        Ok(self
            .produce_raw_answer(topic, partition, records, acks)?
            .error_code)
    }

    /// [`Broker::produce_raw_to`], with the partition's whole answer (its `record_errors`...).
    pub fn produce_raw_answer(
        &self,
        topic: &'static str,
        partition: i32,
        records: bytes::Bytes,
        acks: i16,
    ) -> anyhow::Result<kafka_protocol::messages::produce_response::PartitionProduceResponse> {
        // A bounded wait: a leader that lost its site waits for followers that never come.
        self.produce_raw_within(topic, partition, records, acks, Duration::from_secs(5))
    }

    /// [`Broker::produce_raw_answer`] with the request's own timeout (how long an acks=all
    /// write may wait for its replicas).
    pub fn produce_raw_within(
        &self,
        topic: &'static str,
        partition: i32,
        records: bytes::Bytes,
        acks: i16,
        timeout: Duration,
    ) -> anyhow::Result<kafka_protocol::messages::produce_response::PartitionProduceResponse> {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::{ProduceRequest, TopicName};
        use kafka_protocol::protocol::StrBytes;
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let c = kafka_client::Connection::connect(&self.bootstrap(), "e2e-raw").await?;
            let req = ProduceRequest::default()
                .with_acks(acks)
                .with_timeout_ms(timeout.as_millis() as i32)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_static_str(topic)))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(partition)
                                .with_records(Some(records)),
                        ]),
                ]);
            let mut resp = c.request(req, 9).await?;
            Ok(resp.responses.remove(0).partition_responses.remove(0))
        })
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.admin)
    }

    /// Everything the broker logged so far (all runs).
    pub fn log(&self) -> String {
        crate::process::run_logs(self.dir.path(), "broker", self.starts)
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn write_config(&self) -> PathBuf {
        let (kafka_listen, extra) = split_section(&self.extra, "[kafka]");
        let (admin, extra) = split_section(&extra, "[admin]");
        let (top, extra) = split_top_level(&extra);
        let text = format!(
            "node_id = {}\ndata_dir = \"{}\"\n{top}\n[kafka]\nlisten = \"{}\"\n{kafka_listen}\n[admin]\nlisten = \"{}\"\ntoken = \"{}\"\n{admin}\n[log]\nformat = \"json\"\nlevel = \"info,openraft=warn\"\n\n{extra}\n",
            self.node_id,
            self.data_dir().display(),
            self.kafka,
            self.admin,
            crate::ADMIN_TOKEN,
        );
        let path = self.dir.path().join("broker.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn launch(&mut self) {
        let config = self.write_config();
        self.starts += 1;
        let log_path = crate::process::run_log(self.dir.path(), "broker", self.starts);
        match spawn_in_until_ready(
            self.netns.as_deref(),
            &bin("broker"),
            &config,
            &log_path,
            START_TIMEOUT,
            ready_addresses,
        ) {
            Ok((child, (kafka, admin))) => {
                self.kafka = kafka;
                self.admin = admin;
                self.child = Some(child);
            }
            Err(NotReady(how)) => {
                panic!(
                    "broker did not become ready ({how}); its log:\n{}",
                    self.log()
                )
            }
        }
    }

    /// Crash the broker (SIGKILL) and reap it.
    pub fn kill9(&mut self) {
        crate::process::kill9(&mut self.child);
    }

    /// Stop the broker cleanly (SIGTERM) and wait for it to exit; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.terminate();
        self.wait_stopped()
    }

    /// Send `signal` to the running broker.
    fn signal(&self, signal: Signal) {
        let c = self.child.as_ref().expect("broker is running");
        kill(Pid::from_raw(c.id() as i32), signal).expect("signal broker");
    }

    /// Ask the broker to stop (SIGTERM) without waiting; [`Broker::wait_stopped`] reaps it.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Wait for a broker asked to stop ([`Broker::terminate`]) to exit; its exit status.
    pub fn wait_stopped(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("broker is running");
        c.wait().expect("wait for broker")
    }

    /// Freeze the broker (SIGSTOP): it holds its connections and answers nothing.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Let a paused broker run on (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// Bytes in the segment files of `topic`'s partition `index` here.
    pub fn partition_log_bytes(&self, topic: &str, index: i32) -> u64 {
        fn walk(dir: &Path, name: &str, inside: bool) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        walk(&path, name, inside || e.file_name() == name)
                    } else if inside && path.extension().is_some_and(|x| x == "log") {
                        e.metadata().map_or(0, |m| m.len())
                    } else {
                        0
                    }
                })
                .sum()
        }
        walk(&self.data_dir(), &format!("{topic}-{index}"), false)
    }

    /// Start again on the same ports and data directory.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop or kill the broker before restarting it"
        );
        self.launch();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `(kafka, admin)` addresses from the JSON "broker ready" log line.
fn ready_addresses(v: &serde_json::Value) -> Option<(SocketAddr, SocketAddr)> {
    kafka_and_admin(v, "broker ready")
}

/// `(kafka_addr, admin)` from a JSON log line whose message is `message` (the broker's ready
/// line, and the edge gateway's, whose buffer is a broker).
pub(crate) fn kafka_and_admin(
    v: &serde_json::Value,
    message: &str,
) -> Option<(SocketAddr, SocketAddr)> {
    if v.get("message")?.as_str()? != message {
        return None;
    }
    let kafka = v.get("kafka_addr")?.as_str()?.parse().ok()?;
    let admin = v.get("admin")?.as_str()?.parse().ok()?;
    Some((kafka, admin))
}

/// Top-level keys (`rack = ...`) must come before the first section.
fn split_top_level(extra: &str) -> (String, String) {
    let first_section = extra
        .lines()
        .position(|l| l.trim().starts_with('['))
        .unwrap_or(extra.lines().count());
    let lines: Vec<&str> = extra.lines().collect();
    (
        lines[..first_section].join("\n"),
        lines[first_section..].join("\n"),
    )
}

/// Lines a test adds under `[kafka]` must go in that section; everything else stays after.
fn split_section(extra: &str, header: &str) -> (String, String) {
    let mut section = String::new();
    let mut rest = String::new();
    let mut inside = false;
    for line in extra.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == header;
            if inside {
                continue;
            }
        }
        if inside {
            section.push_str(line);
            section.push('\n');
        } else {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    (section, rest)
}
