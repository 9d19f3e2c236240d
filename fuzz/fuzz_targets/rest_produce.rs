//! Arbitrary bytes as the body of an HTTP ingest request (`edge::rest`), under each content
//! type a device may send: a malformed body is a refusal with a 4xx status, never a panic,
//! and what is accepted holds between one and `records_max` records.
#![no_main]

use edge::rest::{embedded_format, parse_records};
use libfuzzer_sys::fuzz_target;

const RECORDS_MAX: usize = 100;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = match selector % 4 {
        0 => Some("application/vnd.kafka.json.v2+json"),
        1 => Some("application/vnd.kafka.binary.v2+json; charset=utf-8"),
        2 => Some("application/json"),
        _ => std::str::from_utf8(body).ok(),
    };
    let format = match embedded_format(content_type) {
        Ok(f) => f,
        Err(e) => {
            assert_eq!(e.status, 415);
            return;
        }
    };
    match parse_records(format, body, RECORDS_MAX) {
        Ok(records) => {
            assert!((1..=RECORDS_MAX).contains(&records.len()));
            assert!(records.iter().all(|r| r.partition.is_none_or(|p| p >= 0)));
        }
        Err(e) => assert!((400..500).contains(&e.status), "{e:?}"),
    }
});
