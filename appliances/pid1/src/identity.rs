//! Who this node is: the host name (cloud-init, else the SMBIOS serial Proxmox sets with
//! `--smbios1 serial=...`, else the image default) and the files that publish it.

use std::net::Ipv4Addr;

/// The SMBIOS system serial number, when the hypervisor or vendor set a meaningful one.
pub fn smbios_serial() -> Option<String> {
    let s = std::fs::read_to_string("/sys/class/dmi/id/product_serial").ok()?;
    let s = s.trim();
    // Firmware placeholders are not identities.
    let placeholder = s.is_empty()
        || s.eq_ignore_ascii_case("none")
        || s.eq_ignore_ascii_case("not specified")
        || s.eq_ignore_ascii_case("to be filled by o.e.m.")
        || s.chars().all(|c| c == '0');
    (!placeholder).then(|| s.to_string())
}

/// A valid host name label: letters, digits and hyphens, 1-63 characters, not starting or
/// ending with a hyphen.
pub fn is_hostname(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Pick the host name by precedence, skipping candidates that are not valid names.
pub fn choose_hostname(cloud_init: Option<&str>, serial: Option<&str>, baked: &str) -> String {
    [cloud_init, serial]
        .into_iter()
        .flatten()
        .find(|h| is_hostname(h))
        .unwrap_or(baked)
        .to_ascii_lowercase()
}

pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        tracing::error!(hostname = name, error = %e, "cannot set the host name");
    }
    let hosts = format!("127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost\n");
    let _ = std::fs::create_dir_all("/etc");
    if let Err(e) = std::fs::write("/etc/hosts", hosts) {
        tracing::warn!(error = %e, "cannot write /etc/hosts");
    }
}

pub fn write_resolv_conf(servers: &[Ipv4Addr], search: &[String]) {
    let mut text = String::new();
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    if let Err(e) = std::fs::write("/etc/resolv.conf", text) {
        tracing::warn!(error = %e, "cannot write /etc/resolv.conf");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_precedence_skips_invalid_names() {
        assert_eq!(
            choose_hostname(Some("broker-a1"), Some("SN123"), "broker"),
            "broker-a1"
        );
        assert_eq!(choose_hostname(None, Some("SN123"), "broker"), "sn123");
        assert_eq!(
            choose_hostname(Some("bad name"), Some("x y"), "broker"),
            "broker"
        );
        assert!(!is_hostname("-a"));
        assert!(!is_hostname(&"a".repeat(64)));
    }
}
