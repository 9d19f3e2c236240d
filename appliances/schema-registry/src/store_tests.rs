//! The store driven through its records as the broker drives it: plan, encode, append to a
//! log, decode, apply; and rebuilt from the log (a restart) or from the log as compaction
//! leaves it.

use crate::error::RegistryError;
use crate::records::{Mode, RawRecord, Record, Reference};
use crate::store::{Limits, RegisterRequest, Store, VersionSpec};

/// A `_schemas` log and the store that has applied all of it.
struct Registry {
    log: Vec<RawRecord>,
    store: Store,
}

impl Registry {
    fn new() -> Registry {
        Registry {
            log: vec![],
            store: Store::new(Limits::default()),
        }
    }

    fn append(&mut self, records: Vec<Record>) {
        for r in records {
            let (k, v) = r.encode();
            self.store.apply(Record::decode(&k, v.as_deref()).unwrap());
            self.log.push((k, v));
        }
    }

    fn register(&mut self, subject: &str, schema: &str) -> Result<i32, RegistryError> {
        self.register_req(
            subject,
            RegisterRequest {
                schema: schema.into(),
                ..Default::default()
            },
        )
    }

    fn register_req(&mut self, subject: &str, req: RegisterRequest) -> Result<i32, RegistryError> {
        let (id, records) = self.store.plan_register(subject, &req)?;
        self.append(records);
        Ok(id)
    }

    /// A store rebuilt from `log`.
    fn replay(log: &[RawRecord]) -> Store {
        let mut store = Store::new(Limits::default());
        for (k, v) in log {
            store.apply(Record::decode(k, v.as_deref()).unwrap());
        }
        store
    }

    /// The log as compaction leaves it: the newest record per key, tombstones removed.
    fn compacted(&self) -> Vec<RawRecord> {
        let mut newest = std::collections::HashMap::new();
        for (i, (k, _)) in self.log.iter().enumerate() {
            newest.insert(k.clone(), i);
        }
        self.log
            .iter()
            .enumerate()
            .filter(|(i, (k, v))| newest[k] == *i && v.is_some())
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn rec(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"Reading","namespace":"scada","fields":[{fields}]}}"#)
}

#[test]
fn registering_again_returns_the_same_id_and_subjects_share_ids() {
    let mut r = Registry::new();
    let v1 = rec(r#"{"name":"value","type":"double"}"#);
    assert_eq!(r.register("a-value", &v1), Ok(1));
    // The same schema with other whitespace and key order: the same schema.
    let spaced = r#"{ "namespace":"scada", "name":"Reading", "type":"record",
        "fields":[ {"type":"double", "name":"value"} ] }"#;
    assert_eq!(r.register("a-value", spaced), Ok(1));
    assert_eq!(
        r.log.len(),
        2,
        "only the first registration wrote (id high water + schema)"
    );
    assert_eq!(
        r.register("b-value", &v1),
        Ok(1),
        "another subject shares the id"
    );
    assert_eq!(r.store.versions("b-value", false), Ok(vec![1]));
    assert_eq!(
        r.store.versions_of_id(1, false).unwrap(),
        vec![("a-value".into(), 1), ("b-value".into(), 1)]
    );
}

