//! `clk vm boot`: boot an appliance image under QEMU the way Proxmox would, with the serial
//! console on stdout, until the guest powers off (or Ctrl-C).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Args)]
pub struct BootArgs {
    /// Disk image (qcow2 or raw). Used in place: copy it to keep a pristine one.
    disk: PathBuf,
    /// Forward a host port on 127.0.0.1 to a guest port: HOST:GUEST (repeatable).
    #[arg(long = "forward", value_parser = parse_forward)]
    forwards: Vec<(u16, u16)>,
    /// A cloud-init NoCloud ISO (volume label cidata).
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
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s.split_once(':').ok_or("expected HOST:GUEST")?;
    Ok((
        h.parse().map_err(|_| "bad host port")?,
        g.parse().map_err(|_| "bad guest port")?,
    ))
}

pub fn boot(a: BootArgs) -> anyhow::Result<()> {
    let mut opts = clk_qemu::VmOptions::new(a.disk);
    opts.forwards = a.forwards;
    opts.cidata = a.cidata;
    opts.serial_number = a.serial;
    opts.memory_mib = a.memory_mib;
    opts.cpus = a.cpus;
    opts.kvm = a.kvm;
    opts.allow_reboot = true;
    let mut vm = clk_qemu::Vm::boot(&opts)?;
    let mut shown = 0;
    loop {
        let console = vm.console();
        if console.len() > shown {
            std::io::stdout().write_all(&console.as_bytes()[shown..])?;
            std::io::stdout().flush()?;
            shown = console.len();
        }
        if vm.wait_for_exit(Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
    }
}
