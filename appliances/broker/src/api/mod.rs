//! Kafka API handlers: one module per family, all reached through [`handle`].
//!
//! A handler runs in two phases so that one connection can pipeline requests: the first,
//! awaited before the next request is read, does everything whose order matters (appending a
//! produce request); it returns the second, awaited by the connection's writer in request
//! order, which waits for what may take long (fsync for acks=all, a fetch's long poll).

pub mod versions;

mod acls;
mod authorize;
mod cluster;
mod configs;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;
mod reassignments;
mod scram;
mod topics;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{RequestKind, ResponseKind};

use crate::authz::Access;
use crate::frame::Request;
use crate::session::{Denied, Session};
use crate::state::BrokerState;

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
    /// Send this, then close the connection (a failed login).
    Last(ResponseKind),
}

pub type Completion = Pin<Box<dyn Future<Output = Reply> + Send>>;

fn ready(r: ResponseKind) -> Completion {
    Box::pin(std::future::ready(Reply::Send(r)))
}

/// The one check every request passes, against the session it came on (then
/// [`authorize::denied`], the ACLs of the whole request).
fn admit(session: &Session, req: &Request) -> Result<(), Denied> {
    if let RequestKind::Fetch(f) = &req.body
        && fetch::is_replica_fetch(req.version, f)
        && !session.listener.serves_replication
    {
        return Err(Denied::ReplicationNotHere);
    }
    Ok(())
}

/// Run the ordered phase of `req` and return its completion.
pub async fn handle(state: &Arc<BrokerState>, session: &Session, req: Request) -> Completion {
    if let Err(denied) = admit(session, &req) {
        tracing::warn!(peer = %session.peer, listener = %session.listener.name, api = ?req.api_key, ?denied, "request refused");
        return Box::pin(std::future::ready(Reply::Close));
    }
    let access = Access::of(state, session);
    if let Some(answer) = authorize::denied(&access, &req) {
        tracing::debug!(peer = %session.peer, principal = %session.principal, api = ?req.api_key, "request not authorized");
        return ready(answer);
    }
    let v = req.version;
    let s = state;
    let client = session;
    let a = &access;
    match req.body {
        RequestKind::Produce(r) => produce::handle(s, a, v, r).await,
        RequestKind::Fetch(r) => {
            let s = Arc::clone(s);
            let gone = client.peer_gone.clone();
            Box::pin(async move {
                Reply::Send(ResponseKind::Fetch(
                    fetch::handle(&s, &access, v, r, gone).await,
                ))
            })
        }
        RequestKind::ApiVersions(_) => ready(ResponseKind::ApiVersions(cluster::api_versions())),
        RequestKind::Metadata(r) => ready(ResponseKind::Metadata(
            metadata::handle(s, a, &client.listener.name, v, r).await,
        )),
        RequestKind::DescribeCluster(r) => ready(ResponseKind::DescribeCluster(
            cluster::describe_cluster(s, &client.listener.name, v, r),
        )),
        RequestKind::InitProducerId(r) => ready(ResponseKind::InitProducerId(
            cluster::init_producer_id(s, r).await,
        )),
        RequestKind::ListOffsets(r) => ready(ResponseKind::ListOffsets(
            offsets::list_offsets(s, a, v, r).await,
        )),
        RequestKind::OffsetForLeaderEpoch(r) => ready(ResponseKind::OffsetForLeaderEpoch(
            offsets::offset_for_leader_epoch(s, a, r).await,
        )),
        RequestKind::DeleteRecords(r) => ready(ResponseKind::DeleteRecords(
            offsets::delete_records(s, a, r).await,
        )),
        RequestKind::CreateTopics(r) => {
            ready(ResponseKind::CreateTopics(topics::create(s, a, v, r).await))
        }
        RequestKind::DeleteTopics(r) => {
            ready(ResponseKind::DeleteTopics(topics::delete(s, a, v, r).await))
        }
        RequestKind::CreatePartitions(r) => ready(ResponseKind::CreatePartitions(
            topics::create_partitions(s, a, r).await,
        )),
        RequestKind::DescribeConfigs(r) => {
            ready(ResponseKind::DescribeConfigs(configs::describe(s, a, v, r)))
        }
        RequestKind::AlterConfigs(r) => {
            ready(ResponseKind::AlterConfigs(configs::alter(s, a, r).await))
        }
        RequestKind::IncrementalAlterConfigs(r) => ready(ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter(s, a, r).await,
        )),
        RequestKind::FindCoordinator(r) => ready(ResponseKind::FindCoordinator(
            groups::find_coordinator(s, a, &client.listener.name, v, r),
        )),
        RequestKind::JoinGroup(r) => {
            ready(ResponseKind::JoinGroup(groups::join(s, client, v, r).await))
        }
        RequestKind::SyncGroup(r) => ready(ResponseKind::SyncGroup(groups::sync(s, r).await)),
        RequestKind::Heartbeat(r) => ready(ResponseKind::Heartbeat(groups::heartbeat(s, r))),
        RequestKind::LeaveGroup(r) => ready(ResponseKind::LeaveGroup(groups::leave(s, v, r).await)),
        RequestKind::OffsetCommit(r) => ready(ResponseKind::OffsetCommit(
            groups::offset_commit(s, a, r).await,
        )),
        RequestKind::OffsetFetch(r) => {
            ready(ResponseKind::OffsetFetch(groups::offset_fetch(s, a, v, r)))
        }
        RequestKind::ListGroups(r) => ready(ResponseKind::ListGroups(groups::list(s, a, v, r))),
        RequestKind::DescribeGroups(r) => {
            ready(ResponseKind::DescribeGroups(groups::describe(s, a, v, r)))
        }
        RequestKind::DeleteGroups(r) => {
            ready(ResponseKind::DeleteGroups(groups::delete(s, a, r).await))
        }
        RequestKind::DescribeUserScramCredentials(r) => ready(
            ResponseKind::DescribeUserScramCredentials(scram::describe(s, r)),
        ),
        RequestKind::AlterUserScramCredentials(r) => ready(
            ResponseKind::AlterUserScramCredentials(scram::alter(s, r).await),
        ),
        RequestKind::CreateAcls(r) => ready(ResponseKind::CreateAcls(acls::create(s, r).await)),
        RequestKind::DescribeAcls(r) => ready(ResponseKind::DescribeAcls(acls::describe(s, r))),
        RequestKind::DeleteAcls(r) => ready(ResponseKind::DeleteAcls(acls::delete(s, r).await)),
        RequestKind::AlterPartitionReassignments(r) => ready(
            ResponseKind::AlterPartitionReassignments(reassignments::alter(s, r).await),
        ),
        RequestKind::ListPartitionReassignments(r) => ready(
            ResponseKind::ListPartitionReassignments(reassignments::list(s, r)),
        ),
        // `frame::decode` only lets through APIs listed in `versions::SUPPORTED`; the login
        // requests are the connection's (`crate::authn`).
        other => {
            tracing::error!(api = ?req.api_key, "request for an API without a handler");
            let _ = other;
            Box::pin(std::future::ready(Reply::Close))
        }
    }
}

