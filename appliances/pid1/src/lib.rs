//! The PID-1 runtime every appliance image links: the appliance binary is `/init`, and
//! [`boot`] turns a bare kernel into a running appliance and back into a clean power-off.
//!
//! Boot, in order: mount devtmpfs/proc/sys/tmpfs; read `/etc/clk/system.toml`; load kernel
//! modules with their parameters; apply sysctls; read the cloud-init drive; set the host name;
//! arm the hardware watchdog; configure the network and pin NIC interrupts to their NUMA node;
//! prepare and mount the data area; merge the per-VM configuration over
//! the baked one; start the appliance; once it is ready, mark the boot good; then wait for a
//! stop request and shut down in reverse. Every failure before the appliance runs prints ONE
//! line naming what failed and powers off: PID 1 never exits (that is a kernel panic).

pub mod bootcount;
pub mod cloudinit;
pub mod datadisk;
pub mod devices;
pub mod dhcp;
pub mod identity;
pub mod irq;
pub mod manifest;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod overlay;
pub mod power;
pub mod sysctl;
pub mod system;
pub mod watchdog;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use nix::mount::MsFlags;
use tokio::signal::unix::{SignalKind, signal};

pub use manifest::{BakedConfig, Manifest, Port};
use power::Stop;
use system::SystemConfig;

/// What the runtime hands the appliance.
#[derive(Debug, Clone)]
pub struct BootContext {
    pub hostname: String,
    /// SMBIOS serial number, when the hypervisor set one.
    pub serial: Option<String>,
    /// The appliance configuration: baked TOML with the cloud-init overlay merged.
    pub config_text: String,
    /// Names the configuration's origin in error messages.
    pub config_origin: String,
    /// Mount point of the persistent data area.
    pub data_dir: PathBuf,
}

/// An appliance as PID 1 runs it.
#[allow(async_fn_in_trait)]
pub trait Appliance {
    /// Parse the configuration and start serving; return once ready (recovery done,
    /// listeners bound). An error here powers the machine off with the error on the console.
    async fn start(&mut self, ctx: &BootContext) -> anyhow::Result<()>;
    /// Stop cleanly: flush and persist everything.
    async fn stop(&mut self) -> anyhow::Result<()>;
}

/// An appliance that is one long-running service (every appliance so far): started from its
/// configuration, stopped through the handle the start returned.
#[allow(async_fn_in_trait)]
pub trait Service: Sized {
    type Config: serde::de::DeserializeOwned + appconfig::Validate;
    /// Created before the start (it lives in the data area, which may be blank).
    fn data_dir(config: &Self::Config) -> &std::path::Path;
    /// Start serving; return once ready.
    async fn start(config: Self::Config) -> anyhow::Result<Self>;
    /// Stop cleanly: flush and persist everything.
    async fn stop(self) -> anyhow::Result<()>;
}

/// The [`Appliance`] of a [`Service`]: parses and validates the boot configuration (a
/// mistake stops the boot with the file and line), creates the data directory, runs it.
pub struct ServiceAppliance<S>(Option<S>);

impl<S> Default for ServiceAppliance<S> {
    fn default() -> Self {
        ServiceAppliance(None)
    }
}

impl<S: Service> Appliance for ServiceAppliance<S> {
    async fn start(&mut self, ctx: &BootContext) -> anyhow::Result<()> {
        let config: S::Config = appconfig::parse_str(&ctx.config_text, &ctx.config_origin)?;
        let dir = S::data_dir(&config);
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        self.0 = Some(S::start(config).await?);
        Ok(())
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        match self.0.take() {
            Some(service) => service.stop().await,
            None => Ok(()),
        }
    }
}

/// The ESP's GPT partition name (the builder's and the blessing code's agreement).
pub const ESP_PARTITION_NAME: &str = "ESP";
const CIDATA_MOUNT: &str = "/run/cidata";

