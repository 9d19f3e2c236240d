//! `data_disk_*` metrics: size and free space of the file system holding an appliance's data,
//! read on each scrape, so that an operator is warned before writes are refused.

use std::path::PathBuf;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

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
        let Ok(s) = nix::sys::statvfs::statvfs(&self.data_dir) else {
            return Ok(());
        };
        let block = s.fragment_size();
        for (name, help, value) in [
            (
                "data_disk_size_bytes",
                "Size of the file system holding the data directory.",
                s.blocks() * block,
            ),
            (
                "data_disk_available_bytes",
                "Bytes still available to writers on the data file system.",
                s.blocks_available() * block,
            ),
        ] {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
