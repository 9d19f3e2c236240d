//! The content checksums S3 clients send and ask for (`x-amz-checksum-*`: CRC32, CRC32C,
//! CRC64NVME, SHA1, SHA256), kept as a map from the algorithm's S3 name to the base64 value.
//! The hashing itself is `s3s::checksum::ChecksumHasher`; this module names, combines
//! (multipart "composite" checksums) and compares the results.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use s3s::checksum::ChecksumHasher;
use s3s::dto::Checksum;

/// Algorithm name (as in `x-amz-checksum-algorithm`) -> base64 value.
pub type Checksums = BTreeMap<String, String>;

pub const ALGORITHMS: [&str; 5] = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"];

/// The algorithm's canonical name, if it is one S3 knows.
pub fn canonical(name: &str) -> Option<&'static str> {
    ALGORITHMS
        .iter()
        .copied()
        .find(|a| a.eq_ignore_ascii_case(name))
}

/// A hasher computing the named algorithms (unknown names are ignored: callers validate).
pub fn hasher<'a>(algorithms: impl IntoIterator<Item = &'a str>) -> ChecksumHasher {
    let mut h = ChecksumHasher::default();
    for a in algorithms {
        match canonical(a) {
            Some("CRC32") => h.crc32 = Some(Default::default()),
            Some("CRC32C") => h.crc32c = Some(Default::default()),
            Some("CRC64NVME") => h.crc64nvme = Some(Default::default()),
            Some("SHA1") => h.sha1 = Some(Default::default()),
            Some("SHA256") => h.sha256 = Some(Default::default()),
            _ => {}
        }
    }
    h
}

pub fn from_dto(c: Checksum) -> Checksums {
    [
        ("CRC32", c.checksum_crc32),
        ("CRC32C", c.checksum_crc32c),
        ("CRC64NVME", c.checksum_crc64nvme),
        ("SHA1", c.checksum_sha1),
        ("SHA256", c.checksum_sha256),
    ]
    .into_iter()
    .filter_map(|(a, v)| v.map(|v| (a.to_string(), v)))
    .collect()
}

pub fn to_dto(c: &Checksums) -> Checksum {
    let get = |a: &str| c.get(a).cloned();
    Checksum {
        checksum_crc32: get("CRC32"),
        checksum_crc32c: get("CRC32C"),
        checksum_crc64nvme: get("CRC64NVME"),
        checksum_sha1: get("SHA1"),
        checksum_sha256: get("SHA256"),
        ..Default::default()
    }
}

/// The checksums claimed by any s3s input (or completed part) with the five
/// `checksum_<alg>` fields, moved out of it.
macro_rules! claimed {
    ($x:expr) => {
        $crate::checksums::from_dto(s3s::dto::Checksum {
            checksum_crc32: $x.checksum_crc32,
            checksum_crc32c: $x.checksum_crc32c,
            checksum_crc64nvme: $x.checksum_crc64nvme,
            checksum_sha1: $x.checksum_sha1,
            checksum_sha256: $x.checksum_sha256,
            checksum_type: None,
        })
    };
}

/// Set the five `checksum_<alg>` fields of any s3s output from stored checksums.
macro_rules! fill {
    ($out:expr, $sums:expr) => {{
        let c = $crate::checksums::to_dto($sums);
        $out.checksum_crc32 = c.checksum_crc32;
        $out.checksum_crc32c = c.checksum_crc32c;
        $out.checksum_crc64nvme = c.checksum_crc64nvme;
        $out.checksum_sha1 = c.checksum_sha1;
        $out.checksum_sha256 = c.checksum_sha256;
    }};
}

pub(crate) use {claimed, fill};

/// `COMPOSITE` for a multipart composite checksum (its value ends in `-<parts>`; base64 has
/// no `-`), else `FULL_OBJECT`; `None` without checksums.
pub fn checksum_type(sums: &Checksums) -> Option<s3s::dto::ChecksumType> {
    let composite = sums.values().next()?.contains('-');
    Some(s3s::dto::ChecksumType::from_static(if composite {
        s3s::dto::ChecksumType::COMPOSITE
    } else {
        s3s::dto::ChecksumType::FULL_OBJECT
    }))
}

/// The checksums named in a header map (`x-amz-checksum-<alg>`), e.g. aws-chunked trailers.
pub fn from_headers(headers: &hyper::HeaderMap) -> Checksums {
    ALGORITHMS
        .iter()
        .filter_map(|a| {
            let name = format!("x-amz-checksum-{}", a.to_ascii_lowercase());
            let v = headers.get(name)?.to_str().ok()?;
            Some((a.to_string(), v.to_string()))
        })
        .collect()
}

/// The first algorithm whose claimed value differs from the computed one.
pub fn first_mismatch<'a>(claimed: &'a Checksums, computed: &Checksums) -> Option<&'a str> {
    claimed
        .iter()
        .find(|(a, v)| computed.get(*a) != Some(*v))
        .map(|(a, _)| a.as_str())
}

/// The multipart "composite" checksum: the algorithm over the concatenated binary part
/// checksums, base64, then `-<number of parts>` (what AWS returns for COMPOSITE uploads).
/// `None` if a part lacks a valid value for the algorithm.
pub fn composite(algorithm: &str, parts: &[&Checksums]) -> Option<String> {
    let mut h = hasher([algorithm]);
    for p in parts {
        let raw = STANDARD.decode(p.get(algorithm)?).ok()?;
        h.update(&raw);
    }
    let value = from_dto(h.finalize()).remove(algorithm)?;
    Some(format!("{value}-{}", parts.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_composite() {
        let mut h = hasher(["crc32", "SHA256", "bogus"]);
        h.update(b"hello world");
        let c = from_dto(h.finalize());
        assert_eq!(c.keys().collect::<Vec<_>>(), ["CRC32", "SHA256"]);
        // CRC32("hello world") = 0x0d4a1185
        assert_eq!(c["CRC32"], STANDARD.encode(0x0d4a_1185u32.to_be_bytes()));
        let composite = composite("CRC32", &[&c, &c]).unwrap();
        assert!(composite.ends_with("-2"));
        let mut claimed = c.clone();
        assert_eq!(first_mismatch(&claimed, &c), None);
        claimed.insert("CRC32".into(), "AAAAAA==".into());
        assert_eq!(first_mismatch(&claimed, &c), Some("CRC32"));
    }
}
