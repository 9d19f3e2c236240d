//! The S3 gateway appliance: an S3-compatible object store for claim-check payloads.
//!
//! Reading order: [`server`] (lifecycle, metrics), [`access`] (which key may do what),
//! [`gateway`] (the S3 operations, on the `s3s` framework which does HTTP routing, XML and
//! SigV4/SigV2), [`checksums`] (x-amz-checksum-*), [`store`] (buckets, the listing index,
//! multipart uploads), [`object_file`] (one object's on-disk format: content, block CRCs,
//! metadata; atomic publish).

pub mod access;
pub mod appliance;
pub mod checksums;
pub mod config;
pub mod gateway;
pub mod host;
pub mod object_file;
pub mod server;
pub mod store;

pub use config::S3gwConfig;
pub use server::{S3gwHandle, start};
