//! Kafka's ACL model and the authorizer every appliance shares (Kafka's `StandardAuthorizer`
//! semantics): a binding allows or denies one principal, from one host (or any), one
//! operation on the resources one pattern names (a literal name, `*`, or a prefix).
//!
//! A request is allowed when the principal is a super user, or when no DENY binding matches
//! and an ALLOW binding does; nothing matching means denied. Kafka's implied operations hold:
//! an allowed READ, WRITE, DELETE or ALTER allows DESCRIBE, and ALTER_CONFIGS allows
//! DESCRIBE_CONFIGS (denials imply nothing).
//!
//! Written here: no crate implements Kafka's ACL semantics, and the S3 gateway and the Schema
//! Registry map the same principals to their grants with it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// What a binding names (Kafka's `ResourceType`, the codes it sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

impl ResourceType {
    pub fn code(self) -> i8 {
        match self {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
            ResourceType::TransactionalId => 5,
        }
    }

    pub fn from_code(code: i8) -> Option<ResourceType> {
        Some(match code {
            2 => ResourceType::Topic,
            3 => ResourceType::Group,
            4 => ResourceType::Cluster,
            5 => ResourceType::TransactionalId,
            _ => return None,
        })
    }
}

/// The name of the one cluster resource.
pub const CLUSTER: &str = "kafka-cluster";
/// A literal name or principal that matches every one.
pub const WILDCARD: &str = "*";

/// How a binding's name matches resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    /// The name itself (or every name, for `*`).
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

impl PatternType {
    pub fn code(self) -> i8 {
        match self {
            PatternType::Literal => 3,
            PatternType::Prefixed => 4,
        }
    }

    pub fn from_code(code: i8) -> Option<PatternType> {
        match code {
            3 => Some(PatternType::Literal),
            4 => Some(PatternType::Prefixed),
            _ => None,
        }
    }
}

/// Kafka's operations (`AclOperation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

impl Operation {
    const CODES: [(Operation, i8); 11] = [
        (Operation::All, 2),
        (Operation::Read, 3),
        (Operation::Write, 4),
        (Operation::Create, 5),
        (Operation::Delete, 6),
        (Operation::Alter, 7),
        (Operation::Describe, 8),
        (Operation::ClusterAction, 9),
        (Operation::DescribeConfigs, 10),
        (Operation::AlterConfigs, 11),
        (Operation::IdempotentWrite, 12),
    ];

    /// The operations a topic has (Kafka's `topic_authorized_operations` bits).
    pub const TOPIC: [Operation; 8] = [
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
    ];

    pub fn code(self) -> i8 {
        Operation::CODES
            .iter()
            .find(|(o, _)| *o == self)
            .map_or(0, |(_, c)| *c)
    }

    pub fn from_code(code: i8) -> Option<Operation> {
        Operation::CODES
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(o, _)| *o)
    }

    /// Whether an ALLOW binding for `self` allows `wanted` (Kafka's implied operations).
    fn allows(self, wanted: Operation) -> bool {
        use Operation::*;
        self == All
            || self == wanted
            || (wanted == Describe && matches!(self, Read | Write | Delete | Alter))
            || (wanted == DescribeConfigs && self == AlterConfigs)
    }

    /// Whether a DENY binding for `self` denies `wanted`.
    fn denies(self, wanted: Operation) -> bool {
        self == Operation::All || self == wanted
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Deny,
    Allow,
}

impl Permission {
    pub fn code(self) -> i8 {
        match self {
            Permission::Deny => 2,
            Permission::Allow => 3,
        }
    }

    pub fn from_code(code: i8) -> Option<Permission> {
        match code {
            2 => Some(Permission::Deny),
            3 => Some(Permission::Allow),
            _ => None,
        }
    }
}

/// One ACL: `principal` from `host` may (or may not) do `operation` on the resources of
/// `resource_type` that `name` and `pattern` match.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub name: String,
    pub pattern: PatternType,
    /// `User:branch-017`, or `User:*` for everyone.
    pub principal: String,
    /// A client's IP address, or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

