//! Turning one Kafka frame (the bytes after the 4-byte size) into a typed request, and a
//! response into a frame. Pure functions of their input, so the fuzz target drives exactly
//! what the network does.
//!
//! Malformed input never panics: a frame that cannot be understood is reported as
//! [`Decoded::Close`] with the reason, and the connection is closed, as Kafka does. The one
//! exception is ApiVersions at a version above ours, which Kafka answers with
//! UNSUPPORTED_VERSION in the v0 format so that newer clients can downgrade.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;

use crate::api::versions;

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

#[derive(Debug)]
pub enum Decoded {
    Request(Box<Request>),
    /// ApiVersions newer than we speak: answer in v0 with UNSUPPORTED_VERSION.
    ApiVersionsTooNew {
        correlation_id: i32,
    },
    /// Not a request we can answer; close the connection.
    Close(String),
}

/// The fields every request header starts with, readable without knowing the API.
pub fn peek_header(frame: &[u8]) -> Option<(i16, i16, i32)> {
    if frame.len() < 8 {
        return None;
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    Some((key, version, correlation))
}

pub fn decode(frame: Bytes) -> Decoded {
    let Some((key, version, correlation_id)) = peek_header(&frame) else {
        return Decoded::Close(format!(
            "request of {} bytes is too short for a header",
            frame.len()
        ));
    };
    let Ok(api_key) = ApiKey::try_from(key) else {
        return Decoded::Close(format!("unknown API key {key}"));
    };
    if !versions::is_supported(api_key, version) {
        if api_key == ApiKey::ApiVersions && version > 0 {
            return Decoded::ApiVersionsTooNew { correlation_id };
        }
        return Decoded::Close(format!("unsupported version {version} of {api_key:?}"));
    }
    let mut buf = frame;
    let header_version = api_key.request_header_version(version);
    let header = match <RequestHeader as kafka_protocol::protocol::Decodable>::decode(
        &mut buf,
        header_version,
    ) {
        Ok(h) => h,
        Err(e) => return Decoded::Close(format!("bad {api_key:?} v{version} header: {e:#}")),
    };
    match RequestKind::decode(api_key, &mut buf, version) {
        Ok(body) => Decoded::Request(Box::new(Request {
            api_key,
            version,
            header,
            body,
        })),
        Err(e) => Decoded::Close(format!("bad {api_key:?} v{version} body: {e:#}")),
    }
}

/// Encode a response frame, size prefix included.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut buf, api_key.response_header_version(version))?;
    body.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest, RequestHeader};

    fn frame_of(key: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some("t".into()));
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_a_request() {
        let f = frame_of(ApiKey::Metadata, 9, &MetadataRequest::default());
        match decode(f) {
            Decoded::Request(r) => {
                assert_eq!(
                    (r.api_key, r.version, r.header.correlation_id),
                    (ApiKey::Metadata, 9, 7)
                );
                assert!(matches!(r.body, RequestKind::Metadata(_)));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A header (v1: key, version, correlation, client id "t") followed by `body`.
    fn raw_frame(key: i16, version: i16, body: &[u8]) -> Bytes {
        let mut f = Vec::new();
        f.extend_from_slice(&key.to_be_bytes());
        f.extend_from_slice(&version.to_be_bytes());
        f.extend_from_slice(&1i32.to_be_bytes());
        f.extend_from_slice(&1i16.to_be_bytes());
        f.push(b't');
        f.extend_from_slice(body);
        f.into()
    }

    #[test]
    fn huge_array_counts_are_refused_without_allocating() {
        // Fetch v4: replica id, max wait, min bytes, max bytes, isolation, then a topic array
        // announcing i32::MAX entries. Before the vendored decoder patch this aborted the
        // process trying to allocate tens of gigabytes.
        let mut body = Vec::new();
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&500i32.to_be_bytes());
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&1024i32.to_be_bytes());
        body.push(0);
        body.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(decode(raw_frame(1, 4, &body)), Decoded::Close(_)));
        // Metadata v9 is flexible: compact array count as an unsigned varint near u32::MAX.
        let mut f = raw_frame(3, 9, &[]).to_vec();
        f.push(0); // header tagged fields
        f.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(decode(f.into()), Decoded::Close(_)));
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        assert!(matches!(
            decode(Bytes::from_static(b"\x00\x01")),
            Decoded::Close(_)
        ));
        assert!(
            matches!(decode(Bytes::from_static(b"\x7f\x7f\x00\x00\x00\x00\x00\x01")), Decoded::Close(m) if m.contains("unknown API key"))
        );
        let f = frame_of(ApiKey::Metadata, 13, &MetadataRequest::default());
        assert!(matches!(decode(f), Decoded::Close(m) if m.contains("unsupported version")));
        let f = frame_of(ApiKey::ApiVersions, 4, &ApiVersionsRequest::default());
        assert!(matches!(
            decode(f),
            Decoded::ApiVersionsTooNew { correlation_id: 7 }
        ));
        let mut truncated = frame_of(ApiKey::Metadata, 9, &MetadataRequest::default()).to_vec();
        truncated.truncate(truncated.len() - 1);
        assert!(matches!(decode(truncated.into()), Decoded::Close(_)));
    }
}
