//! `edge --config edge.toml`: run the edge gateway until SIGTERM or SIGINT.
//! `edge --config edge.toml --check`: validate the configuration and exit.
//! As PID 1 (the appliance image's /init): boot the machine, see the `pid1` crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Edge gateway: a branch's durable buffer, forwarding to the hub"
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Only validate the configuration.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    // As /init of the appliance image, the PID-1 runtime takes over the machine.
    if std::process::id() == 1 {
        pid1::boot(edge::appliance::EdgeAppliance::default());
    }
    let args = Args::parse();
    let config: edge::EdgeConfig = match appconfig::load_for_main(&args.config, args.check) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    telemetry::init_logging(config.buffer.log.format, &config.buffer.log.level);
    telemetry::run_process("edge", async move {
        let handle = edge::start(config).await?;
        telemetry::stop_requested().await?;
        handle.shutdown().await
    })
}
