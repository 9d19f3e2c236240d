//! What the group coordinator makes durable, as records in the `__consumer_offsets-<n>`
//! internal logs: committed offsets, group membership at the end of each rebalance, and
//! deletions. Replaying them rebuilds every group after a restart, so consumers resume from
//! their committed offsets and a stable group keeps its generation and assignments.

use serde::{Deserialize, Serialize};

/// Bytes in JSON, as base64 (subscriptions and assignments are opaque client data).
mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// The member's metadata for the selected protocol.
    #[serde(with = "b64")]
    pub subscription: bytes::Bytes,
    #[serde(with = "b64")]
    pub assignment: bytes::Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GroupRecord {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        #[serde(flatten)]
        value: StoredOffset,
    },
    OffsetDeleted {
        group: String,
        topic: String,
        partition: i32,
    },
    /// The group after a rebalance completed (or when it became empty).
    Group {
        group: String,
        protocol_type: Option<String>,
        protocol: Option<String>,
        generation: i32,
        leader: Option<String>,
        members: Vec<StoredMember>,
        /// When the group last became empty (for offset expiry).
        empty_since_ms: Option<i64>,
    },
    GroupDeleted {
        group: String,
    },
}

impl GroupRecord {
    pub fn group(&self) -> &str {
        match self {
            GroupRecord::Offset { group, .. }
            | GroupRecord::OffsetDeleted { group, .. }
            | GroupRecord::Group { group, .. }
            | GroupRecord::GroupDeleted { group } => group,
        }
    }
}

/// Which offsets partition holds a group: Kafka's `abs(groupId.hashCode) % partitions`, so
/// a group keeps its place as in Kafka.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    // Kafka's Utils.abs maps i32::MIN to 0.
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_partition_matches_java_hash() {
        // Java: "test-group".hashCode() == 627841412, "my-group".hashCode() == -1906497762.
        assert_eq!(partition_for("test-group", 50), 12);
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("my-group", 7), 1906497762 % 7);
        assert_eq!(partition_for("", 50), 0);
    }

    #[test]
    fn records_roundtrip_with_bytes_as_base64() {
        let r = GroupRecord::Group {
            group: "g".into(),
            protocol_type: Some("consumer".into()),
            protocol: Some("range".into()),
            generation: 3,
            leader: Some("m1".into()),
            members: vec![StoredMember {
                member_id: "m1".into(),
                instance_id: None,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 30_000,
                subscription: bytes::Bytes::from_static(b"\x00\x01"),
                assignment: bytes::Bytes::from_static(b"\xff"),
            }],
            empty_since_ms: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"subscription\":\"AAE=\""), "{json}");
        assert_eq!(serde_json::from_str::<GroupRecord>(&json).unwrap(), r);
    }
}
