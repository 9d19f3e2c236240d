//! The system description the image builder bakes into every image as `/etc/clk/system.toml`:
//! which kernel modules to load (already in dependency order), sysctls, the default network
//! and where the data area lives. The builder writes it from the hardware profile, so a
//! mistake is a build failure, and PID 1 trusts its shape (it still validates it).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where the builder puts the files PID 1 reads.
pub const SYSTEM_TOML: &str = "/etc/clk/system.toml";
pub const APPLIANCE_TOML: &str = "/etc/clk/appliance.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// Appliance name (`broker`, `s3gw`...), for logs.
    pub appliance: String,
    /// Image version, logged at boot and compared by upgrades.
    pub version: String,
    /// Host name when neither cloud-init nor the SMBIOS serial gives one.
    pub hostname: String,
    #[serde(default)]
    pub modules: Vec<Module>,
    /// `/proc/sys` keys with dots (`net.core.rmem_max`) and their values.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Network,
    pub data: DataArea,
}

/// A kernel module file in the initramfs and the parameters to load it with (the kernel does
/// not apply `module.param=` from its command line to modules loaded by `finit_module`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    pub name: String,
    /// Path inside the initramfs.
    pub path: String,
    #[serde(default)]
    pub params: String,
    /// A module that may be absent on some hardware (a NIC driver with no NIC) only warns.
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Per-interface settings by kernel name (`eth0`); interfaces not listed use DHCP.
    #[serde(default)]
    pub interfaces: BTreeMap<String, InterfaceDefaults>,
    /// How long to wait for a DHCP lease before going on without an address.
    #[serde(default = "default_dhcp_timeout_s")]
    pub dhcp_timeout_s: u64,
}

fn default_dhcp_timeout_s() -> u64 {
    30
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceDefaults {
    /// MTU (9000 on replication links, 1500 on the WAN).
    pub mtu: Option<u32>,
    /// A static address baked in (rare: cloud-init usually gives it).
    pub address: Option<Cidr>,
    pub gateway: Option<Ipv4Addr>,
}

/// An IPv4 address with its prefix length, written `10.0.2.15/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not address/prefix"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{prefix}` is not a prefix length 0-32"))?;
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// From an address and a dotted netmask (`255.255.255.0`), as Proxmox writes them.
    pub fn from_netmask(addr: Ipv4Addr, mask: Ipv4Addr) -> Result<Cidr, String> {
        let bits = u32::from(mask);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(format!("netmask {mask} is not contiguous"));
        }
        Ok(Cidr {
            addr,
            prefix: bits.leading_ones() as u8,
        })
    }
}

/// The persistent data area: a GPT partition found by its name, formatted ext4 on first boot
/// and grown to the end of the disk whenever the disk grew.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataArea {
    /// GPT partition name (`clk-data`).
    pub partition_name: String,
    /// Where it is mounted (`/data`).
    pub mountpoint: String,
    /// Gzipped ext4 image in the initramfs written to a blank partition before growing it.
    pub seed: String,
}

impl appconfig::Validate for SystemConfig {
    fn validate(&self) -> Result<(), String> {
        if self.hostname.is_empty() || self.hostname.len() > 63 {
            return Err(format!(
                "hostname `{}` must be 1-63 characters",
                self.hostname
            ));
        }
        for (name, iface) in &self.network.interfaces {
            if let Some(mtu) = iface.mtu
                && !(576..=9216).contains(&mtu)
            {
                return Err(format!(
                    "network.interfaces.{name}.mtu {mtu} is not 576-9216"
                ));
            }
        }
        if !self.data.mountpoint.starts_with('/') {
            return Err("data.mountpoint must be an absolute path".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_rejects() {
        let c: Cidr = "10.0.2.15/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.2.15/24");
        assert!("10.0.2.15".parse::<Cidr>().is_err());
        assert!("10.0.2.15/33".parse::<Cidr>().is_err());
        let m = Cidr::from_netmask(
            "10.1.2.3".parse().unwrap(),
            "255.255.240.0".parse().unwrap(),
        );
        assert_eq!(m.unwrap().prefix, 20);
        assert!(
            Cidr::from_netmask("10.1.2.3".parse().unwrap(), "255.0.255.0".parse().unwrap())
                .is_err()
        );
    }
}
