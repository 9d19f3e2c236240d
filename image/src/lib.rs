//! The image builder: from an appliance's static binary, its configuration and a hardware
//! profile, a bootable GPT disk (raw and qcow2) with an ESP holding systemd-boot and the
//! appliance as a Unified Kernel Image, plus a blank data area PID 1 formats on first boot.
//!
//! No root, no loop devices, no mounts: Debian packages are downloaded and unpacked
//! ([`apt`]), the initramfs is written by [`cpio`], the UKI by objcopy ([`uki`]), the ESP by
//! `fatfs` ([`esp`]) and the disk by `gptman` ([`disk`]). Same inputs, same bytes: every
//! timestamp comes from `SOURCE_DATE_EPOCH` and every identifier is derived from the inputs.

pub mod apt;
pub mod cpio;
pub mod disk;
pub mod esp;
pub mod kmod;
pub mod profile;
pub mod proxmox;
pub mod seed;
pub mod tool;
pub mod uki;
pub mod upgrade;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use cpio::{Archive, Entry};
use pid1::system::{DataArea, Module, SystemConfig};

/// Default timestamp when `SOURCE_DATE_EPOCH` is not set (2025-01-01): FAT cannot store
/// earlier than 1980, and a fixed default keeps builds reproducible.
pub const DEFAULT_EPOCH: u64 = 1_735_689_600;
pub const DATA_PARTITION: &str = "clk-data";
pub const DATA_MOUNT: &str = "/data";
const ESP_BYTES: u64 = 256 << 20;
const SEED_PATH: &str = "/etc/clk/data-seed.ext4.gz";

pub struct BuildRequest {
    pub appliance: String,
    pub version: String,
    pub profile: String,
    pub config: PathBuf,
    /// The appliance's static binary (becomes /init).
    pub binary: PathBuf,
    /// The repository's `firmware/` directory.
    pub firmware_dir: PathBuf,
    /// Downloaded packages are kept here between builds.
    pub cache_dir: PathBuf,
    pub out_dir: PathBuf,
    pub disk_bytes: u64,
    pub epoch: u64,
    /// Install the kernel image with a boot counter (`+N`): systemd-boot tries it N times and
    /// PID 1 blesses it once healthy. Upgrades always use this; a fresh image normally not.
    pub boot_tries: Option<u32>,
}

#[derive(Debug)]
pub struct BuildReport {
    pub raw: PathBuf,
    pub qcow2: PathBuf,
    pub uki: PathBuf,
    pub raw_sha256: String,
    pub qcow2_sha256: String,
    pub uki_bytes: u64,
    pub initramfs_bytes: u64,
    pub qcow2_bytes: u64,
    pub kernel: String,
    pub modules: Vec<String>,
    /// Firmware the profile wants that this build could not include, with the reason.
    pub missing_firmware: Vec<String>,
}

/// Refuse a configuration the appliance would refuse at boot, with the appliance's own message
/// (each appliance declares its check in its [`pid1::Manifest`]; see the `registry` crate).
pub fn validate_config(appliance: &str, path: &Path) -> anyhow::Result<String> {
    let manifest = registry::find(appliance).with_context(|| {
        format!(
            "unknown appliance `{appliance}` (known: {})",
            registry::names()
        )
    })?;
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let baked = (manifest.check_baked_config)(&text, &path.display().to_string())?;
    require_data_area(path, &baked.data_dir)?;
    Ok(text)
}

fn require_data_area(config: &Path, data_dir: &Path) -> anyhow::Result<()> {
    if !data_dir.starts_with(DATA_MOUNT) {
        bail!(
            "config {}: data_dir {} is not under {DATA_MOUNT}, the appliance's persistent data area",
            config.display(),
            data_dir.display()
        );
    }
    Ok(())
}

/// Where a long build is: `stage` starts a step, `note` says something within it. The CLI
/// draws these as stage lines or a spinner; tests pass [`NoProgress`].
pub trait Progress {
    fn stage(&self, name: &str);
    fn note(&self, message: &str);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _: &str) {}
    fn note(&self, _: &str) {}
}

/// [`apt::fetch`] telling the progress whether the package comes from the cache.
fn fetch(progress: &dyn Progress, package: &str, cache: &Path) -> anyhow::Result<apt::Extracted> {
    if !apt::is_cached(package, cache) {
        progress.note(&format!("downloading {package}"));
    }
    let pkg = apt::fetch(package, cache)?;
    progress.note(&format!("{} {}", pkg.package, pkg.version));
    Ok(pkg)
}

