//! Connection admission for every listener of every appliance: at most `connections_max`
//! connections on a listener, and at most `connections_per_ip_max` from one client address
//! (Kafka's `max.connections` and `max.connections.per.ip`, with per-address overrides), so
//! that no one client, however many sockets it opens, takes the connections everyone else
//! needs. A refused connection is closed at once; an admitted one holds an [`Admitted`]
//! guard that gives its place back when dropped.
//!
//! Memory per request and deadlines for slow senders are the protocols' business (the Kafka
//! connection reader, hyper's header timeout); this crate only counts sockets.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A listener's connection limits (part of each appliance's listener configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Connections open at once on the listener.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_connections_per_ip: usize,
    /// Other per-address limits (a NAT gateway in front of a whole branch, a load balancer).
    pub max_connections_per_ip_overrides: BTreeMap<IpAddr, usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_connections_per_ip_overrides: BTreeMap::new(),
        }
    }
}

impl ConnectionLimits {
    /// Fixed limits for a listener that has no settings of its own (quorum, admin, registry).
    pub fn fixed(max_connections: usize, max_connections_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            max_connections_per_ip,
            max_connections_per_ip_overrides: BTreeMap::new(),
        }
    }

    /// The configuration errors of these limits (`what` names the listener's section).
    pub fn check(&self, what: &str) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err(format!(
                "{what}.max_connections and {what}.max_connections_per_ip must be at least 1"
            ));
        }
        Ok(())
    }

    fn per_ip(&self, ip: &IpAddr) -> usize {
        self.max_connections_per_ip_overrides
            .get(ip)
            .copied()
            .unwrap_or(self.max_connections_per_ip)
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the listener has its maximum of connections open")]
    ListenerFull,
    #[error("this client address has its maximum of connections open")]
    AddressFull,
}

impl Refused {
    /// A metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::ListenerFull => "max_connections",
            Refused::AddressFull => "max_connections_per_ip",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Open connections per address; an address leaves the map with its last connection, so
    /// the map holds at most `max_connections` entries.
    per_ip: HashMap<IpAddr, usize>,
}

/// The connection counts of one listener.
pub struct Admission {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Admit a connection from `ip`, or say why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let ip = canonical(ip);
        let mut c = self.counts.lock();
        if c.total >= self.limits.max_connections {
            return Err(Refused::ListenerFull);
        }
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.limits.per_ip(&ip) {
            return Err(Refused::AddressFull);
        }
        c.total += 1;
        c.per_ip.insert(ip, from_ip + 1);
        assert!(
            c.per_ip.len() <= c.total,
            "every address counted has a connection"
        );
        Ok(Admitted {
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }
}

/// An IPv4 client on a dual-stack socket shows as `::ffff:a.b.c.d`: count it as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An admitted connection's place; dropped with the connection.
pub struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        c.total -= 1;
        let left = c.per_ip.get_mut(&self.ip).map(|n| {
            *n -= 1;
            *n
        });
        if left == Some(0) {
            c.per_ip.remove(&self.ip);
        }
    }
}

/// Connections at once per authenticated principal (`User:branch-017`), across every
/// listener of a node: one branch's runaway client cannot take the places of the others,
/// whatever addresses it comes from. Anonymous connections are bounded per address instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrincipalLimits {
    pub max_connections_per_principal: usize,
    /// `{ "User:edge-hub" = 5000 }`.
    pub max_connections_per_principal_overrides: BTreeMap<String, usize>,
}

impl Default for PrincipalLimits {
    fn default() -> Self {
        PrincipalLimits {
            max_connections_per_principal: 1000,
            max_connections_per_principal_overrides: BTreeMap::new(),
        }
    }
}

/// The connection counts per principal of a node.
pub struct Principals {
    limits: PrincipalLimits,
    /// A principal leaves the map with its last connection.
    counts: Mutex<HashMap<String, usize>>,
}

impl Principals {
    pub fn new(limits: PrincipalLimits) -> Arc<Principals> {
        Arc::new(Principals {
            limits,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Admit one more connection of `principal`, or refuse it at its limit.
    pub fn admit(self: &Arc<Self>, principal: &str) -> Result<PrincipalAdmitted, PrincipalFull> {
        let limit = self
            .limits
            .max_connections_per_principal_overrides
            .get(principal)
            .copied()
            .unwrap_or(self.limits.max_connections_per_principal);
        let mut counts = self.counts.lock();
        let open = counts.get(principal).copied().unwrap_or(0);
        if open >= limit {
            return Err(PrincipalFull);
        }
        counts.insert(principal.to_string(), open + 1);
        Ok(PrincipalAdmitted {
            principals: Arc::clone(self),
            principal: principal.to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this principal has its maximum of connections open")]
pub struct PrincipalFull;

/// A principal's place, held by its connection.
pub struct PrincipalAdmitted {
    principals: Arc<Principals>,
    principal: String,
}

impl Drop for PrincipalAdmitted {
    fn drop(&mut self) {
        let mut counts = self.principals.counts.lock();
        if let Some(n) = counts.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_per_address_and_per_listener_and_places_come_back() {
        let a = Admission::new(ConnectionLimits {
            max_connections: 5,
            max_connections_per_ip: 2,
            max_connections_per_ip_overrides: [(ip("10.0.0.9"), 3)].into(),
        });
        let first: Vec<Admitted> = (0..2).map(|_| a.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(a.admit(ip("10.0.0.1")).err(), Some(Refused::AddressFull));
        // The same address seen through a dual-stack socket counts as the same.
        assert_eq!(
            a.admit(ip("::ffff:10.0.0.1")).err(),
            Some(Refused::AddressFull)
        );
        let nat: Vec<Admitted> = (0..3).map(|_| a.admit(ip("10.0.0.9")).unwrap()).collect();
        assert_eq!(a.open(), 5);
        assert_eq!(a.admit(ip("10.0.0.2")).err(), Some(Refused::ListenerFull));
        drop(first);
        assert_eq!(a.open(), 3);
        let again = a.admit(ip("10.0.0.1")).unwrap();
        drop((nat, again));
        assert_eq!(a.open(), 0);
        assert!(a.counts.lock().per_ip.is_empty());
    }

    #[test]
    fn zero_limits_are_refused_in_configuration() {
        let l = ConnectionLimits {
            max_connections: 0,
            ..ConnectionLimits::default()
        };
        assert!(l.check("kafka").is_err());
        assert!(ConnectionLimits::default().check("kafka").is_ok());
    }

    #[test]
    fn principals_are_limited_across_addresses_and_places_come_back() {
        let p = Principals::new(PrincipalLimits {
            max_connections_per_principal: 2,
            max_connections_per_principal_overrides: [("User:hub".to_string(), 3)].into(),
        });
        let a = p.admit("User:branch-017").unwrap();
        let _b = p.admit("User:branch-017").unwrap();
        assert_eq!(p.admit("User:branch-017").err(), Some(PrincipalFull));
        let _other = p.admit("User:branch-018").unwrap();
        drop(a);
        let _c = p.admit("User:branch-017").unwrap();
        let hub: Vec<_> = (0..3).map(|_| p.admit("User:hub").unwrap()).collect();
        assert!(p.admit("User:hub").is_err());
        drop(hub);
        assert!(
            !p.counts.lock().contains_key("User:hub"),
            "a principal leaves with its last connection"
        );
    }
}
