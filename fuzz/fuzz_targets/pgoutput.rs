//! Arbitrary bytes as the branch database's logical replication messages: split into
//! messages at each `0xFF 0xFE` pair, each decoded (`edge::pgoutput`) and fed to an outbox
//! reader that has seen the outbox table's description. A malformed message is an error,
//! never a panic; a transaction's events come out only at its commit, and never for a
//! transaction at or below the LSN already buffered.
#![no_main]

use bytes::Bytes;
use edge::outbox::Outbox;
use edge::pgoutput::{Lsn, Message, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut outbox = Outbox::new("public", "outbox", Lsn(1000));
    let cols = ["id", "aggregatetype", "aggregateid", "type", "payload"];
    let described = decode(&encode::relation(16_384, "public", "outbox", &cols)).expect("seed");
    outbox.feed(described).expect("the outbox table's description");
    let mut start = 0;
    let mut i = 0;
    while i <= data.len() {
        let end_here = i == data.len() || (data[i] == 0xFF && data.get(i + 1) == Some(&0xFE));
        if end_here {
            let message = Bytes::copy_from_slice(&data[start..i]);
            if let Ok(m) = decode(&message) {
                let commit = matches!(m, Message::Commit { .. });
                if let Ok(Some(c)) = outbox.feed(m) {
                    assert!(commit, "events only at a commit");
                    assert!(c.end_lsn > Lsn(1000), "an already buffered transaction came out");
                    outbox.buffered(c.end_lsn);
                }
            }
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
});
