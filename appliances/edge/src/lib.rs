//! The edge gateway: at each branch, a durable buffer between local producers (Kafka clients,
//! HTTP, the branch database's outbox) and the hub, forwarding with no loss and no duplicates.
//!
//! Built in steps against docs/architecture.md ("The edge gateway"). Reading order:
//! - [`server`]: the lifecycle: the buffer (the broker, one node, in-process) and one
//!   forwarder per local partition; [`config`] its file;
//! - [`forwarder`]: a local partition's records to the hub, in order, journaled;
//! - [`journal`]: what the forwarder promised the hub (rounds of batches with their producer
//!   sequences), so that a restart re-sends the same batches and the hub's idempotence
//!   recognises them; and [`journal::JournalFile`], its fsynced file;
//! - [`outgoing`]: a batch as it leaves for the hub: the local records with their stream
//!   and sequence headers, the producer's stamp, lz4;
//! - [`parked`] and [`parking`]: records the hub refused for good, and those of their key
//!   behind them, kept at the branch until an operator releases or drops the key;
//! - [`claim_check`]: large payloads to the hub's S3 gateway, the forwarded event carrying
//!   the reference;
//! - [`hub`]: the hub's metadata, producer ids and acks=all produce;
//! - [`limits`]: the buffer's size and age limits on ingest, and the removal of what the hub
//!   acknowledged;
//! - [`partitioner`]: the hub partition a key goes to, as Kafka's default partitioner picks it;
//! - [`pgoutput`] and [`outbox`]: the branch database's outbox rows out of its logical
//!   replication messages, transactions already buffered skipped;
//! - [`http`] and [`rest`]: the HTTP ingest (REST Proxy v2's produce); [`local`]: writing
//!   to the buffer through the broker's produce path in-process;
//! - [`schemas`]: the hub's Avro schemas mirrored to disk, values validated against them
//!   (the broker's `RecordCheck`) and JSON encoded with them; [`registry_client`] reads the
//!   hub's registry;
//! - [`outbox_reader`]: the replication slot read through SQL, each round appended to the
//!   buffer (de-duplicated by stream) before the slot advances.

pub mod appliance;
pub mod claim_check;
pub mod config;
pub mod forwarder;
pub mod http;
pub mod hub;
pub mod journal;
pub mod limits;
pub mod local;
pub mod metrics;
pub mod outbox;
pub mod outbox_reader;
pub mod outgoing;
pub mod parked;
pub mod parking;
pub mod partitioner;
pub mod pg_tls;
pub mod pgoutput;
pub mod registry_client;
pub mod rest;
pub mod schemas;
pub mod server;

pub use config::EdgeConfig;
pub use server::{EdgeHandle, start};
