//! The edge gateway: at each branch, a durable buffer between local producers (Kafka clients,
//! HTTP, the branch database's outbox) and the hub, forwarding with no loss and no duplicates.
//!
//! Being built in steps against docs/architecture.md ("The edge gateway: the plan"). Here so
//! far, the pure pieces the forwarder stands on:
//! - [`partitioner`]: the hub partition a key goes to, as Kafka's default partitioner picks it;
//! - [`journal`]: what the forwarder promised the hub (rounds of batches with their producer
//!   sequences), so that a restart re-sends the same batches and the hub's idempotence
//!   recognises them; and [`journal::JournalFile`], its fsynced file;
//! - [`outgoing`]: a batch as it leaves for the hub: the local records with their stream
//!   and sequence headers, the producer's stamp, lz4;
//! - [`pgoutput`] and [`outbox`]: the branch database's outbox rows out of its logical
//!   replication messages, transactions already buffered skipped.

pub mod journal;
pub mod outbox;
pub mod outgoing;
pub mod partitioner;
pub mod pgoutput;
