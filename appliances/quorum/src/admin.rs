//! The admin port's cluster routes, served by every quorum member (brokers and the witness):
//!
//! - `GET /v1/cluster`: [`ClusterStatus`] as this node sees it;
//! - `POST /v1/cluster/voters` with `{"voters": {"<id>": "<quorum host:port>", ...}}`: make
//!   these the voters (forwarded to the Raft leader; new voters are added as learners and
//!   caught up first). `clk cluster replace-voter` builds the set from the status.
//! - `GET /v1/cluster/reassignments`: the partitions a reassignment is moving;
//! - `POST /v1/cluster/reassignments` with [`ReassignRequest`]: move a partition to other
//!   replicas, or cancel its move (`clk cluster reassign`). Kafka clients do the same with
//!   AlterPartitionReassignments.
//!
//! The admin port belongs to the admin trust zone (operators only); it is not the Kafka
//! listener and not the quorum port.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use telemetry::{AdminReply, AdminRoutes, admin::AdminFuture};

use crate::controller::{ControllerRequest, ControllerResponse};
use crate::ids::NodeId;
use crate::node::QuorumNode;
use crate::raft::network::Transport;

/// How long a voter change may take (a new voter catching up on the log included).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long starting or cancelling a reassignment may take (one metadata commit).
const REASSIGN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VotersChange {
    pub voters: BTreeMap<NodeId, String>,
}

/// Move `topic`'s partition to `replicas` (the first is the preferred leader), or with
/// `None` cancel the move in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReassignRequest {
    pub topic: String,
    pub partition: i32,
    pub replicas: Option<Vec<NodeId>>,
}

/// A partition being moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reassignment {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<NodeId>,
    pub adding: Vec<NodeId>,
    pub removing: Vec<NodeId>,
    pub isr: Vec<NodeId>,
}

/// Every reassignment in progress in `state`.
pub fn reassignments(state: &crate::metadata::ClusterState) -> Vec<Reassignment> {
    state
        .topics
        .values()
        .flat_map(|t| {
            t.partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.reassigning())
                .map(|(i, p)| Reassignment {
                    topic: t.name.to_string(),
                    partition: i as i32,
                    replicas: p.replicas.clone(),
                    adding: p.adding.clone(),
                    removing: p.removing.clone(),
                    isr: p.isr.clone(),
                })
        })
        .collect()
}

async fn reassign<T: Transport>(node: Arc<QuorumNode<T>>, body: Bytes) -> AdminReply {
    let r: ReassignRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return AdminReply::error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"topic\": name, \"partition\": index, \"replicas\": [ids] or null}}: {e}"
                ),
            );
        }
    };
    let Some(topic) = node.state().topic_by_name(&r.topic).map(|t| t.id) else {
        return AdminReply::error(StatusCode::NOT_FOUND, format!("no topic {:?}", r.topic));
    };
    let request = ControllerRequest::Reassign {
        partition: crate::ids::PartitionKey {
            topic,
            index: r.partition,
        },
        target: r.replicas,
    };
    let result = node.controller_call(request, REASSIGN_TIMEOUT).await;
    if let Ok(ControllerResponse::Applied { index }) = &result {
        // Answer once this node shows the change, so that a `GET` right after (`clk cluster
        // reassign --wait`) sees the move it started, not the state before it.
        node.wait_applied(*index, REASSIGN_TIMEOUT).await;
    }
    answer(result)
}

/// A controller request's answer as the admin port gives it.
fn answer(result: Result<ControllerResponse, impl std::fmt::Display>) -> AdminReply {
    match result {
        Ok(ControllerResponse::Applied { index }) => {
            AdminReply::json(StatusCode::OK, &serde_json::json!({ "index": index }))
        }
        Ok(ControllerResponse::Failed(e)) => AdminReply::error(StatusCode::CONFLICT, e.to_string()),
        Ok(other) => AdminReply::error(
            StatusCode::BAD_GATEWAY,
            format!("unexpected answer {other:?}"),
        ),
        Err(e) => AdminReply::error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The routes, answering 503 until [`QuorumAdmin::attach`] (the admin port starts before
/// the node has joined).
pub struct QuorumAdmin<T: Transport> {
    node: OnceLock<Arc<QuorumNode<T>>>,
}

impl<T: Transport> Default for QuorumAdmin<T> {
    fn default() -> Self {
        QuorumAdmin {
            node: OnceLock::new(),
        }
    }
}

impl<T: Transport> QuorumAdmin<T> {
    pub fn attach(&self, node: Arc<QuorumNode<T>>) {
        let _ = self.node.set(node);
    }
}

async fn change_voters<T: Transport>(node: Arc<QuorumNode<T>>, body: Bytes) -> AdminReply {
    let change: VotersChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return AdminReply::error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"voters\": {{id: address}}}}: {e}"),
            );
        }
    };
    let request = ControllerRequest::ChangeVoters {
        voters: change.voters,
    };
    answer(node.controller_call(request, CHANGE_TIMEOUT).await)
}

impl<T: Transport> AdminRoutes for QuorumAdmin<T> {
    fn route(&self, method: &Method, path: &str, body: Bytes) -> Option<AdminFuture> {
        let known = matches!(
            (method, path),
            (&Method::GET, "/v1/cluster")
                | (&Method::POST, "/v1/cluster/voters")
                | (&Method::GET | &Method::POST, "/v1/cluster/reassignments")
        );
        if !known {
            return None;
        }
        let Some(node) = self.node.get().cloned() else {
            let r = AdminReply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not joined to the cluster yet",
            );
            return Some(Box::pin(async move { r }));
        };
        let r = match (method, path) {
            (&Method::GET, "/v1/cluster") => AdminReply::json(StatusCode::OK, &node.status()),
            (&Method::GET, _) => AdminReply::json(StatusCode::OK, &reassignments(&node.state())),
            (_, "/v1/cluster/voters") => return Some(Box::pin(change_voters(node, body))),
            _ => return Some(Box::pin(reassign(node, body))),
        };
        Some(Box::pin(async move { r }))
    }
}
