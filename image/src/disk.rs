//! The GPT disk: a protective MBR, partition 1 the ESP, partition 2 the data area (last, so
//! PID 1 can grow it when the disk grows), written sparse so an image of gigabytes costs only
//! what it holds. GUIDs are derived from the appliance name so builds are reproducible.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Context;
use gptman::{GPT, GPTPartitionEntry};
use sha2::{Digest, Sha256};

const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries (what every partitioning tool does).
const ALIGN: u64 = 2048;

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Linux filesystem data.
pub const LINUX_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

pub struct Layout<'a> {
    pub disk_bytes: u64,
    pub esp: &'a [u8],
    pub data_name: &'a str,
    /// Seed for the disk and partition GUIDs.
    pub identity: &'a str,
}

/// GUID text to GPT's on-disk byte order (first three fields little-endian).
pub fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("valid GUID text");
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// A stable random-looking GUID (version 4 layout) from a seed string.
fn derived_guid(seed: &str) -> [u8; 16] {
    let h = Sha256::digest(seed.as_bytes());
    let mut g = [0u8; 16];
    g.copy_from_slice(&h[..16]);
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

pub fn write(path: &Path, layout: &Layout) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.set_len(layout.disk_bytes)?;
    let mut gpt = GPT::new_from(
        &mut f,
        SECTOR,
        derived_guid(&format!("{}/disk", layout.identity)),
    )
    .context("create the GPT")?;
    let esp_sectors = (layout.esp.len() as u64).div_ceil(SECTOR);
    let esp_start = ALIGN;
    let esp_end = esp_start + esp_sectors - 1;
    let data_start = (esp_end + 1).div_ceil(ALIGN) * ALIGN;
    let data_end = gpt.header.last_usable_lba;
    anyhow::ensure!(
        data_start + ALIGN < data_end,
        "disk too small for the ESP and a data area"
    );
    gpt[1] = GPTPartitionEntry {
        partition_type_guid: guid_bytes(ESP_TYPE),
        unique_partition_guid: derived_guid(&format!("{}/esp", layout.identity)),
        starting_lba: esp_start,
        ending_lba: esp_end,
        attribute_bits: 0,
        partition_name: pid1::ESP_PARTITION_NAME.into(),
    };
    gpt[2] = GPTPartitionEntry {
        partition_type_guid: guid_bytes(LINUX_TYPE),
        unique_partition_guid: derived_guid(&format!("{}/data", layout.identity)),
        starting_lba: data_start,
        ending_lba: data_end,
        attribute_bits: 0,
        partition_name: layout.data_name.into(),
    };
    gpt.write_into(&mut f).context("write the GPT")?;
    GPT::write_protective_mbr_into(&mut f, SECTOR).context("write the protective MBR")?;
    write_sparse(&mut f, esp_start * SECTOR, layout.esp)?;
    f.sync_all()?;
    Ok(())
}

/// Write `data` at `offset`, skipping all-zero blocks (the file is already zero there).
fn write_sparse(f: &mut File, offset: u64, data: &[u8]) -> anyhow::Result<()> {
    const BLOCK: usize = 64 * 1024;
    for (i, chunk) in data.chunks(BLOCK).enumerate() {
        if chunk.iter().all(|b| *b == 0) {
            continue;
        }
        f.seek(SeekFrom::Start(offset + (i * BLOCK) as u64))?;
        f.write_all(chunk)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn esp_guid_has_gpt_byte_order() {
        let b = super::guid_bytes(super::ESP_TYPE);
        assert_eq!(&b[..4], &[0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(&b[8..], &[0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]);
    }
}
