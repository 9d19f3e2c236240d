//! A small disk of its own for an appliance under test (a tmpfs on its data directory), so
//! that a test can fill it. Mounting needs root; without it the test says so and is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mount a `mib` MiB tmpfs on `path` (created if missing); `None` without root.
    pub fn mount(path: &Path, mib: u64) -> Option<SmallDisk> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a small disk for the appliance needs root");
            return None;
        }
        std::fs::create_dir_all(path).expect("mount point");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path));
        Some(SmallDisk {
            path: path.to_owned(),
        })
    }

    /// Resize it to `mib` MiB, keeping what it holds (a disk grown by the operator).
    pub fn resize(&self, mib: u64) {
        run(Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.path));
    }
}

fn run(c: &mut Command) {
    let status = c.status().expect("run mount");
    assert!(status.success(), "{c:?}: {status}");
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}
