//! `clk cluster`: the stretched hub as an operator sees it, through any quorum member's admin
//! port (a broker's 9644 or the witness's 9646): its status, replacing a dead voter, and
//! moving partitions between brokers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hyper::{Method, StatusCode};
use quorum::ids::NodeId;
use quorum::status::ClusterStatus;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Sites, brokers, the quorum and its leader, degraded or not.
    Status(StatusArgs),
    /// Replace a voter of the controller quorum (a dead one, for a new node). The new node
    /// must be running (a broker, or a witness started with the same cluster name); it is
    /// caught up on the metadata log before it votes.
    ReplaceVoter(ReplaceArgs),
    /// Move a partition to other brokers (or cancel its move). The new replicas copy from the
    /// leader while it goes on serving; the old ones leave once every new one is in sync.
    Reassign(ReassignArgs),
    /// The partitions being moved.
    Reassignments(ReassignmentsArgs),
}

#[derive(Args)]
pub struct ReassignArgs {
    #[arg(long, default_value = "127.0.0.1:9644")]
    admin: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    partition: i32,
    /// The new replicas, comma-separated broker ids, the preferred leader first (at least
    /// one in each data site).
    #[arg(long, value_delimiter = ',', required_unless_present = "cancel")]
    replicas: Vec<u32>,
    /// Cancel the move in progress: back to the replicas it started from.
    #[arg(long, conflicts_with = "replicas")]
    cancel: bool,
    /// Wait (up to this long, e.g. "10m") until the move has completed.
    #[arg(long, value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
    /// The node's `[admin] token` (changes need it).
    #[arg(long, env = "CLK_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Args)]
pub struct ReassignmentsArgs {
    #[arg(long, default_value = "127.0.0.1:9644")]
    admin: String,
    /// Print them as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    /// A quorum member's admin port (a broker's or the witness's), host:port, or
    /// https://host:port with `clk --admin-ca`.
    #[arg(long, default_value = "127.0.0.1:9644")]
    admin: String,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
    /// Wait (up to this long, e.g. "2m") until the hub is healthy: a controller, every broker
    /// live, no site fenced, every partition fully in sync; fail if it is not by then.
    #[arg(long, value_parser = humantime::parse_duration)]
    wait_healthy: Option<Duration>,
}

#[derive(Args)]
pub struct ReplaceArgs {
    #[arg(long, default_value = "127.0.0.1:9644")]
    admin: String,
    /// The voter to remove.
    #[arg(long)]
    remove: u32,
    /// The voter to add, as ID=HOST:PORT (its quorum address).
    #[arg(long, value_parser = parse_voter)]
    add: (u32, String),
    /// The node's `[admin] token` (changes need it).
    #[arg(long, env = "CLK_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

fn parse_voter(s: &str) -> Result<(u32, String), String> {
    let (id, addr) = s.split_once('=').ok_or("expected ID=HOST:PORT")?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("voter id {id:?}: {e}"))?;
    if addr.trim().is_empty() {
        return Err("the voter's address is empty".into());
    }
    Ok((id, addr.trim().to_string()))
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status(args) => status(args).await,
        ClusterCommand::ReplaceVoter(args) => replace_voter(args).await,
        ClusterCommand::Reassign(args) => reassign(args).await,
        ClusterCommand::Reassignments(args) => {
            let moves = fetch_reassignments(&args.admin).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&moves)?);
            } else if moves.is_empty() {
                println!("no partition is being moved");
            }
            for m in moves.iter().filter(|_| !args.json) {
                println!(
                    "{}-{}: replicas {:?}, adding {:?}, removing {:?}, in sync {:?}",
                    m.topic, m.partition, m.replicas, m.adding, m.removing, m.isr
                );
            }
            Ok(())
        }
    }
}

async fn fetch_reassignments(admin: &str) -> anyhow::Result<Vec<quorum::admin::Reassignment>> {
    get_json(admin, "/v1/cluster/reassignments", "reassignments").await
}

