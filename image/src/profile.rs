//! Hardware profiles (`firmware/profiles/<name>.toml`): which kernel, which modules with which
//! parameters, firmware blobs, command line, sysctls and per-interface MTUs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Debian package (or meta-package) providing the kernel.
    pub kernel_package: String,
    pub cmdline: String,
    pub modules: Vec<ModuleSpec>,
    #[serde(default)]
    pub firmware: Vec<FirmwareSpec>,
    /// Debian package with early microcode, when the hardware wants it.
    pub microcode_package: Option<String>,
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default)]
    pub network: pid1::system::Network,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    pub name: String,
    #[serde(default)]
    pub params: String,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareSpec {
    /// Path under /lib/firmware.
    pub path: String,
    /// Debian package that ships it.
    pub package: String,
}

impl appconfig::Validate for Profile {
    fn validate(&self) -> Result<(), String> {
        if self.cmdline.contains('\n') {
            return Err("cmdline must be one line".into());
        }
        if self.modules.is_empty() {
            return Err("modules: a profile loads at least its disk driver".into());
        }
        Ok(())
    }
}

/// Load `firmware/profiles/<name>.toml` from the repository, or a profile file given by path.
pub fn load(firmware_dir: &Path, name: &str) -> anyhow::Result<Profile> {
    if name.ends_with(".toml") {
        return Ok(appconfig::load_file(Path::new(name))?);
    }
    let path = firmware_dir.join("profiles").join(format!("{name}.toml"));
    if !path.exists() {
        let known: Vec<String> = std::fs::read_dir(firmware_dir.join("profiles"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".toml")
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        anyhow::bail!("no hardware profile `{name}` (known: {})", known.join(", "));
    }
    Ok(appconfig::load_file(&path)?)
}
