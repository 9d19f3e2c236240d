//! The S3 gateway as PID 1 of its appliance image: the runtime in the `pid1` crate boots the
//! machine and hands over the configuration (baked TOML plus the cloud-init overlay, which
//! is where each VM's access keys come from).

use std::path::Path;

use crate::{S3gwConfig, S3gwHandle};

/// The S3 gateway as the image builder and `clk` know it.
pub const MANIFEST: pid1::Manifest = pid1::Manifest {
    name: "s3gw",
    summary: "S3-compatible object store for large payloads",
    check_baked_config,
    default_config: "image/configs/s3gw.toml",
    ports: &[
        pid1::Port {
            number: 9000,
            name: "s3",
        },
        pid1::Port {
            number: 9645,
            name: "admin",
        },
    ],
    admin_port: 9645,
    memory_mib: 4096,
};

/// Access keys are per VM (cloud-init), so a baked file may have none: it is checked with
/// [`S3gwConfig::validate_baked`], not with the start-time validation that requires a key.
fn check_baked_config(text: &str, origin: &str) -> anyhow::Result<pid1::BakedConfig> {
    let c: S3gwConfig =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("config {origin}: {e}"))?;
    c.validate_baked()
        .map_err(|e| anyhow::anyhow!("config {origin}: {e}"))?;
    Ok(pid1::BakedConfig {
        data_dir: c.data_dir,
    })
}

/// The S3 gateway's image appliance.
pub type S3gwAppliance = pid1::ServiceAppliance<S3gwHandle>;

impl pid1::Service for S3gwHandle {
    type Config = S3gwConfig;

    fn data_dir(config: &S3gwConfig) -> &Path {
        &config.data_dir
    }

    async fn start(config: S3gwConfig) -> anyhow::Result<Self> {
        crate::start(config).await
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown().await
    }
}
