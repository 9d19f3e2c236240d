//! One object = one file: the content, then a JSON footer with the metadata and a CRC-32C per
//! block of content, then a fixed trailer locating the footer. The file is written under
//! `tmp/`, fdatasync'ed and renamed into place, so a reader sees the old object or the new one,
//! never a mix, and a crash leaves only a temporary file that the next start deletes.
//!
//! Reads verify every block against its CRC before handing it out: corruption is reported
//! (the request fails), never served.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

/// Bytes covered by one CRC.
pub const BLOCK: u64 = 1 << 20;
const MAGIC: &[u8; 8] = b"CLKOBJ01";
/// Trailer: footer length (u64 LE) + magic.
const TRAILER: u64 = 16;

/// What is stored about an object besides its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub key: String,
    pub size: u64,
    /// Hex MD5 of the content (the S3 ETag of a single-part upload).
    pub etag: String,
    pub last_modified_ms: i64,
    pub content_type: Option<String>,
    /// Content-Encoding, Content-Disposition, Content-Language, Cache-Control, Expires as
    /// given at upload (header name in lower case -> value), returned on GET and HEAD.
    #[serde(default)]
    pub http_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub user_metadata: BTreeMap<String, String>,
    /// Checksums of the content (algorithm name as S3 spells it -> base64 value; a composite
    /// multipart checksum ends in `-<parts>`).
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
    /// Sizes of the parts of a multipart upload, in order (empty for a single PUT): what
    /// GET/HEAD `?partNumber=` address.
    #[serde(default)]
    pub part_sizes: Vec<u64>,
    pub block_crcs: Vec<u32>,
}

