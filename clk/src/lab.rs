//! `clk lab hub`: a whole stretched hub as processes on this machine, for newcomers and
//! benchmarks (the README's main job runs it). Two data sites of brokers and a witness, each
//! node on its own loopback address with the appliance's usual ports, as on separate machines:
//!
//! | node | site | address | Kafka | admin | quorum |
//! |------|------|---------|-------|-------|--------|
//! | broker 1, 2 | site-a | 127.0.1.1, 127.0.1.2 | 9092 | 9644 | 9190 |
//! | broker 3, 4 | site-b | 127.0.2.1, 127.0.2.2 | 9092 | 9644 | 9190 |
//! | witness 100 | site-c | 127.0.3.1 | | 9646 | 9190 |
//!
//! Voters: broker 1, broker 3 and the witness. Configurations, data and one log per node stay
//! under `--dir`; a second run reuses them (the hub restarts with its data). The launcher
//! waits until the hub is healthy, prints its status, then supervises: SIGINT or SIGTERM stops
//! every node (SIGTERM, each stops cleanly) and exits 0; a node that dies on its own stops the
//! rest and exits non-zero.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum LabCommand {
    /// Run a stretched hub (2 + 2 brokers and a witness) on loopback until stopped.
    Hub(HubArgs),
}

#[derive(Args)]
pub struct HubArgs {
    /// Configurations, data directories and logs.
    #[arg(long, default_value = "build/lab/hub")]
    dir: PathBuf,
    /// Where the broker and witness binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// How long the hub may take to become healthy.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// Failure detection: `default` (the appliances' defaults, for a WAN: 6 s sessions) or
    /// `fast` (2 s sessions, 0.5-1 s elections: the failover benchmark's tuning).
    #[arg(long, default_value = "default", value_parser = ["default", "fast"])]
    timing: String,
    /// Once ready, keep the others running when a node dies (the failover benchmark kills a
    /// site on purpose); otherwise a dead node stops the whole hub.
    #[arg(long)]
    tolerate_node_loss: bool,
}

const SITES: [(&str, u8); 2] = [("site-a", 1), ("site-b", 2)];
const WITNESS: (u32, &str) = (100, "127.0.3.1");
/// How long nodes get to stop cleanly before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

struct Node {
    name: String,
    child: Child,
}

/// `(node id, site, address)` of every broker.
fn brokers() -> Vec<(u32, &'static str, String)> {
    SITES
        .iter()
        .flat_map(|(site, s)| {
            (1..=2u8).map(move |k| (u32::from((s - 1) * 2 + k), *site, format!("127.0.{s}.{k}")))
        })
        .collect()
}

fn cluster_section(timing: &str) -> String {
    let timing = match timing {
        "fast" => {
            "[cluster.timing]\nheartbeat = \"200ms\"\nsession_timeout = \"2s\"\n\
                   site_cut_timeout = \"2s\"\nraft_heartbeat = \"100ms\"\n\
                   election_timeout_min = \"500ms\"\nelection_timeout_max = \"1s\"\n"
        }
        _ => "",
    };
    format!(
        "[cluster]\nname = \"lab\"\nvoters = [\"1@127.0.1.1:9190\", \"3@127.0.2.1:9190\", \"{}@{}:9190\"]\n\
         data_sites = [\"site-a\", \"site-b\"]\npreferred_site = \"site-a\"\n{timing}",
        WITNESS.0, WITNESS.1
    )
}

fn broker_config(dir: &Path, node: u32, site: &str, addr: &str, timing: &str) -> String {
    format!(
        "node_id = {node}\ndata_dir = \"{data}\"\nrack = \"{site}\"\n\n[kafka]\nlisten = \"{addr}:9092\"\n\n\
         [admin]\nlisten = \"{addr}:9644\"\n\n[quorum]\nlisten = \"{addr}:9190\"\n\n\
         # The hub's topics: RF 3 over the two sites (2 + 1), acks=all needs a copy in each.\n\
         [topics]\nauto_create = true\npartitions = 3\nreplication_factor = 3\nmin_insync_replicas = 2\n\n\
         [log]\nformat = \"text\"\nlevel = \"info,openraft=warn\"\n\n{cluster}",
        data = dir.join(format!("broker-{node}")).display(),
        cluster = cluster_section(timing),
    )
}

fn witness_config(dir: &Path, timing: &str) -> String {
    let (node, addr) = WITNESS;
    format!(
        "node_id = {node}\nsite = \"site-c\"\ndata_dir = \"{data}\"\n\n[quorum]\nlisten = \"{addr}:9190\"\n\n\
         [admin]\nlisten = \"{addr}:9646\"\n\n[log]\nformat = \"text\"\nlevel = \"info,openraft=warn\"\n\n{cluster}",
        data = dir.join("witness").display(),
        cluster = cluster_section(timing),
    )
}

