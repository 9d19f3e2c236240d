//! The EFI system partition, built as a FAT file system image in memory with the `fatfs`
//! crate (no mount, no loop device): systemd-boot as the removable-media default loader, its
//! configuration, and the appliance UKI in `EFI/Linux/` where systemd-boot finds it.

use std::io::{Cursor, Write};

use anyhow::Context;
use fatfs::{Date, DateTime, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};

pub struct EspContents<'a> {
    pub systemd_boot: &'a [u8],
    /// File name in EFI/Linux/ (`broker-0.1.0.efi`).
    pub uki_name: &'a str,
    pub uki: &'a [u8],
}

/// A FAT image of `size` bytes. Timestamps are FAT's epoch (see [`BuildTime`]) and the volume id is
/// fixed, so the same contents give the same bytes.
pub fn build(size: u64, volume_id: u32, c: &EspContents) -> anyhow::Result<Vec<u8>> {
    let mut img = Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(
        &mut img,
        FormatVolumeOptions::new()
            .volume_id(volume_id)
            .volume_label(*b"CLK-ESP    "),
    )
    .context("format the ESP")?;
    {
        let fs = FileSystem::new(&mut img, FsOptions::new().time_provider(&BuildTime))
            .context("open the new ESP")?;
        let root = fs.root_dir();
        let write = |path: &str, data: &[u8]| -> anyhow::Result<()> {
            let mut f = root
                .create_file(path)
                .with_context(|| format!("create {path} on the ESP"))?;
            f.truncate()?;
            f.write_all(data)
                .with_context(|| format!("write {path} on the ESP (is it large enough?)"))?;
            Ok(())
        };
        for dir in [
            "EFI",
            "EFI/BOOT",
            "EFI/systemd",
            "EFI/Linux",
            "loader",
            "loader/entries",
        ] {
            root.create_dir(dir)
                .with_context(|| format!("create {dir} on the ESP"))?;
        }
        write("EFI/BOOT/BOOTX64.EFI", c.systemd_boot)?;
        write("EFI/systemd/systemd-bootx64.efi", c.systemd_boot)?;
        // timeout 0: boot the default at once; the menu appears only if a key is held.
        // The default is the newest image by version; tries-exhausted entries sort last.
        write(
            "loader/loader.conf",
            b"timeout 0\nconsole-mode keep\neditor no\n",
        )?;
        write(&format!("EFI/Linux/{}", c.uki_name), c.uki)?;
        drop(root);
        fs.unmount().context("finish the ESP")?;
    }
    Ok(img.into_inner())
}

/// Every timestamp on the ESP is 1980-01-01 00:00, FAT's first valid date. Not the zero
/// encoding: that decodes as month 0, day 0, and firmware FAT drivers (OVMF's) then refuse to
/// rename the file with EFI_INVALID_PARAMETER, which breaks systemd-boot's boot counting.
#[derive(Debug)]
pub struct BuildTime;

impl TimeProvider for BuildTime {
    fn get_current_date(&self) -> Date {
        Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> DateTime {
        DateTime {
            date: self.get_current_date(),
            time: Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}
