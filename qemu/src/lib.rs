//! Booting appliance disk images under QEMU the way Proxmox runs them: q35, OVMF (UEFI, no
//! pre-enrolled keys), the disk on virtio-scsi, a virtio NIC with user-mode networking and
//! forwarded ports, the serial console captured to a file, an optional cloud-init drive on
//! SCSI. KVM is used only when asked: on this development machine only TCG boots Linux.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The disk image (qcow2 or raw); used in place (copy it first to keep a pristine one).
    pub disk: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    pub kvm: bool,
    /// (host port on 127.0.0.1, guest port).
    pub forwards: Vec<(u16, u16)>,
    /// A cloud-init NoCloud ISO, attached as a SCSI CD-ROM like Proxmox does.
    pub cidata: Option<PathBuf>,
    pub mac: String,
    /// SMBIOS system serial (`qm set --smbios1 serial=...`).
    pub serial_number: Option<String>,
    /// Let guest reboots happen (otherwise a reboot ends QEMU, which tests use to see it).
    pub allow_reboot: bool,
    /// Keep the serial console here (default: in the VM's temporary state directory).
    pub console_log: Option<PathBuf>,
    /// Run QEMU in its own process group, so that Ctrl-C reaches only the caller (which can
    /// then press the power button); QEMU is killed if the calling thread dies. Set only when
    /// the thread that boots the VM outlives it (a CLI's main thread).
    pub own_process_group: bool,
}

impl VmOptions {
    pub fn new(disk: impl Into<PathBuf>) -> VmOptions {
        VmOptions {
            disk: disk.into(),
            memory_mib: 1024,
            cpus: 2,
            kvm: false,
            forwards: vec![],
            cidata: None,
            mac: "52:54:00:12:34:56".into(),
            serial_number: None,
            allow_reboot: false,
            console_log: None,
            own_process_group: false,
        }
    }
}

/// A running VM. Dropping it kills QEMU.
pub struct Vm {
    child: Child,
    console: PathBuf,
    qmp: PathBuf,
    _state: tempfile::TempDir,
    pub started: Instant,
}

impl Vm {
    pub fn boot(opts: &VmOptions) -> anyhow::Result<Vm> {
        let state = tempfile::tempdir()?;
        // OVMF keeps its variables (boot entries, boot counting) in a per-VM copy.
        let vars = state.path().join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars)
            .with_context(|| format!("copy {OVMF_VARS} (install ovmf)"))?;
        let console = match &opts.console_log {
            Some(path) => {
                // QEMU appends to an existing file: start each boot's log afresh.
                let _ = std::fs::remove_file(path);
                path.clone()
            }
            None => state.path().join("console.log"),
        };
        let qmp = state.path().join("qmp.sock");
        let format = if opts.disk.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        let mut netdev = "user,id=n0".to_string();
        for (host, guest) in &opts.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine",
            if opts.kvm {
                "q35,accel=kvm"
            } else {
                "q35,accel=tcg"
            },
        ])
        .args([
            "-m",
            &opts.memory_mib.to_string(),
            "-smp",
            &opts.cpus.to_string(),
        ])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .args(["-device", "virtio-scsi-pci,id=scsi0"])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=d0,format={format},cache=unsafe",
            opts.disk.display()
        ))
        .args(["-device", "scsi-hd,drive=d0,bus=scsi0.0,bootindex=1"])
        .args(["-netdev", &netdev])
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={}", opts.mac))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if let Some(iso) = &opts.cidata {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},if=none,id=ci,media=cdrom,readonly=on",
                    iso.display()
                ))
                .args(["-device", "scsi-cd,drive=ci,bus=scsi0.0"]);
        }
        if !opts.allow_reboot {
            cmd.arg("-no-reboot");
        }
        if let Some(serial) = &opts.serial_number {
            cmd.arg("-smbios").arg(format!("type=1,serial={serial}"));
        }
        if opts.own_process_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start qemu-system-x86_64 (install qemu-system-x86)")?;
        Ok(Vm {
            child,
            console,
            qmp,
            _state: state,
            started: Instant::now(),
        })
    }

    /// Everything the guest printed on its serial console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Wait until the console shows `needle`; fails early if QEMU exits.
    pub fn wait_for_console(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(needle) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({status}) before the console showed {needle:?}:\n{}",
                    self.console_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "console did not show {needle:?} within {timeout:?}:\n{}",
                    self.console_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until `GET path` on a forwarded host port answers 200.
    pub fn wait_for_http(
        &mut self,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if http_ok(port, path) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({status}) before {path} answered:\n{}",
                    self.console_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{path} on port {port} did not answer within {timeout:?}:\n{}",
                    self.console_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether QEMU has exited (the guest powered off, or QEMU failed).
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Where the serial console is being written.
    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// What QEMU printed on its stderr (after it exited).
    pub fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut out = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut out);
        }
        out
    }

    /// Wait for QEMU to exit by itself (the guest powered off).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the guest did not power off within {timeout:?}:\n{}",
                    self.console_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Press the ACPI power button (what Proxmox's Shutdown does): the guest should stop its
    /// appliance cleanly and power off.
    pub fn press_power_button(&self) -> anyhow::Result<()> {
        use std::io::{BufRead, BufReader, Write};
        let sock = std::os::unix::net::UnixStream::connect(&self.qmp).context("connect to QMP")?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(sock.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?; // greeting
        let mut w = sock;
        for cmd in [
            r#"{"execute":"qmp_capabilities"}"#,
            r#"{"execute":"system_powerdown"}"#,
        ] {
            w.write_all(cmd.as_bytes())?;
            w.write_all(b"\n")?;
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                if line.contains("\"return\"") || line.contains("\"error\"") || line.is_empty() {
                    break;
                }
            }
            anyhow::ensure!(!line.contains("\"error\""), "QMP refused {cmd}: {line}");
        }
        Ok(())
    }

    /// Kill QEMU: from the guest's view, a power cut.
    pub fn power_cut(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn console_tail(&self) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200"
}

/// A NoCloud drive as Proxmox makes it: ISO9660 labelled `cidata` (made with genisoimage).
pub fn cloud_init_iso(
    out: &Path,
    meta_data: &str,
    user_data: &str,
    network_config: Option<&str>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("meta-data"), meta_data)?;
    std::fs::write(dir.path().join("user-data"), user_data)?;
    let mut files = vec!["meta-data", "user-data"];
    if let Some(n) = network_config {
        std::fs::write(dir.path().join("network-config"), n)?;
        files.push("network-config");
    }
    let status = Command::new("genisoimage")
        .current_dir(dir.path())
        .args(["-quiet", "-output"])
        .arg(out)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .args(&files)
        .status()
        .context("run genisoimage (install genisoimage)")?;
    anyhow::ensure!(status.success(), "genisoimage failed");
    Ok(())
}

/// A free TCP port on 127.0.0.1 for a forward.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
