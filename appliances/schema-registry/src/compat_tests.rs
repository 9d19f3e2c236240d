//! The compatibility rules, one case per rule: can a reader with the second schema read data
//! written with the first (Avro's schema resolution), and what the registry's levels make of it.

use crate::avro::Parsed;
use crate::compat::{Kind, Level, Resolved, can_read, check_level};

fn parse(text: &str) -> Parsed {
    Parsed::parse(text, &[], 1 << 20).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The kinds of incompatibility found when `reader` reads `writer`'s data.
fn reading(writer: &str, reader: &str) -> Vec<Kind> {
    let (w, r) = (parse(writer), parse(reader));
    let (wn, rn) = (w.names().unwrap(), r.names().unwrap());
    let found = can_read(
        &Resolved {
            schema: &w.schema,
            names: &wn,
        },
        &Resolved {
            schema: &r.schema,
            names: &rn,
        },
    );
    found.iter().map(|i| i.kind).collect()
}

fn record(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","namespace":"hub","fields":[{fields}]}}"#)
}

const OK: &[Kind] = &[];

#[test]
fn the_resolution_rules_one_by_one() {
    use Kind::*;
    let cases: &[(&str, String, String, &[Kind])] = &[
        (
            "identical schemas read each other",
            record(r#"{"name":"a","type":"int"}"#),
            record(r#"{"name":"a","type":"int"}"#),
            OK,
        ),
        (
            "a reader field missing in the writer needs a default",
            record(r#"{"name":"a","type":"int"}"#),
            record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#),
            &[ReaderFieldMissingDefaultValue],
        ),
        (
            "a reader field with a default reads old data",
            record(r#"{"name":"a","type":"int"}"#),
            record(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#),
            OK,
        ),
        (
            "a writer field the reader lacks is skipped",
            record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#),
            record(r#"{"name":"a","type":"int"}"#),
            OK,
        ),
        (
            "int promotes to long",
            record(r#"{"name":"a","type":"int"}"#),
            record(r#"{"name":"a","type":"long"}"#),
            OK,
        ),
        (
            "int promotes to float",
            "\"int\"".into(),
            "\"float\"".into(),
            OK,
        ),
        (
            "int promotes to double",
            "\"int\"".into(),
            "\"double\"".into(),
            OK,
        ),
        (
            "long promotes to float",
            "\"long\"".into(),
            "\"float\"".into(),
            OK,
        ),
        (
            "long promotes to double",
            "\"long\"".into(),
            "\"double\"".into(),
            OK,
        ),
        (
            "float promotes to double",
            "\"float\"".into(),
            "\"double\"".into(),
            OK,
        ),
        (
            "long does not narrow to int",
            "\"long\"".into(),
            "\"int\"".into(),
            &[TypeMismatch],
        ),
        (
            "double does not narrow to float",
            "\"double\"".into(),
            "\"float\"".into(),
            &[TypeMismatch],
        ),
        (
            "string reads as bytes",
            "\"string\"".into(),
            "\"bytes\"".into(),
            OK,
        ),
        (
            "bytes read as string",
            "\"bytes\"".into(),
            "\"string\"".into(),
            OK,
        ),
        (
            "string is not an int",
            "\"string\"".into(),
            "\"int\"".into(),
            &[TypeMismatch],
        ),
        (
            "boolean is not null",
            "\"boolean\"".into(),
            "\"null\"".into(),
            &[TypeMismatch],
        ),
        (
            "a field's type change is found inside the record",
            record(r#"{"name":"a","type":"int"}"#),
            record(r#"{"name":"a","type":"string"}"#),
            &[TypeMismatch],
        ),
        (
            "an enum symbol the reader lacks breaks reading",
            r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#.into(),
            r#"{"type":"enum","name":"E","symbols":["A","B"]}"#.into(),
            &[MissingEnumSymbols],
        ),
        (
            "an enum default reads unknown symbols",
            r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#.into(),
            r#"{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}"#.into(),
            OK,
        ),
        (
            "an added enum symbol is read",
            r#"{"type":"enum","name":"E","symbols":["A"]}"#.into(),
            r#"{"type":"enum","name":"E","symbols":["A","B"]}"#.into(),
            OK,
        ),
        (
            "a writer union needs every branch readable",
            r#"["null","string"]"#.into(),
            "\"string\"".into(),
            &[TypeMismatch],
        ),
        (
            "a reader union reads a writer type it holds",
            "\"string\"".into(),
            r#"["null","string"]"#.into(),
            OK,
        ),
        (
            "a reader union lacking the writer's type fails",
            "\"int\"".into(),
            r#"["null","string"]"#.into(),
            &[MissingUnionBranch],
        ),
        (
            "a reader union promotes into a branch",
            "\"int\"".into(),
            r#"["null","long"]"#.into(),
            OK,
        ),
        (
            "a union that grows a branch reads the old one",
            r#"["null","string"]"#.into(),
            r#"["null","string","int"]"#.into(),
            OK,
        ),
        (
            "a union that loses a branch cannot read it",
            r#"["null","string","int"]"#.into(),
            r#"["null","string"]"#.into(),
            &[MissingUnionBranch],
        ),
        (
            "a field that becomes optional reads old data",
            record(r#"{"name":"a","type":"string"}"#),
            record(r#"{"name":"a","type":["null","string"],"default":null}"#),
            OK,
        ),
        (
            "a record renamed without an alias fails",
            r#"{"type":"record","name":"Old","fields":[]}"#.into(),
            r#"{"type":"record","name":"New","fields":[]}"#.into(),
            &[NameMismatch],
        ),
        (
            "a record renamed with the old name as alias reads",
            r#"{"type":"record","name":"Old","namespace":"hub","fields":[]}"#.into(),
            r#"{"type":"record","name":"New","namespace":"hub","aliases":["Old"],"fields":[]}"#
                .into(),
            OK,
        ),
        (
            "a field renamed with the old name as alias reads",
            record(r#"{"name":"old","type":"int"}"#),
            record(r#"{"name":"new","aliases":["old"],"type":"int"}"#),
            OK,
        ),
        (
            "a field renamed without alias or default fails",
            record(r#"{"name":"old","type":"int"}"#),
            record(r#"{"name":"new","type":"int"}"#),
            &[ReaderFieldMissingDefaultValue],
        ),
        (
            "fixed sizes must match",
            r#"{"type":"fixed","name":"F","size":16}"#.into(),
            r#"{"type":"fixed","name":"F","size":8}"#.into(),
            &[FixedSizeMismatch],
        ),
        (
            "a fixed of the same size and name reads",
            r#"{"type":"fixed","name":"F","size":16}"#.into(),
            r#"{"type":"fixed","name":"F","size":16}"#.into(),
            OK,
        ),
        (
            "array items resolve",
            r#"{"type":"array","items":"int"}"#.into(),
            r#"{"type":"array","items":"long"}"#.into(),
            OK,
        ),
        (
            "array items that narrow fail",
            r#"{"type":"array","items":"long"}"#.into(),
            r#"{"type":"array","items":"int"}"#.into(),
            &[TypeMismatch],
        ),
        (
            "map values resolve",
            r#"{"type":"map","values":"float"}"#.into(),
            r#"{"type":"map","values":"double"}"#.into(),
            OK,
        ),
        (
            "an array is not a map",
            r#"{"type":"array","items":"int"}"#.into(),
            r#"{"type":"map","values":"int"}"#.into(),
            &[TypeMismatch],
        ),
        (
            "nested records are checked field by field",
            record(
                r#"{"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"}]}}"#,
            ),
            record(
                r#"{"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"},{"name":"y","type":"int"}]}}"#,
            ),
            &[ReaderFieldMissingDefaultValue],
        ),
        (
            "a recursive record reads itself",
            record(r#"{"name":"next","type":["null","R"],"default":null}"#),
            record(r#"{"name":"next","type":["null","R"],"default":null}"#),
            OK,
        ),
        (
            "a logical type reads as its underlying type",
            record(r#"{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}"#),
            record(r#"{"name":"t","type":"long"}"#),
            OK,
        ),
        (
            "date (int) promotes to long",
            record(r#"{"name":"d","type":{"type":"int","logicalType":"date"}}"#),
            record(r#"{"name":"d","type":"long"}"#),
            OK,
        ),
        (
            "decimals of the same precision and scale read",
            r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#.into(),
            r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#.into(),
            OK,
        ),
        (
            "decimals whose scale changes are refused",
            r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#.into(),
            r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":3}"#.into(),
            &[DecimalMismatch],
        ),
    ];
    let mut wrong = vec![];
    for (rule, writer, reader, expected) in cases {
        let got = reading(writer, reader);
        if got != *expected {
            wrong.push(format!("{rule}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn paths_say_where_reading_breaks() {
    let (w, r) = (
        parse(&record(
            r#"{"name":"a","type":"int"},{"name":"b","type":{"type":"array","items":"long"}}"#,
        )),
        parse(&record(
            r#"{"name":"a","type":"int"},{"name":"b","type":{"type":"array","items":"int"}},{"name":"c","type":"int"}"#,
        )),
    );
    let (wn, rn) = (w.names().unwrap(), r.names().unwrap());
    let found = can_read(
        &Resolved {
            schema: &w.schema,
            names: &wn,
        },
        &Resolved {
            schema: &r.schema,
            names: &rn,
        },
    );
    let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["/fields/1/type/items", "/fields/2"]);
    assert_eq!(found[1].info, "c");
}

/// Each level against a history: v1 {a}, v2 {a, b default}, then a candidate.
#[test]
fn levels_check_the_right_direction_and_versions() {
    let v1 = parse(&record(r#"{"name":"a","type":"int"}"#));
    let v2 = parse(&record(
        r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":""}"#,
    ));
    // Drops a (no default) and b: old readers of v1 cannot read it; v2's readers need b's default.
    let drops_a = parse(&record(r#"{"name":"b","type":"string","default":""}"#));
    // Adds c without a default: new readers cannot read old data.
    let adds_c = parse(&record(
        r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":""},{"name":"c","type":"int"}"#,
    ));
    // Adds d with a default: both ways.
    let adds_d = parse(&record(
        r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":""},{"name":"d","type":"int","default":0}"#,
    ));
    let names: Vec<_> = [&v1, &v2, &drops_a, &adds_c, &adds_d]
        .iter()
        .map(|p| p.names().unwrap())
        .collect();
    let history = [
        (
            1,
            Resolved {
                schema: &v1.schema,
                names: &names[0],
            },
        ),
        (
            2,
            Resolved {
                schema: &v2.schema,
                names: &names[1],
            },
        ),
    ];
    // `i`: the candidate's index in `names`.
    let check = |level: Level, i: usize, p: &Parsed| {
        check_level(
            level,
            &Resolved {
                schema: &p.schema,
                names: &names[i],
            },
            &history,
        )
    };
    use Level::*;
    // Backward: the new schema reads the latest's data.
    assert!(check(Backward, 3, &adds_c).len() == 1);
    assert!(check(Backward, 4, &adds_d).is_empty());
    assert!(
        check(Backward, 2, &drops_a).is_empty(),
        "v2 data has b; a is simply skipped"
    );
    // Forward: the latest reads the new schema's data (v2 needs a, which drops_a lacks).
    assert!(!check(Forward, 2, &drops_a).is_empty());
    assert!(check(Forward, 3, &adds_c).is_empty());
    // Full: both.
    assert!(!check(Full, 3, &adds_c).is_empty());
    assert!(check(Full, 4, &adds_d).is_empty());
    // Transitive: v1 too. drops_a's readers read v1 (b has a default) but v1's readers cannot
    // read drops_a (no a): forward-transitive fails on v1 as well as v2.
    assert_eq!(check(ForwardTransitive, 2, &drops_a).len(), 2);
    assert!(check(BackwardTransitive, 4, &adds_d).is_empty());
    assert!(check(FullTransitive, 4, &adds_d).is_empty());
    assert!(check(None, 3, &adds_c).is_empty());
}

#[test]
fn only_a_transitive_level_looks_past_the_latest_version() {
    // v1 {a:int}; v2 {a:long} (backward from v1); candidate {a:int}: reads v2's data? No (long
    // does not narrow). Against v1 alone it would pass; BACKWARD checks the latest (v2) only.
    let v1 = parse(&record(r#"{"name":"a","type":"int"}"#));
    let v2 = parse(&record(
        r#"{"name":"a","type":"string","default":""},{"name":"x","type":"int","default":0}"#,
    ));
    let cand = parse(&record(r#"{"name":"x","type":"int","default":0}"#));
    let (n1, n2, nc) = (
        v1.names().unwrap(),
        v2.names().unwrap(),
        cand.names().unwrap(),
    );
    let history = [
        (
            1,
            Resolved {
                schema: &v1.schema,
                names: &n1,
            },
        ),
        (
            2,
            Resolved {
                schema: &v2.schema,
                names: &n2,
            },
        ),
    ];
    let new = Resolved {
        schema: &cand.schema,
        names: &nc,
    };
    // Forward: v2 reads candidate data (a has a default) but v1 cannot (a has none).
    assert!(check_level(Level::Forward, &new, &history).is_empty());
    let transitive = check_level(Level::ForwardTransitive, &new, &history);
    assert_eq!(transitive.len(), 1, "{transitive:?}");
    assert!(transitive[0].contains("version 1"), "{transitive:?}");
}

#[test]
fn levels_parse_by_confluents_names() {
    assert_eq!(
        Level::parse("backward_transitive"),
        Some(Level::BackwardTransitive)
    );
    assert_eq!(Level::parse("FULL"), Some(Level::Full));
    assert_eq!(Level::parse("SIDEWAYS"), None);
    assert_eq!(Level::Full.name(), "FULL");
}
