//! What the forwarder has promised the hub, for one local partition (a *stream*).
//!
//! The hub's producer idempotence recognises a retried batch by its producer id, epoch and
//! sequence range, and only if the retry has the same boundaries as the first attempt. A
//! gateway that restarts after sending a batch, but before its answer, must therefore send
//! the same records again under the same sequences, not a new batching of whatever the local
//! log holds by then. So the forwarder journals each *round* (a contiguous range of local
//! offsets, split into one batch per hub partition, each with its base sequence) before the
//! first byte of it leaves, and journals each batch's acknowledgement. After a restart,
//! replaying the journal gives back exactly the batches that were in flight.
//!
//! [`Stream`] is the state machine: pure, no I/O, driven by the forwarder and by replay
//! alike (both go through [`Stream::apply`]). [`JournalFile`] keeps its entries on disk.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A position in the local partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LocalOffset(pub i64);

/// The hub producer the forwarder writes with. A new one (after the hub forgot the old
/// producer id, or fenced its epoch) restarts every sequence at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Producer {
    pub id: i64,
    pub epoch: i16,
}

/// One batch of a round: the round's records that go to `hub_partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub hub_partition: i32,
    pub base_sequence: i32,
    pub records: i32,
}

/// Local records `first..=last`, split by hub partition under `hub_partitions`, promised
/// under `producer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    pub first: LocalOffset,
    pub last: LocalOffset,
    /// The hub topic's partition count the split was made with (re-sends split the same way
    /// even if the topic grew meanwhile).
    pub hub_partitions: i32,
    pub producer: Producer,
    pub batches: Vec<Batch>,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// Where forwarding starts (a new stream, or a rewritten journal): every record before
    /// `next` is acknowledged, and these are the sequences the producer goes on with (the
    /// `Resumed` rounds that follow hold sequences below them).
    Start {
        next: LocalOffset,
        producer: Option<Producer>,
        next_sequence: BTreeMap<i32, i32>,
    },
    /// A round in flight when the journal was rewritten, with its acknowledged batches.
    Resumed { round: Round, acked: Vec<i32> },
    /// A new producer: sequences restart at 0, and rounds in flight are planned again
    /// (their `Planned` entries follow).
    Producer(Producer),
    /// A round promised (or planned again under a new producer, replacing the one that
    /// starts at the same offset).
    Planned(Round),
    /// The hub acknowledged the batch of the round starting at `first` for `hub_partition`.
    Acked {
        first: LocalOffset,
        hub_partition: i32,
    },
}

/// Why an entry does not fit the state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JournalError {
    #[error("a round must start at offset {expected} or after it, not {got}")]
    Overlaps { expected: i64, got: i64 },
    #[error("no producer yet")]
    NoProducer,
    #[error("{0} rounds are in flight already")]
    Full(usize),
    #[error("no round in flight starts at offset {0}")]
    UnknownRound(i64),
    #[error("round {first} has no batch for hub partition {hub_partition}")]
    UnknownBatch { first: i64, hub_partition: i32 },
    #[error("a round must hold at least one record, in batches that add up")]
    BadRound,
}

/// Rounds in flight at once: Kafka keeps the last five batches per producer and partition,
/// so no more than five of one partition's batches may wait for an answer.
pub const ROUNDS_IN_FLIGHT_MAX: usize = 5;

#[derive(Debug, Clone)]
struct InFlight {
    round: Round,
    acked: BTreeSet<i32>,
}

/// One local partition's forwarding state.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Every record before this is acknowledged by the hub.
    forwarded: LocalOffset,
    /// The first record no round holds yet.
    next: LocalOffset,
    producer: Option<Producer>,
    next_sequence: BTreeMap<i32, i32>,
    rounds: VecDeque<InFlight>,
}

impl Stream {
    /// A stream whose records from `next` on are still to be forwarded.
    pub fn new(next: LocalOffset) -> Stream {
        Stream {
            forwarded: next,
            next,
            producer: None,
            next_sequence: BTreeMap::new(),
            rounds: VecDeque::new(),
        }
    }

    /// The state the journal's entries describe. A journal begins with a `Start` (the
    /// forwarder writes one when it creates the journal, and every rewrite begins with
    /// one); entries before any would apply to a stream at offset 0.
    pub fn replay(entries: impl IntoIterator<Item = Entry>) -> Result<Stream, JournalError> {
        let mut s = Stream::new(LocalOffset(0));
        for e in entries {
            s.apply(&e)?;
        }
        Ok(s)
    }

    /// Every record before this is acknowledged: local segments below it may go.
    pub fn forwarded(&self) -> LocalOffset {
        self.forwarded
    }

    /// The first record the next round starts with.
    pub fn next(&self) -> LocalOffset {
        self.next
    }

    pub fn producer(&self) -> Option<Producer> {
        self.producer
    }

    /// Rounds in flight, oldest first, with the hub partitions of their batches still
    /// unacknowledged: what a restarted forwarder sends again, in this order.
    pub fn in_flight(&self) -> impl Iterator<Item = (&Round, Vec<Batch>)> {
        self.rounds.iter().map(|f| {
            let open = f
                .round
                .batches
                .iter()
                .filter(|b| !f.acked.contains(&b.hub_partition))
                .copied()
                .collect();
            (&f.round, open)
        })
    }

