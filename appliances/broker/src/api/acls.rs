//! CreateAcls, DescribeAcls and DeleteAcls: ACL bindings kept in the cluster metadata. They
//! may be managed while `[authorization]` is off (prepared before it is turned on); who may
//! manage them is checked at the dispatch point (ALTER or DESCRIBE on the cluster).

use std::time::Duration;

use acl::{AclBinding, AclFilter, Operation, PatternFilter, PatternType, Permission, ResourceType};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use quorum::controller::ControllerRequest;

use crate::state::BrokerState;

/// How long a committed change may take to reach this broker's metadata.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Kafka's "any" in filters.
const ANY: i8 = 1;
/// Kafka's MATCH pattern filter.
const MATCH: i8 = 2;

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn invalid(why: &str) -> (i16, Option<StrBytes>) {
    (ResponseError::InvalidRequest.code(), Some(text(why)))
}

fn binding(c: &AclCreation) -> Result<AclBinding, &'static str> {
    let b = AclBinding {
        resource_type: ResourceType::from_code(c.resource_type).ok_or("unknown resource type")?,
        name: c.resource_name.to_string(),
        pattern: PatternType::from_code(c.resource_pattern_type).ok_or("unknown pattern type")?,
        principal: c.principal.to_string(),
        host: c.host.to_string(),
        operation: Operation::from_code(c.operation).ok_or("unknown operation")?,
        permission: Permission::from_code(c.permission_type).ok_or("unknown permission type")?,
    };
    b.check()?;
    Ok(b)
}

/// A filter's field: `None` for Kafka's ANY, the value for a known code.
fn any_or<T>(
    code: i8,
    known: impl Fn(i8) -> Option<T>,
    what: &'static str,
) -> Result<Option<T>, &'static str> {
    if code == ANY {
        Ok(None)
    } else {
        known(code).map(Some).ok_or(what)
    }
}

#[allow(clippy::too_many_arguments)]
fn filter(
    resource_type: i8,
    name: &Option<StrBytes>,
    pattern: i8,
    principal: &Option<StrBytes>,
    host: &Option<StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, &'static str> {
    Ok(AclFilter {
        resource_type: any_or(
            resource_type,
            ResourceType::from_code,
            "unknown resource type",
        )?,
        name: name.as_ref().map(|n| n.to_string()),
        pattern: match pattern {
            ANY => PatternFilter::Any,
            MATCH => PatternFilter::Match,
            p => PatternFilter::Exactly(PatternType::from_code(p).ok_or("unknown pattern type")?),
        },
        principal: principal.as_ref().map(|p| p.to_string()),
        host: host.as_ref().map(|h| h.to_string()),
        operation: any_or(operation, Operation::from_code, "unknown operation")?,
        permission: any_or(permission, Permission::from_code, "unknown permission type")?,
    })
}

pub async fn create(s: &BrokerState, r: CreateAclsRequest) -> CreateAclsResponse {
    let checked: Vec<Result<AclBinding, &str>> = r.creations.iter().map(binding).collect();
    let valid: Vec<AclBinding> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok().cloned())
        .collect();
    let committed = if valid.is_empty() {
        Ok(())
    } else {
        s.cluster
            .change(
                ControllerRequest::CreateAcls { bindings: valid },
                APPLY_TIMEOUT,
            )
            .await
    };
    let results = checked.iter().map(|c| {
        let (code, message) = match (c, &committed) {
            (Err(why), _) => invalid(why),
            (Ok(_), Err(e)) => (ResponseError::UnknownServerError.code(), Some(text(e))),
            (Ok(_), Ok(())) => (0, None),
        };
        AclCreationResult::default()
            .with_error_code(code)
            .with_error_message(message)
    });
    CreateAclsResponse::default().with_results(results.collect())
}

pub fn describe(s: &BrokerState, r: DescribeAclsRequest) -> DescribeAclsResponse {
    let f = match filter(
        r.resource_type_filter,
        &r.resource_name_filter,
        r.pattern_type_filter,
        &r.principal_filter,
        &r.host_filter,
        r.operation,
        r.permission_type,
    ) {
        Ok(f) => f,
        Err(why) => {
            let (code, message) = invalid(why);
            return DescribeAclsResponse::default()
                .with_error_code(code)
                .with_error_message(message);
        }
    };
    let metadata = s.metadata();
    // Grouped by resource pattern, as Kafka answers.
    let mut resources: std::collections::BTreeMap<(i8, String, i8), Vec<AclDescription>> =
        Default::default();
    for b in metadata.acls.iter().filter(|b| f.matches(b)) {
        let key = (b.resource_type.code(), b.name.clone(), b.pattern.code());
        resources.entry(key).or_default().push(
            AclDescription::default()
                .with_principal(text(&b.principal))
                .with_host(text(&b.host))
                .with_operation(b.operation.code())
                .with_permission_type(b.permission.code()),
        );
    }
    let resources = resources.into_iter().map(|((t, name, p), acls)| {
        DescribeAclsResource::default()
            .with_resource_type(t)
            .with_resource_name(text(&name))
            .with_pattern_type(p)
            .with_acls(acls)
    });
    DescribeAclsResponse::default().with_resources(resources.collect())
}

pub async fn delete(s: &BrokerState, r: DeleteAclsRequest) -> DeleteAclsResponse {
    let metadata = s.metadata();
    let per_filter: Vec<Result<Vec<AclBinding>, &str>> = r
        .filters
        .iter()
        .map(|f: &DeleteAclsFilter| {
            let f = filter(
                f.resource_type_filter,
                &f.resource_name_filter,
                f.pattern_type_filter,
                &f.principal_filter,
                &f.host_filter,
                f.operation,
                f.permission_type,
            )?;
            Ok(metadata
                .acls
                .iter()
                .filter(|b| f.matches(b))
                .cloned()
                .collect())
        })
        .collect();
    let doomed: Vec<AclBinding> = per_filter.iter().flatten().flatten().cloned().collect();
    let committed = if doomed.is_empty() {
        Ok(())
    } else {
        s.cluster
            .change(
                ControllerRequest::DeleteAcls { bindings: doomed },
                APPLY_TIMEOUT,
            )
            .await
    };
    let results = per_filter
        .iter()
        .map(|matched| match (matched, &committed) {
            (Err(why), _) => {
                let (code, message) = invalid(why);
                DeleteAclsFilterResult::default()
                    .with_error_code(code)
                    .with_error_message(message)
            }
            (Ok(_), Err(e)) => DeleteAclsFilterResult::default()
                .with_error_code(ResponseError::UnknownServerError.code())
                .with_error_message(Some(text(e))),
            (Ok(bindings), Ok(())) => DeleteAclsFilterResult::default().with_matching_acls(
                bindings
                    .iter()
                    .map(|b| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(b.resource_type.code())
                            .with_resource_name(text(&b.name))
                            .with_pattern_type(b.pattern.code())
                            .with_principal(text(&b.principal))
                            .with_host(text(&b.host))
                            .with_operation(b.operation.code())
                            .with_permission_type(b.permission.code())
                    })
                    .collect(),
            ),
        });
    DeleteAclsResponse::default().with_filter_results(results.collect())
}
