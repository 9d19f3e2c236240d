//! The S3 gateway as PID 1 of its appliance image: the runtime in the `pid1` crate boots the
//! machine and hands over the configuration (baked TOML plus the cloud-init overlay, which
//! is where each VM's access keys come from).

use std::path::Path;

use crate::{S3gwConfig, S3gwHandle};

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
