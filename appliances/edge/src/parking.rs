//! The operator's side of parked records, on the admin port:
//! - `GET /v1/parked`: every parked key of every stream, with its records, first offset and
//!   why the first was refused;
//! - `POST /v1/parked/release` and `POST /v1/parked/drop` with
//!   `{"topic", "partition", "key"}` (or `"key_base64"`, or `"offset"` for a keyless record):
//!   send the key's records to the hub in order and free the key, or remove them for good.
//!   Both need the admin's bearer token, like every change on the admin port.
//!
//! Each stream task owns its parked keys (in its journal) and acts on a request at its next
//! step (within about half a second when idle), so a request is answered `202 Accepted`;
//! `GET /v1/parked` shows it done. The registry only carries views out and requests in.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use base64::Engine;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use telemetry::admin::{AdminFuture, AdminReply, AdminRoutes};

use crate::journal::{LocalOffset, ParkKey, Stream};

/// Requests waiting for one stream at most (an operator's, rarely more than a few).
const REQUESTS_PER_STREAM_MAX: usize = 256;

/// What an operator asked for a parked key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Release,
    Drop,
}

/// One parked key as the admin port shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedView {
    pub topic: String,
    pub partition: i32,
    /// The key as text, when it is UTF-8.
    pub key: Option<String>,
    pub key_base64: Option<String>,
    /// The first parked record's local offset.
    pub offset: i64,
    pub records: usize,
    pub reason: String,
    pub releasing: bool,
}

#[derive(Default)]
struct StreamSlot {
    keys: Vec<ParkedView>,
    requests: VecDeque<(ParkKey, Action)>,
}

/// Every stream's parked keys (as last published) and the requests for them.
#[derive(Default)]
pub struct Parking {
    streams: Mutex<BTreeMap<(String, i32), StreamSlot>>,
}

impl Parking {
    /// Show `stream`'s parked keys as they are now.
    pub fn publish(&self, topic: &str, partition: i32, stream: &Stream) {
        let releasing = stream.releasing().map(|r| &r.key);
        let keys = stream
            .parked()
            .iter()
            .map(|(key, parked)| {
                let (text, b64) = match key {
                    ParkKey::Key(k) => (
                        std::str::from_utf8(k).ok().map(str::to_string),
                        Some(base64::engine::general_purpose::STANDARD.encode(k)),
                    ),
                    ParkKey::Keyless(_) => (None, None),
                };
                ParkedView {
                    topic: topic.to_string(),
                    partition,
                    key: text,
                    key_base64: b64,
                    offset: parked.offsets.front().map_or(-1, |o| o.0),
                    records: parked.offsets.len(),
                    reason: parked.reason.clone(),
                    releasing: releasing == Some(key),
                }
            })
            .collect();
        let mut streams = self.streams.lock().expect("parking lock");
        streams
            .entry((topic.to_string(), partition))
            .or_default()
            .keys = keys;
    }

    /// The requests for a stream, oldest first.
    pub fn take(&self, topic: &str, partition: i32) -> Vec<(ParkKey, Action)> {
        let mut streams = self.streams.lock().expect("parking lock");
        streams
            .get_mut(&(topic.to_string(), partition))
            .map(|s| s.requests.drain(..).collect())
            .unwrap_or_default()
    }

    /// Every parked key.
    pub fn list(&self) -> Vec<ParkedView> {
        let streams = self.streams.lock().expect("parking lock");
        streams.values().flat_map(|s| s.keys.clone()).collect()
    }

    /// Ask `action` for a key parked now; why not otherwise.
    pub fn request(&self, r: &KeyRequest, action: Action) -> Result<(), (StatusCode, String)> {
        let key = r.key()?;
        let mut streams = self.streams.lock().expect("parking lock");
        let slot = streams
            .get_mut(&(r.topic.clone(), r.partition))
            .filter(|s| s.keys.iter().any(|v| view_key(v).as_ref() == Some(&key)))
            .ok_or((
                StatusCode::NOT_FOUND,
                format!("no such key parked in {}/{}", r.topic, r.partition),
            ))?;
        if slot.requests.len() >= REQUESTS_PER_STREAM_MAX {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests wait for this stream".into(),
            ));
        }
        slot.requests.push_back((key, action));
        Ok(())
    }
}

