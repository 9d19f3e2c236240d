//! The broker as PID 1 of its appliance image: the runtime in the `pid1` crate boots the
//! machine and hands over the configuration (baked TOML plus the cloud-init overlay).

use std::path::Path;

use crate::{BrokerConfig, BrokerHandle};

/// The broker as the image builder and `clk` know it.
pub const MANIFEST: pid1::Manifest = pid1::Manifest {
    name: "broker",
    summary: "Kafka-compatible broker (a data site's node)",
    check_baked_config: pid1::manifest::check_service_config::<BrokerHandle>,
    default_config: "image/configs/broker.toml",
    ports: &[
        pid1::Port {
            number: 9092,
            name: "kafka",
        },
        pid1::Port {
            number: 9644,
            name: "admin",
        },
    ],
    admin_port: 9644,
    memory_mib: 8192,
};

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