#[test]
fn a_compatible_change_is_a_new_version_and_an_incompatible_one_is_refused() {
    let mut r = Registry::new();
    r.register("s", &rec(r#"{"name":"value","type":"double"}"#))
        .unwrap();
    let with_default =
        rec(r#"{"name":"value","type":"double"},{"name":"unit","type":"string","default":"C"}"#);
    assert_eq!(r.register("s", &with_default), Ok(2));
    assert_eq!(
        r.store
            .version("s", VersionSpec::Latest, false)
            .unwrap()
            .version,
        2
    );
    let without_default =
        rec(r#"{"name":"value","type":"double"},{"name":"site","type":"string"}"#);
    let e = r.register("s", &without_default).unwrap_err();
    assert_eq!(e.codes(), (409, 409), "{e}");
    assert!(
        e.to_string().contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{e}"
    );
    // NONE lets it through.
    let (_, records) = r.store.plan_config(Some("s"), "none", None).unwrap();
    r.append(records);
    assert_eq!(r.register("s", &without_default), Ok(3));
    assert_eq!(
        r.store
            .plan_config(None, "sideways", None)
            .unwrap_err()
            .codes(),
        (422, 42203)
    );
}

#[test]
fn deletes_are_soft_then_permanent_and_ids_are_never_reused_even_after_compaction() {
    let mut r = Registry::new();
    let a = rec(r#"{"name":"value","type":"double"}"#);
    r.register("s", &a).unwrap();
    assert_eq!(
        r.store
            .plan_delete_subject("s", true)
            .unwrap_err()
            .codes()
            .1,
        40405,
        "soft first"
    );
    let (versions, records) = r.store.plan_delete_subject("s", false).unwrap();
    assert_eq!(versions, vec![1]);
    r.append(records);
    assert_eq!(r.store.subjects(false, ""), Vec::<String>::new());
    assert_eq!(r.store.subjects(true, ""), vec!["s".to_string()]);
    assert_eq!(
        r.store
            .version("s", VersionSpec::Number(1), false)
            .unwrap_err()
            .codes()
            .1,
        40401
    );
    let (_, records) = r.store.plan_delete_subject("s", true).unwrap();
    r.append(records);
    assert_eq!(r.store.schema_by_id(1).unwrap_err().codes().1, 40403);

    // Compaction removes the schema's records entirely; the id high water stays.
    let compacted = Registry::replay(&r.compacted());
    let mut after = Registry {
        log: r.compacted(),
        store: compacted,
    };
    let b = rec(r#"{"name":"other","type":"int"}"#);
    assert_eq!(after.register("t", &b), Ok(2), "id 1 is never given again");
    assert_eq!(
        after.register("s", &a),
        Ok(3),
        "nor to the deleted schema's text"
    );
}

#[test]
fn a_store_rebuilt_from_its_log_answers_the_same() {
    let mut r = Registry::new();
    r.register("s", &rec(r#"{"name":"value","type":"double"}"#))
        .unwrap();
    r.register(
        "s",
        &rec(r#"{"name":"value","type":"double"},{"name":"u","type":"string","default":""}"#),
    )
    .unwrap();
    r.register("t", &rec(r#"{"name":"x","type":"int"}"#))
        .unwrap();
    let (_, recs) = r.store.plan_mode(Some("t"), "readonly", false).unwrap();
    r.append(recs);
    let rebuilt = Registry::replay(&r.log);
    for s in ["s", "t"] {
        assert_eq!(rebuilt.versions(s, true), r.store.versions(s, true));
        assert_eq!(
            rebuilt.version(s, VersionSpec::Latest, false),
            r.store.version(s, VersionSpec::Latest, false)
        );
    }
    assert_eq!(rebuilt.mode(Some("t"), false), Ok(Mode::Readonly));
    assert_eq!(rebuilt.counts(), (2, 3));
}

#[test]
fn modes_gate_writes_and_import_keeps_given_ids() {
    let mut r = Registry::new();
    let a = rec(r#"{"name":"value","type":"double"}"#);
    let import = RegisterRequest {
        schema: a.clone(),
        id: Some(40),
        version: Some(7),
        ..Default::default()
    };
    assert_eq!(
        r.register_req("s", import.clone()).unwrap_err().codes().1,
        42205,
        "ids only in IMPORT"
    );
    let (_, recs) = r.store.plan_mode(None, "IMPORT", false).unwrap();
    r.append(recs);
    assert_eq!(r.register_req("s", import), Ok(40));
    assert_eq!(
        r.store
            .version("s", VersionSpec::Latest, false)
            .unwrap()
            .version,
        7
    );
    let (_, recs) = r.store.plan_mode(None, "READWRITE", false).unwrap();
    r.append(recs);
    assert_eq!(
        r.register("t", &rec(r#"{"name":"x","type":"int"}"#)),
        Ok(41),
        "new ids start above imported ones"
    );
    assert_eq!(
        r.store
            .plan_mode(None, "IMPORT", false)
            .unwrap_err()
            .codes()
            .1,
        42205,
        "IMPORT needs an empty registry"
    );
    let (_, recs) = r.store.plan_mode(Some("t"), "READONLY", false).unwrap();
    r.append(recs);
    let e = r
        .register(
            "t",
            &rec(r#"{"name":"x","type":"int"},{"name":"y","type":"int","default":0}"#),
        )
        .unwrap_err();
    assert_eq!(e.codes().1, 42205, "{e}");
    assert_eq!(
        r.store
            .plan_mode(None, "SOMETIMES", false)
            .unwrap_err()
            .codes()
            .1,
        42204
    );
}

#[test]
fn references_resolve_named_types_and_protect_what_they_reference() {
    let mut r = Registry::new();
    let unit = r#"{"type":"enum","name":"Unit","namespace":"scada","symbols":["C","F"]}"#;
    assert_eq!(r.register("unit", unit), Ok(1));
    let reading = RegisterRequest {
        schema: rec(r#"{"name":"value","type":"double"},{"name":"unit","type":"scada.Unit"}"#),
        references: vec![Reference {
            name: "scada.Unit".into(),
            subject: "unit".into(),
            version: 1,
        }],
        ..Default::default()
    };
    assert_eq!(r.register_req("reading", reading.clone()), Ok(2));
    assert_eq!(r.store.referenced_by("unit", 1), vec![2]);
    assert_eq!(
        r.store
            .plan_delete_version("unit", VersionSpec::Number(1), false)
            .unwrap_err()
            .codes()
            .1,
        42206
    );
    let dangling = RegisterRequest {
        references: vec![Reference {
            name: "scada.Unit".into(),
            subject: "unit".into(),
            version: 9,
        }],
        ..reading
    };
    assert_eq!(
        r.register_req("other", dangling).unwrap_err().codes().1,
        42201
    );
}

#[test]
fn bad_input_gets_the_right_codes() {
    let mut r = Registry::new();
    assert_eq!(
        r.register("s", "{not json").unwrap_err().codes(),
        (422, 42201)
    );
    assert_eq!(
        r.register("s", r#"{"type":"record","name":"R"}"#)
            .unwrap_err()
            .codes()
            .1,
        42201
    );
    assert_eq!(
        r.register("s", r#""nonsense""#).unwrap_err().codes().1,
        42201
    );
    let proto = RegisterRequest {
        schema: "syntax = \"proto3\";".into(),
        schema_type: Some("PROTOBUF".into()),
        ..Default::default()
    };
    let e = r.register_req("s", proto).unwrap_err();
    assert_eq!(e.codes().1, 42201);
    assert!(
        e.to_string().contains("Unsupported schema type PROTOBUF"),
        "{e}"
    );
    let huge = format!(
        r#"{{"type":"enum","name":"E","symbols":[{}]}}"#,
        (0..200_000)
            .map(|i| format!("\"S{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let e = r.register("s", &huge).unwrap_err();
    assert!(e.to_string().contains("over the limit"), "{e}");
    assert_eq!(VersionSpec::parse("0").unwrap_err().codes().1, 42202);
    assert_eq!(VersionSpec::parse("latest"), Ok(VersionSpec::Latest));
    assert!(Record::decode(b"{\"keytype\":\"WHAT\"}", None).is_err());
    assert!(
        Record::decode(
            br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#,
            Some(br#"{"subject":"t","version":1,"id":1,"schema":"\"int\""}"#)
        )
        .is_err(),
        "a value must match its key"
    );
}
