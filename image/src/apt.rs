//! Fetching Debian packages without installing them: `apt-get download` into a cache
//! directory and `dpkg-deb -x` into a folder. No root, nothing touches the host system.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::tool::run;

/// A package's files, extracted.
pub struct Extracted {
    pub package: String,
    pub version: String,
    pub root: PathBuf,
}

/// Follow a meta-package (`linux-image-cloud-amd64`) to the versioned package it depends on
/// (`linux-image-6.1.0-56-cloud-amd64`); a regular package resolves to itself.
pub fn resolve(package: &str) -> anyhow::Result<String> {
    let out = run(Command::new("apt-cache").args(["depends", "--important", package]))?;
    let versioned = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| {
            d.starts_with("linux-image-") && d.chars().nth(12).is_some_and(|c| c.is_ascii_digit())
        });
    Ok(versioned.unwrap_or(package).to_string())
}

/// Whether [`fetch`] would find `package` in the cache (no download).
pub fn is_cached(package: &str, cache: &Path) -> bool {
    find_deb(&cache.join("debs"), package).is_ok_and(|d| d.is_some())
}

/// Download (once, cached) and extract a package. Returns its version too.
pub fn fetch(package: &str, cache: &Path) -> anyhow::Result<Extracted> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("create {}", debs.display()))?;
    let deb = match find_deb(&debs, package)? {
        Some(d) => d,
        None => {
            run(Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(&debs))
            .with_context(|| format!("download the Debian package {package}"))?;
            find_deb(&debs, package)?
                .with_context(|| format!("apt-get download {package} left no .deb"))?
        }
    };
    let file = deb
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default()
        .to_string();
    let version = file
        .split('_')
        .nth(1)
        .unwrap_or("unknown")
        .replace("%3a", ":");
    let root = cache.join("extracted").join(file.trim_end_matches(".deb"));
    if !root.join(".complete").exists() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
            .with_context(|| format!("extract {}", deb.display()))?;
        std::fs::write(root.join(".complete"), b"")?;
    }
    Ok(Extracted {
        package: package.to_string(),
        version,
        root,
    })
}

fn find_deb(dir: &Path, package: &str) -> anyhow::Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".deb"))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}
