//! The broker as PID 1 of its appliance image: the runtime in the `pid1` crate boots the
//! machine and hands over the configuration (baked TOML plus the cloud-init overlay).

use std::path::Path;

use crate::{BrokerConfig, BrokerHandle};

/// The broker's image appliance.
pub type BrokerAppliance = pid1::ServiceAppliance<BrokerHandle>;

impl pid1::Service for BrokerHandle {
    type Config = BrokerConfig;

    fn data_dir(config: &BrokerConfig) -> &Path {
        &config.data_dir
    }

    async fn start(config: BrokerConfig) -> anyhow::Result<Self> {
        crate::start(config).await
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown().await
    }
}