impl AclBinding {
    /// Why this binding cannot be stored, if it cannot (Kafka's checks on CreateAcls).
    pub fn check(&self) -> Result<(), &'static str> {
        if self.name.is_empty() {
            return Err("the resource name must not be empty");
        }
        if self.resource_type == ResourceType::Cluster && self.name != CLUSTER {
            return Err("the cluster resource is named kafka-cluster");
        }
        if self.pattern == PatternType::Prefixed && self.name == WILDCARD {
            return Err("a prefixed pattern cannot be the wildcard");
        }
        match self.principal.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
            _ => return Err("a principal is TYPE:NAME, e.g. User:branch-017"),
        }
        if self.host.is_empty() {
            return Err("the host must be an address or *");
        }
        let longest = [&self.name, &self.principal, &self.host]
            .iter()
            .map(|s| s.len())
            .max();
        if longest.unwrap_or(0) > NAME_BYTES_MAX {
            return Err("a name, principal or host is too long");
        }
        Ok(())
    }

    fn covers(&self, name: &str) -> bool {
        match self.pattern {
            PatternType::Literal => self.name == name || self.name == WILDCARD,
            PatternType::Prefixed => name.starts_with(&self.name),
        }
    }

    fn applies_to(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == "User:*")
            && (self.host == host || self.host == WILDCARD)
    }
}

/// The longest resource name, principal or host a binding may hold.
pub const NAME_BYTES_MAX: usize = 1024;
/// At most this many bindings.
pub const BINDINGS_MAX: usize = 100_000;

/// A filter over bindings (DescribeAcls, DeleteAcls): `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub name: Option<String>,
    pub pattern: PatternFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

/// Kafka's `PatternTypeFilter`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatternFilter {
    /// Bindings of either pattern type, names compared as they are stored.
    #[default]
    Any,
    /// Bindings whose pattern would match the filter's name (literal, `*`, or a prefix of it).
    Match,
    Exactly(PatternType),
}

impl AclFilter {
    pub fn matches(&self, b: &AclBinding) -> bool {
        let name = match (&self.name, self.pattern) {
            (None, _) => true,
            (Some(n), PatternFilter::Match) => b.covers(n),
            (Some(n), _) => *n == b.name,
        };
        let pattern = match self.pattern {
            PatternFilter::Exactly(p) => p == b.pattern,
            PatternFilter::Any | PatternFilter::Match => true,
        };
        name && pattern
            && self.resource_type.is_none_or(|t| t == b.resource_type)
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && self.operation.is_none_or(|o| o == b.operation)
            && self.permission.is_none_or(|p| p == b.permission)
    }
}

/// Every binding, with an index for the checks on the request path: literal names are looked
/// up by name; prefixed ones (a few per branch) are scanned. Cheap to clone (shared), changed
/// copy-on-write.
#[derive(Debug, Clone, Default)]
pub struct Acls(Arc<Index>);

#[derive(Debug, Clone, Default)]
struct Index {
    all: BTreeSet<AclBinding>,
    literal: HashMap<(ResourceType, String), Vec<AclBinding>>,
    prefixed: HashMap<ResourceType, Vec<AclBinding>>,
}

impl Index {
    fn from_set(all: BTreeSet<AclBinding>) -> Index {
        let mut index = Index {
            all: BTreeSet::new(),
            literal: HashMap::new(),
            prefixed: HashMap::new(),
        };
        for b in &all {
            match b.pattern {
                PatternType::Literal => index
                    .literal
                    .entry((b.resource_type, b.name.clone()))
                    .or_default()
                    .push(b.clone()),
                PatternType::Prefixed => index
                    .prefixed
                    .entry(b.resource_type)
                    .or_default()
                    .push(b.clone()),
            }
        }
        index.all = all;
        index
    }
}

impl PartialEq for Acls {
    fn eq(&self, other: &Self) -> bool {
        self.0.all == other.0.all
    }
}

impl Serialize for Acls {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.all.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Acls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Acls(Arc::new(Index::from_set(BTreeSet::deserialize(d)?))))
    }
}

