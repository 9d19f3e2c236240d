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
        Access {
            settings,
            acls: state.metadata().acls.clone(),
            principal: session.principal.to_string(),
            host: session.peer.ip().to_string(),
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
