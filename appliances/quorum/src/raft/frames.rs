//! Length- and CRC-framed records: `[u32 length][u32 crc32c][payload]`, little-endian. Used
//! for the quorum log on disk (a torn tail is cut at the first bad frame) and for messages
//! between nodes.

/// No frame on disk is larger: bounds what a corrupt length can make us allocate.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// No frame from the network is larger (openraft's snapshot chunks and entry batches stay well
/// below): bounds what a stranger can make a node hold per connection.
pub const MAX_NETWORK_FRAME_BYTES: usize = 8 << 20;
pub const HEADER_BYTES: usize = 8;

pub fn encode(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_FRAME_BYTES, "frame too large");
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The whole frames at the start of `bytes` and the length they cover; what follows (if
/// anything) is torn or corrupt.
pub fn decode_prefix(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(payload) = frame_at(bytes, at) {
        at += HEADER_BYTES + payload.len();
        frames.push(payload);
    }
    (frames, at)
}

fn frame_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let header = bytes.get(at..at + HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > MAX_FRAME_BYTES {
        return None;
    }
    let payload = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len)?;
    (crc32c::crc32c(payload) == crc).then_some(payload)
}

/// A network frame's payload length from its header, if the header is sane.
pub fn payload_len(header: &[u8; HEADER_BYTES]) -> Option<usize> {
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    (len <= MAX_NETWORK_FRAME_BYTES).then_some(len)
}

/// Check a payload read after its header.
pub fn check(header: &[u8; HEADER_BYTES], payload: &[u8]) -> bool {
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    crc32c::crc32c(payload) == crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_and_corrupt_tails_stop_decoding() {
        let mut bytes = encode(b"one");
        bytes.extend(encode(b"two"));
        let whole = bytes.len();
        bytes.extend(&encode(b"three")[..6]);
        let (frames, len) = decode_prefix(&bytes);
        assert_eq!(frames, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!(len, whole);
        bytes.truncate(whole);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(decode_prefix(&bytes).0.len(), 1);
        assert!(decode_prefix(&[0xff; 8]).0.is_empty());
    }
}
