//! `clk vm boot`: boot an appliance image under QEMU the way Proxmox would, show its progress
//! until the appliance is ready, and keep it running until the guest powers off. Ctrl-C presses
//! the ACPI power button (the appliance stops cleanly); a second Ctrl-C kills QEMU.
//!
//! Per-VM settings reach the guest as Proxmox gives them, on a cloud-init NoCloud drive: either
//! one the operator made (`--cidata`), or one clk writes from `--hostname` and `--set`
//! (`--set kafka.advertised=127.0.0.1:19092` lets a client on the host reach a broker through a
//! forwarded port: the broker must advertise the host's side of the forward).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::progress::Stages;

#[derive(Args)]
pub struct BootArgs {
    /// Disk image (qcow2 or raw). Used in place: copy it to keep a pristine one.
    disk: PathBuf,
    /// Forward a host port on 127.0.0.1 to a guest port: HOST:GUEST (repeatable).
    #[arg(long = "forward", value_parser = parse_forward)]
    forwards: Vec<(u16, u16)>,
    /// Set KEY (dotted, as in the appliance's TOML) to VALUE in this VM's configuration, through
    /// cloud-init's `clk_config` overlay; repeatable. VALUE is TOML (a number, true, [..]) or
    /// else a string. Example: `--set kafka.advertised=127.0.0.1:19092`.
    #[arg(long = "set", value_parser = parse_setting, conflicts_with = "cidata")]
    settings: Vec<(String, toml::Value)>,
    /// The VM's host name (through cloud-init).
    #[arg(long, conflicts_with = "cidata")]
    hostname: Option<String>,
    /// A cloud-init NoCloud ISO of your own (volume label cidata).
    #[arg(long)]
    cidata: Option<PathBuf>,
    /// SMBIOS serial number (node identity).
    #[arg(long)]
    serial: Option<String>,
    #[arg(long, default_value_t = 2048)]
    memory_mib: u32,
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Use KVM (does not boot Linux guests on every development machine; TCG is the default).
    #[arg(long)]
    kvm: bool,
    /// Stream the serial console to stdout (it always goes to `<disk>.console.log`).
    #[arg(long)]
    console: bool,
    /// No progress lines; print one JSON line once the appliance is ready.
    #[arg(long)]
    json: bool,
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s.split_once(':').ok_or("expected HOST:GUEST")?;
    Ok((
        h.parse().map_err(|_| "bad host port")?,
        g.parse().map_err(|_| "bad guest port")?,
    ))
}

/// `a.b=v`: the value as TOML if it parses as a TOML value, else as a string (so addresses
/// and names need no quotes on the command line).
fn parse_setting(s: &str) -> Result<(String, toml::Value), String> {
    let (key, value) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!("bad key {key:?}: expected names joined by dots"));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// The `clk_config` overlay for `settings`, as TOML.
fn overlay_toml(settings: &[(String, toml::Value)]) -> anyhow::Result<String> {
    let mut root = toml::Table::new();
    for (key, value) in settings {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("validated: at least one part");
        let mut table = &mut root;
        for p in parts {
            table = table
                .entry(p)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .with_context(|| format!("--set {key}: {p} is already a value"))?;
        }
        table.insert(last.to_string(), value.clone());
    }
    Ok(toml::to_string(&root)?)
}

/// The NoCloud user-data carrying a host name and a `clk_config` overlay.
fn user_data(hostname: Option<&str>, overlay: &str) -> String {
    let mut text = String::from("#cloud-config\n");
    if let Some(h) = hostname {
        text.push_str(&format!("hostname: {h}\n"));
    }
    if !overlay.trim().is_empty() {
        text.push_str("clk_config: |\n");
        for line in overlay.lines() {
            text.push_str(&format!("  {line}\n"));
        }
    }
    text
}

/// Console lines that mark how far the boot got, in order.
const MILESTONES: &[(&str, &str)] = &[
    (
        "BdsDxe",
        "firmware: loading systemd-boot and the kernel image",
    ),
    (
        "clk-init starting",
        "PID 1: modules, cloud-init, network, data area",
    ),
    ("appliance ready", "appliance ready"),
];

