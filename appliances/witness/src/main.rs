//! `witness --config witness.toml`: run the witness until SIGTERM or SIGINT.
//! `witness --config witness.toml --check`: validate the configuration and exit.
//! As PID 1 (the appliance image's /init): boot the machine, see the `pid1` crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Witness of the controller quorum (third site, no partition data)"
)]
struct Args {
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long)]
    check: bool,
}

/// Why the witness stopped.
enum Stop {
    Requested(std::io::Result<()>),
    /// The quorum member failed on its own (a storage error stops openraft's core): exiting
    /// lets the supervisor restart the process, which recovers the log.
    Failed(String),
}

fn main() -> ExitCode {
    // As /init of the appliance image, the PID-1 runtime takes over the machine.
    if std::process::id() == 1 {
        pid1::boot(witness::appliance::WitnessAppliance::default());
    }
    let args = Args::parse();
    let config: witness::WitnessConfig = match appconfig::load_for_main(&args.config, args.check) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    telemetry::init_logging(config.log.format, &config.log.level);
    telemetry::run_process("witness", async move {
        let handle = witness::start(config).await?;
        let stop = tokio::select! {
            r = telemetry::stop_requested() => Stop::Requested(r),
            why = handle.failed() => Stop::Failed(why),
        };
        handle.shutdown().await?;
        match stop {
            Stop::Requested(r) => Ok(r?),
            Stop::Failed(why) => Err(anyhow::anyhow!("the quorum member stopped: {why}")),
        }
    })
}
