//! The broker as PID 1 of its appliance image: the runtime in the `pid1` crate boots the
//! machine and hands over the configuration (baked TOML plus the cloud-init overlay).

use crate::{BrokerConfig, BrokerHandle};

#[derive(Default)]
pub struct BrokerAppliance {
    running: Option<BrokerHandle>,
}

impl pid1::Appliance for BrokerAppliance {
    async fn start(&mut self, ctx: &pid1::BootContext) -> anyhow::Result<()> {
        let config: BrokerConfig = appconfig::parse_str(&ctx.config_text, &ctx.config_origin)?;
        std::fs::create_dir_all(&config.data_dir)?;
        self.running = Some(crate::start(config).await?);
        Ok(())
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        match self.running.take() {
            Some(handle) => handle.shutdown().await,
            None => Ok(()),
        }
    }
}