/// Run the machine. Never returns.
pub fn boot(mut appliance: impl Appliance) -> ! {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("clk-init: FATAL: panic: {info}");
        power::finish(Stop::PowerOff, &[]);
    }));
    if let Err(e) = mounts::mount_early() {
        fatal(&e.context("early mounts"));
    }
    telemetry::init_logging(telemetry::LogFormat::Json, "info");
    let system: SystemConfig = match appconfig::load_file(std::path::Path::new(system::SYSTEM_TOML))
    {
        Ok(s) => s,
        Err(e) => fatal(&anyhow::Error::new(e)),
    };
    tracing::info!(appliance = %system.appliance, version = %system.version, "clk-init starting");
    power::route_ctrl_alt_del();

    // EFI variables first: whether this boot is on trial decides what a failure does (see
    // `fatal`), and any later step, module loading included, can fail.
    let (efi, rest): (Vec<_>, Vec<_>) = system
        .modules
        .iter()
        .cloned()
        .partition(|m| m.name == "efivarfs");
    if let Err(e) = modules::load_all(&efi)
        .map_err(anyhow::Error::new)
        .and_then(|_| mounts::mount_efivarfs())
    {
        tracing::info!(reason = %e, "EFI variables unavailable; boot assessment off");
    }
    match modules::load_all(&rest) {
        Ok(n) => tracing::info!(loaded = n + efi.len(), "kernel modules loaded"),
        Err(e) => fatal(&anyhow::Error::new(e)),
    }
    let failed = sysctl::apply(&system.sysctls);
    tracing::info!(
        applied = system.sysctls.len() - failed,
        failed,
        "sysctls applied"
    );

    let ci = match read_cloud_init() {
        Ok(ci) => ci,
        Err(e) => fatal(&e),
    };
    if let Err(e) = cloudinit::write_files(&ci.files, std::path::Path::new("/")) {
        fatal(&anyhow::Error::new(e).context("writing cloud-init's write_files"));
    }
    if !ci.files.is_empty() {
        tracing::info!(
            files = ci.files.len(),
            "cloud-init files written under /config"
        );
    }
    let serial = identity::smbios_serial();
    let hostname =
        identity::choose_hostname(ci.hostname.as_deref(), serial.as_deref(), &system.hostname);
    identity::set_hostname(&hostname);
    if !ci.nameservers.is_empty() {
        identity::write_resolv_conf(&ci.nameservers, &ci.search);
    }
    tracing::info!(%hostname, serial = ?serial, instance_id = ?ci.instance_id, "identity");

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(&anyhow::Error::new(e).context("start the async runtime")),
    };
    let stop = runtime.block_on(async {
        let watchdog = watchdog::Watchdog::arm().map(|w| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (tx, tokio::spawn(w.feed_until(rx)))
        });
        match net::configure(&ci, &system.network).await {
            Ok(links) => {
                for (link, _) in &links {
                    irq::pin_nic_irqs(&link.name);
                }
            }
            Err(e) => fatal(&e.context("network")),
        }
        match datadisk::prepare(&system.data) {
            Ok(r) => tracing::info!(device = %r.device, partition_grown_to = ?r.partition_grown_to,
                formatted = r.formatted, fs_grown_to_blocks = ?r.fs_grown_to_blocks, "data area ready"),
            Err(e) => fatal(&e.context("data area")),
        }
        let ctx = match appliance_context(&system, &ci, hostname, serial) {
            Ok(ctx) => ctx,
            Err(e) => fatal(&e),
        };
        let mut stops = match StopRequests::install() {
            Ok(s) => s,
            Err(e) => fatal(&e),
        };
        if let Err(e) = appliance.start(&ctx).await {
            fatal(&e.context(format!("{} did not start", system.appliance)));
        }
        tracing::info!(appliance = %system.appliance, "appliance ready");
        match tokio::task::spawn_blocking(|| bootcount::bless(ESP_PARTITION_NAME)).await {
            Ok(Ok(b)) => tracing::info!(blessing = ?b, "boot assessed good"),
            Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "cannot mark the boot good"),
            Err(e) => tracing::error!(error = %e, "boot blessing task failed"),
        }
        let stop = stops.next().await;
        tracing::info!(?stop, "stop requested");
        if let Err(e) = appliance.stop().await {
            tracing::error!(error = format!("{e:#}"), "appliance did not stop cleanly");
        }
        if let Some((tx, feeder)) = watchdog {
            let _ = tx.send(());
            let _ = feeder.await;
        }
        stop
    });
    drop(runtime);
    let data = system.data.mountpoint.clone();
    power::finish(stop, &[&data]);
}

