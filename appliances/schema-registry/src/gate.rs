//! Who may do what in the registry. Every request is reduced to an [`Action`] (what it does
//! to which subject) and passes the one [`Gate`] the listener was given before the registry
//! sees it; listings of subjects are filtered by the same gate ([`filter_listing`]), so a
//! caller learns no subject it may not read. The registry knows its routes; the gate (the
//! broker's ACLs) knows the principals.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value as Json;

/// Who is calling: the connection's peer and, once the security layer establishes one, its
/// principal's name (`branch-017` for `User:branch-017`; `None`: anonymous).
#[derive(Debug, Clone)]
pub struct Caller {
    pub peer: SocketAddr,
    pub principal: Option<Arc<str>>,
}

/// What a request does to a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectOp {
    /// Read its versions, look a schema up in it, test compatibility against it.
    Read,
    /// Register a schema under it.
    Write,
    /// Delete it or one of its versions.
    Delete,
    /// Read its compatibility level or mode.
    ReadConfig,
    /// Change or remove its compatibility level or mode.
    WriteConfig,
}

/// What a request does, as the gate sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Subject(&'a str, SubjectOp),
    /// The global compatibility level or mode: `ReadConfig` or `WriteConfig`.
    Global(SubjectOp),
    /// Lists subjects: allowed, and the answer filtered by [`Gate::visible`].
    Listing,
    /// Nothing a principal owns: the root, the schema types, a schema by its id (what every
    /// consumer's deserializer asks; the body names no subject).
    Open,
}

impl<'a> Action<'a> {
    /// The action of `method` on the decoded path `segs`. Routes the registry does not
    /// serve are `Open`: they get their 404 from the registry.
    pub fn of(method: &str, segs: &[&'a str]) -> Action<'a> {
        use SubjectOp::*;
        match (method, segs) {
            ("GET", ["subjects"]) | ("GET", ["schemas", "ids", _, "versions" | "subjects"]) => {
                Action::Listing
            }
            ("POST", ["subjects", s, "versions"]) => Action::Subject(s, Write),
            ("GET", ["subjects", s, ..]) | ("POST", ["subjects", s]) => Action::Subject(s, Read),
            ("POST", ["compatibility", "subjects", s, ..]) => Action::Subject(s, Read),
            ("DELETE", ["subjects", s, ..]) => Action::Subject(s, Delete),
            ("GET", ["config" | "mode", s]) => Action::Subject(s, ReadConfig),
            ("PUT" | "DELETE", ["config" | "mode", s]) => Action::Subject(s, WriteConfig),
            ("GET", ["config" | "mode"]) => Action::Global(ReadConfig),
            ("PUT" | "DELETE", ["config" | "mode"]) => Action::Global(WriteConfig),
            _ => Action::Open,
        }
    }
}

/// The one check every request passes.
pub trait Gate: Send + Sync {
    fn allow(&self, caller: &Caller, action: Action<'_>) -> bool;
    /// Whether `subject` appears in listings for `caller`.
    fn visible(&self, caller: &Caller, subject: &str) -> bool {
        self.allow(caller, Action::Subject(subject, SubjectOp::Read))
    }
}

/// Everyone may do everything: a registry without an authorizer.
pub struct Open;

impl Gate for Open {
    fn allow(&self, _: &Caller, _: Action<'_>) -> bool {
        true
    }
}

/// The path's segments, percent-decoded one by one (a subject may hold an encoded `/`).
pub fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// Remove from a listing's answer what `caller` may not see: subject names (`GET
/// /subjects`, `.../subjects`) or `{"subject", "version"}` pairs (`.../versions`).
pub fn filter_listing(gate: &dyn Gate, caller: &Caller, answer: &mut Json) {
    if let Json::Array(items) = answer {
        items.retain(|item| {
            let subject = item.as_str().or_else(|| item["subject"].as_str());
            subject.is_none_or(|s| gate.visible(caller, s))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_one_action() {
        use SubjectOp::*;
        let of = |m, p: &str| {
            let segs = segments(p);
            let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
            format!("{:?}", Action::of(m, &segs))
        };
        let subject = |s: &str, op| format!("{:?}", Action::Subject(s, op));
        assert_eq!(of("GET", "/subjects"), "Listing");
        assert_eq!(of("GET", "/schemas/ids/3/subjects"), "Listing");
        assert_eq!(of("GET", "/schemas/ids/3/versions"), "Listing");
        assert_eq!(of("GET", "/schemas/ids/3"), "Open");
        assert_eq!(of("GET", "/"), "Open");
        assert_eq!(
            of("POST", "/subjects/a-value/versions"),
            subject("a-value", Write)
        );
        assert_eq!(
            of("POST", "/subjects/a%2Fb-value"),
            subject("a/b-value", Read)
        );
        assert_eq!(
            of("GET", "/subjects/a-value/versions/1/schema"),
            subject("a-value", Read)
        );
        assert_eq!(
            of("POST", "/compatibility/subjects/a-value/versions/latest"),
            subject("a-value", Read)
        );
        assert_eq!(
            of("DELETE", "/subjects/a-value/versions/2"),
            subject("a-value", Delete)
        );
        assert_eq!(
            of("DELETE", "/subjects/a-value"),
            subject("a-value", Delete)
        );
        assert_eq!(of("GET", "/config/a-value"), subject("a-value", ReadConfig));
        assert_eq!(of("PUT", "/mode/a-value"), subject("a-value", WriteConfig));
        assert_eq!(
            of("PUT", "/config"),
            format!("{:?}", Action::Global(WriteConfig))
        );
        assert_eq!(
            of("GET", "/mode"),
            format!("{:?}", Action::Global(ReadConfig))
        );
    }

    #[test]
    fn listings_keep_what_the_gate_shows() {
        struct Mine;
        impl Gate for Mine {
            fn allow(&self, _: &Caller, action: Action<'_>) -> bool {
                matches!(action, Action::Subject(s, _) if s.starts_with("mine"))
            }
        }
        let caller = Caller {
            peer: "127.0.0.1:1".parse().unwrap(),
            principal: None,
        };
        let mut names = serde_json::json!(["mine-value", "theirs-value"]);
        filter_listing(&Mine, &caller, &mut names);
        assert_eq!(names, serde_json::json!(["mine-value"]));
        let mut pairs = serde_json::json!([
            {"subject": "theirs-value", "version": 1},
            {"subject": "mine-key", "version": 2}
        ]);
        filter_listing(&Mine, &caller, &mut pairs);
        assert_eq!(
            pairs,
            serde_json::json!([{"subject": "mine-key", "version": 2}])
        );
    }
}
