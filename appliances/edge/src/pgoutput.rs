//! PostgreSQL's logical replication messages (the `pgoutput` plugin, protocol version 1), as
//! `pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', 'publication_names', ...,
//! 'messages', 'true')` returns them, one message per row. Only what the outbox reader needs
//! is decoded (transactions, relations, inserts, logical messages); the rest is recognised
//! and skipped.
//!
//! Written here because the replication crates on crates.io are young and bring their own
//! connection handling, while the gateway reads through plain SQL functions (notes:
//! edge-and-quorum.md); the format is small and stable. Every input is untrusted: a
//! malformed message is an error, never a panic (the `pgoutput` fuzz target).

use bytes::Bytes;

/// A log sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    /// PostgreSQL's notation: `16/B374D848`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;

    /// PostgreSQL's notation, as `pg_lsn::text` gives it.
    fn from_str(s: &str) -> Result<Lsn, String> {
        let bad = || format!("{s:?} is not an LSN");
        let (high, low) = s.split_once('/').ok_or_else(bad)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| bad())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

/// One column value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the change did not touch (updates only).
    Unchanged,
    Text(Bytes),
    Binary(Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
    },
    Relation {
        oid: u32,
        namespace: String,
        name: String,
        columns: Vec<Column>,
    },
    Insert {
        relation: u32,
        row: Vec<Value>,
    },
    /// `pg_logical_emit_message`: an event that needs no table.
    Logical {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    /// Updates, deletes, truncates, origins, types: not outbox events.
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput: {0}")]
pub struct DecodeError(pub String);

/// The largest number of columns a relation or row may claim (PostgreSQL's own limit is 1600).
const COLUMNS_MAX: usize = 1600;

struct Reader<'a> {
    data: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let data: &'a [u8] = self.data;
        let end = self.at.checked_add(n).filter(|&e| e <= data.len());
        let end = end.ok_or_else(|| DecodeError(format!("{what}: the message ends early")))?;
        let out = &data[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    /// A null-terminated string.
    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = &self.data[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| DecodeError(format!("{what}: no terminating NUL")))?;
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| DecodeError(format!("{what}: not UTF-8")))?
            .to_string();
        self.at += len + 1;
        Ok(s)
    }
    /// `n` bytes shared with the message (no copy).
    fn bytes(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        let start = self.at;
        self.take(n, what)?;
        Ok(self.data.slice(start..start + n))
    }
}

/// Decode one message.
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { data, at: 0 };
    let message = match r.u8("message type")? {
        b'B' => {
            let final_lsn = Lsn(r.u64("begin LSN")?);
            let _commit_time = r.u64("begin time")?;
            Message::Begin {
                final_lsn,
                xid: r.u32("xid")?,
            }
        }
        b'C' => {
            let _flags = r.u8("commit flags")?;
            let commit_lsn = Lsn(r.u64("commit LSN")?);
            let end_lsn = Lsn(r.u64("end LSN")?);
            let _commit_time = r.u64("commit time")?;
            Message::Commit {
                commit_lsn,
                end_lsn,
            }
        }
        b'R' => relation(&mut r)?,
        b'I' => {
            let relation = r.u32("relation")?;
            if r.u8("new tuple marker")? != b'N' {
                return Err(DecodeError("insert: no new tuple".into()));
            }
            Message::Insert {
                relation,
                row: tuple(&mut r)?,
            }
        }
        b'M' => {
            let transactional = r.u8("message flags")? & 1 == 1;
            let lsn = Lsn(r.u64("message LSN")?);
            let prefix = r.string("message prefix")?;
            let len = r.u32("message length")? as usize;
            Message::Logical {
                transactional,
                lsn,
                prefix,
                content: r.bytes(len, "message content")?,
            }
        }
        t @ (b'U' | b'D' | b'T' | b'O' | b'Y') => return Ok(Message::Other(t)),
        t => return Err(DecodeError(format!("unknown message type {t:#04x}"))),
    };
    if r.at != data.len() {
        return Err(DecodeError(format!(
            "{} bytes after the message",
            data.len() - r.at
        )));
    }
    Ok(message)
}

fn relation(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let oid = r.u32("relation oid")?;
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let _replica_identity = r.u8("replica identity")?;
    let count = r.u16("column count")? as usize;
    if count > COLUMNS_MAX {
        return Err(DecodeError(format!("{count} columns")));
    }
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let _flags = r.u8("column flags")?;
        let name = r.string("column name")?;
        let type_oid = r.u32("column type")?;
        let _modifier = r.u32("column type modifier")?;
        columns.push(Column { name, type_oid });
    }
    Ok(Message::Relation {
        oid,
        namespace,
        name,
        columns,
    })
}

