//! The persistent data area: a GPT partition named `clk-data` on the boot disk, holding ext4.
//!
//! Chosen mechanism (see docs/architecture.md): the image ships the partition blank, and PID 1
//! - grows the partition to the end of the disk whenever the disk grew (`qm resize`): moves the
//!   backup GPT, extends the last partition, tells the kernel with BLKPG;
//! - formats a blank partition by writing a small ext4 "seed" the builder made with mke2fs
//!   (no mkfs in the image: there is no userland), then
//! - mounts it and grows the file system online to fill the partition (EXT4_IOC_RESIZE_FS,
//!   the kernel's own resizer, which needs no userland either).
//!
//! Upgrades replace only the ESP's kernel images, so the data area survives them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::mount::MsFlags;

use crate::devices::{self, BlockDevice};
use crate::system::DataArea;

const EXT4_MAGIC: u16 = 0xEF53;

nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);
nix::ioctl_write_ptr_bad!(blkpg, 0x1269, BlkpgIoctlArg);

#[repr(C)]
pub struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

#[repr(C)]
pub struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

const BLKPG_RESIZE_PARTITION: i32 = 3;

/// What preparing the data area did, for the boot log.
#[derive(Debug, Default)]
pub struct Prepared {
    pub device: String,
    pub partition_grown_to: Option<u64>,
    pub formatted: bool,
    pub fs_grown_to_blocks: Option<u64>,
}

/// Find, grow, format if blank, mount, and grow the file system.
pub fn prepare(area: &DataArea) -> anyhow::Result<Prepared> {
    let part = devices::wait_for(Duration::from_secs(30), || {
        devices::find_partition(&area.partition_name)
    })
    .with_context(|| {
        format!(
            "no partition named {} appeared within 30 s",
            area.partition_name
        )
    })?;
    let mut report = Prepared {
        device: part.node.display().to_string(),
        ..Default::default()
    };
    report.partition_grown_to = grow_partition(&part)?;
    if !has_ext4(&part.node)? {
        write_seed(&part.node, Path::new(&area.seed))?;
        report.formatted = true;
    }
    crate::mounts::mount_at(
        &part.node.to_string_lossy(),
        &area.mountpoint,
        "ext4",
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None,
    )?;
    report.fs_grown_to_blocks = grow_fs(&part.node, &area.mountpoint)?;
    Ok(report)
}

/// If the disk has room after the GPT's last usable sector (the disk was resized), move the
/// backup GPT to the new end and extend the data partition (which the builder puts last).
fn grow_partition(part: &BlockDevice) -> anyhow::Result<Option<u64>> {
    let (disk, number) = devices::parent_disk(part)
        .with_context(|| format!("cannot find the disk holding {}", part.name))?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.node)
        .with_context(|| format!("open {}", disk.node.display()))?;
    let mut gpt = gptman::GPT::find_from(&mut f)
        .with_context(|| format!("read the GPT of {}", disk.node.display()))?;
    let sector = gpt.sector_size;
    let disk_bytes = f.seek(SeekFrom::End(0))?;
    let disk_sectors = disk_bytes / sector;
    // The backup header lives in the last sector; it is earlier when the disk grew.
    if gpt.header.backup_lba + 1 >= disk_sectors {
        return Ok(None);
    }
    let is_last = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .all(|(_, p)| p.ending_lba <= gpt[number].ending_lba);
    if !is_last {
        bail!(
            "{} is not the last partition of {}; cannot grow it",
            part.name,
            disk.name
        );
    }
    gpt.header
        .update_from(&mut f, sector)
        .context("move the backup GPT to the end of the grown disk")?;
    let new_end = gpt.header.last_usable_lba;
    gpt[number].ending_lba = new_end;
    gpt.write_into(&mut f).context("write the grown GPT")?;
    f.sync_all()
        .context("fsync the disk after writing the GPT")?;
    let start = gpt[number].starting_lba * sector;
    let length = (new_end - gpt[number].starting_lba + 1) * sector;
    let mut p = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: number as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut p,
    };
    // SAFETY: arg and p outlive the call; the kernel reads datalen bytes from data.
    unsafe { blkpg(f.as_raw_fd(), &arg) }
        .with_context(|| format!("tell the kernel {} grew", part.name))?;
    Ok(Some(length))
}

fn has_ext4(node: &Path) -> anyhow::Result<bool> {
    let f = File::open(node).with_context(|| format!("open {}", node.display()))?;
    let mut magic = [0u8; 2];
    f.read_exact_at(&mut magic, 1024 + 56)
        .with_context(|| format!("read the superblock of {}", node.display()))?;
    Ok(u16::from_le_bytes(magic) == EXT4_MAGIC)
}

/// Write the gzipped ext4 seed at the start of the partition, durably.
fn write_seed(node: &Path, seed: &Path) -> anyhow::Result<()> {
    let gz = File::open(seed)
        .with_context(|| format!("open the file system seed {}", seed.display()))?;
    let mut reader = flate2::read::GzDecoder::new(gz);
    let mut out = OpenOptions::new()
        .write(true)
        .open(node)
        .with_context(|| format!("open {} to format it", node.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .context("decompress the file system seed")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .with_context(|| format!("write the file system seed to {}", node.display()))?;
    }
    out.sync_all()
        .context("fsync the formatted data partition")?;
    tracing::info!(device = %node.display(), "blank data partition formatted (ext4 seed)");
    Ok(())
}

/// Grow the mounted ext4 to fill its partition; `None` when it already does.
fn grow_fs(node: &Path, mountpoint: &str) -> anyhow::Result<Option<u64>> {
    let dev = File::open(node)?;
    let mut bytes = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64.
    unsafe { blk_getsize64(dev.as_raw_fd(), &mut bytes) }
        .with_context(|| format!("size of {}", node.display()))?;
    let mut sb = [0u8; 1024];
    dev.read_exact_at(&mut sb, 1024)?;
    let block_size = 1024u64 << u32::from_le_bytes(sb[24..28].try_into().expect("4 bytes"));
    let lo = u32::from_le_bytes(sb[4..8].try_into().expect("4 bytes")) as u64;
    let hi = u32::from_le_bytes(sb[0x150..0x154].try_into().expect("4 bytes")) as u64;
    let blocks_now = lo | (hi << 32);
    let blocks_fit = bytes / block_size;
    if blocks_fit <= blocks_now {
        return Ok(None);
    }
    let dir = File::open(mountpoint)?;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &blocks_fit) }.with_context(|| {
        format!(
            "grow the file system on {} to {blocks_fit} blocks",
            node.display()
        )
    })?;
    Ok(Some(blocks_fit))
}
