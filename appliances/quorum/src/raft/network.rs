//! openraft's network over a [`Transport`]: real TCP between nodes (`crate::transport`), or
//! the simulation's seeded network.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use super::TypeConfig;
use crate::ids::NodeId;
use crate::rpc::{Refusal, Request, Response};

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// Not connected, or the connection broke: back off before trying again.
    #[error("node {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("node {0} did not answer within {1:?}")]
    Timeout(NodeId, Duration),
    #[error("node {0} refused: {1}")]
    Refused(NodeId, Refusal),
    #[error("node {0} answered nonsense: {1}")]
    Protocol(NodeId, String),
}

/// Sends one request to a node and waits for its answer.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        to: NodeId,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, TransportError>> + Send;
}

/// openraft's network factory: one [`Connection`] per target.
pub struct Network<T> {
    pub transport: Arc<T>,
}

impl<T> Clone for Network<T> {
    fn clone(&self) -> Self {
        Network {
            transport: Arc::clone(&self.transport),
        }
    }
}

pub struct Connection<T> {
    transport: Arc<T>,
    target: NodeId,
    addr: String,
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = Connection<T>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        Connection {
            transport: Arc::clone(&self.transport),
            target,
            addr: node.addr.clone(),
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

fn transport_err<E: std::error::Error>(e: TransportError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        TransportError::Unreachable(..) | TransportError::Timeout(..) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        TransportError::Refused(..) | TransportError::Protocol(..) => {
            RPCError::Network(NetworkError::new(&e))
        }
    }
}

fn unexpected<E: std::error::Error>(
    target: NodeId,
    got: &Response,
) -> RPCError<NodeId, BasicNode, E> {
    let e = TransportError::Protocol(target, format!("unexpected answer {got:?}"));
    RPCError::Network(NetworkError::new(&e))
}

impl<T: Transport> Connection<T> {
    async fn call(&self, request: Request, option: &RPCOption) -> Result<Response, TransportError> {
        self.transport
            .call(self.target, &self.addr, request, option.hard_ttl())
            .await
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for Connection<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        match self
            .call(Request::AppendEntries(rpc), &option)
            .await
            .map_err(transport_err)?
        {
            Response::AppendEntries(Ok(r)) => Ok(r),
            Response::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .call(Request::InstallSnapshot(rpc), &option)
            .await
            .map_err(transport_err)?
        {
            Response::InstallSnapshot(Ok(r)) => Ok(r),
            Response::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self
            .call(Request::Vote(rpc), &option)
            .await
            .map_err(transport_err)?
        {
            Response::Vote(Ok(r)) => Ok(r),
            Response::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(unexpected(self.target, &other)),
        }
    }
}
