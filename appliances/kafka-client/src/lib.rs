//! A small Kafka protocol client over `kafka-protocol`: one connection, pipelined requests
//! (responses arrive in request order, as the protocol guarantees), version negotiation with
//! ApiVersions, and helpers to build record batches.
//!
//! It exists for the cases a general client library hides what we need: the benchmark drives
//! raw pipelined Produce requests with pre-built batches at a chosen offered load; tests send
//! exact requests; the edge gateway controls batch boundaries and
//! producer sequences itself so that a resend after a crash is recognised as a duplicate.

pub mod batch;
pub mod conn;
pub mod login;
pub mod metadata;

pub use batch::encode_batch;
pub use conn::{Connection, Error};
pub use login::LoggedIn;
pub use metadata::broker_addresses;
