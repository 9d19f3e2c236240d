//! Every byte string a client can send as one frame: decoding must return a request or a
//! reason to close, never panic or abort. Decoded requests are re-encoded through their
//! response path's header logic by `frame::decode` itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = broker::frame::decode(bytes::Bytes::copy_from_slice(data));
});
