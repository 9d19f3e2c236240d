//! Consumer group APIs: translation between Kafka messages and the group coordinator.

use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::err;
use crate::authz::Access;
use crate::groups::group::{GroupState, JoinParams, SyncParams};
use crate::groups::store::StoredOffset;
use crate::groups::{MAX_OFFSET_METADATA, OffsetCommit};
use crate::session::Session;
use crate::state::BrokerState;
use acl::Operation;

const GROUP_KEY: i8 = 0;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// FindCoordinator: the leader of the group's offsets partition.
pub fn find_coordinator(
    st: &BrokerState,
    access: &Access,
    listener: &str,
    version: i16,
    r: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    // Transaction coordinators do not exist (no transactions).
    let answer = |key: &str| -> Result<(i32, String, i32), (i16, &'static str)> {
        match r.key_type {
            GROUP_KEY if !access.group(Operation::Describe, key) => Err((
                err(ResponseError::GroupAuthorizationFailed),
                "group authorization failed",
            )),
            GROUP_KEY => st
                .coordinator_for(key, listener)
                .map(|(n, host, port)| (n.kafka(), host, port))
                .map_err(|code| (code, "the group's coordinator is not available yet")),
            1 => Err((
                err(ResponseError::CoordinatorNotAvailable),
                "transactions are not supported",
            )),
            _ => Err((
                err(ResponseError::InvalidRequest),
                "unknown coordinator key type",
            )),
        }
    };
    if version >= 4 {
        let coordinators = r
            .coordinator_keys
            .iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key.clone());
                match answer(key) {
                    Ok((node, host, port)) => c
                        .with_node_id(BrokerId(node))
                        .with_host(s(host))
                        .with_port(port),
                    Err((code, m)) => c
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_static_str(m))),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match answer(&r.key) {
        Ok((node, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(node))
            .with_host(s(host))
            .with_port(port),
        Err((code, m)) => {
            let resp = FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_port(-1);
            if version >= 1 {
                resp.with_error_message(Some(StrBytes::from_static_str(m)))
            } else {
                resp
            }
        }
    }
}

