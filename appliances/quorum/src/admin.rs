//! The admin port's cluster routes, served by every quorum member (brokers and the witness):
//!
//! - `GET /v1/cluster`: [`ClusterStatus`] as this node sees it;
//! - `POST /v1/cluster/voters` with `{"voters": {"<id>": "<quorum host:port>", ...}}`: make
//!   these the voters (forwarded to the Raft leader; new voters are added as learners and
//!   caught up first). `clk cluster replace-voter` builds the set from the status.
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VotersChange {
    pub voters: BTreeMap<NodeId, String>,
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
    match node.controller_call(request, CHANGE_TIMEOUT).await {
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

impl<T: Transport> AdminRoutes for QuorumAdmin<T> {
    fn route(&self, method: &Method, path: &str, body: Bytes) -> Option<AdminFuture> {
        let known = matches!(
            (method, path),
            (&Method::GET, "/v1/cluster") | (&Method::POST, "/v1/cluster/voters")
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
        if method == Method::GET {
            let r = AdminReply::json(StatusCode::OK, &node.status());
            return Some(Box::pin(async move { r }));
        }
        Some(Box::pin(change_voters(node, body)))
    }
}
