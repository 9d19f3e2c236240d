//! Kernel modules for the initramfs: find each one the profile names in the extracted kernel
//! package, add its dependencies (read from the module's own `.modinfo` section, as depmod
//! does), and order them so every module comes after what it depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use object::{Object, ObjectSection};

use crate::profile::ModuleSpec;

/// A module file to ship and load.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub file: PathBuf,
    /// Path relative to `/lib/modules/<version>/`.
    pub relative: String,
    pub params: String,
    pub optional: bool,
}

/// Canonical module name: the kernel treats `-` and `_` alike.
fn canon(name: &str) -> String {
    name.replace('-', "_")
}

/// Resolve the profile's modules against `modules_dir` (`.../lib/modules/<version>`).
/// Modules built into the kernel are skipped; a missing required module fails the build.
pub fn resolve(modules_dir: &Path, wanted: &[ModuleSpec]) -> anyhow::Result<Vec<Resolved>> {
    let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin
        .lines()
        .filter_map(|l| Path::new(l).file_stem()?.to_str().map(canon))
        .collect();
    let mut files = BTreeMap::new();
    index(&modules_dir.join("kernel"), modules_dir, &mut files)?;

    let mut order: Vec<Resolved> = vec![];
    let mut seen = BTreeSet::new();
    for spec in wanted {
        let name = canon(&spec.name);
        if builtin.contains(&name) {
            continue;
        }
        if !files.contains_key(&name) {
            if spec.optional {
                tracing::warn!(module = %spec.name, "optional module not in this kernel");
                continue;
            }
            bail!(
                "module {} is neither built into this kernel nor shipped with it",
                spec.name
            );
        }
        visit(
            &name,
            spec,
            &files,
            &builtin,
            &mut seen,
            &mut vec![],
            &mut order,
        )?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    spec: &ModuleSpec,
    files: &BTreeMap<String, (PathBuf, String)>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    path: &mut Vec<String>,
    order: &mut Vec<Resolved>,
) -> anyhow::Result<()> {
    if seen.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    if path.iter().any(|p| p == name) {
        bail!("module dependency cycle: {} -> {name}", path.join(" -> "));
    }
    let (file, relative) = files
        .get(name)
        .with_context(|| format!("module {name} (needed by {}) not found", path.join(" -> ")))?;
    path.push(name.to_string());
    for dep in depends(file)? {
        // Dependencies inherit optionality but never the parameters of the module asking.
        let dep_spec = ModuleSpec {
            name: dep.clone(),
            params: String::new(),
            optional: spec.optional,
        };
        visit(&canon(&dep), &dep_spec, files, builtin, seen, path, order)?;
    }
    path.pop();
    seen.insert(name.to_string());
    order.push(Resolved {
        name: name.to_string(),
        file: file.clone(),
        relative: relative.clone(),
        params: if canon(&spec.name) == name {
            spec.params.clone()
        } else {
            String::new()
        },
        optional: spec.optional,
    });
    Ok(())
}

fn index(
    dir: &Path,
    base: &Path,
    out: &mut BTreeMap<String, (PathBuf, String)>,
) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            index(&p, base, out)?;
        } else if let Some(stem) = p
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".ko"))
        {
            let rel = p
                .strip_prefix(base)
                .expect("under base")
                .to_string_lossy()
                .into_owned();
            out.insert(canon(stem), (p.clone(), rel));
        }
    }
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` section.
fn depends(file: &Path) -> anyhow::Result<Vec<String>> {
    let data = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let elf =
        object::File::parse(&*data).with_context(|| format!("{} is not ELF", file.display()))?;
    let Some(section) = elf.section_by_name(".modinfo") else {
        return Ok(vec![]);
    };
    let info = section.data()?;
    Ok(info
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.strip_prefix("depends="))
        .flat_map(|d| d.split(',').filter(|s| !s.is_empty()).map(String::from))
        .collect())
}
