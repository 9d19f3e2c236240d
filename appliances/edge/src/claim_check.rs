//! Claim checks: a payload too large to travel with its event (a biometric scan) goes to the
//! hub's S3 gateway, and the event forwarded in its place carries the reference.
//!
//! Done as a batch leaves for the hub, on the outgoing copy (the local record is untouched):
//! a record whose value is over `threshold_bytes`, or that carries the header
//! `clk-claim-check` (any value), is uploaded under `<gateway>/<topic>/<partition>/<offset>`,
//! its stream and sequence, so that sending the batch again (after a restart, a lost answer)
//! overwrites the same object and never makes a second one. The upload is checked by the
//! server byte for byte (SHA-256, per part when multipart) and complete before the batch is
//! sent: an event never reaches the hub before its payload. An object already there with the
//! checksum this payload's upload leaves (a batch sent again) is not uploaded again. The reference is JSON with a
//! fixed field order, so that the batch is the same bytes every time it is sent (the hub's
//! idempotence compares batches):
//!
//! ```json
//! {"bucket":"payloads","key":"branch-017/scans/0/4711","size":7340032,
//!  "sha256":"9f86d0...","content_type":"image/png"}
//! ```
//!
//! and the outgoing record's `clk-claim-check` header says `v1`.
//!
//! With `[hub.tls]` (the branch's certificate and the hub's CA), an `https://` endpoint is
//! reached over mutual TLS with them, as the Kafka forwarding is; renewed files are picked up
//! by the next upload.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Record;
use serde::Serialize;

use crate::config::ClaimCheckSettings;
use crate::journal::LocalOffset;
use crate::outgoing::StreamId;

/// The header that asks for a claim check, and on the forwarded record says it is one.
pub const CLAIM_HEADER: &str = "clk-claim-check";
/// The header a payload's content type is taken from.
const CONTENT_TYPE_HEADER: &str = "content-type";
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// What the forwarded event carries instead of its payload.
#[derive(Debug, Serialize)]
pub struct Reference<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub size: u64,
    /// Hex.
    pub sha256: String,
    pub content_type: &'a str,
}

/// The S3 client and the TLS configuration it was built with.
type Client = (Option<Arc<tls::ClientConfig>>, s3_client::S3Client);

pub struct ClaimCheck {
    client: parking_lot::Mutex<Client>,
    tls: Option<Arc<tls::TlsClient>>,
    settings: ClaimCheckSettings,
}

impl ClaimCheck {
    /// Uploads to `settings.endpoint`, with `tls` (the hub's) for an `https://` one.
    pub fn new(
        settings: ClaimCheckSettings,
        tls: Option<Arc<tls::TlsClient>>,
    ) -> anyhow::Result<ClaimCheck> {
        let tls = tls.filter(|_| settings.endpoint.starts_with("https://"));
        let config = tls.as_ref().map(|t| t.client_config());
        let s3 = build(&settings, config.clone())?;
        Ok(ClaimCheck {
            client: parking_lot::Mutex::new((config, s3)),
            tls,
            settings,
        })
    }

    /// The client, built again when the TLS files were reloaded since.
    fn s3(&self) -> anyhow::Result<s3_client::S3Client> {
        let mut client = self.client.lock();
        if let Some(t) = &self.tls {
            let now = t.client_config();
            if !client.0.as_ref().is_some_and(|c| Arc::ptr_eq(c, &now)) {
                *client = (Some(Arc::clone(&now)), build(&self.settings, Some(now))?);
            }
        }
        Ok(client.1.clone())
    }

    /// Whether `r`'s payload travels by claim check.
    pub fn wants(&self, r: &Record) -> bool {
        let large = r
            .value
            .as_ref()
            .is_some_and(|v| v.len() as u64 > self.settings.threshold_bytes);
        large || header(r, CLAIM_HEADER).is_some()
    }

    /// Upload `r`'s payload (record `offset` of stream `stream`) unless the S3 gateway holds
    /// it already, whole (its stored checksum is the one this payload's upload leaves: a
    /// batch sent again after a lost answer or a restart does not upload its payloads
    /// again); the record to forward in its place, and the bytes uploaded.
    pub async fn check_in(
        &self,
        stream: &StreamId,
        offset: LocalOffset,
        r: &Record,
    ) -> anyhow::Result<(Record, u64)> {
        let value = r.value.clone().unwrap_or_default();
        let key = format!("{stream}/{}", offset.0);
        let content_type = header(r, CONTENT_TYPE_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or(DEFAULT_CONTENT_TYPE)
            .to_string();
        let size = value.len() as u64;
        let part_bytes = self.settings.part_bytes as usize;
        let expected = s3_client::S3Client::expected_sha256(&value, part_bytes);
        let s3 = self.s3()?;
        let (sha256, uploaded) = if s3.stored_sha256(&key).await? == Some(expected) {
            (s3_client::sha256(&value), 0)
        } else {
            let sha256 = s3
                .put_verified(&key, value, &content_type, part_bytes)
                .await?;
            (sha256, size)
        };
        let reference = Reference {
            bucket: &self.settings.bucket,
            key: &key,
            size,
            sha256: sha256.iter().map(|b| format!("{b:02x}")).collect(),
            content_type: &content_type,
        };
        let mut out = r.clone();
        out.value = Some(Bytes::from(
            serde_json::to_vec(&reference).expect("a reference serializes"),
        ));
        out.headers.insert(
            StrBytes::from_static_str(CLAIM_HEADER),
            Some(Bytes::from_static(b"v1")),
        );
        Ok((out, uploaded))
    }
}

fn build(
    s: &ClaimCheckSettings,
    tls: Option<Arc<tls::ClientConfig>>,
) -> anyhow::Result<s3_client::S3Client> {
    s3_client::S3Client::with_tls(
        &s.endpoint,
        &s.bucket,
        &s.access_key,
        &s.secret_key,
        &s.region,
        tls,
    )
}

/// A header's value (the first of that name; headers are few).
fn header<'a>(r: &'a Record, name: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v.as_deref().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim_check() -> ClaimCheck {
        ClaimCheck::new(
            ClaimCheckSettings {
                endpoint: "http://127.0.0.1:1".into(),
                bucket: "payloads".into(),
                access_key: "a".into(),
                secret_key: "s".into(),
                region: "us-east-1".into(),
                threshold_bytes: 10,
                part_bytes: 5 << 20,
            },
            None,
        )
        .unwrap()
    }

    #[test]
    fn large_or_marked_payloads_travel_by_claim_check() {
        let cc = claim_check();
        let record = |value: &[u8], marked: bool| {
            let mut headers = indexmap::IndexMap::new();
            if marked {
                headers.insert(StrBytes::from_static_str(CLAIM_HEADER), None);
            }
            crate::local::decoded((None, Some(Bytes::copy_from_slice(value)), headers))
        };
        assert!(!cc.wants(&record(b"0123456789", false)));
        assert!(cc.wants(&record(b"0123456789a", false)));
        assert!(cc.wants(&record(b"x", true)));
    }

    #[test]
    fn a_reference_is_the_same_bytes_every_time() {
        let r = Reference {
            bucket: "payloads",
            key: "branch-017/scans/0/4711",
            size: 3,
            sha256: "ab".into(),
            content_type: "image/png",
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"bucket":"payloads","key":"branch-017/scans/0/4711","size":3,"sha256":"ab","content_type":"image/png"}"#
        );
    }
}