/// The key a view shows.
fn view_key(v: &ParkedView) -> Option<ParkKey> {
    match &v.key_base64 {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .ok()
            .map(ParkKey::Key),
        None => Some(ParkKey::Keyless(LocalOffset(v.offset))),
    }
}

/// A release or drop request's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub topic: String,
    pub partition: i32,
    pub key: Option<String>,
    pub key_base64: Option<String>,
    /// A keyless record's local offset.
    pub offset: Option<i64>,
}

impl KeyRequest {
    fn key(&self) -> Result<ParkKey, (StatusCode, String)> {
        let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_string());
        match (&self.key, &self.key_base64, self.offset) {
            (Some(k), None, None) => Ok(ParkKey::Key(k.as_bytes().to_vec())),
            (None, Some(b), None) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(ParkKey::Key)
                .map_err(|e| bad(&format!("key_base64: {e}"))),
            (None, None, Some(o)) => Ok(ParkKey::Keyless(LocalOffset(o))),
            _ => Err(bad("name the key by one of key, key_base64 or offset")),
        }
    }
}

impl AdminRoutes for Parking {
    fn route(&self, method: &Method, path: &str, body: Bytes) -> Option<AdminFuture> {
        let reply = match (method, path) {
            (&Method::GET, "/v1/parked") => AdminReply::json(StatusCode::OK, &self.list()),
            (&Method::POST, "/v1/parked/release") => self.answer(&body, Action::Release),
            (&Method::POST, "/v1/parked/drop") => self.answer(&body, Action::Drop),
            _ => return None,
        };
        Some(Box::pin(async move { reply }))
    }
}

impl Parking {
    fn answer(&self, body: &[u8], action: Action) -> AdminReply {
        let r: KeyRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return AdminReply::error(StatusCode::BAD_REQUEST, format!("{e}")),
        };
        match self.request(&r, action) {
            Ok(()) => {
                tracing::info!(
                    topic = r.topic,
                    partition = r.partition,
                    ?action,
                    "parked key request accepted"
                );
                AdminReply::json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({ "accepted": true }),
                )
            }
            Err((status, message)) => AdminReply::error(status, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Entry, Producer};

    fn stream_with_parked() -> Stream {
        let mut s = Stream::new(LocalOffset(0));
        s.apply(&Entry::Producer(Producer { id: 1, epoch: 0 }))
            .unwrap();
        s.plan_diverting(LocalOffset(0), &[None, None], 1).unwrap();
        for (o, key) in [
            (0, ParkKey::Key(b"k1".to_vec())),
            (1, ParkKey::Keyless(LocalOffset(1))),
        ] {
            let e = Entry::Parked {
                first: LocalOffset(0),
                offset: LocalOffset(o),
                key,
                reason: "MessageTooLarge".into(),
            };
            s.apply(&e).unwrap();
        }
        s
    }

    #[test]
    fn requests_name_a_parked_key_and_bad_ones_are_refused() {
        let parking = Parking::default();
        parking.publish("t", 0, &stream_with_parked());
        assert_eq!(parking.list().len(), 2);
        let post = |path: &str, body: &str| {
            let f = parking
                .route(&Method::POST, path, Bytes::from(body.to_string()))
                .unwrap();
            futures::executor::block_on(f).status
        };
        let release = "/v1/parked/release";
        assert_eq!(
            post(release, r#"{"topic":"t","partition":0,"key":"k1"}"#),
            StatusCode::ACCEPTED
        );
        assert_eq!(
            post(
                "/v1/parked/drop",
                r#"{"topic":"t","partition":0,"offset":1}"#
            ),
            StatusCode::ACCEPTED
        );
        assert_eq!(
            post(release, r#"{"topic":"t","partition":0,"key":"k2"}"#),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            post(release, r#"{"topic":"t","partition":1,"key":"k1"}"#),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            post(release, r#"{"topic":"t","partition":0}"#),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(
                release,
                r#"{"topic":"t","partition":0,"key":"k1","offset":1}"#
            ),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(post(release, "not json"), StatusCode::BAD_REQUEST);
        assert_eq!(
            parking.take("t", 0),
            vec![
                (ParkKey::Key(b"k1".to_vec()), Action::Release),
                (ParkKey::Keyless(LocalOffset(1)), Action::Drop)
            ]
        );
        assert!(parking.take("t", 0).is_empty());
    }
}