pub async fn boot(a: BootArgs) -> anyhow::Result<()> {
    let stages = if a.console {
        Stages::lines(a.json)
    } else {
        Stages::new(a.json)
    };
    let state = tempfile::tempdir()?;
    let cidata = match (&a.cidata, a.settings.is_empty() && a.hostname.is_none()) {
        (Some(iso), _) => Some(iso.clone()),
        (None, true) => None,
        (None, false) => {
            let iso = state.path().join("cidata.iso");
            let stem = a.disk.file_stem().and_then(|s| s.to_str()).unwrap_or("vm");
            let overlay = overlay_toml(&a.settings)?;
            clk_qemu::cloud_init_iso(
                &iso,
                &format!("instance-id: clk-vm-{stem}\n"),
                &user_data(a.hostname.as_deref(), &overlay),
                None,
            )?;
            for line in overlay.lines().filter(|l| !l.is_empty()) {
                stages.note(&format!("cloud-init clk_config: {line}"));
            }
            Some(iso)
        }
    };
    let mut opts = clk_qemu::VmOptions::new(&a.disk);
    opts.forwards = a.forwards.clone();
    opts.cidata = cidata;
    opts.serial_number = a.serial.clone();
    opts.memory_mib = a.memory_mib;
    opts.cpus = a.cpus;
    opts.kvm = a.kvm;
    opts.allow_reboot = true;
    opts.own_process_group = true;
    let log = PathBuf::from(format!("{}.console.log", a.disk.display()));
    opts.console_log = Some(log.clone());
    stages.stage(&format!(
        "starting QEMU ({}, console in {})",
        if a.kvm { "KVM" } else { "TCG" },
        log.display()
    ));
    let mut vm = clk_qemu::Vm::boot(&opts)?;
    watch(&mut vm, &a, &stages).await
}

/// Follow the console until the guest powers off: milestones as stages, the console itself on
/// stdout with `--console`; Ctrl-C presses the power button, a second one kills QEMU.
async fn watch(vm: &mut clk_qemu::Vm, a: &BootArgs, stages: &Stages) -> anyhow::Result<()> {
    let mut shown = 0;
    let mut reached = 0;
    let mut power_pressed = false;
    loop {
        let console = vm.console();
        if a.console && console.len() > shown {
            std::io::stdout().write_all(&console.as_bytes()[shown..])?;
            std::io::stdout().flush()?;
        }
        shown = console.len();
        // The furthest milestone on the console (a firmware may print nothing of its own).
        let furthest = MILESTONES
            .iter()
            .rposition(|(needle, _)| console.contains(needle))
            .map_or(0, |i| i + 1);
        for (_, name) in MILESTONES.iter().take(furthest).skip(reached) {
            if *name == "appliance ready" {
                announce_ready(a, stages);
            } else {
                stages.stage(name);
            }
        }
        reached = reached.max(furthest);
        if let Some(fatal) = console.lines().find(|l| l.contains("clk-init: FATAL")) {
            stages.note(fatal);
        }
        if let Some(status) = vm.exited()? {
            let stderr = vm.stderr();
            stages.finish(&format!("QEMU exited ({status}): the guest powered off"));
            anyhow::ensure!(
                status.success(),
                "QEMU failed ({status}): {}",
                stderr.trim()
            );
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::signal::ctrl_c() => {
                if power_pressed {
                    stages.finish("killed QEMU");
                    return Ok(());
                }
                vm.press_power_button().context("pressing the power button")?;
                power_pressed = true;
                stages.stage("power button pressed: the appliance stops cleanly (Ctrl-C again kills QEMU)");
            }
        }
    }
}

fn announce_ready(a: &BootArgs, stages: &Stages) {
    if a.json {
        let forwards: Vec<String> = a
            .forwards
            .iter()
            .map(|(h, g)| format!("127.0.0.1:{h}->{g}"))
            .collect();
        println!(
            "{}",
            serde_json::json!({"ready": true, "forwards": forwards, "disk": a.disk})
        );
        return;
    }
    stages.stage("appliance ready; Ctrl-C presses the power button");
    for (h, g) in &a.forwards {
        stages.note(&format!("127.0.0.1:{h} -> guest port {g}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_a_clk_config_overlay() {
        let s = vec![
            parse_setting("kafka.advertised=127.0.0.1:19092").unwrap(),
            parse_setting("node_id=3").unwrap(),
            parse_setting("topics.auto_create=false").unwrap(),
        ];
        let overlay = overlay_toml(&s).unwrap();
        let t: toml::Table = toml::from_str(&overlay).unwrap();
        assert_eq!(t["kafka"]["advertised"].as_str(), Some("127.0.0.1:19092"));
        assert_eq!(t["node_id"].as_integer(), Some(3));
        assert_eq!(t["topics"]["auto_create"].as_bool(), Some(false));
        let ud = user_data(Some("broker-a1"), &overlay);
        let mut ci = pid1::cloudinit::CloudInit::default();
        pid1::cloudinit::apply_user_data(&mut ci, &ud).unwrap();
        assert_eq!(ci.hostname.as_deref(), Some("broker-a1"));
        let back: toml::Table = toml::from_str(ci.appliance_config.as_deref().unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(parse_setting("novalue").is_err());
        assert!(parse_setting("a..b=1").is_err());
        let clash = vec![
            parse_setting("a=1").unwrap(),
            parse_setting("a.b=2").unwrap(),
        ];
        assert!(overlay_toml(&clash).is_err());
    }
}
