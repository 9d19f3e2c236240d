//! The gateway as PID 1 of its appliance image: the runtime in the `pid1` crate boots the
//! machine and hands over the configuration (baked TOML plus the cloud-init overlay, which
//! is where each branch's gateway name, hub addresses and certificate paths come from).

use std::path::Path;

use crate::{EdgeConfig, EdgeHandle};

/// The gateway as the image builder and `clk` know it.
pub const MANIFEST: pid1::Manifest = pid1::Manifest {
    name: "edge",
    summary: "Edge gateway (a branch's durable buffer, forwarding to the hub)",
    check_baked_config: pid1::manifest::check_service_config::<EdgeHandle>,
    default_config: "image/configs/edge.toml",
    ports: &[
        pid1::Port {
            number: 9092,
            name: "kafka",
        },
        pid1::Port {
            number: 8082,
            name: "http",
        },
        pid1::Port {
            number: 9644,
            name: "admin",
        },
    ],
    admin_port: 9644,
    // The seed's goal is 64 MiB of RSS; the rest is page cache for the buffer.
    memory_mib: 1024,
};

/// The gateway's image appliance.
pub type EdgeAppliance = pid1::ServiceAppliance<EdgeHandle>;

impl pid1::Service for EdgeHandle {
    type Config = EdgeConfig;

    fn data_dir(config: &EdgeConfig) -> &Path {
        &config.buffer.data_dir
    }

    async fn start(config: EdgeConfig) -> anyhow::Result<Self> {
        crate::start(config).await
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown().await
    }
}
