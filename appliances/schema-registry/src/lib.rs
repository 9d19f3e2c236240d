//! A Confluent-compatible Schema Registry, served by the broker on :8081: Avro schemas and
//! their compatibility rules ([`compat`]), parsing with references and canonical texts
//! ([`avro`]), the state as records of the compacted `_schemas` topic ([`records`]) and the
//! state machine those records drive ([`store`]), with Confluent's errors ([`error`]).

pub mod api;
pub mod avro;
pub mod compat;
pub mod error;
pub mod gate;
pub mod metrics;
pub mod records;
pub mod server;
pub mod store;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod compat_tests;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod store_tests;
