//! Marking a boot as good (systemd's Automatic Boot Assessment, served by systemd-boot).
//!
//! An upgrade installs its kernel image as `EFI/Linux/<name>+3.efi`. Each boot attempt
//! systemd-boot renames it to count a try (`+2-1`, `+1-2`, `+0-3`); an entry with no tries
//! left sorts after the others, so the previous image boots again: automatic rollback. Once
//! the appliance is healthy, PID 1 "blesses" the image by renaming it without the counter.
//! systemd-boot tells us which file it booted in the `LoaderBootCountPath` EFI variable.

use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::mount::MsFlags;

const VAR: &str =
    "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
const ESP_MOUNT: &str = "/run/esp";

/// Decode an efivarfs file: 4 bytes of attributes, then a NUL-terminated UTF-16LE string.
pub fn decode_efi_string(raw: &[u8]) -> Option<String> {
    let body = raw.get(4..)?;
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// `broker-0.2.0+2-1.efi` → `broker-0.2.0.efi`; `None` when the name carries no counter.
pub fn blessed_name(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(".efi")?;
    let (base, counter) = stem.rsplit_once('+')?;
    let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(left) && numeric(done)).then(|| format!("{base}.efi"))
}

/// Whether this boot is one of a counted image's tries (an upgrade not yet blessed). A
/// failure then reboots, so systemd-boot counts it and eventually falls back to the previous
/// image; a failure of a blessed image powers off instead of rebooting into it forever.
pub fn booted_with_counter() -> bool {
    std::fs::read(VAR)
        .ok()
        .and_then(|raw| decode_efi_string(&raw))
        .and_then(|p| p.rsplit('\\').next().and_then(blessed_name))
        .is_some()
}

/// What blessing did.
#[derive(Debug, PartialEq, Eq)]
pub enum Blessing {
    /// Not booted by systemd-boot with a counted entry: nothing to do.
    NotCounted,
    Blessed {
        from: String,
        to: String,
    },
}

/// Bless the running image if it was booted with a try counter.
pub fn bless(esp_partition_name: &str) -> anyhow::Result<Blessing> {
    let Ok(raw) = std::fs::read(VAR) else {
        return Ok(Blessing::NotCounted);
    };
    let path = decode_efi_string(&raw).context("LoaderBootCountPath is not UTF-16")?;
    let relative: PathBuf = path.trim_start_matches('\\').split('\\').collect();
    let Some(file_name) = relative.file_name().and_then(|f| f.to_str()) else {
        return Ok(Blessing::NotCounted);
    };
    let Some(new_name) = blessed_name(file_name) else {
        return Ok(Blessing::NotCounted);
    };
    let esp = crate::devices::find_partition(esp_partition_name)
        .with_context(|| format!("no partition named {esp_partition_name} (the ESP)"))?;
    crate::mounts::mount_at(
        &esp.node.to_string_lossy(),
        ESP_MOUNT,
        "vfat",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    let result = rename_durably(&Path::new(ESP_MOUNT).join(&relative), &new_name);
    crate::mounts::unmount(ESP_MOUNT);
    result?;
    Ok(Blessing::Blessed {
        from: file_name.to_string(),
        to: new_name,
    })
}

fn rename_durably(from: &Path, new_name: &str) -> anyhow::Result<()> {
    let dir = from.parent().context("image path has no directory")?;
    let to = dir.join(new_name);
    std::fs::rename(from, &to)
        .with_context(|| format!("rename {} to {}", from.display(), to.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_removed_and_plain_names_left_alone() {
        assert_eq!(
            blessed_name("broker-0.2.0+2-1.efi").as_deref(),
            Some("broker-0.2.0.efi")
        );
        assert_eq!(
            blessed_name("broker-0.2.0+3.efi").as_deref(),
            Some("broker-0.2.0.efi")
        );
        assert_eq!(blessed_name("broker-0.2.0.efi"), None);
        assert_eq!(blessed_name("broker+x-1.efi"), None);
    }

    #[test]
    fn efi_strings_decode() {
        let mut raw = vec![7, 0, 0, 0];
        for u in "\\EFI\\Linux\\a+1-2.efi".encode_utf16().chain([0]) {
            raw.extend(u.to_le_bytes());
        }
        assert_eq!(decode_efi_string(&raw).unwrap(), "\\EFI\\Linux\\a+1-2.efi");
    }
}