fn spawn(dir: &Path, bin: &Path, name: &str, config: &str) -> anyhow::Result<Node> {
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let log_path = dir.join("logs").join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    eprintln!(
        "started {name} (pid {}), log {}",
        child.id(),
        log_path.display()
    );
    Ok(Node {
        name: name.to_string(),
        child,
    })
}

pub async fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Hub(args) => hub(args).await,
    }
}

fn start_all(args: &HubArgs) -> anyhow::Result<Vec<Node>> {
    std::fs::create_dir_all(args.dir.join("logs"))
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::path::absolute(&args.dir)?;
    let mut nodes = vec![spawn(
        &dir,
        &args.bin_dir.join("witness"),
        "witness",
        &witness_config(&dir, &args.timing),
    )?];
    for (node, site, addr) in brokers() {
        let config = broker_config(&dir, node, site, &addr, &args.timing);
        match spawn(
            &dir,
            &args.bin_dir.join("broker"),
            &format!("broker-{node}"),
            &config,
        ) {
            Ok(n) => nodes.push(n),
            Err(e) => {
                // None of a half-started hub is left running.
                stop_all(&mut nodes);
                return Err(e);
            }
        }
    }
    Ok(nodes)
}

async fn hub(args: HubArgs) -> anyhow::Result<()> {
    for bin in ["broker", "witness"] {
        let path = args.bin_dir.join(bin);
        if !path.exists() {
            bail!(
                "{} is missing: cargo build --release --bins",
                path.display()
            );
        }
    }
    let mut nodes = start_all(&args)?;
    let mut stop = Box::pin(stop_requested());
    let started = Instant::now();
    let status = loop {
        if let Some(dead) = exited(&mut nodes) {
            stop_all(&mut nodes);
            bail!(
                "{dead} before the hub was ready (see its log under {})",
                args.dir.join("logs").display()
            );
        }
        let check = crate::cluster::healthy_now("127.0.1.1:9644");
        tokio::select! {
            _ = &mut stop => {
                stop_all(&mut nodes);
                return Ok(());
            }
            healthy = check => if let Some(s) = healthy { break s },
        }
        if started.elapsed() > args.ready_timeout {
            stop_all(&mut nodes);
            bail!(
                "the hub did not become healthy within {:?}",
                args.ready_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    print!("{}", crate::cluster::render(&status));
    let bootstrap: Vec<String> = brokers()
        .iter()
        .map(|(_, _, a)| format!("{a}:9092"))
        .collect();
    println!("hub ready: bootstrap {}", bootstrap.join(","));
    println!(
        "status:    clk cluster status --admin 127.0.1.1:9644 (any broker's :9644, the witness's {}:9646)",
        WITNESS.1
    );
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let Some(dead) = exited(&mut nodes) else { continue };
                if !args.tolerate_node_loss {
                    stop_all(&mut nodes);
                    bail!("{dead}: stopping the hub");
                }
                eprintln!("{dead}; the others go on");
                nodes.retain_mut(|n| matches!(n.child.try_wait(), Ok(None)));
            }
        }
    }
    eprintln!("stopping the hub");
    if stop_all(&mut nodes) {
        eprintln!("hub stopped cleanly");
        Ok(())
    } else {
        bail!(
            "not every node stopped cleanly (see the logs under {})",
            args.dir.join("logs").display()
        )
    }
}

async fn stop_requested() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// "broker-3 exited with ..." for the first node that is no longer running.
fn exited(nodes: &mut [Node]) -> Option<String> {
    nodes.iter_mut().find_map(|n| match n.child.try_wait() {
        Ok(Some(status)) => Some(format!("{} exited ({status})", n.name)),
        Ok(None) => None,
        Err(e) => Some(format!("{}: {e}", n.name)),
    })
}

/// SIGTERM to every node still running, wait for all (killing those that take longer than
/// [`STOP_TIMEOUT`]); whether every node stopped with success.
fn stop_all(nodes: &mut [Node]) -> bool {
    for n in nodes.iter_mut() {
        if matches!(n.child.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(n.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut clean = true;
    for n in nodes.iter_mut() {
        let status: Option<ExitStatus> = loop {
            match n.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    break None;
                }
            }
        };
        match status {
            Some(s) if s.success() => eprintln!("{} stopped", n.name),
            Some(s) => {
                clean = false;
                eprintln!("{} stopped: {s}", n.name);
            }
            None => {
                clean = false;
                eprintln!("{} did not stop within {STOP_TIMEOUT:?}: killed", n.name);
            }
        }
    }
    clean
}
