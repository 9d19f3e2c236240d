//! `clk`: the operator CLI of the Clickceler hub appliances.
//!
//! - `clk bench kafka produce|consume`: load any Kafka broker and report throughput,
//!   latency percentiles and broker memory.
//! - `clk bench disk|loopback`: this machine's physical limits, for the ratios in
//!   docs/benchmarks.md.
//! - `clk image build|install|proxmox`: appliance disk images, upgrades, Proxmox templates.
//! - `clk vm boot`: an image under QEMU, with progress until its appliance is ready.

mod bench;
mod cluster;
mod image;
mod lab;
mod pki;
mod progress;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "clk", version, about = "Clickceler hub operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks (point them at any broker or endpoint to compare).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Appliance disk images and Proxmox templates.
    Image {
        #[command(subcommand)]
        what: image::ImageCommand,
    },
    /// The stretched hub: status, voter replacement (through any broker's or the witness's
    /// admin port).
    Cluster {
        #[command(subcommand)]
        what: cluster::ClusterCommand,
    },
    /// The hub's private PKI: CAs, appliance and branch certificates, renewal, revocation
    /// (CRL), cloud-init user-data.
    Pki {
        #[command(subcommand)]
        what: pki::PkiCommand,
    },
    /// A local lab: a whole stretched hub as processes on loopback.
    Lab {
        #[command(subcommand)]
        what: lab::LabCommand,
    },
    /// Boot an appliance image under QEMU (OVMF) with its serial console on stdout.
    Vm {
        #[command(subcommand)]
        what: VmCommand,
    },
}

#[derive(Subcommand)]
enum VmCommand {
    /// Boot an image, show progress until its appliance is ready, run until it powers off
    /// (Ctrl-C presses the ACPI power button).
    Boot(vm::BootArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Bench { what } => runtime.block_on(bench::run(what)),
        Command::Image { what } => image::run(what),
        Command::Cluster { what } => runtime.block_on(cluster::run(what)),
        Command::Lab { what } => runtime.block_on(lab::run(what)),
        Command::Pki { what } => pki::run(what),
        Command::Vm {
            what: VmCommand::Boot(args),
        } => runtime.block_on(vm::boot(args)),
    }
}
