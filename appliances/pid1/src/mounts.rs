//! The file systems PID 1 mounts before anything else, and unmounting at shutdown.

use std::path::Path;

use anyhow::Context;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// devtmpfs first (so /dev/console and /dev/kmsg exist), then the kernel's views and tmpfs.
/// efivarfs is optional: it exists only when booted through UEFI and its module loaded.
pub fn mount_early() -> anyhow::Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 5] = [
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        ("proc", "/proc", "proc", nodev, None),
        ("sysfs", "/sys", "sysfs", nodev, None),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (source, target, fstype, flags, data) in table {
        mount_at(source, target, fstype, flags, data)?;
    }
    Ok(())
}

pub fn mount_efivarfs() -> anyhow::Result<()> {
    let dir = "/sys/firmware/efi/efivars";
    if !Path::new(dir).exists() {
        anyhow::bail!("not booted through UEFI (no {dir})");
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount(Some("efivarfs"), dir, Some("efivarfs"), flags, None::<&str>)
        .with_context(|| format!("mount efivarfs on {dir}"))
}

pub fn mount_at(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("create {target}"))?;
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        // Already mounted (the kernel may have mounted devtmpfs itself).
        Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mount {fstype} {source} on {target}")),
    }
}

/// Unmount `target`, falling back to a lazy unmount so shutdown never hangs on a busy mount.
pub fn unmount(target: &str) {
    if let Err(e) = umount2(target, MntFlags::empty()) {
        tracing::warn!(target, error = %e, "unmount failed; detaching lazily");
        let _ = umount2(target, MntFlags::MNT_DETACH);
    }
}
