//! Arbitrary bytes as the Avro datum of a record a branch application produced to a topic
//! with a registered schema (`edge::schemas::datum_error`, the edge's validation at ingest):
//! a schema with every kind of length-prefixed and branching type, so that hostile lengths,
//! counts and union indexes are an error, never a panic, a hang or an allocation of what a
//! length claims.
#![no_main]

use std::sync::LazyLock;

use edge::schemas::Parsed;
use libfuzzer_sys::fuzz_target;

static SCHEMA: LazyLock<Parsed> = LazyLock::new(|| {
    Parsed::parse(
        r#"{"type":"record","name":"R","fields":[
            {"name":"s","type":"string"},
            {"name":"b","type":"bytes"},
            {"name":"a","type":{"type":"array","items":"long"}},
            {"name":"m","type":{"type":"map","values":["null","double"]}},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
            {"name":"f","type":{"type":"fixed","name":"F","size":4}},
            {"name":"n","type":["null",{"type":"array","items":"R"}]}
        ]}"#,
        &[],
    )
    .expect("the fuzz schema parses")
});

fuzz_target!(|data: &[u8]| {
    let _ = edge::schemas::datum_error(&SCHEMA, 1, data);
});
