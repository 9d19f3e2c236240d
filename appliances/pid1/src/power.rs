//! How PID 1 ends: never by returning (the kernel would panic), always by syncing, unmounting
//! and asking the kernel to power off or reboot. Also where stop requests come from: signals
//! (SIGTERM, SIGPWR, SIGINT for Ctrl-Alt-Del) and the ACPI power button that Proxmox's
//! "Shutdown" and QEMU's `system_powerdown` press.

use std::fs::File;
use std::io::Read;

use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    PowerOff,
    Reboot,
}

/// Sync, unmount what we mounted, and leave. Never returns.
pub fn finish(stop: Stop, mounted: &[&str]) -> ! {
    nix::unistd::sync();
    for m in mounted {
        crate::mounts::unmount(m);
    }
    nix::unistd::sync();
    let mode = match stop {
        Stop::PowerOff => RebootMode::RB_POWER_OFF,
        Stop::Reboot => RebootMode::RB_AUTOBOOT,
    };
    tracing::info!(?stop, "system going down");
    let _ = reboot(mode);
    // reboot(2) only returns on error (no permission): there is nothing left to do but wait.
    loop {
        std::thread::park();
    }
}

/// Make Ctrl-Alt-Del a SIGINT to PID 1 instead of an immediate, unsynced reboot.
pub fn route_ctrl_alt_del() {
    if let Err(e) = set_cad_enabled(false) {
        tracing::warn!(error = %e, "cannot route Ctrl-Alt-Del to PID 1");
    }
}

/// Watch the ACPI power button (an evdev device named "Power Button") on a thread; `on_press`
/// runs once when it is pressed.
pub fn watch_power_button(on_press: impl FnOnce() + Send + 'static) {
    let Some(node) = find_power_button() else {
        tracing::info!("no ACPI power button device; shutdown by signal only");
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("power-button".into())
        .spawn(move || {
            let Ok(mut f) = File::open(&node) else { return };
            // struct input_event on 64-bit: timeval (16 bytes), type u16, code u16, value i32.
            let mut ev = [0u8; 24];
            while f.read_exact(&mut ev).is_ok() {
                let kind = u16::from_le_bytes([ev[16], ev[17]]);
                let code = u16::from_le_bytes([ev[18], ev[19]]);
                let value = i32::from_le_bytes([ev[20], ev[21], ev[22], ev[23]]);
                const EV_KEY: u16 = 1;
                const KEY_POWER: u16 = 116;
                if kind == EV_KEY && code == KEY_POWER && value == 1 {
                    on_press();
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the power button");
    }
}

fn find_power_button() -> Option<String> {
    let dir = std::fs::read_dir("/sys/class/input").ok()?;
    dir.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let label = std::fs::read_to_string(e.path().join("device/name")).ok()?;
        (name.starts_with("event") && label.trim() == "Power Button")
            .then(|| format!("/dev/input/{name}"))
    })
}
