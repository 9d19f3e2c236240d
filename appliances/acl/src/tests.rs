use super::*;

fn bind(
    resource_type: ResourceType,
    name: &str,
    pattern: PatternType,
    principal: &str,
    operation: Operation,
    permission: Permission,
) -> AclBinding {
    AclBinding {
        resource_type,
        name: name.into(),
        pattern,
        principal: principal.into(),
        host: WILDCARD.into(),
        operation,
        permission,
    }
}

fn on() -> AuthorizerSettings {
    AuthorizerSettings {
        enabled: true,
        super_users: vec!["User:admin".into()],
        allow_if_no_acls: false,
    }
}

const B17: Requester<'static> = Requester {
    principal: "User:branch-017",
    host: "10.1.17.5",
};

use Operation::*;
use PatternType::*;
use Permission::*;
use ResourceType::*;

#[test]
fn a_branch_may_write_its_prefix_and_nothing_else() {
    let acls = Acls::default().changed(
        &[bind(
            Topic,
            "branch-017.",
            Prefixed,
            "User:branch-017",
            Write,
            Allow,
        )],
        &[],
    );
    let s = on();
    assert!(s.allows(&acls, B17, Write, Topic, "branch-017.alarms"));
    assert!(
        s.allows(&acls, B17, Describe, Topic, "branch-017.alarms"),
        "WRITE implies DESCRIBE"
    );
    assert!(!s.allows(&acls, B17, Read, Topic, "branch-017.alarms"));
    assert!(!s.allows(&acls, B17, Write, Topic, "branch-018.alarms"));
    assert!(
        !s.allows(&acls, B17, Write, Topic, "branch-017"),
        "the prefix includes the dot"
    );
    let b18 = Requester {
        principal: "User:branch-018",
        ..B17
    };
    assert!(!s.allows(&acls, b18, Write, Topic, "branch-017.alarms"));
    let admin = Requester {
        principal: "User:admin",
        ..B17
    };
    assert!(
        s.allows(&acls, admin, Delete, Topic, "branch-018.alarms"),
        "super user"
    );
    assert!(
        !s.allows(&acls, B17, Write, Group, "branch-017."),
        "another resource type"
    );
}

#[test]
fn deny_wins_and_implies_nothing() {
    let acls = Acls::default().changed(
        &[
            bind(Topic, WILDCARD, Literal, "User:*", All, Allow),
            bind(Topic, "scada.", Prefixed, "User:branch-017", Write, Deny),
        ],
        &[],
    );
    let s = on();
    assert!(!s.allows(&acls, B17, Write, Topic, "scada.setpoints"));
    assert!(
        s.allows(&acls, B17, Read, Topic, "scada.setpoints"),
        "a WRITE deny leaves READ"
    );
    assert!(s.allows(&acls, B17, Describe, Topic, "scada.setpoints"));
    let all_denied = acls.changed(&[bind(Topic, "scada.", Prefixed, "User:*", All, Deny)], &[]);
    assert!(!s.allows(&all_denied, B17, Describe, Topic, "scada.setpoints"));
}

#[test]
fn hosts_narrow_a_binding_and_configs_imply_their_description() {
    let mut b = bind(Topic, "t", Literal, "User:branch-017", AlterConfigs, Allow);
    b.host = "10.1.17.5".into();
    let acls = Acls::default().changed(&[b], &[]);
    let s = on();
    assert!(s.allows(&acls, B17, DescribeConfigs, Topic, "t"));
    assert!(s.allows(&acls, B17, AlterConfigs, Topic, "t"));
    let elsewhere = Requester {
        host: "10.9.9.9",
        ..B17
    };
    assert!(!s.allows(&acls, elsewhere, AlterConfigs, Topic, "t"));
}

#[test]
fn nothing_is_allowed_without_a_binding_unless_configured_and_everything_when_off() {
    let acls =
        Acls::default().changed(&[bind(Topic, "named", Literal, "User:x", Read, Allow)], &[]);
    let mut s = on();
    assert!(!s.allows(&acls, B17, Read, Topic, "other"));
    s.allow_if_no_acls = true;
    assert!(
        s.allows(&acls, B17, Read, Topic, "other"),
        "no binding names it"
    );
    assert!(
        !s.allows(&acls, B17, Read, Topic, "named"),
        "a binding names it, not for us"
    );
    let off = AuthorizerSettings::default();
    assert!(off.allows(&acls, B17, Delete, Cluster, CLUSTER));
}

#[test]
fn write_somewhere_allows_idempotent_producers_unless_denied_everywhere() {
    let s = on();
    let some = Acls::default().changed(
        &[bind(
            Topic,
            "branch-017.",
            Prefixed,
            "User:branch-017",
            Write,
            Allow,
        )],
        &[],
    );
    assert!(s.allows_some(&some, B17, Write, Topic));
    assert!(!s.allows_some(&some, B17, Write, Group));
    let denied = some.changed(
        &[bind(Topic, WILDCARD, Literal, "User:branch-017", All, Deny)],
        &[],
    );
    assert!(!s.allows_some(&denied, B17, Write, Topic));
    assert!(!s.allows_some(&Acls::default(), B17, Write, Topic));
}

#[test]
fn filters_match_as_kafka_describes_and_deletes() {
    let prefixed = bind(
        Topic,
        "branch-017.",
        Prefixed,
        "User:branch-017",
        Write,
        Allow,
    );
    let literal = bind(Topic, "branch-017.alarms", Literal, "User:ops", Read, Allow);
    let wild = bind(Topic, WILDCARD, Literal, "User:ops", Describe, Allow);
    let f = AclFilter {
        name: Some("branch-017.alarms".into()),
        pattern: PatternFilter::Match,
        ..AclFilter::default()
    };
    assert!(f.matches(&prefixed) && f.matches(&literal) && f.matches(&wild));
    let exact = AclFilter {
        name: Some("branch-017.".into()),
        pattern: PatternFilter::Exactly(Prefixed),
        ..AclFilter::default()
    };
    assert!(exact.matches(&prefixed) && !exact.matches(&literal));
    let by_principal = AclFilter {
        principal: Some("User:ops".into()),
        ..AclFilter::default()
    };
    assert!(!by_principal.matches(&prefixed) && by_principal.matches(&wild));
}

#[test]
fn bad_bindings_are_refused_and_the_index_survives_serialization() {
    let mut b = bind(Cluster, "other", Literal, "User:x", Alter, Allow);
    assert!(b.check().is_err());
    b.name = CLUSTER.into();
    assert!(b.check().is_ok());
    b.principal = "nobody".into();
    assert!(b.check().is_err());
    assert!(
        bind(Topic, "*", Prefixed, "User:x", Read, Allow)
            .check()
            .is_err()
    );

    let acls = Acls::default().changed(
        &[bind(Topic, "p.", Prefixed, "User:branch-017", Read, Allow)],
        &[],
    );
    let text = serde_json::to_string(&acls).unwrap();
    let back: Acls = serde_json::from_str(&text).unwrap();
    assert_eq!(back, acls);
    assert!(on().allows(&back, B17, Read, Topic, "p.x"));
}
