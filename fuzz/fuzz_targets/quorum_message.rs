//! Arbitrary bytes as a quorum message, the way a node's quorum listener reads them from a
//! peer (or a stranger): decoded as a request envelope and, when that succeeds, checked against
//! the node's cluster as `QuorumNode::handle` does first. Answers from peers take the same path
//! on the other side, so the bytes are also decoded as a response. Nothing may panic, and no
//! length inside a message may make the decoder allocate beyond the frame.
//!
//! Random bytes rarely carry a valid CRC, so each input is also tried as the payload of a
//! correct frame, which drives the fuzzer into the envelope and message decoding (postcard
//! over openraft's and the controller's types).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorum::raft::frames;
use quorum::rpc::{self, Response};

fn exercise(frame: &[u8]) {
    if let Ok(envelope) = rpc::decode_request(frame) {
        let _ = rpc::admit(&envelope, "hub");
    }
    if let Ok(envelope) = rpc::decode::<Response>(frame) {
        let _ = rpc::admit(&envelope, "hub");
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if data.len() <= frames::MAX_FRAME_BYTES {
        exercise(&frames::encode(data));
    }
});
