//! `broker --config broker.toml`: run the broker until SIGTERM or SIGINT.
//! `broker --config broker.toml --check`: validate the configuration and exit.
//! As PID 1 (the appliance image's /init): boot the machine, see the `pid1` crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Kafka-compatible broker appliance")]
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
        pid1::boot(broker::appliance::BrokerAppliance::default());
    }
    let args = Args::parse();
    let config: broker::BrokerConfig = match appconfig::load_for_main(&args.config, args.check) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    telemetry::init_logging(config.log.format, &config.log.level);
    raise_open_file_limit();
    telemetry::run_process("broker", async move {
        let handle = broker::start(config).await?;
        telemetry::stop_requested().await?;
        handle.shutdown().await
    })
}

/// Every segment keeps three files open: use the whole hard limit on open files.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open file limit");
    }
}
