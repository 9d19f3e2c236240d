//! Per-VM settings from a cloud-init NoCloud drive, as Proxmox VE writes it: an ISO9660 volume
//! labelled `cidata` holding `meta-data`, `user-data` and `network-config` (version 1).
//!
//! What is used: the host name (`local-hostname` in meta-data, or `hostname`/`fqdn` in
//! user-data, where Proxmox puts it), static or DHCP addresses per interface matched by MAC,
//! name servers, `clk_config`: a TOML fragment in user-data merged over the appliance
//! configuration baked into the image (set with `qm set --cicustom user=...`), and
//! `write_files` under `/config/` (the VM's certificate, key, CA and CRL, as `clk pki
//! cloud-init` writes them). Everything else in user-data (users, passwords, packages) has
//! no meaning on an appliance and is ignored.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;

use crate::system::Cidr;

/// What the drive said. Every field is optional: a missing file is not an error.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CloudInit {
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    pub interfaces: Vec<InterfaceConfig>,
    pub nameservers: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    /// TOML merged over the baked appliance configuration.
    pub appliance_config: Option<String>,
    /// Files to write before the appliance starts (`write_files`).
    pub files: Vec<FileToWrite>,
}

/// One of user-data's `write_files`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileToWrite {
    /// Absolute, under [`FILES_ROOT`], without `..`.
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

/// `write_files` may write only here: configuration, never the appliance's programs.
pub const FILES_ROOT: &str = "/config/";
const FILES_MAX: usize = 32;
const FILE_BYTES_MAX: usize = 1 << 20;

#[derive(Deserialize)]
struct WriteFile {
    path: String,
    #[serde(default)]
    content: String,
    /// Octal, as cloud-init has it (`"0600"`); default 0644.
    #[serde(default)]
    permissions: Option<String>,
    /// `b64`/`base64` for base64 content; default plain text.
    #[serde(default)]
    encoding: Option<String>,
}

fn file_to_write(f: WriteFile) -> Result<FileToWrite, CloudInitError> {
    let bad = |why: String| invalid("user-data", format!("write_files {:?}: {why}", f.path));
    let inside = f.path.starts_with(FILES_ROOT)
        && f.path.len() > FILES_ROOT.len()
        && !f.path.split('/').any(|c| c == ".." || c == ".");
    if !inside {
        return Err(bad(format!("only paths under {FILES_ROOT} may be written")));
    }
    let content = match f.encoding.as_deref() {
        None | Some("text/plain") => f.content.clone().into_bytes(),
        Some("b64" | "base64") => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(f.content.trim())
                .map_err(|e| bad(format!("not base64: {e}")))?
        }
        Some(other) => return Err(bad(format!("encoding {other:?} is not supported"))),
    };
    if content.len() > FILE_BYTES_MAX {
        return Err(bad(format!("more than {FILE_BYTES_MAX} bytes")));
    }
    let mode = match &f.permissions {
        None => 0o644,
        Some(p) => u32::from_str_radix(p.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| bad(format!("permissions {p:?} are not octal")))?,
    };
    Ok(FileToWrite {
        path: f.path,
        content,
        mode,
    })
}