/// This broker's replica of `topic`-`index` if it leads it now: UNKNOWN_TOPIC_OR_PARTITION
/// when the partition does not exist, NOT_LEADER_OR_FOLLOWER when another broker leads it
/// (the client refreshes its metadata).
pub(crate) fn leader_partition(
    s: &BrokerState,
    topic: &str,
    index: i32,
) -> Result<Arc<crate::partition::Partition>, i16> {
    let exists = s
        .topics
        .get(topic)
        .is_some_and(|t| (0..t.partitions).contains(&index));
    if !exists {
        return Err(err(ResponseError::UnknownTopicOrPartition));
    }
    match s.topics.partition(topic, index) {
        Some(p) if p.is_leader() => Ok(p),
        _ => Err(err(ResponseError::NotLeaderOrFollower)),
    }
}

/// An error message (or any optional string) for a response.
pub(crate) fn text(s: impl Into<String>) -> Option<kafka_protocol::protocol::StrBytes> {
    Some(kafka_protocol::protocol::StrBytes::from_string(s.into()))
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

/// Produce from inside the process, for an embedding's own writers (the edge gateway's outbox
/// reader with [`Access::everything`], its HTTP ingest with the caller's): the same checks,
/// limits and appends as a client's request, without a connection. `acks` must be 1 or -1:
/// the answer is the response.
pub async fn produce_in_process(
    state: &Arc<BrokerState>,
    access: &Access,
    request: kafka_protocol::messages::ProduceRequest,
) -> kafka_protocol::messages::ProduceResponse {
    assert!(
        matches!(request.acks, 1 | -1),
        "an in-process produce waits for its answer"
    );
    // Version 9: the oldest that carries error messages and flexible fields alike.
    match produce::handle(state, access, 9, request).await.await {
        Reply::Send(ResponseKind::Produce(r)) => r,
        _ => unreachable!("a produce with acks 1 or -1 is answered with a produce response"),
    }
}
