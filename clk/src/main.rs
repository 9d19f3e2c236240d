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
mod edge;
mod image;
mod lab;
mod pki;
mod progress;
mod vm;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "clk", version, about = "Clickceler hub operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The CA that admin ports served over HTTPS (`[admin] security = "SSL"`) chain to;
    /// admin addresses are then written `https://host:port`.
    #[arg(long, global = true, env = "CLK_ADMIN_CA")]
    admin_ca: Option<PathBuf>,
    /// A client certificate (and `--admin-key`) to present to HTTPS admin ports whose
    /// `[admin] admins` name its principal.
    #[arg(long, global = true, env = "CLK_ADMIN_CERT", requires = "admin_key")]
    admin_cert: Option<PathBuf>,
    #[arg(long, global = true, env = "CLK_ADMIN_KEY", requires = "admin_cert")]
    admin_key: Option<PathBuf>,
}

/// How `clk` reaches HTTPS admin ports: `--admin-ca` and the optional client certificate.
struct AdminTlsFiles {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
}

static ADMIN_TLS: std::sync::OnceLock<Option<AdminTlsFiles>> = std::sync::OnceLock::new();

/// The TLS client for HTTPS admin ports, when `--admin-ca` was given.
pub fn admin_tls() -> anyhow::Result<Option<&'static tls::Connector>> {
    static CONNECTOR: std::sync::OnceLock<Option<tls::Connector>> = std::sync::OnceLock::new();
    if let Some(c) = CONNECTOR.get() {
        return Ok(c.as_ref());
    }
    let connector = match ADMIN_TLS.get().and_then(Option::as_ref) {
        None => None,
        Some(files) => {
            let identity = files.identity.as_ref();
            let identity = identity.map(|(c, k)| (c.as_path(), k.as_path()));
            Some(tls::Connector::new(&files.ca, identity)?)
        }
    };
    Ok(CONNECTOR.get_or_init(|| connector).as_ref())
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
    /// An edge gateway's parked events: list, release or drop a key.
    Edge {
        #[command(subcommand)]
        what: edge::EdgeCommand,
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
    let identity = cli.admin_cert.zip(cli.admin_key);
    let _ = ADMIN_TLS.set(cli.admin_ca.map(|ca| AdminTlsFiles { ca, identity }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Bench { what } => runtime.block_on(bench::run(what)),
        Command::Image { what } => image::run(what),
        Command::Cluster { what } => runtime.block_on(cluster::run(what)),
        Command::Edge { what } => runtime.block_on(edge::run(what)),
        Command::Lab { what } => runtime.block_on(lab::run(what)),
        Command::Pki { what } => pki::run(what),
        Command::Vm {
            what: VmCommand::Boot(args),
        } => runtime.block_on(vm::boot(args)),
    }
}
