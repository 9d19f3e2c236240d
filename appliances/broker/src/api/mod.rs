//! Kafka API handlers: one module per family, all reached through [`handle`].
//!
//! A handler runs in two phases so that one connection can pipeline requests: the first,
//! awaited before the next request is read, does everything whose order matters (appending a
//! produce request); it returns the second, awaited by the connection's writer in request
//! order, which waits for what may take long (fsync for acks=all, a fetch's long poll).

pub mod versions;

mod cluster;
mod configs;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;
mod topics;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{RequestKind, ResponseKind};

use crate::frame::Request;
use crate::state::{BrokerState, Client};

pub use cluster::api_versions_too_new;

/// What to send back for a request.
// Nearly every reply is `Send`: boxing it would add an allocation per response to save
// stack space only in the rare empty ones.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Send(ResponseKind),
    /// acks=0 produce: no response.
    Nothing,
    /// acks=0 produce that failed: Kafka closes the connection so the client notices.
    Close,
}

pub type Completion = Pin<Box<dyn Future<Output = Reply> + Send>>;

fn ready(r: ResponseKind) -> Completion {
    Box::pin(std::future::ready(Reply::Send(r)))
}

/// Run the ordered phase of `req` and return its completion.
pub async fn handle(state: &Arc<BrokerState>, client: &Client, req: Request) -> Completion {
    let v = req.version;
    let s = state;
    match req.body {
        RequestKind::Produce(r) => produce::handle(s, v, r).await,
        RequestKind::Fetch(r) => {
            let s = Arc::clone(s);
            Box::pin(async move { Reply::Send(ResponseKind::Fetch(fetch::handle(&s, v, r).await)) })
        }
        RequestKind::ApiVersions(_) => ready(ResponseKind::ApiVersions(cluster::api_versions())),
        RequestKind::Metadata(r) => ready(ResponseKind::Metadata(metadata::handle(s, v, r).await)),
        RequestKind::DescribeCluster(r) => ready(ResponseKind::DescribeCluster(
            cluster::describe_cluster(s, v, r),
        )),
        RequestKind::InitProducerId(r) => ready(ResponseKind::InitProducerId(
            cluster::init_producer_id(s, r),
        )),
        RequestKind::ListOffsets(r) => ready(ResponseKind::ListOffsets(
            offsets::list_offsets(s, v, r).await,
        )),
        RequestKind::OffsetForLeaderEpoch(r) => ready(ResponseKind::OffsetForLeaderEpoch(
            offsets::offset_for_leader_epoch(s, r).await,
        )),
        RequestKind::DeleteRecords(r) => ready(ResponseKind::DeleteRecords(
            offsets::delete_records(s, r).await,
        )),
        RequestKind::CreateTopics(r) => {
            ready(ResponseKind::CreateTopics(topics::create(s, v, r).await))
        }
        RequestKind::DeleteTopics(r) => {
            ready(ResponseKind::DeleteTopics(topics::delete(s, v, r).await))
        }
        RequestKind::CreatePartitions(r) => ready(ResponseKind::CreatePartitions(
            topics::create_partitions(s, r).await,
        )),
        RequestKind::DescribeConfigs(r) => {
            ready(ResponseKind::DescribeConfigs(configs::describe(s, v, r)))
        }
        RequestKind::AlterConfigs(r) => {
            ready(ResponseKind::AlterConfigs(configs::alter(s, r).await))
        }
        RequestKind::IncrementalAlterConfigs(r) => ready(ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter(s, r).await,
        )),
        RequestKind::FindCoordinator(r) => ready(ResponseKind::FindCoordinator(
            groups::find_coordinator(s, v, r),
        )),
        RequestKind::JoinGroup(r) => {
            ready(ResponseKind::JoinGroup(groups::join(s, client, v, r).await))
        }
        RequestKind::SyncGroup(r) => ready(ResponseKind::SyncGroup(groups::sync(s, r).await)),
        RequestKind::Heartbeat(r) => ready(ResponseKind::Heartbeat(groups::heartbeat(s, r))),
        RequestKind::LeaveGroup(r) => ready(ResponseKind::LeaveGroup(groups::leave(s, v, r).await)),
        RequestKind::OffsetCommit(r) => ready(ResponseKind::OffsetCommit(
            groups::offset_commit(s, r).await,
        )),
        RequestKind::OffsetFetch(r) => {
            ready(ResponseKind::OffsetFetch(groups::offset_fetch(s, v, r)))
        }
        RequestKind::ListGroups(r) => ready(ResponseKind::ListGroups(groups::list(s, v, r))),
        RequestKind::DescribeGroups(r) => {
            ready(ResponseKind::DescribeGroups(groups::describe(s, v, r)))
        }
        RequestKind::DeleteGroups(r) => {
            ready(ResponseKind::DeleteGroups(groups::delete(s, r).await))
        }
        // `frame::decode` only lets through APIs listed in `versions::SUPPORTED`.
        other => {
            tracing::error!(api = ?req.api_key, "request for an API without a handler");
            let _ = other;
            Box::pin(std::future::ready(Reply::Close))
        }
    }
}

/// Error code of a [`ResponseError`].
pub(crate) fn err(e: ResponseError) -> i16 {
    e.code()
}

/// Leader epoch checks shared by Fetch, ListOffsets and OffsetForLeaderEpoch: a client that
/// knows a newer epoch than ours is ahead of us (UNKNOWN_LEADER_EPOCH); one that knows an
/// older epoch is behind (FENCED_LEADER_EPOCH).
pub(crate) fn check_leader_epoch(requested: i32, current: i32) -> Result<(), i16> {
    if requested < 0 || requested == current {
        Ok(())
    } else if requested > current {
        Err(err(ResponseError::UnknownLeaderEpoch))
    } else {
        Err(err(ResponseError::FencedLeaderEpoch))
    }
}