pub fn build(req: &BuildRequest, progress: &dyn Progress) -> anyhow::Result<BuildReport> {
    progress.stage("checking the configuration");
    let config_text = validate_config(&req.appliance, &req.config)?;
    let profile = profile::load(&req.firmware_dir, &req.profile)?;
    let work = req.out_dir.join(format!(".work-{}", req.appliance));
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;

    progress.stage("fetching Debian packages (kernel, firmware, systemd-boot)");
    let kernel_pkg = fetch(
        progress,
        &apt::resolve(&profile.kernel_package)?,
        &req.cache_dir,
    )?;
    let (vmlinuz, kernel_version) = find_kernel(&kernel_pkg.root)?;
    let modules_dir = kernel_pkg.root.join("lib/modules").join(&kernel_version);
    let modules = kmod::resolve(&modules_dir, &profile.modules)?;

    let mut missing_firmware = vec![];
    let mut initramfs = Archive::default();
    for fw in &profile.firmware {
        match fetch(progress, &fw.package, &req.cache_dir) {
            Ok(pkg) => {
                let file = pkg.root.join("lib/firmware").join(&fw.path);
                match std::fs::read(&file) {
                    Ok(data) => initramfs.add(
                        &format!("lib/firmware/{}", fw.path),
                        Entry::File {
                            data,
                            executable: false,
                        },
                    ),
                    Err(_) => missing_firmware.push(format!("{} (not in {})", fw.path, fw.package)),
                }
            }
            Err(e) => missing_firmware.push(format!(
                "{} (package {} unavailable: {e:#}; enable Debian's non-free-firmware component)",
                fw.path, fw.package
            )),
        }
    }
    let microcode = match &profile.microcode_package {
        Some(pkg) => match fetch(progress, pkg, &req.cache_dir) {
            Ok(p) => Some(early_microcode(&p.root)?),
            Err(e) => {
                missing_firmware.push(format!(
                    "early microcode (package {pkg} unavailable: {e:#})"
                ));
                None
            }
        },
        None => None,
    };
    for m in &missing_firmware {
        tracing::warn!(firmware = %m, "firmware not included in the image");
    }
    let boot_pkg = fetch(progress, "systemd-boot-efi", &req.cache_dir)?;

    progress.stage("writing the initramfs (data area seed, modules, configuration)");

    let fs_uuid = uuid_text(&derive(&format!(
        "{}/{}/data-fs",
        req.appliance, profile.name
    )));
    let seed = seed::build(&work, &req.firmware_dir, &fs_uuid, req.epoch)?;
    let system = SystemConfig {
        appliance: req.appliance.clone(),
        version: req.version.clone(),
        hostname: req.appliance.clone(),
        modules: modules
            .iter()
            .map(|m| Module {
                name: m.name.clone(),
                path: format!("/lib/modules/{kernel_version}/{}", m.relative),
                params: m.params.clone(),
                optional: m.optional,
            })
            .collect(),
        sysctls: profile.sysctls.clone(),
        network: profile.network.clone(),
        data: DataArea {
            partition_name: DATA_PARTITION.into(),
            mountpoint: DATA_MOUNT.into(),
            seed: SEED_PATH.into(),
        },
    };
    let binary = std::fs::read(&req.binary)
        .with_context(|| format!("read the appliance binary {}", req.binary.display()))?;
    initramfs.add(
        "init",
        Entry::File {
            data: binary,
            executable: true,
        },
    );
    initramfs.add("dev/console", Entry::CharDevice { major: 5, minor: 1 });
    initramfs.add(
        pid1::system::SYSTEM_TOML,
        Entry::File {
            data: toml::to_string(&system)?.into_bytes(),
            executable: false,
        },
    );
    initramfs.add(
        pid1::system::APPLIANCE_TOML,
        Entry::File {
            data: config_text.into_bytes(),
            executable: false,
        },
    );
    initramfs.add(
        SEED_PATH,
        Entry::File {
            data: seed,
            executable: false,
        },
    );
    for m in &modules {
        let data = std::fs::read(&m.file)?;
        initramfs.add(
            &format!("lib/modules/{kernel_version}/{}", m.relative),
            Entry::File {
                data,
                executable: false,
            },
        );
    }
    let mut initrd = microcode.unwrap_or_default();
    initrd.extend(initramfs.write(req.epoch as u32));
    let initrd_path = work.join("initrd.cpio");
    std::fs::write(&initrd_path, &initrd)?;

    let os_release = format!(
        "ID=clickceler\nNAME=\"Clickceler {0}\"\nPRETTY_NAME=\"Clickceler {0} {1} ({2})\"\nVERSION_ID={1}\nIMAGE_ID={0}\nIMAGE_VERSION={1}\n",
        req.appliance, req.version, profile.name
    );
    let osrel_path = work.join("os-release");
    std::fs::write(&osrel_path, os_release)?;
    let cmdline_path = work.join("cmdline");
    std::fs::write(&cmdline_path, format!("{}\0", profile.cmdline))?;
    progress.stage("making the unified kernel image");
    let efi_dir = boot_pkg.root.join("usr/lib/systemd/boot/efi");
    let uki_path = req.out_dir.join(format!(
        "{}-{}-{}.efi",
        req.appliance, profile.name, req.version
    ));
    uki::build(
        &uki::UkiParts {
            stub: &efi_dir.join("linuxx64.efi.stub"),
            os_release: &osrel_path,
            cmdline: &cmdline_path,
            kernel: &vmlinuz,
            initrd: &initrd_path,
        },
        &uki_path,
    )?;
    progress.stage("writing the ESP and the GPT disk");
    let uki = std::fs::read(&uki_path)?;
    let systemd_boot = std::fs::read(efi_dir.join("systemd-bootx64.efi"))?;
    let identity = format!("{}/{}", req.appliance, profile.name);
    let volume_id = u32::from_le_bytes(derive(&format!("{identity}/esp-volume"))[..4].try_into()?);
    let esp = esp::build(
        ESP_BYTES,
        volume_id,
        &esp::EspContents {
            systemd_boot: &systemd_boot,
            uki_name: &format!(
                "{}-{}{}.efi",
                req.appliance,
                req.version,
                req.boot_tries.map(|n| format!("+{n}")).unwrap_or_default()
            ),
            uki: &uki,
        },
    )?;

    let stem = format!("{}-{}", req.appliance, profile.name);
    let raw = req.out_dir.join(format!("{stem}.raw"));
    disk::write(
        &raw,
        &disk::Layout {
            disk_bytes: req.disk_bytes,
            esp: &esp,
            data_name: DATA_PARTITION,
            identity: &identity,
        },
    )?;
    progress.stage("converting to qcow2");
    let qcow2 = req.out_dir.join(format!("{stem}.qcow2"));
    let _ = std::fs::remove_file(&qcow2);
    tool::run(
        std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow2),
    )
    .context("qemu-img (from qemu-utils) converting to qcow2")?;
    std::fs::remove_dir_all(&work).ok();
    progress.stage("checksums");
    Ok(BuildReport {
        raw_sha256: sha256_file(&raw)?,
        qcow2_sha256: sha256_file(&qcow2)?,
        qcow2_bytes: std::fs::metadata(&qcow2)?.len(),
        uki_bytes: uki.len() as u64,
        initramfs_bytes: initrd.len() as u64,
        raw,
        qcow2,
        uki: uki_path,
        kernel: format!("{} {}", kernel_pkg.package, kernel_pkg.version),
        modules: modules.iter().map(|m| m.name.clone()).collect(),
        missing_firmware,
    })
}

fn find_kernel(root: &Path) -> anyhow::Result<(PathBuf, String)> {
    for e in std::fs::read_dir(root.join("boot")).context("the kernel package has no /boot")? {
        let p = e?.path();
        if let Some(v) = p
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_prefix("vmlinuz-"))
        {
            return Ok((p.clone(), v.to_string()));
        }
    }
    bail!("no vmlinuz in {}", root.display())
}

/// Early microcode as the kernel wants it: an uncompressed cpio placed first in the initrd.
fn early_microcode(root: &Path) -> anyhow::Result<Vec<u8>> {
    let dir = root.join("lib/firmware/intel-ucode");
    let mut blob = vec![];
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("no {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        blob.extend(std::fs::read(f)?);
    }
    let mut a = Archive::default();
    a.add(
        "kernel/x86/microcode/GenuineIntel.bin",
        Entry::File {
            data: blob,
            executable: false,
        },
    );
    Ok(a.write(0))
}

fn derive(seed: &str) -> [u8; 32] {
    Sha256::digest(seed.as_bytes()).into()
}

fn uuid_text(b: &[u8; 32]) -> String {
    let h: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