    /// Plan the next round: `hubs[i]` is the hub partition of local record `first + i`
    /// (split under `hub_partitions`). `first` is [`Stream::next`], or past it when the
    /// local log has no records to forward in between (a transaction's control records).
    /// Returns the entry to journal before sending.
    pub fn plan(
        &mut self,
        first: LocalOffset,
        hubs: &[i32],
        hub_partitions: i32,
    ) -> Result<Entry, JournalError> {
        let producer = self.producer.ok_or(JournalError::NoProducer)?;
        if hubs.is_empty() {
            return Err(JournalError::BadRound);
        }
        let mut counts: BTreeMap<i32, i32> = BTreeMap::new();
        for &h in hubs {
            *counts.entry(h).or_default() += 1;
        }
        let batches = counts
            .into_iter()
            .map(|(hub_partition, records)| Batch {
                hub_partition,
                base_sequence: self.sequence_of(hub_partition),
                records,
            })
            .collect();
        let round = Round {
            first,
            last: LocalOffset(first.0 + hubs.len() as i64 - 1),
            hub_partitions,
            producer,
            batches,
        };
        let entry = Entry::Planned(round);
        self.apply(&entry)?;
        Ok(entry)
    }

    /// Record the hub's acknowledgement of one batch; the entry to journal.
    pub fn ack(&mut self, first: LocalOffset, hub_partition: i32) -> Result<Entry, JournalError> {
        let entry = Entry::Acked {
            first,
            hub_partition,
        };
        self.apply(&entry)?;
        Ok(entry)
    }

    /// Switch to a new producer (the hub forgot or fenced the old one): sequences restart at
    /// 0 and the unacknowledged batches of every round in flight get new ones. The entries
    /// to journal. What the hub may already hold of those batches is found again by the
    /// events' stream and sequence headers, not by producer idempotence.
    pub fn new_producer(&mut self, producer: Producer) -> Vec<Entry> {
        let mut entries = vec![Entry::Producer(producer)];
        self.apply(&entries[0])
            .expect("a new producer always applies");
        let rounds: Vec<InFlight> = self.rounds.iter().cloned().collect();
        for f in rounds {
            let batches = f
                .round
                .batches
                .iter()
                .map(|b| match f.acked.contains(&b.hub_partition) {
                    true => *b,
                    false => Batch {
                        base_sequence: self.sequence_of(b.hub_partition),
                        ..*b
                    },
                })
                .collect();
            let again = Entry::Planned(Round {
                producer,
                batches,
                ..f.round
            });
            self.apply(&again).expect("a round in flight plans again");
            entries.push(again);
        }
        entries
    }

    /// The entries that rebuild this state alone (to rewrite a grown journal).
    pub fn snapshot(&self) -> Vec<Entry> {
        let start = Entry::Start {
            next: self.forwarded,
            producer: self.producer,
            next_sequence: self.next_sequence.clone(),
        };
        let rounds = self.rounds.iter().map(|f| Entry::Resumed {
            round: f.round.clone(),
            acked: f.acked.iter().copied().collect(),
        });
        std::iter::once(start).chain(rounds).collect()
    }

    fn sequence_of(&self, hub_partition: i32) -> i32 {
        self.next_sequence.get(&hub_partition).copied().unwrap_or(0)
    }

