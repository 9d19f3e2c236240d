//! The S3 gateway as PID 1 of its appliance image: the runtime in the `pid1` crate boots the
//! machine and hands over the configuration (baked TOML plus the cloud-init overlay, which
//! is where each VM's access keys come from).

use crate::{S3gwConfig, S3gwHandle};

#[derive(Default)]
pub struct S3gwAppliance {
    running: Option<S3gwHandle>,
}

impl pid1::Appliance for S3gwAppliance {
    async fn start(&mut self, ctx: &pid1::BootContext) -> anyhow::Result<()> {
        let config: S3gwConfig = appconfig::parse_str(&ctx.config_text, &ctx.config_origin)?;
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
