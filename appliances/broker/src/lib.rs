//! The broker appliance: a Kafka-wire-compatible broker.
//!
//! Start one in-process with [`start`] (tests, the lab) or as a process with the `broker`
//! binary. Reading order for a newcomer: [`server`] (lifecycle), [`connection`] and [`frame`]
//! (the wire), [`api`] (one module per Kafka API family), [`partition`] (a log with group
//! commit and the high watermark), [`topics`] and [`catalog`] (metadata), [`groups`] (the
//! consumer group coordinator). Storage itself is the `durable-log` crate.

pub mod api;
pub mod appliance;
pub mod authn;
pub mod authz;
pub mod cluster;
pub mod cluster_metrics;
pub mod config;
mod connection;
pub mod data_dir;
pub mod fetcher;
pub mod frame;
pub mod groups;
pub mod internal_log;
mod listeners;
pub mod metrics;
pub mod migrate;
pub mod partition;
pub mod producer_ids;
pub mod replica;
pub mod replica_manager;
pub mod schemas;
pub mod server;
pub mod session;
pub mod state;
pub mod topic_config;
pub mod topics;

pub use config::BrokerConfig;
pub use server::{BrokerHandle, Embedding, start, start_with};
