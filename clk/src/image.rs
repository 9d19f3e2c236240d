//! `clk image build|proxmox`: bootable appliance disk images and Proxmox templates.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::Subcommand;

use crate::progress::Stages;

/// The repository this CLI was built from (for `firmware/` and building appliance binaries).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a GPT disk image (raw + qcow2) and the UKI for an appliance.
    Build {
        /// The appliance to build.
        #[arg(value_parser = appliance_names())]
        appliance: String,
        /// Hardware profile in firmware/profiles/: qemu, xeon-nvme-25g.
        #[arg(long, default_value = "qemu")]
        profile: String,
        /// Appliance configuration baked into the image (validated now, not at boot).
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "build/images")]
        out: PathBuf,
        /// Size of the disk image; the data area takes what the ESP leaves.
        #[arg(long, default_value = "2GiB")]
        disk_size: String,
        /// Use this static binary instead of building the appliance.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Downloaded Debian packages are cached here.
        #[arg(long, env = "CLK_CACHE", default_value = "build/cache")]
        cache: PathBuf,
        /// Image version (default: this CLI's version).
        #[arg(long)]
        version: Option<String>,
        /// Install the kernel image with a boot counter of N tries (blessed by the appliance
        /// once healthy; rolled back by systemd-boot after N failed boots).
        #[arg(long)]
        boot_tries: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Install a new kernel image (from `clk image build`) on a raw disk image or USB stick
    /// with a boot counter: it is tried TRIES times and rolled back if it never gets healthy.
    Install {
        /// Raw disk image or block device.
        #[arg(long)]
        disk: PathBuf,
        /// The new UKI (`build/images/<appliance>-<profile>-<version>.efi`).
        #[arg(long)]
        uki: PathBuf,
        /// Entry name on the ESP, `<appliance>-<version>` (sorted by version: newest boots).
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 3)]
        tries: u32,
    },
    /// Write a Proxmox VE 8 template kit: the qcow2 and a ready `qm` script.
    Proxmox {
        /// The qcow2 built by `clk image build`.
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value = "broker", value_parser = appliance_names())]
        appliance: String,
        #[arg(long, default_value = "build/proxmox")]
        out: PathBuf,
        #[arg(long, default_value_t = 9000)]
        vmid: u32,
        #[arg(long, default_value = "local-lvm")]
        storage: String,
        #[arg(long, default_value = "vmbr0")]
        bridge: String,
        /// VM memory (default: what the appliance declares).
        #[arg(long)]
        memory_mib: Option<u32>,
        #[arg(long, default_value_t = 4)]
        cores: u32,
    },
}

/// The appliances the registry declares, each with its one-line summary, for `--help`.
fn appliance_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(registry::APPLIANCES.iter().map(|m| {
        clap::builder::PossibleValue::new(m.name).help(format!(
            "{} (ports: {})",
            m.summary,
            m.ports_text()
        ))
    }))
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Build {
            appliance,
            profile,
            config,
            out,
            disk_size,
            binary,
            cache,
            boot_tries,
            version,
            json,
        } => {
            let disk_bytes = appconfig::size::parse(&disk_size).map_err(anyhow::Error::msg)?;
            let progress = Stages::new(json);
            // Fail on a bad configuration before spending minutes on a build.
            clk_image::validate_config(&appliance, &config)?;
            let binary = match binary {
                Some(b) => b,
                None => {
                    progress.stage(&format!("building the static {appliance} binary (cargo)"));
                    build_static_binary(&appliance, json)?
                }
            };
            std::fs::create_dir_all(&out)?;
            let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
                Ok(v) => v.parse().context("SOURCE_DATE_EPOCH is not a number")?,
                Err(_) => clk_image::DEFAULT_EPOCH,
            };
            let report = clk_image::build(
                &clk_image::BuildRequest {
                    appliance,
                    version: version.unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
                    profile,
                    config,
                    binary,
                    firmware_dir: repo_root().join("firmware"),
                    cache_dir: cache,
                    out_dir: out,
                    disk_bytes,
                    epoch,
                    boot_tries,
                },
                &progress,
            )?;
            progress.finish("image built");
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "raw": report.raw, "qcow2": report.qcow2, "uki": report.uki,
                        "raw_sha256": report.raw_sha256, "qcow2_sha256": report.qcow2_sha256,
                        "uki_bytes": report.uki_bytes, "initramfs_bytes": report.initramfs_bytes,
                        "qcow2_bytes": report.qcow2_bytes, "kernel": report.kernel,
                        "modules": report.modules, "missing_firmware": report.missing_firmware,
                    })
                );
            } else {
                println!(
                    "raw    {} sha256 {}",
                    report.raw.display(),
                    report.raw_sha256
                );
                println!(
                    "qcow2  {} ({} bytes) sha256 {}",
                    report.qcow2.display(),
                    report.qcow2_bytes,
                    report.qcow2_sha256
                );
                println!(
                    "uki    {} ({} bytes, initramfs {} bytes)",
                    report.uki.display(),
                    report.uki_bytes,
                    report.initramfs_bytes
                );
                println!(
                    "kernel {}; modules: {}",
                    report.kernel,
                    report.modules.join(" ")
                );
                for m in &report.missing_firmware {
                    println!("MISSING FIRMWARE: {m}");
                }
            }
            Ok(())
        }
        ImageCommand::Install {
            disk,
            uki,
            name,
            tries,
        } => {
            let file = clk_image::upgrade::install(&disk, &uki, &name, tries)?;
            println!("installed EFI/Linux/{file} on {}", disk.display());
            Ok(())
        }
        ImageCommand::Proxmox {
            image,
            appliance,
            out,
            vmid,
            storage,
            bridge,
            memory_mib,
            cores,
        } => {
            let script =
                clk_image::proxmox::write_template(&clk_image::proxmox::TemplateRequest {
                    appliance: &appliance,
                    image: &image,
                    out_dir: &out,
                    vmid,
                    storage: &storage,
                    bridge: &bridge,
                    memory_mib: memory_mib.unwrap_or_else(|| {
                        registry::find(&appliance).map_or(8192, |m| m.memory_mib)
                    }),
                    cores,
                })?;
            println!("{}", script.display());
            Ok(())
        }
    }
}

/// `cargo build` the appliance as a static musl binary with the image profile.
fn build_static_binary(appliance: &str, quiet: bool) -> anyhow::Result<PathBuf> {
    const TARGET: &str = "x86_64-unknown-linux-musl";
    let root = repo_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            "appliance",
            "--target",
            TARGET,
            "-p",
            appliance,
            "--bin",
            appliance,
        ])
        .args(quiet.then_some("--quiet"))
        .status()
        .context("run cargo to build the appliance binary")?;
    anyhow::ensure!(
        status.success(),
        "building the {appliance} binary for {TARGET} failed (is the target installed? `rustup target add {TARGET}`; and musl-gcc, from Debian's musl-tools?)"
    );
    Ok(root
        .join("target")
        .join(TARGET)
        .join("appliance")
        .join(appliance))
}
