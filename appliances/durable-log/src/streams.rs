//! De-duplication by stream: what producer idempotence cannot recognise.
//!
//! An edge gateway stamps every record it forwards with its *stream* (gateway, local topic
//! and partition) and its *sequence* there (the local offset: it only grows and is never
//! reused). A batch is always the same records when sent again. A partition that
//! de-duplicates (`clk.stream.dedup`) keeps, per stream, the highest sequence it holds and
//! the offset it is at; a batch whose sequences are all at or below it is already stored,
//! whatever its producer id (a new one after the hub forgot the old: an outage longer than
//! `producer.id.expiration.ms`, a restart that lost the gateway's producer). The answer is
//! then the stored record's offset, as for an idempotent duplicate.
//!
//! A high-water mark per stream, not a window of event ids: a stream's sequences only grow,
//! so one number per stream says everything, and the table holds a few hundred entries for
//! the company's sixty branches. The table is rebuilt from the log after a crash (from the
//! producer snapshot, which carries it, and the batches after it).

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::records::Record;
use serde::{Deserialize, Serialize};

use crate::records::{RecordsError, decode_records};

/// The header naming a record's stream (`<gateway>/<topic>/<local partition>`).
pub const STREAM_HEADER: &str = "clk-stream";
/// The header holding a record's sequence in its stream (8 bytes, big-endian).
pub const SEQUENCE_HEADER: &str = "clk-seq";
/// Streams one partition remembers at most; past this, new streams are not de-duplicated.
pub const STREAMS_MAX: usize = 65_536;

/// The stream and sequences of one batch's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub stream: String,
    pub first: i64,
    pub last: i64,
}

/// The stream and sequence one record carries, if it carries both.
pub fn record_origin(r: &Record) -> Option<(Bytes, i64)> {
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .and_then(|(_, v)| v.clone())
    };
    let stream = header(STREAM_HEADER)?;
    let seq = <[u8; 8]>::try_from(header(SEQUENCE_HEADER)?.as_ref()).ok()?;
    Some((stream, i64::from_be_bytes(seq)))
}

/// The origin of a batch (header included): `None` unless every record carries the same
/// stream and sequences that grow from record to record.
pub fn origin_of(batch: &Bytes) -> Result<Option<Origin>, RecordsError> {
    let records = decode_records(batch)?;
    let mut origin: Option<Origin> = None;
    for r in &records {
        let Some((stream, seq)) = record_origin(r) else {
            return Ok(None);
        };
        let stream = String::from_utf8_lossy(&stream);
        match &mut origin {
            None => {
                origin = Some(Origin {
                    stream: stream.into_owned(),
                    first: seq,
                    last: seq,
                })
            }
            Some(o) if o.stream == stream && seq > o.last => o.last = seq,
            Some(_) => return Ok(None),
        }
    }
    Ok(origin)
}

/// Where a stream stands in this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The highest sequence stored.
    pub sequence: i64,
    /// The offset of the batch's last record that holds it.
    pub offset: i64,
}

/// What a batch is, against the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCheck {
    /// Sequences past the mark: append.
    New,
    /// Every sequence at or below the mark: stored already, at or before `offset`.
    Duplicate { offset: i64 },
    /// Some at or below the mark, some past it: never sent so by a gateway (a batch is
    /// always re-sent whole), so refused rather than half stored twice.
    Overlap { mark: i64 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTable {
    marks: HashMap<String, Mark>,
}

impl StreamTable {
    pub fn get(&self, stream: &str) -> Option<Mark> {
        self.marks.get(stream).copied()
    }

    pub fn check(&self, o: &Origin) -> StreamCheck {
        match self.marks.get(&o.stream) {
            Some(m) if o.last <= m.sequence => StreamCheck::Duplicate { offset: m.offset },
            Some(m) if o.first <= m.sequence => StreamCheck::Overlap { mark: m.sequence },
            _ => StreamCheck::New,
        }
    }

    /// A batch of `o` stored with its last record at `last_offset`.
    pub fn record(&mut self, o: &Origin, last_offset: i64) {
        let full = self.marks.len() >= STREAMS_MAX;
        match self.marks.get_mut(&o.stream) {
            // An older batch recorded later (a follower catching up) never lowers the mark.
            Some(m) if o.last > m.sequence => {
                *m = Mark {
                    sequence: o.last,
                    offset: last_offset,
                };
            }
            Some(_) => {}
            None if !full => {
                self.marks.insert(
                    o.stream.clone(),
                    Mark {
                        sequence: o.last,
                        offset: last_offset,
                    },
                );
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(first: i64, last: i64) -> Origin {
        Origin {
            stream: "b/t/0".into(),
            first,
            last,
        }
    }

    #[test]
    fn a_batch_at_or_below_the_mark_is_a_duplicate() {
        let mut t = StreamTable::default();
        assert_eq!(t.check(&origin(0, 9)), StreamCheck::New);
        t.record(&origin(0, 9), 109);
        assert_eq!(
            t.check(&origin(0, 9)),
            StreamCheck::Duplicate { offset: 109 }
        );
        assert_eq!(
            t.check(&origin(3, 5)),
            StreamCheck::Duplicate { offset: 109 }
        );
        assert_eq!(t.check(&origin(5, 12)), StreamCheck::Overlap { mark: 9 });
        assert_eq!(t.check(&origin(10, 12)), StreamCheck::New);
        // Gaps in sequences (records not forwarded) are fine.
        assert_eq!(t.check(&origin(20, 30)), StreamCheck::New);
        t.record(&origin(20, 30), 120);
        // An older batch recorded later (a follower replaying) never lowers the mark.
        t.record(&origin(10, 12), 130);
        assert_eq!(t.get("b/t/0").unwrap().sequence, 30);
        let other = Origin {
            stream: "b/t/1".into(),
            ..origin(0, 9)
        };
        assert_eq!(t.check(&other), StreamCheck::New);
    }

    #[test]
    fn origins_need_every_record_stamped_with_one_stream() {
        use crate::batch::tests::encode_batch;
        // Records without headers are no stream's.
        let b = encode_batch(&[b"a", b"b"], None, 0);
        assert_eq!(origin_of(&b).unwrap(), None);
    }
}
