//! Arbitrary bytes as what the Schema Registry reads from the network and from `_schemas`:
//! the input's first line is one schema text and the rest another; each is parsed (bounded in
//! size), both are checked for compatibility each way, and both are registered in turn under
//! every compatibility level through the store, as `POST /subjects/{s}/versions` does. The
//! same bytes are also decoded as a `_schemas` record (split at the first NUL into key and
//! value). Nothing may panic or hang; a bad schema is an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schema_registry::avro::Parsed;
use schema_registry::compat::{Level, Resolved, can_read};
use schema_registry::records::Record;
use schema_registry::store::{Limits, RegisterRequest, Store};

const SCHEMA_BYTES_MAX: usize = 64 << 10;

fn compare(a: &str, b: &str) {
    let (Ok(pa), Ok(pb)) = (Parsed::parse(a, &[], SCHEMA_BYTES_MAX), Parsed::parse(b, &[], SCHEMA_BYTES_MAX)) else {
        return;
    };
    let (Ok(na), Ok(nb)) = (pa.names(), pb.names()) else {
        return;
    };
    let ra = Resolved { schema: &pa.schema, names: &na };
    let rb = Resolved { schema: &pb.schema, names: &nb };
    let _ = can_read(&ra, &rb);
    let _ = can_read(&rb, &ra);
    let _ = pa.canonical();
}

fn register(a: &str, b: &str) {
    for level in ["NONE", "BACKWARD", "FORWARD_TRANSITIVE", "FULL_TRANSITIVE"] {
        let mut store = Store::new(Limits { schema_bytes_max: SCHEMA_BYTES_MAX, ..Limits::default() });
        let (_, config) = store.plan_config(None, level, None).expect("a known level");
        config.into_iter().for_each(|r| store.apply(r));
        assert!(Level::parse(level).is_some());
        for text in [a, b] {
            let req = RegisterRequest { schema: text.to_string(), ..Default::default() };
            if let Ok((_, records)) = store.plan_register("s", &req) {
                for r in records {
                    let (k, v) = r.encode();
                    store.apply(Record::decode(&k, v.as_deref()).expect("our own records decode"));
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (key, value) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let _ = Record::decode(key, value);
    let text = String::from_utf8_lossy(data);
    let (a, b) = text.split_once('\n').unwrap_or((&text, &text));
    compare(a, b);
    register(a, b);
});