impl Acls {
    pub fn len(&self) -> usize {
        self.0.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.all.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &AclBinding> {
        self.0.all.iter()
    }

    pub fn contains(&self, b: &AclBinding) -> bool {
        self.0.all.contains(b)
    }

    /// These bindings added and `removed` taken away, in one change.
    pub fn changed(&self, added: &[AclBinding], removed: &[AclBinding]) -> Acls {
        let mut all = self.0.all.clone();
        for b in removed {
            all.remove(b);
        }
        all.extend(added.iter().cloned());
        Acls(Arc::new(Index::from_set(all)))
    }

    /// The bindings that could apply to `name` of `resource_type`.
    fn candidates<'a>(
        &'a self,
        resource_type: ResourceType,
        name: &'a str,
    ) -> impl Iterator<Item = &'a AclBinding> + 'a {
        let exact = self.0.literal.get(&(resource_type, name.to_string()));
        let wild = self.0.literal.get(&(resource_type, WILDCARD.to_string()));
        let prefixed = self.0.prefixed.get(&resource_type);
        exact.into_iter().chain(wild).flatten().chain(
            prefixed
                .into_iter()
                .flatten()
                .filter(move |b| b.covers(name)),
        )
    }
}

/// Who asks: the session's principal and address.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// `User:branch-017`.
    pub principal: &'a str,
    /// The client's IP address as text.
    pub host: &'a str,
}

/// The authorizer's settings (`[authorization]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizerSettings {
    /// Check ACLs at all (Kafka's `authorizer.class.name`). Off, everyone may do everything.
    pub enabled: bool,
    /// Principals allowed everything (`super.users`): the hub's operators and, with mTLS
    /// between brokers, each broker's principal.
    pub super_users: Vec<String>,
    /// `allow.everyone.if.no.acl.found`: a resource no binding names is open to everyone.
    /// Off by default: deny unless allowed.
    pub allow_if_no_acls: bool,
}

impl AuthorizerSettings {
    pub fn check(&self, what: &str) -> Result<(), String> {
        for p in &self.super_users {
            if !p
                .split_once(':')
                .is_some_and(|(k, n)| !k.is_empty() && !n.is_empty())
            {
                return Err(format!(
                    "{what}.super_users: {p:?} is not TYPE:NAME (User:admin)"
                ));
            }
        }
        Ok(())
    }

    /// Whether `who` may do `operation` on `name` of `resource_type` under `acls`.
    pub fn allows(
        &self,
        acls: &Acls,
        who: Requester<'_>,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        if !self.enabled || self.super_users.iter().any(|s| s == who.principal) {
            return true;
        }
        let mut any = false;
        let mut allowed = false;
        for b in acls.candidates(resource_type, name) {
            any = true;
            if !b.applies_to(who.principal, who.host) {
                continue;
            }
            match b.permission {
                Permission::Deny if b.operation.denies(operation) => return false,
                Permission::Allow if b.operation.allows(operation) => allowed = true,
                _ => {}
            }
        }
        allowed || (!any && self.allow_if_no_acls)
    }

    /// Whether `who` may do `operation` on some resource of `resource_type` (Kafka's
    /// `authorizeByResourceType`, used for idempotent producers: WRITE on any topic). An
    /// allow on some pattern counts unless a deny for every name (`*`) takes it back.
    pub fn allows_some(
        &self,
        acls: &Acls,
        who: Requester<'_>,
        operation: Operation,
        resource_type: ResourceType,
    ) -> bool {
        if !self.enabled || self.super_users.iter().any(|s| s == who.principal) {
            return true;
        }
        let applies = |b: &&AclBinding| {
            b.resource_type == resource_type && b.applies_to(who.principal, who.host)
        };
        let denied_everywhere = acls.iter().filter(applies).any(|b| {
            b.permission == Permission::Deny
                && b.operation.denies(operation)
                && b.pattern == PatternType::Literal
                && b.name == WILDCARD
        });
        !denied_everywhere
            && acls
                .iter()
                .filter(applies)
                .any(|b| b.permission == Permission::Allow && b.operation.allows(operation))
    }
}
