//! The witness appliance: a voter of the controller quorum at a third site, so that the
//! quorum survives the loss of either data site (and decides which site goes on when the two
//! lose each other). It stores no partition data: only the quorum's small metadata log.
//! While it leads the quorum, the controller runs here (the quorum crate's `QuorumNode` does
//! that on whichever voter leads).
//!
//! Reading order: [`server`] (lifecycle: data directory, the quorum member, the quorum
//! listener, the admin endpoints) → [`data_dir`] (who owns the directory) → [`config`] → [`appliance`] (as PID 1 of its image).

pub mod appliance;
pub mod config;
pub mod data_dir;
pub mod server;

pub use config::WitnessConfig;
pub use server::{WitnessHandle, start, start_with_listener};