impl Meta {
    /// Metadata with nothing but the key, ETag and time; the writer fills in size and CRCs.
    pub fn new(key: impl Into<String>, etag: impl Into<String>, last_modified_ms: i64) -> Meta {
        Meta {
            key: key.into(),
            size: 0,
            etag: etag.into(),
            last_modified_ms,
            content_type: None,
            http_headers: BTreeMap::new(),
            user_metadata: BTreeMap::new(),
            checksums: BTreeMap::new(),
            part_sizes: vec![],
            block_crcs: vec![],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectFileError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("object file is damaged: {0}")]
    Damaged(String),
}

/// Streams content into a temporary file, computing block CRCs as it goes.
pub struct Writer {
    file: File,
    written: u64,
    crcs: Vec<u32>,
    current: u32,
}

impl Writer {
    pub fn new(file: File) -> Writer {
        Writer {
            file,
            written: 0,
            crcs: vec![],
            current: 0,
        }
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        while !data.is_empty() {
            let room = (BLOCK - self.written % BLOCK) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.current = crc32c::crc32c_append(self.current, now);
            self.written += now.len() as u64;
            if self.written.is_multiple_of(BLOCK) {
                self.crcs.push(std::mem::take(&mut self.current));
            }
            data = rest;
        }
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Append the footer and make the file durable. `meta.size` and `meta.block_crcs` are
    /// filled in here; the completed metadata is returned.
    pub fn finish(mut self, mut meta: Meta) -> io::Result<Meta> {
        if !self.written.is_multiple_of(BLOCK) {
            self.crcs.push(self.current);
        }
        meta.size = self.written;
        meta.block_crcs = self.crcs;
        let footer = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        self.file.write_all(&footer)?;
        self.file.write_all(&(footer.len() as u64).to_le_bytes())?;
        self.file.write_all(MAGIC)?;
        self.file.sync_data()?;
        Ok(meta)
    }
}

/// Read the footer of an object file.
pub fn read_meta(file: &File) -> Result<Meta, ObjectFileError> {
    let len = file.metadata()?.len();
    if len < TRAILER {
        return Err(ObjectFileError::Damaged("shorter than its trailer".into()));
    }
    let mut trailer = [0u8; TRAILER as usize];
    file.read_exact_at(&mut trailer, len - TRAILER)?;
    if &trailer[8..] != MAGIC {
        return Err(ObjectFileError::Damaged("bad trailer magic".into()));
    }
    let footer_len = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    if footer_len > len - TRAILER {
        return Err(ObjectFileError::Damaged(
            "footer longer than the file".into(),
        ));
    }
    let mut footer = vec![0u8; footer_len as usize];
    file.read_exact_at(&mut footer, len - TRAILER - footer_len)?;
    let meta: Meta = serde_json::from_slice(&footer)
        .map_err(|e| ObjectFileError::Damaged(format!("footer: {e}")))?;
    if meta.size != len - TRAILER - footer_len
        || meta.block_crcs.len() as u64 != meta.size.div_ceil(BLOCK)
    {
        return Err(ObjectFileError::Damaged(
            "footer does not match the content length".into(),
        ));
    }
    Ok(meta)
}

/// Read `[start, end)` of the content, verifying each block it touches.
pub fn read_range(
    file: &File,
    meta: &Meta,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, ObjectFileError> {
    let first_block = start / BLOCK;
    let last_block = end.saturating_sub(1) / BLOCK;
    let mut out = Vec::with_capacity((end - start) as usize);
    for b in first_block..=last_block {
        if start >= end {
            break;
        }
        let block_start = b * BLOCK;
        let block_len = BLOCK.min(meta.size - block_start);
        let mut buf = vec![0u8; block_len as usize];
        file.read_exact_at(&mut buf, block_start)?;
        if crc32c::crc32c(&buf) != meta.block_crcs[b as usize] {
            return Err(ObjectFileError::Damaged(format!(
                "block {b} of {} fails its CRC",
                meta.key
            )));
        }
        let from = start.max(block_start) - block_start;
        let to = end.min(block_start + block_len) - block_start;
        out.extend_from_slice(&buf[from as usize..to as usize]);
    }
    Ok(out)
}

/// Hand `[start, end)` of the content to `f` block by block, each block verified first: the
/// way data leaves an object file for copies and multipart assembly without holding it all.
pub fn for_each_verified_chunk(
    file: &File,
    meta: &Meta,
    start: u64,
    end: u64,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), ObjectFileError> {
    let mut pos = start;
    while pos < end {
        let to = ((pos / BLOCK + 1) * BLOCK).min(end);
        f(&read_range(file, meta, pos, to)?)?;
        pos = to;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str) -> Meta {
        Meta::new(key, "", 0)
    }

    #[test]
    fn round_trip_across_blocks_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        let data: Vec<u8> = (0..(2 * BLOCK + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut w = Writer::new(File::create(&path).unwrap());
        for chunk in data.chunks(300_000) {
            w.write(chunk).unwrap();
        }
        w.finish(meta("k")).unwrap();
        let f = File::open(&path).unwrap();
        let m = read_meta(&f).unwrap();
        assert_eq!(m.size, data.len() as u64);
        assert_eq!(m.block_crcs.len(), 3);
        assert_eq!(read_range(&f, &m, 0, m.size).unwrap(), data);
        let (a, b) = (BLOCK - 10, BLOCK + 10);
        assert_eq!(
            read_range(&f, &m, a, b).unwrap(),
            data[a as usize..b as usize]
        );
        // Flip one byte in the second block.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all_at(&[data[BLOCK as usize + 5] ^ 1], BLOCK + 5)
            .unwrap();
        assert!(matches!(
            read_range(&f, &m, 0, m.size),
            Err(ObjectFileError::Damaged(_))
        ));
        assert!(
            read_range(&f, &m, 0, 100).is_ok(),
            "undamaged blocks still read"
        );
    }

    #[test]
    fn empty_and_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        Writer::new(File::create(&path).unwrap())
            .finish(meta("empty"))
            .unwrap();
        let m = read_meta(&File::open(&path).unwrap()).unwrap();
        assert_eq!((m.size, m.block_crcs.len()), (0, 0));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(5).unwrap();
        assert!(read_meta(&File::open(&path).unwrap()).is_err());
    }
}
