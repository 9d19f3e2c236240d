//! Running the build host's tools (apt-get, dpkg-deb, objcopy, mke2fs, qemu-img) with their
//! failure reported as one error naming the tool and what it printed.

use std::process::Command;

use anyhow::{Context, bail};

pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("run {:?} (is it installed?)", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