async fn reassign(args: ReassignArgs) -> anyhow::Result<()> {
    let request = quorum::admin::ReassignRequest {
        topic: args.topic.clone(),
        partition: args.partition,
        replicas: (!args.cancel).then(|| args.replicas.iter().map(|n| NodeId(*n)).collect()),
    };
    let (code, answer) = telemetry::admin::call(
        &args.admin,
        crate::admin_tls()?,
        Method::POST,
        "/v1/cluster/reassignments",
        Some(serde_json::to_string(&request)?),
        Some(&args.token),
        Duration::from_secs(30),
    )
    .await?;
    if code != StatusCode::OK {
        bail!("the reassignment was refused ({code}): {}", answer.trim());
    }
    let what = format!("{}-{}", args.topic, args.partition);
    let Some(limit) = args.wait else {
        println!(
            "{what}: {}",
            if args.cancel {
                "move cancelled"
            } else {
                "moving"
            }
        );
        return Ok(());
    };
    let deadline = Instant::now() + limit;
    loop {
        let moves = fetch_reassignments(&args.admin).await?;
        let moving = moves
            .iter()
            .find(|m| m.topic == args.topic && m.partition == args.partition);
        match moving {
            None => {
                println!("{what}: moved");
                return Ok(());
            }
            Some(m) if Instant::now() >= deadline => bail!(
                "{what} is still moving after {}: adding {:?} (in sync: {:?})",
                humantime::format_duration(limit),
                m.adding,
                m.isr
            ),
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn fetch(admin: &str) -> anyhow::Result<ClusterStatus> {
    get_json(admin, "/v1/cluster", "cluster status").await
}

/// `GET path` on a quorum member's admin port, its JSON answer read as `T`.
async fn get_json<T: serde::de::DeserializeOwned>(
    admin: &str,
    path: &str,
    what: &str,
) -> anyhow::Result<T> {
    let (code, body) = telemetry::admin::call(
        admin,
        crate::admin_tls()?,
        Method::GET,
        path,
        None,
        None,
        CALL_TIMEOUT,
    )
    .await?;
    if code != StatusCode::OK {
        bail!("{admin} answered {code}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("reading {admin}'s {what}"))
}

/// Why the hub is not healthy, or `None` when it is.
fn unhealthy(s: &ClusterStatus) -> Option<String> {
    let fenced: Vec<String> = s
        .sites
        .iter()
        .flat_map(|site| &site.brokers)
        .filter(|b| b.fenced)
        .map(|b| b.node.to_string())
        .collect();
    if s.quorum.leader.is_none() {
        Some("no controller".into())
    } else if !s.fenced_sites.is_empty() {
        Some(format!("degraded: site(s) {:?} fenced", s.fenced_sites))
    } else if !fenced.is_empty() {
        Some(format!("broker(s) {} fenced", fenced.join(", ")))
    } else if s.partitions.under_replicated + s.partitions.offline + s.partitions.degraded > 0 {
        Some(format!(
            "{} partition(s) under-replicated, {} degraded, {} offline",
            s.partitions.under_replicated, s.partitions.degraded, s.partitions.offline
        ))
    } else if s.sites.iter().all(|site| site.brokers.is_empty()) {
        Some("no broker registered".into())
    } else {
        None
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let status = match args.wait_healthy {
        None => fetch(&args.admin).await?,
        Some(limit) => wait_healthy(&args.admin, limit).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The status of the hub behind `admin` if it is healthy now.
pub async fn healthy_now(admin: &str) -> Option<ClusterStatus> {
    fetch(admin).await.ok().filter(|s| unhealthy(s).is_none())
}

async fn wait_healthy(admin: &str, limit: Duration) -> anyhow::Result<ClusterStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let why = match fetch(admin).await {
            Ok(s) => match unhealthy(&s) {
                None => return Ok(s),
                Some(why) => why,
            },
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("the hub is not healthy after {limit:?}: {why}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn render(s: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let id = s
        .cluster_id
        .map_or("not formed".to_string(), |u| u.to_string());
    let _ = writeln!(
        out,
        "cluster {} ({id}), as node {} sees it at metadata index {}",
        s.cluster_name, s.answered_by, s.applied_index
    );
    let members = |m: &BTreeMap<NodeId, String>| {
        m.iter()
            .map(|(id, a)| format!("{id} ({a})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let leader = s
        .quorum
        .leader
        .map_or("none".to_string(), |l| l.to_string());
    let _ = writeln!(out, "controller: node {leader}, term {}", s.quorum.term);
    let _ = writeln!(out, "voters:     {}", members(&s.quorum.voters));
    if !s.quorum.learners.is_empty() {
        let _ = writeln!(out, "learners:   {}", members(&s.quorum.learners));
    }
    for site in &s.sites {
        let kind = if site.data_site { "data site" } else { "site" };
        let state = if site.fenced { "FENCED" } else { "up" };
        let _ = writeln!(out, "{} ({kind}): {state}", site.site);
        for b in &site.brokers {
            let state = if b.fenced { "fenced" } else { "live" };
            let _ = writeln!(
                out,
                "  broker {:<4} {state:<7} {} (epoch {})",
                b.node, b.kafka, b.epoch
            );
        }
    }
    if s.configured_policy_differs {
        let _ = writeln!(
            out,
            "note: node {}'s [cluster] data_sites / preferred_site differ from the cluster's \
             site policy (fixed when it formed): the cluster's applies",
            s.answered_by
        );
    }
    let p = &s.partitions;
    let _ = writeln!(
        out,
        "partitions: {} ({} under-replicated, {} missing a site, {} offline, {} being moved)",
        p.total, p.under_replicated, p.degraded, p.offline, p.reassigning
    );
    let verdict = match unhealthy(s) {
        None => "HEALTHY".to_string(),
        Some(why) if s.degraded => format!("DEGRADED ({why})"),
        Some(why) => format!("NOT HEALTHY ({why})"),
    };
    let _ = writeln!(out, "hub: {verdict}");
    out
}

async fn replace_voter(args: ReplaceArgs) -> anyhow::Result<()> {
    let status = fetch(&args.admin).await?;
    let mut voters = status.quorum.voters.clone();
    let (remove, (add, addr)) = (NodeId(args.remove), (NodeId(args.add.0), args.add.1));
    if voters.remove(&remove).is_none() {
        bail!(
            "node {remove} is not a voter (voters: {:?})",
            voters.keys().collect::<Vec<_>>()
        );
    }
    if voters.insert(add, addr).is_some() {
        bail!("node {add} is already a voter");
    }
    let body = serde_json::to_string(&quorum::admin::VotersChange { voters })?;
    eprintln!("replacing voter {remove} by {add}; the new voter catches up first");
    let (code, answer) = telemetry::admin::call(
        &args.admin,
        crate::admin_tls()?,
        Method::POST,
        "/v1/cluster/voters",
        Some(body),
        Some(&args.token),
        Duration::from_secs(90),
    )
    .await?;
    if code != StatusCode::OK {
        bail!("the voter change was refused ({code}): {}", answer.trim());
    }
    let after = fetch(&args.admin).await?;
    println!(
        "voters: {:?}",
        after.quorum.voters.keys().collect::<Vec<_>>()
    );
    Ok(())
}