fn tuple(r: &mut Reader<'_>) -> Result<Vec<Value>, DecodeError> {
    let count = r.u16("tuple column count")? as usize;
    if count > COLUMNS_MAX {
        return Err(DecodeError(format!("{count} columns in a row")));
    }
    let mut row = Vec::with_capacity(count);
    for _ in 0..count {
        row.push(match r.u8("column kind")? {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b't' => {
                let len = r.u32("text length")? as usize;
                Value::Text(r.bytes(len, "text value")?)
            }
            b'b' => {
                let len = r.u32("binary length")? as usize;
                Value::Binary(r.bytes(len, "binary value")?)
            }
            k => return Err(DecodeError(format!("unknown column kind {k:#04x}"))),
        });
    }
    Ok(row)
}

/// Encoders for tests (and the fuzz target's seeds): the messages as PostgreSQL sends them.
#[cfg(any(test, feature = "fuzzing"))]
pub mod encode {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    pub fn begin(final_lsn: u64, xid: u32) -> Bytes {
        let mut out = vec![b'B'];
        out.extend_from_slice(&final_lsn.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.extend_from_slice(&xid.to_be_bytes());
        out.into()
    }

    pub fn commit(commit_lsn: u64, end_lsn: u64) -> Bytes {
        let mut out = vec![b'C', 0];
        out.extend_from_slice(&commit_lsn.to_be_bytes());
        out.extend_from_slice(&end_lsn.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.into()
    }

    pub fn relation(oid: u32, namespace: &str, name: &str, columns: &[&str]) -> Bytes {
        let mut out = vec![b'R'];
        out.extend_from_slice(&oid.to_be_bytes());
        string(&mut out, namespace);
        string(&mut out, name);
        out.push(b'd');
        out.extend_from_slice(&(columns.len() as u16).to_be_bytes());
        for c in columns {
            out.push(0);
            string(&mut out, c);
            out.extend_from_slice(&25u32.to_be_bytes());
            out.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        out.into()
    }

    pub fn insert(relation: u32, row: &[Option<&str>]) -> Bytes {
        let mut out = vec![b'I'];
        out.extend_from_slice(&relation.to_be_bytes());
        out.push(b'N');
        out.extend_from_slice(&(row.len() as u16).to_be_bytes());
        for v in row {
            match v {
                None => out.push(b'n'),
                Some(t) => {
                    out.push(b't');
                    out.extend_from_slice(&(t.len() as u32).to_be_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
            }
        }
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_back_as_postgresql_writes_them() {
        for lsn in [0, 0x16_B374_D848, u64::MAX] {
            assert_eq!(Lsn(lsn).to_string().parse::<Lsn>(), Ok(Lsn(lsn)));
        }
        assert_eq!("16/B374D848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("1/FFFFFFFFF".parse::<Lsn>().is_err());
    }

    #[test]
    fn the_messages_an_outbox_insert_makes_decode() {
        assert_eq!(
            decode(&encode::begin(0x16_B374_D848, 731)).unwrap(),
            Message::Begin {
                final_lsn: Lsn(0x16_B374_D848),
                xid: 731
            }
        );
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        let rel = decode(&encode::relation(
            16_384,
            "public",
            "outbox",
            &["id", "payload"],
        ))
        .unwrap();
        assert_eq!(
            rel,
            Message::Relation {
                oid: 16_384,
                namespace: "public".into(),
                name: "outbox".into(),
                columns: vec![
                    Column {
                        name: "id".into(),
                        type_oid: 25
                    },
                    Column {
                        name: "payload".into(),
                        type_oid: 25
                    },
                ],
            }
        );
        assert_eq!(
            decode(&encode::insert(16_384, &[Some("e1"), None])).unwrap(),
            Message::Insert {
                relation: 16_384,
                row: vec![Value::Text(Bytes::from_static(b"e1")), Value::Null],
            }
        );
        assert_eq!(
            decode(&encode::commit(10, 20)).unwrap(),
            Message::Commit {
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20)
            }
        );
        assert_eq!(
            decode(&Bytes::from_static(b"U....")).unwrap(),
            Message::Other(b'U')
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        let insert = encode::insert(1, &[Some("abc")]);
        for cut in 0..insert.len() {
            assert!(decode(&insert.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = insert.to_vec();
        longer.push(0);
        assert!(decode(&longer.into()).is_err());
        assert!(decode(&Bytes::from_static(b"Z")).is_err());
        // A length far past the end.
        let mut huge = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&huge.into()).is_err());
    }
}
