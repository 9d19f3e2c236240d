//! Benchmark commands. Every report says what was measured, on what, and prints JSON with
//! `--json` so results can be collected into docs/benchmarks.md.

mod fsync_load;
mod handshakes;
mod kafka;
mod machine;
mod registry;
mod report;
mod s3;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Kafka protocol load against any broker.
    Kafka {
        #[command(subcommand)]
        what: kafka::KafkaBench,
    },
    /// S3 load against any S3 endpoint: PUT and GET MB/s for large objects, ops/s for small.
    S3(s3::S3Args),
    /// Schema Registry load: registrations and id look-ups per second, with latencies.
    Registry(registry::RegistryArgs),
    /// Sequential write throughput of a directory's disk: buffered + fdatasync, O_DIRECT,
    /// and the latency of a small write + fdatasync.
    Disk(machine::DiskArgs),
    /// The hub's write pattern without the broker: writers appending and fdatasyncing at a
    /// fixed load, with latency per window: the floor under acks=all latency on this disk.
    FsyncLoad(fsync_load::FsyncLoadArgs),
    /// TCP throughput over loopback.
    Loopback(machine::LoopbackArgs),
    /// TLS handshakes per second against a broker's SSL listener (mTLS, no resumption).
    Handshakes(handshakes::HandshakeArgs),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Kafka { what } => kafka::run(what).await,
        BenchCommand::S3(a) => s3::run(a).await,
        BenchCommand::Registry(a) => registry::run(a).await,
        BenchCommand::Disk(a) => machine::disk(a).await,
        BenchCommand::FsyncLoad(a) => fsync_load::run(a).await,
        BenchCommand::Loopback(a) => machine::loopback(a).await,
        BenchCommand::Handshakes(a) => handshakes::run(a).await,
    }
}
