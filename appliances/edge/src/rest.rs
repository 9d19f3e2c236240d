//! The HTTP ingest's wire format, for devices that speak HTTP but not Kafka: Confluent REST
//! Proxy v2's produce request (`POST /topics/<topic>`), so that its clients and examples work
//! unchanged:
//!
//! ```json
//! {"records": [{"key": "pump-7", "value": {"bar": 3.2}}, {"value": "...", "partition": 1}]}
//! ```
//!
//! - `application/vnd.kafka.json.v2+json` (or `application/json`): keys and values are JSON,
//!   stored as their JSON text;
//! - `application/vnd.kafka.binary.v2+json`: keys and values are base64, stored as their
//!   bytes (Confluent wire-format Avro, `0x00 <schema id> <datum>`, goes in this way as is).
//!
//! Pure functions over the body (the `rest_produce` fuzz target): a malformed body is a
//! [`RestError`] with the status and Confluent error code it is answered with.

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use crate::local::Refused;

/// How keys and values are embedded in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedded {
    Json,
    Binary,
}

/// One record of a produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// The value as posted, in the JSON format: encoded with the topic's Avro schema
    /// instead of stored as text when the topic has one.
    pub json: Option<serde_json::Value>,
    /// The key as posted, in the JSON format (for a topic with an Avro key subject).
    pub key_json: Option<serde_json::Value>,
    pub partition: Option<i32>,
}

/// A refusal, answered as `{"error_code": code, "message": ...}` with `status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RestError {
    pub status: u16,
    /// Confluent's codes: the status, or the status and a sub-code (`40401`).
    pub code: u32,
    pub message: String,
}

impl RestError {
    pub fn new(status: u16, code: u32, message: impl Into<String>) -> RestError {
        RestError {
            status,
            code,
            message: message.into(),
        }
    }

    fn malformed(message: impl Into<String>) -> RestError {
        // REST Proxy answers a body it cannot use with 422 Unprocessable Entity.
        RestError::new(422, 42200, message)
    }

    /// The answer's JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error_code": self.code, "message": self.message })
    }
}

/// The embedded format a `Content-Type` names.
pub fn embedded_format(content_type: Option<&str>) -> Result<Embedded, RestError> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/vnd.kafka.json.v2+json" | "application/json") => Ok(Embedded::Json),
        Some("application/vnd.kafka.binary.v2+json") => Ok(Embedded::Binary),
        Some("application/vnd.kafka.avro.v2+json") => Err(RestError::new(
            415,
            415,
            "post the value as JSON (application/vnd.kafka.json.v2+json): it is encoded with the \
             topic's registered schema; or Confluent wire-format Avro as binary",
        )),
        other => Err(RestError::new(
            415,
            415,
            format!(
                "Content-Type {other:?} is not application/vnd.kafka.json.v2+json or \
                 application/vnd.kafka.binary.v2+json"
            ),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    records: Vec<RawRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    #[serde(default)]
    key: serde_json::Value,
    #[serde(default)]
    value: serde_json::Value,
    #[serde(default)]
    partition: Option<i32>,
}

/// The records of a produce request's body, at most `records_max` of them.
pub fn parse_records(
    format: Embedded,
    body: &[u8],
    records_max: usize,
) -> Result<Vec<RestRecord>, RestError> {
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| RestError::malformed(format!("the body is not a produce request: {e}")))?;
    if body.records.is_empty() {
        return Err(RestError::malformed("the request holds no records"));
    }
    if body.records.len() > records_max {
        return Err(RestError::new(
            413,
            413,
            format!(
                "the request holds {} records, more than {records_max}",
                body.records.len()
            ),
        ));
    }
    body.records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            if r.partition.is_some_and(|p| p < 0) {
                return Err(RestError::malformed(format!(
                    "record {i}: partition {:?} is negative",
                    r.partition
                )));
            }
            let json = (format == Embedded::Json && !r.value.is_null()).then(|| r.value.clone());
            let key_json = (format == Embedded::Json && !r.key.is_null()).then(|| r.key.clone());
            Ok(RestRecord {
                key: embedded(format, r.key).map_err(|e| at(i, "key", e))?,
                value: embedded(format, r.value).map_err(|e| at(i, "value", e))?,
                json,
                key_json,
                partition: r.partition,
            })
        })
        .collect()
}

