//! The S3 gateway appliance: an S3-compatible object store for claim-check payloads.
//!
//! Reading order: [`server`] (lifecycle), [`gateway`] (the S3 operations, on the `s3s`
//! framework which does HTTP routing, XML, SigV4/SigV2 and checksums), [`store`] (buckets and
//! the listing index), [`object_file`] (one object's on-disk format: content, block CRCs,
//! metadata; atomic publish).

pub mod config;
pub mod gateway;
pub mod object_file;
pub mod server;
pub mod store;

pub use config::S3gwConfig;
pub use server::{S3gwHandle, start};
