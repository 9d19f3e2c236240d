//! The hardware watchdog (iTCO on Xeon boards, i6300esb in Proxmox VMs): once armed, the
//! machine resets unless PID 1 keeps writing to it. It is fed from the async runtime that
//! serves the appliance, so a wedged runtime stops feeding and the reset turns a hang into a
//! failed boot try (and, for an image on trial, a rollback). A clean stop disarms it with the
//! kernel's "magic close" so a slow shutdown is not cut short.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::Duration;

const DEVICE: &str = "/dev/watchdog";
const FEED_EVERY: Duration = Duration::from_secs(5);

pub struct Watchdog {
    file: File,
}

impl Watchdog {
    /// Arm the watchdog if the machine has one.
    pub fn arm() -> Option<Watchdog> {
        match OpenOptions::new().write(true).open(DEVICE) {
            Ok(file) => {
                tracing::info!(
                    device = DEVICE,
                    feed_every_s = FEED_EVERY.as_secs(),
                    "hardware watchdog armed"
                );
                Some(Watchdog { file })
            }
            Err(e) => {
                tracing::info!(device = DEVICE, reason = %e, "no hardware watchdog");
                None
            }
        }
    }

    /// Feed it until `stop` fires, then disarm.
    pub async fn feed_until(mut self, stop: tokio::sync::oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(FEED_EVERY);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.file.write_all(b"\0") {
                        tracing::warn!(error = %e, "cannot feed the watchdog");
                    }
                }
                _ = &mut stop => break,
            }
        }
        // Magic close: 'V' then close disarms drivers built without nowayout.
        let _ = self.file.write_all(b"V");
    }
}
