//! Harness for end-to-end tests: appliances run as real processes (the binaries cargo built
//! for this workspace) and are driven by real clients (kcat, confluent-kafka, kafka-python,
//! boto3).
//!
//! Nothing here sleeps to synchronise: every wait is on a condition with a deadline.

pub mod acked;
pub mod broker;
pub mod clients;
pub mod compacted;
pub mod edge;
pub mod hub;
pub mod netns;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod s3gw;
pub mod small_disk;
pub mod wait;
pub mod witness;

pub use broker::Broker;
pub use s3gw::S3gw;
pub use wait::wait_until;

/// The `[admin] token` of every broker and witness the tests start (changes through the
/// admin port need it).
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