    /// The one place the state changes: the forwarder's own steps and replay alike.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), JournalError> {
        match entry {
            Entry::Start {
                next,
                producer,
                next_sequence,
            } => {
                *self = Stream::new(*next);
                self.producer = *producer;
                self.next_sequence = next_sequence.clone();
            }
            Entry::Producer(p) => {
                self.producer = Some(*p);
                self.next_sequence.clear();
            }
            Entry::Resumed { round, acked } => {
                check_round(round)?;
                if round.first < self.next {
                    return Err(JournalError::Overlaps {
                        expected: self.next.0,
                        got: round.first.0,
                    });
                }
                self.next = LocalOffset(round.last.0 + 1);
                self.rounds.push_back(InFlight {
                    round: round.clone(),
                    acked: acked.iter().copied().collect(),
                });
            }
            Entry::Planned(round) => self.apply_planned(round)?,
            Entry::Acked {
                first,
                hub_partition,
            } => self.apply_acked(*first, *hub_partition)?,
        }
        self.check();
        Ok(())
    }

    fn apply_planned(&mut self, round: &Round) -> Result<(), JournalError> {
        check_round(round)?;
        let acked = if let Some(i) = self
            .rounds
            .iter()
            .position(|f| f.round.first == round.first)
        {
            // Planned again under a new producer: same records, new sequences for the
            // batches not yet acknowledged.
            let f = &mut self.rounds[i];
            if f.round.last != round.last {
                return Err(JournalError::BadRound);
            }
            f.round = round.clone();
            f.acked.clone()
        } else {
            if round.first < self.next {
                return Err(JournalError::Overlaps {
                    expected: self.next.0,
                    got: round.first.0,
                });
            }
            if self.rounds.len() >= ROUNDS_IN_FLIGHT_MAX {
                return Err(JournalError::Full(self.rounds.len()));
            }
            self.next = LocalOffset(round.last.0 + 1);
            self.rounds.push_back(InFlight {
                round: round.clone(),
                acked: BTreeSet::new(),
            });
            BTreeSet::new()
        };
        if Some(round.producer) == self.producer {
            for b in round
                .batches
                .iter()
                .filter(|b| !acked.contains(&b.hub_partition))
            {
                // Kafka's sequences wrap from i32::MAX to 0.
                let after = b.base_sequence.wrapping_add(b.records) & i32::MAX;
                self.next_sequence.insert(b.hub_partition, after);
            }
        }
        Ok(())
    }

    fn apply_acked(&mut self, first: LocalOffset, hub_partition: i32) -> Result<(), JournalError> {
        let f = self
            .rounds
            .iter_mut()
            .find(|f| f.round.first == first)
            .ok_or(JournalError::UnknownRound(first.0))?;
        if !f
            .round
            .batches
            .iter()
            .any(|b| b.hub_partition == hub_partition)
        {
            return Err(JournalError::UnknownBatch {
                first: first.0,
                hub_partition,
            });
        }
        f.acked.insert(hub_partition);
        // The cursor passes only whole rounds, oldest first.
        while let Some(front) = self.rounds.front() {
            if front.acked.len() < front.round.batches.len() {
                break;
            }
            self.forwarded = LocalOffset(front.round.last.0 + 1);
            self.rounds.pop_front();
        }
        Ok(())
    }

    /// Invariants, checked after every change.
    fn check(&self) {
        assert!(
            self.forwarded <= self.next,
            "forwarded past what was planned"
        );
        let mut after = self.forwarded;
        for f in &self.rounds {
            assert!(f.round.first >= after, "rounds in flight are in order");
            after = LocalOffset(f.round.last.0 + 1);
        }
        if !self.rounds.is_empty() {
            assert_eq!(
                after, self.next,
                "the last round ends where the next starts"
            );
        }
        assert!(self.rounds.len() <= ROUNDS_IN_FLIGHT_MAX);
    }
}

/// A round's own consistency: records in order, batches adding up to them, one per hub
/// partition.
fn check_round(round: &Round) -> Result<(), JournalError> {
    let total: i64 = round.batches.iter().map(|b| i64::from(b.records)).sum();
    let partitions: BTreeSet<i32> = round.batches.iter().map(|b| b.hub_partition).collect();
    let fits = round.first <= round.last
        && total == round.last.0 - round.first.0 + 1
        && partitions.len() == round.batches.len()
        && round
            .batches
            .iter()
            .all(|b| b.records > 0 && (0..round.hub_partitions).contains(&b.hub_partition));
    if fits {
        Ok(())
    } else {
        Err(JournalError::BadRound)
    }
}

/// The journal on disk: entries appended as frames (`u32` length, `u32` CRC-32C, JSON), each
/// append fsynced before the forwarder acts on it. A torn or corrupt tail (a crash mid-append)
/// ends the journal where the last whole frame does, and is cut off when opened.
pub struct JournalFile {
    path: PathBuf,
    file: std::fs::File,
}

/// The largest entry accepted when reading (a round of a few thousand batches).
const FRAME_BYTES_MAX: u32 = 4 << 20;

impl JournalFile {
    /// Open (or create) the journal at `path`: its whole entries, the torn tail cut off.
    pub fn open(path: &Path) -> std::io::Result<(JournalFile, Vec<Entry>)> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (entries, whole) = decode_frames(&bytes);
        if whole < bytes.len() {
            file.set_len(whole as u64)?;
            file.sync_data()?;
        }
        if bytes.is_empty()
            && let Some(dir) = path.parent()
        {
            // A new file: its directory entry must be on disk before its first entry counts.
            std::fs::File::open(dir)?.sync_all()?;
        }
        let journal = JournalFile {
            path: path.to_owned(),
            file,
        };
        Ok((journal, entries))
    }

    /// Append `entries` and fsync them.
    pub fn append(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for e in entries {
            encode_frame(e, &mut buf);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }

    /// Replace the journal by `entries` (a [`Stream::snapshot`]): written beside it, fsynced,
    /// renamed over it, the directory fsynced.
    pub fn rewrite(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("rewrite");
        let mut buf = Vec::new();
        for e in entries {
            encode_frame(e, &mut buf);
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }
}

fn encode_frame(e: &Entry, out: &mut Vec<u8>) {
    let body = serde_json::to_vec(e).expect("entries serialize");
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// The whole frames at the start of `bytes` and where they end.
pub fn decode_frames(bytes: &[u8]) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > FRAME_BYTES_MAX {
            break;
        }
        let Some(body) = bytes.get(at + 8..at + 8 + len as usize) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice(body) else {
            break;
        };
        entries.push(entry);
        at += 8 + len as usize;
    }
    (entries, at)
}

#[cfg(test)]
mod tests;