fn at(i: usize, what: &str, why: String) -> RestError {
    RestError::malformed(format!("record {i}: the {what} {why}"))
}

/// A key or value as stored: absent and null are no bytes at all.
fn embedded(format: Embedded, v: serde_json::Value) -> Result<Option<Bytes>, String> {
    match (format, v) {
        (_, serde_json::Value::Null) => Ok(None),
        (Embedded::Json, v) => Ok(Some(Bytes::from(
            serde_json::to_vec(&v).expect("a JSON value serializes"),
        ))),
        (Embedded::Binary, serde_json::Value::String(s)) => {
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map(|b| Some(Bytes::from(b)))
                .map_err(|e| format!("is not base64: {e}"))
        }
        (Embedded::Binary, _) => Err("must be a base64 string".into()),
    }
}

/// The answer to a produce request, record by record in the request's order (REST Proxy's
/// shape: `offset` or `error_code` and `error` for each).
pub fn offsets_body(results: &[Result<(i32, i64), Refused>]) -> serde_json::Value {
    let offsets: Vec<serde_json::Value> = results
        .iter()
        .map(|r| match r {
            Ok((p, o)) => serde_json::json!({
                "partition": p, "offset": o, "error_code": null, "error": null
            }),
            Err(r) => serde_json::json!({
                "partition": null, "offset": null, "error_code": r.code, "error": r.message
            }),
        })
        .collect();
    serde_json::json!({ "offsets": offsets, "key_schema_id": null, "value_schema_id": null })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_records_are_stored_as_their_json_text() {
        let body = br#"{"records":[{"key":"pump-7","value":{"bar":3.2}},{"value":[1,2],"partition":1},{}]}"#;
        let r = parse_records(Embedded::Json, body, 10).unwrap();
        assert_eq!(r[0].key.as_deref(), Some(&b"\"pump-7\""[..]));
        assert_eq!(r[0].value.as_deref(), Some(&b"{\"bar\":3.2}"[..]));
        assert_eq!((r[1].key.clone(), r[1].partition), (None, Some(1)));
        assert_eq!((r[2].key.clone(), r[2].value.clone()), (None, None));
    }

    #[test]
    fn binary_records_are_base64() {
        let body = br#"{"records":[{"key":"cHVtcA==","value":"AAAAAAEC"}]}"#;
        let r = parse_records(Embedded::Binary, body, 10).unwrap();
        assert_eq!(r[0].key.as_deref(), Some(&b"pump"[..]));
        assert_eq!(r[0].value.as_deref(), Some(&[0, 0, 0, 0, 1, 2][..]));
        let e = parse_records(Embedded::Binary, br#"{"records":[{"value":"***"}]}"#, 10);
        assert!(
            e.unwrap_err()
                .message
                .contains("record 0: the value is not base64")
        );
        let e = parse_records(Embedded::Binary, br#"{"records":[{"value":7}]}"#, 10);
        assert!(e.unwrap_err().message.contains("base64 string"));
    }

    #[test]
    fn bad_bodies_are_named_with_their_status() {
        let cases: [(&[u8], u16, &str); 6] = [
            (b"{", 422, "not a produce request"),
            (b"{\"records\":[]}", 422, "no records"),
            (b"{\"records\":[{\"valu\":1}]}", 422, "unknown field"),
            (b"{\"records\":[{\"partition\":-1}]}", 422, "negative"),
            (b"{\"records\":[{},{},{}]}", 413, "more than 2"),
            (b"[1]", 422, "not a produce request"),
        ];
        for (body, status, why) in cases {
            let e = parse_records(Embedded::Json, body, 2).unwrap_err();
            assert_eq!(e.status, status, "{e}");
            assert!(e.message.contains(why), "{e}");
        }
    }

    #[test]
    fn content_types_name_the_format() {
        let ok = [
            ("application/vnd.kafka.json.v2+json", Embedded::Json),
            ("application/json; charset=utf-8", Embedded::Json),
            ("Application/Vnd.Kafka.Binary.V2+Json", Embedded::Binary),
        ];
        for (c, f) in ok {
            assert_eq!(embedded_format(Some(c)), Ok(f));
        }
        for c in [
            None,
            Some("text/plain"),
            Some("application/vnd.kafka.avro.v2+json"),
        ] {
            assert_eq!(embedded_format(c).unwrap_err().status, 415);
        }
    }
}
