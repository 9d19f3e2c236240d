//! `data_disk_*` metrics: size and free space of the file system holding an appliance's data,
//! read on each scrape, so that an operator is warned before writes are refused.

use std::io;
use std::path::{Path, PathBuf};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

/// The file system holding a path, in bytes.
pub struct DiskSpace {
    pub size: u64,
    /// What an unprivileged writer could still allocate. (The appliances run as root, which
    /// could also use ext4's root reserve: leaving that alone keeps it for the rest of the
    /// appliance.)
    pub available: u64,
}

pub fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    let s = nix::sys::statvfs::statvfs(path)?;
    Ok(DiskSpace {
        size: s.blocks() * s.fragment_size(),
        available: s.blocks_available() * s.fragment_size(),
    })
}

#[derive(Debug)]
pub struct DiskCollector {
    data_dir: PathBuf,
}

impl DiskCollector {
    pub fn new(data_dir: impl Into<PathBuf>) -> DiskCollector {
        DiskCollector {
            data_dir: data_dir.into(),
        }
    }
}

impl Collector for DiskCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A data directory not created yet (or gone) has nothing to report.
        let Ok(space) = disk_space(&self.data_dir) else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "data_disk_size_bytes",
                "Size of the file system holding the data directory.",
                space.size,
            ),
            (
                "data_disk_available_bytes",
                "Bytes still available to writers on the data file system.",
                space.available,
            ),
        ] {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
