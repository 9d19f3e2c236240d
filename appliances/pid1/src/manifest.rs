//! How an appliance declares itself to the image builder and the operator CLI: its name, how
//! its baked configuration is checked, and what its image needs. Each appliance crate exports
//! one [`Manifest`]; `appliances/registry` lists them, and the image builder, `clk image` and
//! `clk vm` read only that list, so adding an appliance never touches their code.

use std::path::PathBuf;

/// One appliance, as the tools that build and boot its image see it.
#[derive(Debug)]
pub struct Manifest {
    /// The crate, binary and image name (`broker`).
    pub name: &'static str,
    /// One line for `--help` listings.
    pub summary: &'static str,
    /// Check a configuration to be baked into an image, with the appliance's own parser.
    /// Per-VM values (credentials, advertised addresses) may still arrive from cloud-init, so
    /// this is the baked file's check, not necessarily the one the appliance runs at start.
    /// `origin` names the file in messages.
    pub check_baked_config: fn(text: &str, origin: &str) -> anyhow::Result<BakedConfig>,
    /// The baked configuration in the repository (`image/configs/<name>.toml`).
    pub default_config: &'static str,
    /// Ports the appliance listens on, in its default configuration.
    pub ports: &'static [Port],
    /// The port serving `/health`, `/ready` and `/metrics`.
    pub admin_port: u16,
    /// Memory a VM should have (the Proxmox kit's default).
    pub memory_mib: u32,
}

/// What the image builder needs to know of a checked configuration.
#[derive(Debug, Clone)]
pub struct BakedConfig {
    /// Where the appliance keeps its data; must be inside the image's data area.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct Port {
    pub number: u16,
    pub name: &'static str,
}

impl Manifest {
    /// `9092 kafka, 9644 admin`.
    pub fn ports_text(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("{} {}", p.number, p.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The check of a [`crate::Service`] whose whole configuration can be baked: parse and
/// validate it as the appliance will at boot.
pub fn check_service_config<S: crate::Service>(
    text: &str,
    origin: &str,
) -> anyhow::Result<BakedConfig> {
    let config: S::Config = appconfig::parse_str(text, origin)?;
    Ok(BakedConfig {
        data_dir: S::data_dir(&config).to_owned(),
    })
}
