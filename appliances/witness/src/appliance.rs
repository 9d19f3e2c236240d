//! The witness as PID 1 of its appliance image: the runtime in the `pid1` crate boots the
//! machine and hands over the configuration (baked TOML plus the cloud-init overlay, which is
//! where each VM's node id, voters and addresses come from).

use std::path::Path;

use crate::{WitnessConfig, WitnessHandle};

/// The witness as the image builder and `clk` know it.
pub const MANIFEST: pid1::Manifest = pid1::Manifest {
    name: "witness",
    summary: "Witness of the controller quorum (third site, no partition data)",
    check_baked_config: pid1::manifest::check_service_config::<WitnessHandle>,
    default_config: "image/configs/witness.toml",
    ports: &[
        pid1::Port {
            number: quorum::config::QUORUM_PORT,
            name: "quorum",
        },
        pid1::Port {
            number: crate::config::ADMIN_PORT,
            name: "admin",
        },
    ],
    admin_port: crate::config::ADMIN_PORT,
    // The metadata log and its snapshot live in memory; a few hundred MiB is ample.
    memory_mib: 512,
};

/// The witness's image appliance.
pub type WitnessAppliance = pid1::ServiceAppliance<WitnessHandle>;

impl pid1::Service for WitnessHandle {
    type Config = WitnessConfig;

    fn data_dir(config: &WitnessConfig) -> &Path {
        &config.data_dir
    }

    async fn start(config: WitnessConfig) -> anyhow::Result<Self> {
        crate::start(config).await
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown().await
    }
}
