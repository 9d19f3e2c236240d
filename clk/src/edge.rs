//! `clk edge`: an edge gateway's parked events, through its admin port (the buffer's, 9644
//! unless its `[buffer.admin] listen` says otherwise): list them, release a key (its events go
//! to the hub in order, then it flows again) or drop it (its parked events never leave).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hyper::{Method, StatusCode};

#[derive(Subcommand)]
pub enum EdgeCommand {
    /// Parked keys: the hub refused their first event for good; the rest wait behind it.
    Parked(ParkedArgs),
    /// Send a parked key's events to the hub, in order, and let the key flow again.
    Release(KeyArgs),
    /// Remove a parked key's events for good: they never reach the hub.
    Drop(KeyArgs),
}

#[derive(Args)]
pub struct ParkedArgs {
    /// The gateway's admin port, host:port (or https://host:port with `clk --admin-ca`).
    #[arg(long, default_value = "127.0.0.1:9644")]
    admin: String,
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct KeyArgs {
    #[arg(long, default_value = "127.0.0.1:9644")]
    admin: String,
    /// The local topic and partition (as `clk edge parked` shows them).
    #[arg(long)]
    topic: String,
    #[arg(long)]
    partition: i32,
    /// The key as text.
    #[arg(long, conflicts_with_all = ["key_base64", "offset"])]
    key: Option<String>,
    /// The key in base64 (a key that is not text).
    #[arg(long, conflicts_with = "offset")]
    key_base64: Option<String>,
    /// A keyless event's local offset.
    #[arg(long)]
    offset: Option<i64>,
    /// The gateway's `[buffer.admin] token` (changes need it).
    #[arg(long, env = "CLK_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(command: EdgeCommand) -> anyhow::Result<()> {
    match command {
        EdgeCommand::Parked(args) => parked(args).await,
        EdgeCommand::Release(args) => act(args, "release").await,
        EdgeCommand::Drop(args) => act(args, "drop").await,
    }
}

async fn parked(args: ParkedArgs) -> anyhow::Result<()> {
    let tls = crate::admin_tls()?;
    let (code, body) = telemetry::admin::call(
        &args.admin,
        tls,
        Method::GET,
        "/v1/parked",
        None,
        None,
        CALL_TIMEOUT,
    )
    .await?;
    if code != StatusCode::OK {
        bail!("{} answered {code}: {}", args.admin, body.trim());
    }
    if args.json {
        println!("{}", body.trim());
        return Ok(());
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&body).context("reading the parked keys")?;
    if list.is_empty() {
        println!("nothing parked");
        return Ok(());
    }
    println!(
        "{:<24} {:>4} {:<24} {:>10} {:>8}  reason",
        "topic", "part", "key", "offset", "events"
    );
    for v in list {
        let key = match (v["key"].as_str(), v["key_base64"].as_str()) {
            (Some(k), _) => k.to_string(),
            (None, Some(b)) => format!("base64:{b}"),
            (None, None) => "(no key)".into(),
        };
        let releasing = if v["releasing"] == true {
            " (releasing)"
        } else {
            ""
        };
        println!(
            "{:<24} {:>4} {:<24} {:>10} {:>8}  {}{releasing}",
            v["topic"].as_str().unwrap_or(""),
            v["partition"],
            key,
            v["offset"],
            v["records"],
            v["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

async fn act(args: KeyArgs, action: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "topic": args.topic,
        "partition": args.partition,
        "key": args.key,
        "key_base64": args.key_base64,
        "offset": args.offset,
    });
    // Only the one naming field goes (the gateway wants exactly one).
    let body: serde_json::Map<String, serde_json::Value> = body
        .as_object()
        .expect("an object")
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (code, answer) = telemetry::admin::call(
        &args.admin,
        crate::admin_tls()?,
        Method::POST,
        &format!("/v1/parked/{action}"),
        Some(serde_json::Value::Object(body).to_string()),
        Some(&args.token),
        CALL_TIMEOUT,
    )
    .await?;
    if code != StatusCode::ACCEPTED {
        bail!("{} answered {code}: {}", args.admin, answer.trim());
    }
    println!("{action} requested; `clk edge parked` shows when it is done");
    Ok(())
}