/// One line on the console naming what failed, then the defined outcome: a counted boot (an
/// upgrade on trial) reboots, so the boot manager counts the failure and rolls back once the
/// tries are spent; any other boot powers off rather than fail again in a loop.
fn fatal(e: &anyhow::Error) -> ! {
    let stop = if bootcount::booted_with_counter() {
        Stop::Reboot
    } else {
        Stop::PowerOff
    };
    let outcome = match stop {
        Stop::Reboot => "rebooting: this image is on trial and the boot manager will fall back",
        Stop::PowerOff => "powering off",
    };
    // Plain stderr as well as tracing: logging may not be set up yet.
    eprintln!("clk-init: FATAL: {e:#}");
    tracing::error!(error = format!("{e:#}"), "cannot continue; {outcome}");
    std::thread::sleep(Duration::from_millis(200));
    power::finish(stop, &[]);
}

/// Find and read the cloud-init drive. No drive is normal (not every VM has one); a drive
/// whose files are malformed is an error.
fn read_cloud_init() -> anyhow::Result<cloudinit::CloudInit> {
    // The CD-ROM driver probes asynchronously after its module loads.
    let Some(dev) = devices::wait_for(Duration::from_secs(3), || devices::find_iso9660("cidata"))
    else {
        tracing::info!("no cloud-init drive (ISO9660 labelled cidata); using the image's defaults");
        return Ok(Default::default());
    };
    mounts::mount_at(
        &dev.node.to_string_lossy(),
        CIDATA_MOUNT,
        "iso9660",
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    let result = cloudinit::read_dir(std::path::Path::new(CIDATA_MOUNT));
    mounts::unmount(CIDATA_MOUNT);
    let ci = result?;
    tracing::info!(device = %dev.node.display(), interfaces = ci.interfaces.len(),
        overlay = ci.appliance_config.is_some(), "cloud-init drive read");
    Ok(ci)
}

fn appliance_context(
    system: &SystemConfig,
    ci: &cloudinit::CloudInit,
    hostname: String,
    serial: Option<String>,
) -> anyhow::Result<BootContext> {
    let baked = std::fs::read_to_string(system::APPLIANCE_TOML)
        .with_context(|| format!("read {}", system::APPLIANCE_TOML))?;
    let (config_text, config_origin) = match &ci.appliance_config {
        Some(overlay) => (
            overlay::merge(&baked, overlay).map_err(anyhow::Error::msg)?,
            format!("{} + cloud-init clk_config", system::APPLIANCE_TOML),
        ),
        None => (baked, system::APPLIANCE_TOML.to_string()),
    };
    Ok(BootContext {
        hostname,
        serial,
        config_text,
        config_origin,
        data_dir: PathBuf::from(&system.data.mountpoint),
    })
}

/// Every way a stop can be asked for, as one stream.
struct StopRequests {
    term: tokio::signal::unix::Signal,
    pwr: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    button: tokio::sync::mpsc::UnboundedReceiver<()>,
    _reaper: tokio::task::JoinHandle<()>,
}

impl StopRequests {
    fn install() -> anyhow::Result<StopRequests> {
        let (tx, button) = tokio::sync::mpsc::unbounded_channel();
        power::watch_power_button(move || {
            let _ = tx.send(());
        });
        let mut chld = signal(SignalKind::child()).context("SIGCHLD handler")?;
        let reaper = tokio::spawn(async move {
            // Orphans re-parent to PID 1; collect them so they do not linger as zombies.
            while chld.recv().await.is_some() {
                use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if status == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
        });
        Ok(StopRequests {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            pwr: signal(SignalKind::from_raw(nix::libc::SIGPWR)).context("SIGPWR handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            button,
            _reaper: reaper,
        })
    }

    async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::PowerOff,
            _ = self.pwr.recv() => Stop::PowerOff,
            _ = self.button.recv() => Stop::PowerOff,
            _ = self.int.recv() => Stop::Reboot,
        }
    }
}
