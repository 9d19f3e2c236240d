//! Messages between nodes of the quorum (brokers and the witness): Raft's own RPCs and the
//! controller's requests, in one envelope that names the protocol version, the cluster and the
//! sender, so that a node of another cluster or of an incompatible version is refused before
//! anything it sent is looked at.
//!
//! Encoded with postcard inside a CRC-checked frame ([`crate::raft::frames`]). Decoding never
//! trusts a length beyond the frame it came in; the fuzz target `quorum_message` feeds
//! arbitrary bytes through [`decode_request`].

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::controller::{ControllerRequest, ControllerResponse};
use crate::ids::NodeId;
use crate::raft::{TypeConfig, frames};

/// Bumped on any change to the messages below; a node answers a different version with
/// [`Refusal::Version`].
/// 2: heartbeat answers carry the controller's applied index; controlled shutdown; voter
/// changes.
/// 3: a registration carries the broker's session timeout (and so does its metadata record);
/// a broker's endpoints name every Kafka listener.
/// 4: partition reassignments (a controller request, a metadata record, a controller error).
pub const PROTOCOL_VERSION: u16 = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u16,
    /// The cluster's configured name: nodes of another cluster never talk to each other.
    pub cluster: String,
    pub from: NodeId,
    pub body: T,
}

#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Controller(ControllerRequest),
    /// Reachability probe between brokers (who can reach whom decides a site cut).
    Ping,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Controller(ControllerResponse),
    Pong,
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("protocol version {got} is not {expected}")]
    Version { expected: u16, got: u16 },
    #[error("message for cluster {got:?}, this is {expected:?}")]
    Cluster { expected: String, got: String },
    #[error("this node is shutting down")]
    ShuttingDown,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("bad frame (length or checksum)")]
    Frame,
    #[error("undecodable message: {0}")]
    Body(#[from] postcard::Error),
}

pub fn encode<T: Serialize>(envelope: &Envelope<T>) -> Vec<u8> {
    frames::encode(&postcard::to_stdvec(envelope).expect("messages serialize"))
}

/// Decode one whole frame (header and payload) holding an envelope.
pub fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<Envelope<T>, DecodeError> {
    let (payloads, len) = frames::decode_prefix(frame);
    match payloads.as_slice() {
        [one] if len == frame.len() => Ok(postcard::from_bytes(one)?),
        _ => Err(DecodeError::Frame),
    }
}

pub fn decode_request(frame: &[u8]) -> Result<Envelope<Request>, DecodeError> {
    decode(frame)
}

/// Check an envelope against this node: version and cluster.
pub fn admit<T>(envelope: &Envelope<T>, cluster: &str) -> Result<(), Refusal> {
    if envelope.version != PROTOCOL_VERSION {
        return Err(Refusal::Version {
            expected: PROTOCOL_VERSION,
            got: envelope.version,
        });
    }
    if envelope.cluster != cluster {
        return Err(Refusal::Cluster {
            expected: cluster.to_string(),
            got: envelope.cluster.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_strangers_are_refused() {
        let e = Envelope {
            version: PROTOCOL_VERSION,
            cluster: "hub".into(),
            from: NodeId(3),
            body: Request::Ping,
        };
        let bytes = encode(&e);
        let back = decode_request(&bytes).unwrap();
        assert_eq!(back.from, NodeId(3));
        assert!(admit(&back, "hub").is_ok());
        assert!(matches!(
            admit(&back, "other"),
            Err(Refusal::Cluster { .. })
        ));
        let old = Envelope { version: 0, ..back };
        assert!(matches!(admit(&old, "hub"), Err(Refusal::Version { .. })));
        // A truncated or altered frame is refused, never half-read.
        assert!(decode_request(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert!(decode_request(&bad).is_err());
    }
}
