//! Benchmark commands. Every report says what was measured, on what, and prints JSON with
//! `--json` so results can be collected into docs/benchmarks.md.

mod kafka;
mod machine;
mod report;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Kafka protocol load against any broker.
    Kafka {
        #[command(subcommand)]
        what: kafka::KafkaBench,
    },
    /// Sequential write throughput of a directory's disk: buffered + fdatasync, O_DIRECT,
    /// and the latency of a small write + fdatasync.
    Disk(machine::DiskArgs),
    /// TCP throughput over loopback.
    Loopback(machine::LoopbackArgs),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Kafka { what } => kafka::run(what).await,
        BenchCommand::Disk(a) => machine::disk(a).await,
        BenchCommand::Loopback(a) => machine::loopback(a).await,
    }
}
