//! Who is on the other end of a Kafka connection: which listener it came in on (its trust
//! zone), from where, and as which principal. Every request is checked against its session at
//! the one dispatch point ([`crate::api::handle`]), so TLS (the stream), SASL (the principal)
//! and ACLs (the check) plug in there without touching the handlers.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// The kind of a listener, which decides what may be asked on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerRole {
    /// Applications and branches (and, in a one-listener setup, replication too).
    Clients,
    /// Brokers of the hub only: followers fetch here (the inter-site trust zone).
    Replication,
}

/// A named listener (`clients`, `replication`) and its role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Listener {
    pub name: Arc<str>,
    pub role: ListenerRole,
    /// Whether followers may fetch here (the replication listener, or the clients listener
    /// when no separate replication listener is configured).
    pub serves_replication: bool,
    /// TLS or not, SASL login or not.
    pub security: crate::config::ListenerSecurity,
}

/// The authenticated identity behind a connection. Anonymous until the security layer
/// (TLS client certificates, SASL) establishes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Anonymous,
    User(Arc<str>),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("User:ANONYMOUS"),
            Principal::User(u) => write!(f, "User:{u}"),
        }
    }
}

/// One connection's identity; requests carry a reference to it.
#[derive(Debug, Clone)]
pub struct Session {
    pub listener: Arc<Listener>,
    pub peer: SocketAddr,
    pub principal: Principal,
    /// The client id of the request being handled (Kafka sends it in every header).
    pub client_id: String,
    /// Cancelled when the peer closed the connection: requests that only wait (a Fetch's
    /// long poll) stop waiting, since no one will read their answer.
    pub peer_gone: CancellationToken,
}

impl Session {
    pub fn new(listener: Arc<Listener>, peer: SocketAddr) -> Session {
        Session {
            listener,
            peer,
            principal: Principal::Anonymous,
            client_id: String::new(),
            peer_gone: CancellationToken::new(),
        }
    }

    /// Kafka's format for a client's host: `/<ip>`.
    pub fn host(&self) -> String {
        format!("/{}", self.peer.ip())
    }
}

/// Why a request is refused at the dispatch point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// A follower's fetch on a listener that does not serve replication.
    ReplicationNotHere,
}
