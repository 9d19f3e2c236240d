//! The controller quorum's Raft, on openraft: type configuration, log store, state machine,
//! network, and the runtime whose randomness the simulation seeds.
//!
//! Why openraft: a well-kept Raft with learners (brokers that are not voters follow the
//! metadata log as learners), membership changes (replacing a dead voter), snapshots and
//! leader leases (a voter that still hears a leader refuses to vote, which keeps a cut-off
//! voter from deposing a healthy leader through the witness). What it lacks, a voter that keeps
//! no data, is not needed: the witness is a full voter of this small log and holds no
//! partition data, which lives outside Raft under leader epochs this log decides.

pub mod frames;
pub mod log_file;
pub mod log_store;
pub mod network;
pub mod runtime;
pub mod state_machine;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::metadata::{MetadataRecord, Skipped};

/// What the controller proposes: records applied together, in order, at one log index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub records: Vec<MetadataRecord>,
}

/// What applying a [`Command`] did: its log index, and for each record whether it was
/// skipped (and why).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub index: u64,
    pub skipped: Vec<Option<Skipped>>,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = runtime::HubRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;
