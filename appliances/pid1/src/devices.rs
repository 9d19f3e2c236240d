//! Finding block devices without udev: the kernel lists them in `/sys/class/block`, and each
//! partition's `uevent` carries its GPT name (`PARTNAME=`). Waiting is needed because drivers
//! probe asynchronously after their module loads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A block device: its kernel name (`sda2`) and node (`/dev/sda2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub name: String,
    pub node: PathBuf,
}

fn all() -> Vec<BlockDevice> {
    let Ok(dir) = std::fs::read_dir("/sys/class/block") else {
        return vec![];
    };
    let mut out: Vec<BlockDevice> = dir
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            BlockDevice {
                node: Path::new("/dev").join(&name),
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The partition with GPT name `partname`.
pub fn find_partition(partname: &str) -> Option<BlockDevice> {
    all().into_iter().find(|d| {
        std::fs::read_to_string(format!("/sys/class/block/{}/uevent", d.name))
            .map(|u| {
                u.lines()
                    .any(|l| l.strip_prefix("PARTNAME=") == Some(partname))
            })
            .unwrap_or(false)
    })
}

/// The disk a partition belongs to (`sda` for `sda2`, `nvme0n1` for `nvme0n1p2`), and the
/// partition number.
pub fn parent_disk(partition: &BlockDevice) -> Option<(BlockDevice, u32)> {
    let link = std::fs::canonicalize(format!("/sys/class/block/{}", partition.name)).ok()?;
    let parent = link.parent()?.file_name()?.to_string_lossy().into_owned();
    let number = std::fs::read_to_string(format!("/sys/class/block/{}/partition", partition.name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((
        BlockDevice {
            node: Path::new("/dev").join(&parent),
            name: parent,
        },
        number,
    ))
}

/// An ISO9660 volume whose volume identifier is `label` (the cloud-init drive is `cidata`).
pub fn find_iso9660(label: &str) -> Option<BlockDevice> {
    all()
        .into_iter()
        .find(|d| iso9660_label(&d.node).as_deref() == Some(label))
}

/// The volume identifier of the primary volume descriptor at sector 16.
pub fn iso9660_label(node: &Path) -> Option<String> {
    let f = File::open(node).ok()?;
    let mut pvd = [0u8; 72];
    f.read_exact_at(&mut pvd, 16 * 2048).ok()?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    Some(String::from_utf8_lossy(&pvd[40..72]).trim_end().to_string())
}

/// Poll `find` until it answers or `timeout` passes (device probing is asynchronous).
pub fn wait_for<T>(timeout: Duration, mut find: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = find() {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