pub async fn join(
    st: &BrokerState,
    client: &Session,
    version: i16,
    r: JoinGroupRequest,
) -> JoinGroupResponse {
    let session = Duration::from_millis(r.session_timeout_ms.max(0) as u64);
    // v0 has no rebalance timeout: Kafka uses the session timeout.
    let rebalance = if version >= 1 && r.rebalance_timeout_ms > 0 {
        Duration::from_millis(r.rebalance_timeout_ms as u64)
    } else {
        session
    };
    let params = JoinParams {
        member_id: r.member_id.to_string(),
        instance_id: r.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id: client.client_id.clone(),
        client_host: client.host(),
        session_timeout: session,
        rebalance_timeout: rebalance,
        protocol_type: r.protocol_type.to_string(),
        protocols: r
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let out = st.groups.join(&r.group_id.0, params).await;
    if out.error != 0 {
        st.metrics.note_error("JoinGroup", out.error);
    }
    let members = out
        .members
        .into_iter()
        .map(|m| {
            let member = JoinGroupResponseMember::default()
                .with_member_id(s(m.member_id))
                .with_metadata(m.metadata);
            if version >= 5 {
                member.with_group_instance_id(m.instance_id.map(s))
            } else {
                member
            }
        })
        .collect();
    let mut resp = JoinGroupResponse::default()
        .with_error_code(out.error)
        .with_generation_id(out.generation)
        .with_leader(s(out.leader))
        .with_member_id(s(out.member_id))
        .with_members(members);
    // Before v7 the protocol name is a non-null string and there is no protocol type.
    resp = if version >= 7 {
        resp.with_protocol_type(out.protocol_type.map(s))
            .with_protocol_name(out.protocol_name.map(s))
    } else {
        resp.with_protocol_name(Some(s(out.protocol_name.unwrap_or_default())))
    };
    if version >= 9 {
        resp = resp.with_skip_assignment(out.skip_assignment);
    }
    resp
}

pub async fn sync(st: &BrokerState, r: SyncGroupRequest) -> SyncGroupResponse {
    let params = SyncParams {
        member_id: r.member_id.to_string(),
        instance_id: r.group_instance_id.as_ref().map(|i| i.to_string()),
        generation: r.generation_id,
        protocol_type: r.protocol_type.as_ref().map(|p| p.to_string()),
        protocol_name: r.protocol_name.as_ref().map(|p| p.to_string()),
        assignments: r
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    let out = st.groups.sync(&r.group_id.0, params).await;
    if out.error != 0 {
        st.metrics.note_error("SyncGroup", out.error);
    }
    SyncGroupResponse::default()
        .with_error_code(out.error)
        .with_protocol_type(out.protocol_type.map(s))
        .with_protocol_name(out.protocol_name.map(s))
        .with_assignment(out.assignment)
}

pub fn heartbeat(st: &BrokerState, r: HeartbeatRequest) -> HeartbeatResponse {
    let instance = r.group_instance_id.as_ref().map(|i| i.to_string());
    let code = st.groups.heartbeat(
        &r.group_id.0,
        &r.member_id,
        instance.as_deref(),
        r.generation_id,
    );
    HeartbeatResponse::default().with_error_code(code)
}

pub async fn leave(st: &BrokerState, version: i16, r: LeaveGroupRequest) -> LeaveGroupResponse {
    if version < 3 {
        let codes = st
            .groups
            .leave(&r.group_id.0, &[(r.member_id.to_string(), None)])
            .await;
        return LeaveGroupResponse::default().with_error_code(codes[0]);
    }
    let identities: Vec<(String, Option<String>)> = r
        .members
        .iter()
        .map(|m| {
            (
                m.member_id.to_string(),
                m.group_instance_id.as_ref().map(|i| i.to_string()),
            )
        })
        .collect();
    let codes = st.groups.leave(&r.group_id.0, &identities).await;
    let members = r
        .members
        .into_iter()
        .zip(codes)
        .map(|(m, code)| {
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(code)
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

pub async fn offset_commit(
    st: &BrokerState,
    access: &Access,
    r: OffsetCommitRequest,
) -> OffsetCommitResponse {
    // Per-partition checks first; valid partitions are committed together.
    let mut codes: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    let mut commits = Vec::new();
    let group_denied = !access.group(Operation::Read, &r.group_id);
    for t in &r.topics {
        let mut parts = Vec::new();
        let topic_denied = !access.topic(Operation::Read, &t.name);
        for p in &t.partitions {
            let code = if group_denied {
                err(ResponseError::GroupAuthorizationFailed)
            } else if topic_denied {
                err(ResponseError::TopicAuthorizationFailed)
            } else if p
                .committed_metadata
                .as_ref()
                .is_some_and(|m| m.len() > MAX_OFFSET_METADATA)
            {
                err(ResponseError::OffsetMetadataTooLarge)
            } else if !st
                .topics
                .get(&t.name.0)
                .is_some_and(|topic| (0..topic.partitions).contains(&p.partition_index))
            {
                // The partition must exist in the cluster, not here: a coordinator need not
                // hold a replica of the partitions its groups consume.
                err(ResponseError::UnknownTopicOrPartition)
            } else {
                commits.push(OffsetCommit {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                });
                0
            };
            parts.push((p.partition_index, code));
        }
        codes.push((t.name.clone(), parts));
    }
    let instance = r.group_instance_id.as_ref().map(|i| i.to_string());
    let result = st
        .groups
        .commit_offsets(
            &r.group_id.0,
            r.generation_id_or_member_epoch,
            &r.member_id,
            instance.as_deref(),
            commits,
        )
        .await;
    if let Err(code) = result {
        st.metrics.note_error("OffsetCommit", code);
    }
    let topics = codes
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, code)| {
                    let code = if code != 0 {
                        code
                    } else {
                        result.err().unwrap_or(0)
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// `(offset, leader epoch, metadata)` as OffsetFetch reports a committed offset (or its absence).
fn committed(o: &Told) -> (i64, i32, StrBytes) {
    match o.as_ref().ok().and_then(Option::as_ref) {
        Some(o) => (
            o.offset,
            o.leader_epoch,
            s(o.metadata.clone().unwrap_or_default()),
        ),
        None => (-1, -1, StrBytes::new()),
    }
}

pub fn offset_fetch(
    st: &BrokerState,
    access: &Access,
    version: i16,
    r: OffsetFetchRequest,
) -> OffsetFetchResponse {
    if version >= 8 {
        let groups = r
            .groups
            .into_iter()
            .map(|g| {
                let wanted = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let offsets = match fetch_offsets(st, access, &g.group_id, wanted) {
                    Ok(o) => o,
                    Err(code) => {
                        return OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id)
                            .with_error_code(code);
                    }
                };
                let topics = offsets
                    .into_iter()
                    .map(|(topic, parts)| {
                        let partitions = parts
                            .iter()
                            .map(|(p, o)| {
                                let (offset, epoch, metadata) = committed(o);
                                OffsetFetchResponsePartitions::default()
                                    .with_error_code(told_code(o))
                                    .with_partition_index(*p)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(epoch)
                                    .with_metadata(Some(metadata))
                            })
                            .collect();
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(s(topic)))
                            .with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = r.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let offsets = match fetch_offsets(st, access, &r.group_id, wanted) {
        Ok(o) => o,
        Err(code) if version >= 2 => return OffsetFetchResponse::default().with_error_code(code),
        // v0 and v1 have no top-level error: an empty answer makes the client look again.
        Err(_) => return OffsetFetchResponse::default(),
    };
    let topics = offsets
        .into_iter()
        .map(|(topic, parts)| {
            let partitions = parts
                .iter()
                .map(|(p, o)| {
                    let (offset, epoch, metadata) = committed(o);
                    let resp = OffsetFetchResponsePartition::default()
                        .with_error_code(told_code(o))
                        .with_partition_index(*p)
                        .with_committed_offset(offset)
                        .with_metadata(Some(metadata));
                    if version >= 5 {
                        resp.with_committed_leader_epoch(epoch)
                    } else {
                        resp
                    }
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// A group's committed offsets as `access` may see them: GROUP_AUTHORIZATION_FAILED without
/// DESCRIBE on the group; topics it may not describe are left out of "every topic", and
/// asked-for ones are answered with TOPIC_AUTHORIZATION_FAILED (see [`denied_code`]).
fn fetch_offsets(
    st: &BrokerState,
    access: &Access,
    group: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, ToldPartitions)>, i16> {
    if !access.group(Operation::Describe, group) {
        return Err(err(ResponseError::GroupAuthorizationFailed));
    }
    let describable = |t: &str| access.topic(Operation::Describe, t);
    let asked = wanted.is_some();
    let (allowed, denied): (Vec<_>, Vec<_>) = wanted
        .unwrap_or_default()
        .into_iter()
        .partition(|(t, _)| describable(t));
    let offsets = st.groups.fetch_offsets(group, asked.then_some(allowed))?;
    let told = offsets
        .into_iter()
        .filter(|(t, _)| describable(t))
        .map(|(t, parts)| (t, parts.into_iter().map(|(p, o)| (p, Ok(o))).collect()));
    let refused = denied.into_iter().map(|(t, parts)| {
        let code = err(ResponseError::TopicAuthorizationFailed);
        (t, parts.into_iter().map(|p| (p, Err(code))).collect())
    });
    Ok(told.chain(refused).collect())
}

/// One partition's committed offset (or its absence), or why it is not told.
type Told = Result<Option<StoredOffset>, i16>;
type ToldPartitions = Vec<(i32, Told)>;

fn told_code(o: &Told) -> i16 {
    o.as_ref().err().copied().unwrap_or(0)
}

pub fn list(
    st: &BrokerState,
    access: &Access,
    version: i16,
    r: ListGroupsRequest,
) -> ListGroupsResponse {
    let filter: Vec<String> = r.states_filter.iter().map(|f| f.to_lowercase()).collect();
    // DESCRIBE on the cluster lists every group; otherwise the groups one may describe.
    let everything = access.cluster(Operation::Describe);
    let groups = st
        .groups
        .list()
        .into_iter()
        .filter(|(_, _, state)| filter.is_empty() || filter.contains(&state.name().to_lowercase()))
        .filter(|(id, _, _)| everything || access.group(Operation::Describe, id))
        .map(|(id, protocol_type, state)| {
            let g = ListedGroup::default()
                .with_group_id(GroupId(s(id)))
                .with_protocol_type(s(protocol_type));
            if version >= 4 {
                g.with_group_state(StrBytes::from_static_str(state.name()))
            } else {
                g
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub fn describe(
    st: &BrokerState,
    access: &Access,
    version: i16,
    r: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let groups = r
        .groups
        .into_iter()
        .map(|id| {
            let group = DescribedGroup::default().with_group_id(id.clone());
            let described = if access.group(Operation::Describe, &id) {
                st.groups.describe(&id.0)
            } else {
                Err(err(ResponseError::GroupAuthorizationFailed))
            };
            match described {
                Err(code) => group.with_error_code(code),
                Ok(None) => {
                    group.with_group_state(StrBytes::from_static_str(GroupState::Dead.name()))
                }
                Ok(Some(d)) => {
                    let members = d
                        .members
                        .into_iter()
                        .map(|m| {
                            let member = DescribedGroupMember::default()
                                .with_member_id(s(m.member_id))
                                .with_client_id(s(m.client_id))
                                .with_client_host(s(m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment);
                            if version >= 4 {
                                member.with_group_instance_id(m.instance_id.map(s))
                            } else {
                                member
                            }
                        })
                        .collect();
                    group
                        .with_group_state(StrBytes::from_static_str(d.state.name()))
                        .with_protocol_type(s(d.protocol_type))
                        .with_protocol_data(s(d.protocol))
                        .with_members(members)
                }
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn delete(
    st: &BrokerState,
    access: &Access,
    r: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(r.groups_names.len());
    for id in r.groups_names {
        let code = if access.group(Operation::Delete, &id) {
            st.groups.delete(&id.0).await
        } else {
            err(ResponseError::GroupAuthorizationFailed)
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
