//! The request-level half of authorization, at the dispatch point: what concerns the whole
//! request (the cluster, the one group of a group request, the producer's right to an id).
//! A denied request is answered here with Kafka's error; what concerns each topic or group of
//! a request is checked by its handler with the same [`Access`].

use acl::Operation::{self, *};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::fetch;
use crate::authz::Access;
use crate::frame::Request;

const CLUSTER_DENIED: ResponseError = ResponseError::ClusterAuthorizationFailed;
const GROUP_DENIED: ResponseError = ResponseError::GroupAuthorizationFailed;

fn message(e: ResponseError) -> Option<StrBytes> {
    Some(StrBytes::from_static_str(match e {
        CLUSTER_DENIED => "cluster authorization failed",
        GROUP_DENIED => "group authorization failed",
        _ => "authorization failed",
    }))
}

/// The answer to `req` if `access` may not make it at all.
pub fn denied(access: &Access, req: &Request) -> Option<ResponseKind> {
    let cluster = |op: Operation| (!access.cluster(op)).then_some(CLUSTER_DENIED);
    let group = |op: Operation, id: &str| (!access.group(op, id)).then_some(GROUP_DENIED);
    let code = |e: ResponseError| e.code();
    Some(match &req.body {
        RequestKind::Fetch(f) if fetch::is_replica_fetch(req.version, f) => {
            let e = cluster(ClusterAction)?;
            ResponseKind::Fetch(FetchResponse::default().with_error_code(code(e)))
        }
        RequestKind::DescribeCluster(_) => {
            let e = cluster(Describe)?;
            ResponseKind::DescribeCluster(
                DescribeClusterResponse::default()
                    .with_error_code(code(e))
                    .with_error_message(message(e)),
            )
        }
        RequestKind::InitProducerId(r) => {
            let e = match &r.transactional_id {
                Some(id) if !access.allows(Write, acl::ResourceType::TransactionalId, id) => {
                    ResponseError::TransactionalIdAuthorizationFailed
                }
                Some(_) => return None,
                None if access.idempotent_write() => return None,
                None => CLUSTER_DENIED,
            };
            ResponseKind::InitProducerId(InitProducerIdResponse::default().with_error_code(code(e)))
        }
        RequestKind::JoinGroup(r) => {
            let e = group(Read, &r.group_id)?;
            ResponseKind::JoinGroup(JoinGroupResponse::default().with_error_code(code(e)))
        }
        RequestKind::SyncGroup(r) => {
            let e = group(Read, &r.group_id)?;
            ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(code(e)))
        }
        RequestKind::Heartbeat(r) => {
            let e = group(Read, &r.group_id)?;
            ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code(e)))
        }
        RequestKind::LeaveGroup(r) => {
            let e = group(Read, &r.group_id)?;
            ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(code(e)))
        }
        RequestKind::DescribeUserScramCredentials(_) => {
            let e = cluster(Describe)?;
            ResponseKind::DescribeUserScramCredentials(
                DescribeUserScramCredentialsResponse::default()
                    .with_error_code(code(e))
                    .with_error_message(message(e)),
            )
        }
        RequestKind::AlterUserScramCredentials(r) => {
            let e = cluster(Alter)?;
            ResponseKind::AlterUserScramCredentials(scram_denied(r, e))
        }
        RequestKind::DescribeAcls(_) => {
            let e = cluster(Describe)?;
            ResponseKind::DescribeAcls(
                DescribeAclsResponse::default()
                    .with_error_code(code(e))
                    .with_error_message(message(e)),
            )
        }
        RequestKind::CreateAcls(r) => {
            let e = cluster(Alter)?;
            let results = r.creations.iter().map(|_| {
                create_acls_response::AclCreationResult::default()
                    .with_error_code(code(e))
                    .with_error_message(message(e))
            });
            ResponseKind::CreateAcls(CreateAclsResponse::default().with_results(results.collect()))
        }
        RequestKind::AlterPartitionReassignments(_) => {
            let e = cluster(Alter)?;
            ResponseKind::AlterPartitionReassignments(
                AlterPartitionReassignmentsResponse::default()
                    .with_error_code(code(e))
                    .with_error_message(message(e)),
            )
        }
        RequestKind::ListPartitionReassignments(_) => {
            let e = cluster(Describe)?;
            ResponseKind::ListPartitionReassignments(
                ListPartitionReassignmentsResponse::default()
                    .with_error_code(code(e))
                    .with_error_message(message(e)),
            )
        }
        RequestKind::DeleteAcls(r) => {
            let e = cluster(Alter)?;
            let results = r.filters.iter().map(|_| {
                delete_acls_response::DeleteAclsFilterResult::default()
                    .with_error_code(code(e))
                    .with_error_message(message(e))
            });
            ResponseKind::DeleteAcls(
                DeleteAclsResponse::default().with_filter_results(results.collect()),
            )
        }
        _ => return None,
    })
}

fn scram_denied(
    r: &AlterUserScramCredentialsRequest,
    e: ResponseError,
) -> AlterUserScramCredentialsResponse {
    let users: std::collections::BTreeSet<&str> = r
        .deletions
        .iter()
        .map(|d| &*d.name)
        .chain(r.upsertions.iter().map(|u| &*u.name))
        .collect();
    let results = users.into_iter().map(|u| {
        alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
            .with_user(StrBytes::from_string(u.to_string()))
            .with_error_code(e.code())
            .with_error_message(message(e))
    });
    AlterUserScramCredentialsResponse::default().with_results(results.collect())
}
