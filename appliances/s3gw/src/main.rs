//! `s3gw --config s3gw.toml`: run the S3 gateway until SIGTERM or SIGINT.
//! `s3gw --config s3gw.toml --check`: validate the configuration and exit.
//! As PID 1 (the appliance image's /init): boot the machine, see the `pid1` crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "S3-compatible object store appliance")]
struct Args {
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    // As /init of the appliance image, the PID-1 runtime takes over the machine.
    if std::process::id() == 1 {
        pid1::boot(s3gw::appliance::S3gwAppliance::default());
    }
    let args = Args::parse();
    let config: s3gw::S3gwConfig = match appconfig::load_for_main(&args.config, args.check) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    telemetry::init_logging(config.log.format, &config.log.level);
    telemetry::run_process("s3gw", async move {
        let handle = s3gw::start(config).await?;
        telemetry::stop_requested().await?;
        handle.shutdown().await
    })
}
