//! Authorization of Kafka requests: what a session's principal may do, under the ACLs of the
//! cluster metadata and `[authorization]`. The dispatch point ([`crate::api::handle`]) makes
//! one [`Access`] per request and checks what concerns the whole request (the cluster, a
//! group); each handler asks it about the topics and groups it resolves, where it would
//! answer UNKNOWN_TOPIC_OR_PARTITION, and answers Kafka's *_AUTHORIZATION_FAILED there.

use acl::{Acls, AuthorizerSettings, Operation, Requester, ResourceType};

use crate::session::Session;
use crate::state::BrokerState;

/// What one request's session may do.
pub struct Access {
    settings: std::sync::Arc<AuthorizerSettings>,
    acls: Acls,
    principal: String,
    host: String,
}

impl Access {
    pub fn of(state: &BrokerState, session: &Session) -> Access {
        Access::of_principal(state, || {
            (session.principal.to_string(), session.peer.ip().to_string())
        })
    }

    /// What `who` (principal and host, asked only with the authorizer on) may do.
    pub fn of_principal(state: &BrokerState, who: impl FnOnce() -> (String, String)) -> Access {
        let settings = std::sync::Arc::clone(&state.authorizer);
        if !settings.enabled {
            // Nothing to check: no copies on the request path.
            return Access {
                settings,
                acls: Acls::default(),
                principal: String::new(),
                host: String::new(),
            };
        }
        let (principal, host) = who();
        Access {
            settings,
            acls: state.metadata().acls.clone(),
            principal,
            host,
        }
    }

    /// Everything allowed (internal callers, tests).
    pub fn everything() -> Access {
        Access {
            settings: Default::default(),
            acls: Acls::default(),
            principal: String::new(),
            host: String::new(),
        }
    }

    fn who(&self) -> Requester<'_> {
        Requester {
            principal: &self.principal,
            host: &self.host,
        }
    }

    pub fn allows(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        let allowed = self
            .settings
            .allows(&self.acls, self.who(), operation, resource_type, name);
        if !allowed {
            tracing::debug!(principal = %self.principal, host = %self.host, ?operation, ?resource_type, name, "denied");
        }
        allowed
    }

    pub fn topic(&self, operation: Operation, name: &str) -> bool {
        self.allows(operation, ResourceType::Topic, name)
    }

    pub fn group(&self, operation: Operation, name: &str) -> bool {
        self.allows(operation, ResourceType::Group, name)
    }

    pub fn cluster(&self, operation: Operation) -> bool {
        self.allows(operation, ResourceType::Cluster, acl::CLUSTER)
    }

    /// Metadata's `topic_authorized_operations`: a bit (1 << Kafka's code) for every topic
    /// operation allowed on `name` (all of them with the authorizer off).
    pub fn topic_operations(&self, name: &str) -> i32 {
        Operation::TOPIC
            .into_iter()
            .filter(|op| self.topic(*op, name))
            .fold(0, |bits, op| bits | 1 << op.code())
    }

    /// Creating topic `name`: CREATE on the cluster or on the topic.
    pub fn create_topic(&self, name: &str) -> bool {
        self.cluster(Operation::Create) || self.topic(Operation::Create, name)
    }

    /// An idempotent producer (no transactional id): IDEMPOTENT_WRITE on the cluster, or
    /// WRITE on some topic (Kafka 2.8+, KIP-679).
    pub fn idempotent_write(&self) -> bool {
        self.cluster(Operation::IdempotentWrite)
            || self.settings.allows_some(
                &self.acls,
                self.who(),
                Operation::Write,
                ResourceType::Topic,
            )
    }
}

/// The Schema Registry's gate: subjects under the cluster's ACLs, the way Confluent's topic
/// ACL authorizer maps them. A subject `<topic>-key` or `<topic>-value` (the serializers'
/// default TopicNameStrategy) belongs to `<topic>`; any other subject (RecordNameStrategy's
/// record names) to a topic of its own name, so a prefixed binding covers both. Reading a
/// subject needs DESCRIBE on its topic (what WRITE and READ imply: producers and consumers
/// alike), registering needs WRITE, deleting DELETE, its settings DESCRIBE_CONFIGS and
/// ALTER_CONFIGS; the global settings need those on the cluster. Principals come from the
/// registry listener's client certificates, named as on the Kafka listeners.
pub struct RegistryGate {
    pub state: std::sync::Arc<BrokerState>,
}

impl RegistryGate {
    fn access(&self, caller: &schema_registry::gate::Caller) -> Access {
        Access::of_principal(&self.state, || {
            let principal = match &caller.principal {
                Some(name) => format!("User:{name}"),
                None => crate::session::Principal::Anonymous.to_string(),
            };
            (principal, caller.peer.ip().to_string())
        })
    }
}

/// The topic a registry subject belongs to.
pub fn subject_topic(subject: &str) -> &str {
    subject
        .strip_suffix("-value")
        .or_else(|| subject.strip_suffix("-key"))
        .unwrap_or(subject)
}

impl schema_registry::gate::Gate for RegistryGate {
    fn allow(
        &self,
        caller: &schema_registry::gate::Caller,
        action: schema_registry::gate::Action<'_>,
    ) -> bool {
        use schema_registry::gate::{Action, SubjectOp};
        if !self.state.authorizer.enabled {
            return true;
        }
        let operation = |op| match op {
            SubjectOp::Read => Operation::Describe,
            SubjectOp::Write => Operation::Write,
            SubjectOp::Delete => Operation::Delete,
            SubjectOp::ReadConfig => Operation::DescribeConfigs,
            SubjectOp::WriteConfig => Operation::AlterConfigs,
        };
        match action {
            Action::Open | Action::Listing => true,
            Action::Subject(subject, op) => self
                .access(caller)
                .topic(operation(op), subject_topic(subject)),
            Action::Global(op) => self.access(caller).cluster(operation(op)),
        }
    }
}