/// Write `files` under `root` (`/` on an appliance), creating their directories.
pub fn write_files(files: &[FileToWrite], root: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for f in files {
        let path = root.join(f.path.trim_start_matches('/'));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(f.mode)
            .open(&path)?;
        out.write_all(&f.content)?;
        // The mode of a file that existed is not changed by `open`.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(f.mode))?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct InterfaceConfig {
    /// The MAC to match (lower case), or failing that the kernel name.
    pub mac: Option<String>,
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub addresses: Vec<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub dhcp: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    #[error("cloud-init {file}: {message}")]
    Invalid { file: &'static str, message: String },
}

fn invalid(file: &'static str, message: impl std::fmt::Display) -> CloudInitError {
    CloudInitError::Invalid {
        file,
        message: message.to_string(),
    }
}

/// Read the three files from a mounted drive. Absent files are skipped; present but malformed
/// files are errors (a typo in a static address must not silently become DHCP).
pub fn read_dir(dir: &Path) -> Result<CloudInit, CloudInitError> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let mut ci = CloudInit::default();
    if let Some(text) = read("meta-data") {
        apply_meta_data(&mut ci, &text)?;
    }
    if let Some(text) = read("user-data") {
        apply_user_data(&mut ci, &text)?;
    }
    if let Some(text) = read("network-config") {
        apply_network_config(&mut ci, &text)?;
    }
    Ok(ci)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct MetaData {
    instance_id: Option<String>,
    local_hostname: Option<String>,
}

pub fn apply_meta_data(ci: &mut CloudInit, text: &str) -> Result<(), CloudInitError> {
    let m: Option<MetaData> = serde_yaml_ng::from_str(text).map_err(|e| invalid("meta-data", e))?;
    let m = m.unwrap_or_default();
    ci.instance_id = m.instance_id;
    if let Some(h) = m.local_hostname {
        ci.hostname = Some(h);
    }
    Ok(())
}

#[derive(Deserialize, Default)]
struct UserData {
    hostname: Option<String>,
    fqdn: Option<String>,
    clk_config: Option<String>,
    #[serde(default)]
    write_files: Vec<WriteFile>,
}

pub fn apply_user_data(ci: &mut CloudInit, text: &str) -> Result<(), CloudInitError> {
    // Only `#cloud-config` documents carry settings; scripts and MIME parts are not for us.
    if !text.trim_start().starts_with("#cloud-config") {
        return Ok(());
    }
    let u: Option<UserData> = serde_yaml_ng::from_str(text).map_err(|e| invalid("user-data", e))?;
    let u = u.unwrap_or_default();
    // The short name: a host name is one DNS label; `fqdn` gives it with the domain.
    let name = u.hostname.or_else(|| {
        u.fqdn
            .map(|f| f.split('.').next().unwrap_or_default().to_string())
    });
    if let Some(h) = name.filter(|h| !h.is_empty()) {
        ci.hostname = Some(h);
    }
    ci.appliance_config = u.clk_config;
    if u.write_files.len() > FILES_MAX {
        return Err(invalid(
            "user-data",
            format!("more than {FILES_MAX} write_files"),
        ));
    }
    ci.files = u
        .write_files
        .into_iter()
        .map(file_to_write)
        .collect::<Result<_, _>>()?;
    Ok(())
}

#[derive(Deserialize)]
struct NetworkConfig {
    version: u32,
    #[serde(default)]
    config: Vec<NetworkItem>,
}

#[derive(Deserialize)]
struct NetworkItem {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    mac_address: Option<String>,
    mtu: Option<u32>,
    #[serde(default)]
    subnets: Vec<Subnet>,
    #[serde(default)]
    address: StringOrList,
    #[serde(default)]
    search: StringOrList,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum StringOrList {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::None => vec![],
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
struct Subnet {
    #[serde(rename = "type")]
    kind: String,
    address: Option<String>,
    netmask: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    dns_nameservers: Vec<String>,
    #[serde(default)]
    dns_search: Vec<String>,
}

pub fn apply_network_config(ci: &mut CloudInit, text: &str) -> Result<(), CloudInitError> {
    const F: &str = "network-config";
    let n: NetworkConfig = serde_yaml_ng::from_str(text).map_err(|e| invalid(F, e))?;
    if n.version != 1 {
        return Err(invalid(
            F,
            format!("version {} (only version 1 is read)", n.version),
        ));
    }
    for item in n.config {
        match item.kind.as_str() {
            "physical" => ci.interfaces.push(physical(item)?),
            "nameserver" => {
                for a in item.address.into_vec() {
                    // IPv6 name servers are not used by an IPv4-only appliance.
                    if let Ok(ip) = a.parse() {
                        ci.nameservers.push(ip);
                    }
                }
                ci.search.extend(item.search.into_vec());
            }
            // bonds, bridges, vlans, routes: not used by the appliances' virtual hardware.
            other => tracing::warn!(kind = other, "network-config entry ignored"),
        }
    }
    Ok(())
}

fn physical(item: NetworkItem) -> Result<InterfaceConfig, CloudInitError> {
    const F: &str = "network-config";
    let mut iface = InterfaceConfig {
        mac: item.mac_address.map(|m| m.to_ascii_lowercase()),
        name: item.name,
        mtu: item.mtu,
        addresses: vec![],
        gateway: None,
        dhcp: false,
    };
    if iface.mac.is_none() && iface.name.is_none() {
        return Err(invalid(F, "a physical interface needs mac_address or name"));
    }
    for s in item.subnets {
        match s.kind.as_str() {
            "dhcp" | "dhcp4" => iface.dhcp = true,
            "static" => {
                let address = s
                    .address
                    .ok_or_else(|| invalid(F, "a static subnet needs an address"))?;
                let cidr = match (address.contains('/'), s.netmask) {
                    (true, _) => address.parse().map_err(|e| invalid(F, e))?,
                    (false, Some(mask)) => {
                        let addr = address
                            .parse()
                            .map_err(|_| invalid(F, format!("`{address}` is not IPv4")))?;
                        let mask = mask
                            .parse()
                            .map_err(|_| invalid(F, format!("netmask `{mask}` is not IPv4")))?;
                        Cidr::from_netmask(addr, mask).map_err(|e| invalid(F, e))?
                    }
                    (false, None) => Cidr {
                        addr: address
                            .parse()
                            .map_err(|_| invalid(F, format!("`{address}` is not IPv4")))?,
                        prefix: 32,
                    },
                };
                iface.addresses.push(cidr);
                if let Some(gw) = s.gateway {
                    iface.gateway = Some(
                        gw.parse()
                            .map_err(|_| invalid(F, format!("gateway `{gw}` is not IPv4")))?,
                    );
                }
                let _ = (s.dns_nameservers, s.dns_search);
            }
            // static6/dhcp6/ipv6_slaac: the hub network is IPv4.
            other => tracing::warn!(kind = other, "network-config subnet ignored"),
        }
    }
    Ok(iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Proxmox VE 8 writes for `qm set --ipconfig0 ip=10.0.2.15/24,gw=10.0.2.2
    /// --nameserver 10.0.2.3 --searchdomain hub.example`.
    const PROXMOX_NETWORK: &str = "version: 1
config:
    - type: physical
      name: eth0
      mac_address: 'BC:24:11:2C:6E:01'
      subnets:
      - type: static
        address: '10.0.2.15'
        netmask: '255.255.255.0'
        gateway: '10.0.2.2'
    - type: physical
      name: eth1
      mac_address: 'bc:24:11:2c:6e:02'
      subnets:
      - type: dhcp4
    - type: nameserver
      address:
      - '10.0.2.3'
      search:
      - 'hub.example'
";

    const PROXMOX_USER: &str = "#cloud-config
hostname: broker-a1
manage_etc_hosts: true
fqdn: broker-a1.hub.example
user: root
password: $5$abc
chpasswd:
  expire: False
users:
  - default
package_upgrade: true
clk_config: |
  [kafka]
  advertised = \"broker-a1.hub.example:9092\"
";

    #[test]
    fn reads_what_proxmox_writes() {
        let mut ci = CloudInit::default();
        apply_meta_data(&mut ci, "instance-id: 5f1c9f2e\n").unwrap();
        apply_user_data(&mut ci, PROXMOX_USER).unwrap();
        apply_network_config(&mut ci, PROXMOX_NETWORK).unwrap();
        assert_eq!(ci.instance_id.as_deref(), Some("5f1c9f2e"));
        assert_eq!(ci.hostname.as_deref(), Some("broker-a1"));
        assert!(ci.appliance_config.unwrap().contains("advertised"));
        assert_eq!(ci.interfaces.len(), 2);
        let eth0 = &ci.interfaces[0];
        assert_eq!(eth0.mac.as_deref(), Some("bc:24:11:2c:6e:01"));
        assert_eq!(eth0.addresses, vec!["10.0.2.15/24".parse().unwrap()]);
        assert_eq!(eth0.gateway, Some("10.0.2.2".parse().unwrap()));
        assert!(!eth0.dhcp);
        assert!(ci.interfaces[1].dhcp);
        assert_eq!(
            ci.nameservers,
            vec!["10.0.2.3".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(ci.search, vec!["hub.example"]);
    }

    #[test]
    fn fqdn_alone_gives_the_short_name() {
        let mut ci = CloudInit::default();
        apply_user_data(&mut ci, "#cloud-config\nfqdn: s3-b2.hub.example\n").unwrap();
        assert_eq!(ci.hostname.as_deref(), Some("s3-b2"));
    }

    #[test]
    fn malformed_files_are_errors_not_dhcp() {
        let mut ci = CloudInit::default();
        let bad = "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    subnets:\n      - type: static\n        address: 10.0.0.300/24\n";
        let e = apply_network_config(&mut ci, bad).unwrap_err().to_string();
        assert!(e.contains("network-config"), "{e}");
        assert!(apply_network_config(&mut ci, "version: 2\n").is_err());
        assert!(apply_meta_data(&mut ci, "instance-id: [unclosed\n").is_err());
        // A shell script as user-data is not ours to run: ignored, not an error.
        apply_user_data(&mut ci, "#!/bin/sh\necho hi\n").unwrap();
    }

    #[test]
    fn write_files_land_under_config_only_with_their_modes() {
        let mut ci = CloudInit::default();
        let text = "#cloud-config\nwrite_files:\n  - path: /config/tls/key.pem\n    permissions: \"0600\"\n    content: |\n      -----BEGIN PRIVATE KEY-----\n      abc\n  - path: /config/blob\n    encoding: b64\n    content: aGVsbG8=\n";
        apply_user_data(&mut ci, text).unwrap();
        assert_eq!(ci.files.len(), 2);
        assert_eq!(ci.files[0].mode, 0o600);
        assert_eq!(ci.files[0].content, b"-----BEGIN PRIVATE KEY-----\nabc\n");
        assert_eq!(ci.files[1].content, b"hello");
        assert_eq!(ci.files[1].mode, 0o644);
        let root = tempfile::tempdir().unwrap();
        write_files(&ci.files, root.path()).unwrap();
        let key = root.path().join("config/tls/key.pem");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read(root.path().join("config/blob")).unwrap(),
            b"hello"
        );

        for path in [
            "/usr/bin/broker",
            "/config/../etc/passwd",
            "/config/",
            "config/x",
        ] {
            let text = format!("#cloud-config\nwrite_files:\n  - path: {path}\n    content: x\n");
            let e = apply_user_data(&mut CloudInit::default(), &text).unwrap_err();
            assert!(e.to_string().contains("write_files"), "{path}: {e}");
        }
        let text = "#cloud-config\nwrite_files:\n  - path: /config/x\n    permissions: rwx\n";
        assert!(apply_user_data(&mut CloudInit::default(), text).is_err());
    }
}
