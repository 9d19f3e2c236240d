//! Installing a new kernel image next to the running one on a disk image (offline: a raw
//! image or a USB stick), with a boot counter: systemd-boot boots the newest entry, counts
//! each try, and falls back to the previous image once the tries are used up; PID 1 of the
//! new image blesses it when healthy. Older images beyond the newest two are removed so the
//! ESP never fills up.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, bail};
use fatfs::{FileSystem, FsOptions};

/// Add `uki` as `EFI/Linux/<name>+<tries>.efi` on the ESP of the raw disk at `disk`.
pub fn install(disk: &Path, uki: &Path, name: &str, tries: u32) -> anyhow::Result<String> {
    if tries == 0 {
        bail!("tries must be at least 1");
    }
    let data = std::fs::read(uki).with_context(|| format!("read {}", uki.display()))?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("open {}", disk.display()))?;
    let gpt = gptman::GPT::find_from(&mut f).with_context(|| {
        format!(
            "{} has no GPT (a raw image or a device is needed)",
            disk.display()
        )
    })?;
    let (_, esp) = gpt
        .iter()
        .find(|(_, p)| p.is_used() && p.partition_name.as_str() == pid1::ESP_PARTITION_NAME)
        .context("no ESP partition on the disk")?;
    let region = Region {
        file: f.try_clone()?,
        start: esp.starting_lba * gpt.sector_size,
        len: (esp.ending_lba - esp.starting_lba + 1) * gpt.sector_size,
        pos: 0,
    };
    let file_name = format!("{name}+{tries}.efi");
    {
        let fs = FileSystem::new(
            region,
            FsOptions::new().time_provider(&crate::esp::BuildTime),
        )
        .context("open the ESP")?;
        let linux = fs
            .root_dir()
            .open_dir("EFI/Linux")
            .context("the ESP has no EFI/Linux")?;
        let mut existing: Vec<String> = linux
            .iter()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.ends_with(".efi"))
            .collect();
        existing.sort();
        // Keep the newest existing image as the fallback; drop older ones to make room.
        for old in existing.iter().rev().skip(1) {
            linux
                .remove(old)
                .with_context(|| format!("remove old image {old}"))?;
        }
        let mut out = linux
            .create_file(&file_name)
            .context("create the new image file")?;
        out.truncate()?;
        out.write_all(&data)
            .context("write the new image (is the ESP full?)")?;
        out.flush()?;
        drop(out);
        drop(linux);
        fs.unmount().context("finish writing the ESP")?;
    }
    f.sync_all()?;
    Ok(file_name)
}

/// A window of a file, so the FAT driver sees only the ESP.
struct Region {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Region {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Region {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "past the end of the ESP",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Region {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 || new > self.len as i128 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the ESP",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}
