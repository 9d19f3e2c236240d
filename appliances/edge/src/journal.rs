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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    /// Records of the round whose key was parked when it was planned: they join their key's
    /// queue at the branch instead of leaving (they count in the round, in no batch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diverted: Vec<LocalOffset>,
}

/// One record of a batch the hub refused whole, sent alone under its own sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Single {
    pub offset: LocalOffset,
    pub sequence: i32,
}

/// What a parked record holds back: the records with the same key (they wait behind it, so
/// their order is never broken), or nothing but itself when it has no key (Kafka promises
/// keyless records no order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ParkKey {
    /// Base64 in the journal: a key may be as large as a record.
    Key(#[serde(with = "base64_bytes")] Vec<u8>),
    Keyless(LocalOffset),
}

/// A parked key's records, oldest first, and why the first was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedKey {
    pub reason: String,
    pub offsets: VecDeque<LocalOffset>,
}

/// A parked record on its way to the hub after an operator released its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub key: ParkKey,
    pub offset: LocalOffset,
    pub hub_partition: i32,
    pub producer: Producer,
    pub sequence: i32,
    /// Its sequence in the stream of released records (`StreamId::released_header`):
    /// one more for every record released, so the hub recognises only a re-send of it.
    pub number: i64,
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
        /// The number the next released record gets.
        #[serde(default)]
        released: i64,
    },
    /// A round in flight when the journal was rewritten, with its acknowledged batches and
    /// its diverted records already parked.
    Resumed {
        round: Round,
        acked: Vec<i32>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        parked: Vec<LocalOffset>,
    },
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
    /// The hub refused the batch for `hub_partition` of the round starting at `first` for
    /// something in its records: its open records go one per batch from now on, under these
    /// sequences (again after a record of it is parked, or under a new producer).
    Split {
        first: LocalOffset,
        hub_partition: i32,
        singles: Vec<Single>,
    },
    /// The hub acknowledged the single record `offset` of a split batch.
    AckedSingle {
        first: LocalOffset,
        hub_partition: i32,
        offset: LocalOffset,
    },
    /// Record `offset` of the round starting at `first` is parked at the branch (a copy
    /// kept beside the journal): refused by the hub for good, or behind a parked record of
    /// its key. The cursor may pass it.
    Parked {
        first: LocalOffset,
        offset: LocalOffset,
        key: ParkKey,
        reason: String,
    },
    /// A parked key as the journal was rewritten.
    Held { key: ParkKey, parked: ParkedKey },
    /// The first record of a released key, journaled before it is sent.
    Releasing(Release),
    /// The hub acknowledged the released record: it leaves its key's queue, and the key is
    /// free when that is empty.
    Released { key: ParkKey, offset: LocalOffset },
    /// The hub refused the released record again: the key stays parked.
    ReleaseRefused { key: ParkKey, reason: String },
    /// An operator dropped a parked key's records: they never reach the hub.
    Dropped { key: ParkKey },
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
    #[error("record {0} is not an open record of that round")]
    UnknownRecord(i64),
    #[error("{0} records are parked already")]
    ParkedFull(usize),
    #[error("no key parked as {0:?}")]
    NotParked(ParkKey),
    #[error("a release waits for the rounds in flight, and a round for the release in flight")]
    Busy,
}

/// Records parked at once in one stream (each is a file beside the journal): past this,
/// a refused record blocks its stream as it did before parking existed.
pub const PARKED_RECORDS_MAX: usize = 10_000;

/// Rounds in flight at once: Kafka keeps the last five batches per producer and partition,
/// so no more than five of one partition's batches may wait for an answer.
pub const ROUNDS_IN_FLIGHT_MAX: usize = 5;

#[derive(Debug, Clone)]
struct InFlight {
    round: Round,
    acked: BTreeSet<i32>,
    /// The open records of split batches, by hub partition, in offset order.
    split: BTreeMap<i32, Vec<Single>>,
    /// Diverted records not parked yet.
    diverted: BTreeSet<LocalOffset>,
}

impl InFlight {
    fn new(round: &Round, acked: BTreeSet<i32>) -> InFlight {
        InFlight {
            round: round.clone(),
            acked,
            split: BTreeMap::new(),
            diverted: round.diverted.iter().copied().collect(),
        }
    }

    fn done(&self) -> bool {
        self.acked.len() == self.round.batches.len() && self.diverted.is_empty()
    }
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
    parked: BTreeMap<ParkKey, ParkedKey>,
    /// Records in `parked`, against [`PARKED_RECORDS_MAX`].
    parked_records: usize,
    releasing: Option<Release>,
    released: i64,
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
            parked: BTreeMap::new(),
            parked_records: 0,
            releasing: None,
            released: 0,
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
        let hubs: Vec<Option<i32>> = hubs.iter().copied().map(Some).collect();
        self.plan_diverting(first, &hubs, hub_partitions)
    }

    /// [`Stream::plan`] where `None` marks a record whose key is parked (see
    /// [`Stream::is_parked`]): it is diverted to its key's queue.
    pub fn plan_diverting(
        &mut self,
        first: LocalOffset,
        hubs: &[Option<i32>],
        hub_partitions: i32,
    ) -> Result<Entry, JournalError> {
        let producer = self.producer.ok_or(JournalError::NoProducer)?;
        if hubs.is_empty() {
            return Err(JournalError::BadRound);
        }
        if self.releasing.is_some() {
            // A release is the last thing planned until it is answered: a refused one gives
            // its sequence back.
            return Err(JournalError::Busy);
        }
        let mut counts: BTreeMap<i32, i32> = BTreeMap::new();
        let mut diverted = Vec::new();
        for (i, h) in hubs.iter().enumerate() {
            match h {
                Some(h) => *counts.entry(*h).or_default() += 1,
                None => diverted.push(LocalOffset(first.0 + i as i64)),
            }
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
            diverted,
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
            for (hub_partition, singles) in &f.split {
                let split = Entry::Split {
                    first: f.round.first,
                    hub_partition: *hub_partition,
                    singles: self.numbered(*hub_partition, singles),
                };
                self.apply(&split).expect("a split batch plans again");
                entries.push(split);
            }
        }
        if let Some(r) = self.releasing.clone() {
            let again = Entry::Releasing(Release {
                producer,
                sequence: self.sequence_of(r.hub_partition),
                ..r
            });
            self.apply(&again).expect("a release plans again");
            entries.push(again);
        }
        entries
    }

    /// `singles` numbered on from the next sequence of `hub_partition`.
    fn numbered(&self, hub_partition: i32, singles: &[Single]) -> Vec<Single> {
        let base = self.sequence_of(hub_partition);
        singles
            .iter()
            .enumerate()
            .map(|(i, s)| Single {
                offset: s.offset,
                sequence: sequence_add(base, i as i32),
            })
            .collect()
    }

    /// The hub refused the whole batch of `hub_partition` in the round starting at `first`
    /// for something in its records: send them one by one, under the sequences the batch
    /// had (the hub took none of them). `offsets` are the batch's records, in order.
    pub fn split(
        &mut self,
        first: LocalOffset,
        hub_partition: i32,
        offsets: &[LocalOffset],
    ) -> Result<Entry, JournalError> {
        let f = self.round(first)?;
        let b = f
            .round
            .batches
            .iter()
            .find(|b| b.hub_partition == hub_partition)
            .ok_or(JournalError::UnknownBatch {
                first: first.0,
                hub_partition,
            })?;
        if offsets.len() != b.records as usize || f.acked.contains(&hub_partition) {
            return Err(JournalError::BadRound);
        }
        let singles = offsets
            .iter()
            .enumerate()
            .map(|(i, o)| Single {
                offset: *o,
                sequence: sequence_add(b.base_sequence, i as i32),
            })
            .collect();
        let entry = Entry::Split {
            first,
            hub_partition,
            singles,
        };
        self.apply(&entry)?;
        Ok(entry)
    }

    /// The open singles of a split batch, in order (`None`: the batch is not split).
    pub fn singles(&self, first: LocalOffset, hub_partition: i32) -> Option<&[Single]> {
        let f = self.rounds.iter().find(|f| f.round.first == first)?;
        f.split.get(&hub_partition).map(Vec::as_slice)
    }

    /// The diverted records of the round starting at `first` not parked yet.
    pub fn diverted(&self, first: LocalOffset) -> Vec<LocalOffset> {
        self.rounds
            .iter()
            .find(|f| f.round.first == first)
            .map_or_else(Vec::new, |f| f.diverted.iter().copied().collect())
    }

    /// Whether records with `key` wait behind a parked one.
    pub fn is_parked(&self, key: Option<&[u8]>) -> bool {
        key.is_some_and(|k| self.parked.contains_key(&ParkKey::Key(k.to_vec())))
    }

    /// The parked keys with their records, oldest first.
    pub fn parked(&self) -> &BTreeMap<ParkKey, ParkedKey> {
        &self.parked
    }

    /// Records parked at the branch.
    pub fn parked_records(&self) -> usize {
        self.parked_records
    }

    /// The release on its way to the hub.
    pub fn releasing(&self) -> Option<&Release> {
        self.releasing.as_ref()
    }

    /// Send the first parked record of `key` to `hub_partition`: only with no round in
    /// flight (the key's queue holds every record of it before [`Stream::next`], and none
    /// after it has been read yet), so the key's order holds.
    pub fn release(&mut self, key: &ParkKey, hub_partition: i32) -> Result<Entry, JournalError> {
        let producer = self.producer.ok_or(JournalError::NoProducer)?;
        if !self.rounds.is_empty() || self.releasing.is_some() {
            return Err(JournalError::Busy);
        }
        let parked = self
            .parked
            .get(key)
            .ok_or_else(|| JournalError::NotParked(key.clone()))?;
        let offset = *parked.offsets.front().expect("a parked key holds records");
        let entry = Entry::Releasing(Release {
            key: key.clone(),
            offset,
            hub_partition,
            producer,
            sequence: self.sequence_of(hub_partition),
            number: self.released,
        });
        self.apply(&entry)?;
        Ok(entry)
    }

    /// The entries that rebuild this state alone (to rewrite a grown journal).
    pub fn snapshot(&self) -> Vec<Entry> {
        let start = Entry::Start {
            next: self.forwarded,
            producer: self.producer,
            next_sequence: self.next_sequence.clone(),
            released: self.released,
        };
        let held = self.parked.iter().map(|(key, parked)| Entry::Held {
            key: key.clone(),
            parked: parked.clone(),
        });
        let mut out: Vec<Entry> = std::iter::once(start).chain(held).collect();
        for f in &self.rounds {
            out.push(Entry::Resumed {
                round: f.round.clone(),
                acked: f.acked.iter().copied().collect(),
                parked: f
                    .round
                    .diverted
                    .iter()
                    .filter(|o| !f.diverted.contains(o))
                    .copied()
                    .collect(),
            });
            for (hub_partition, singles) in &f.split {
                out.push(Entry::Split {
                    first: f.round.first,
                    hub_partition: *hub_partition,
                    singles: singles.clone(),
                });
            }
        }
        out.extend(self.releasing.clone().map(Entry::Releasing));
        out
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
                released,
            } => {
                *self = Stream::new(*next);
                self.producer = *producer;
                self.next_sequence = next_sequence.clone();
                self.released = *released;
            }
            Entry::Producer(p) => {
                self.producer = Some(*p);
                self.next_sequence.clear();
            }
            Entry::Resumed {
                round,
                acked,
                parked,
            } => {
                check_round(round)?;
                if round.first < self.next {
                    return Err(JournalError::Overlaps {
                        expected: self.next.0,
                        got: round.first.0,
                    });
                }
                self.next = LocalOffset(round.last.0 + 1);
                let mut f = InFlight::new(round, acked.iter().copied().collect());
                for o in parked {
                    f.diverted.remove(o);
                }
                self.rounds.push_back(f);
            }
            Entry::Planned(round) => self.apply_planned(round)?,
            Entry::Acked {
                first,
                hub_partition,
            } => self.apply_acked(*first, *hub_partition)?,
            Entry::Split {
                first,
                hub_partition,
                singles,
            } => self.apply_split(*first, *hub_partition, singles)?,
            Entry::AckedSingle {
                first,
                hub_partition,
                offset,
            } => {
                let f = self.round_mut(*first)?;
                let open = f
                    .split
                    .get_mut(hub_partition)
                    .ok_or(JournalError::UnknownRecord(offset.0))?;
                if open.first().map(|s| s.offset) != Some(*offset) {
                    // Singles are sent one at a time, in order.
                    return Err(JournalError::UnknownRecord(offset.0));
                }
                open.remove(0);
                if open.is_empty() {
                    f.split.remove(hub_partition);
                    f.acked.insert(*hub_partition);
                }
                self.settle();
            }
            Entry::Parked {
                first,
                offset,
                key,
                reason,
            } => self.apply_parked(*first, *offset, key, reason)?,
            Entry::Held { key, parked } => {
                self.parked_records += parked.offsets.len();
                self.parked.insert(key.clone(), parked.clone());
            }
            Entry::Releasing(r) => {
                if !self.parked.contains_key(&r.key) {
                    return Err(JournalError::NotParked(r.key.clone()));
                }
                if Some(r.producer) == self.producer {
                    let after = sequence_add(r.sequence, 1);
                    self.next_sequence.insert(r.hub_partition, after);
                }
                self.releasing = Some(r.clone());
            }
            Entry::Released { key, offset } => {
                let parked = self
                    .parked
                    .get_mut(key)
                    .ok_or_else(|| JournalError::NotParked(key.clone()))?;
                if parked.offsets.front() != Some(offset) {
                    return Err(JournalError::UnknownRecord(offset.0));
                }
                parked.offsets.pop_front();
                self.parked_records -= 1;
                if parked.offsets.is_empty() {
                    self.parked.remove(key);
                }
                if let Some(r) = self.releasing.take() {
                    self.released = self.released.max(r.number + 1);
                }
            }
            Entry::ReleaseRefused { key, reason } => {
                let parked = self
                    .parked
                    .get_mut(key)
                    .ok_or_else(|| JournalError::NotParked(key.clone()))?;
                parked.reason = reason.clone();
                if let Some(r) = self.releasing.take()
                    && Some(r.producer) == self.producer
                {
                    // The hub took nothing: its sequence is the partition's next again.
                    self.next_sequence.insert(r.hub_partition, r.sequence);
                }
            }
            Entry::Dropped { key } => {
                let parked = self
                    .parked
                    .remove(key)
                    .ok_or_else(|| JournalError::NotParked(key.clone()))?;
                self.parked_records -= parked.offsets.len();
                if self.releasing.as_ref().is_some_and(|r| &r.key == key) {
                    self.releasing = None;
                }
            }
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
            if f.round.last != round.last || f.round.diverted != round.diverted {
                return Err(JournalError::BadRound);
            }
            f.round = round.clone();
            // Split batches are numbered by the `Split` entries that follow.
            f.acked.iter().chain(f.split.keys()).copied().collect()
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
            self.rounds.push_back(InFlight::new(round, BTreeSet::new()));
            BTreeSet::new()
        };
        if Some(round.producer) == self.producer {
            for b in round
                .batches
                .iter()
                .filter(|b| !acked.contains(&b.hub_partition))
            {
                let after = sequence_add(b.base_sequence, b.records);
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
        if f.split.contains_key(&hub_partition) {
            // A split batch is acknowledged record by record.
            return Err(JournalError::UnknownBatch {
                first: first.0,
                hub_partition,
            });
        }
        f.acked.insert(hub_partition);
        self.settle();
        Ok(())
    }

    /// The cursor passes only whole rounds, oldest first.
    fn settle(&mut self) {
        while let Some(front) = self.rounds.front() {
            if !front.done() {
                break;
            }
            self.forwarded = LocalOffset(front.round.last.0 + 1);
            self.rounds.pop_front();
        }
    }

    fn round(&self, first: LocalOffset) -> Result<&InFlight, JournalError> {
        self.rounds
            .iter()
            .find(|f| f.round.first == first)
            .ok_or(JournalError::UnknownRound(first.0))
    }

    fn round_mut(&mut self, first: LocalOffset) -> Result<&mut InFlight, JournalError> {
        self.rounds
            .iter_mut()
            .find(|f| f.round.first == first)
            .ok_or(JournalError::UnknownRound(first.0))
    }

    fn apply_split(
        &mut self,
        first: LocalOffset,
        hub_partition: i32,
        singles: &[Single],
    ) -> Result<(), JournalError> {
        let current = self.producer;
        let f = self.round_mut(first)?;
        let unknown = JournalError::UnknownBatch {
            first: first.0,
            hub_partition,
        };
        let b = f
            .round
            .batches
            .iter()
            .find(|b| b.hub_partition == hub_partition)
            .ok_or(unknown)?;
        let in_round = |o: &LocalOffset| *o >= f.round.first && *o <= f.round.last;
        let ordered = singles.windows(2).all(|w| w[0].offset < w[1].offset);
        if f.acked.contains(&hub_partition)
            || singles.is_empty()
            || singles.len() > b.records as usize
            || !ordered
            || !singles.iter().all(|s| in_round(&s.offset))
        {
            return Err(JournalError::BadRound);
        }
        f.split.insert(hub_partition, singles.to_vec());
        if Some(f.round.producer) == current {
            let last = singles.last().expect("not empty").sequence;
            self.next_sequence
                .insert(hub_partition, sequence_add(last, 1));
        }
        Ok(())
    }

    /// Park record `offset` of the round starting at `first`: a diverted record, or the
    /// first open single of a split batch (refused for good, or behind a parked record of
    /// its key). A refused single took no sequence at the hub, so the singles after it move
    /// down by one: they and the partition's next sequence are this batch's alone, since only
    /// the newest round may park a single.
    fn apply_parked(
        &mut self,
        first: LocalOffset,
        offset: LocalOffset,
        key: &ParkKey,
        reason: &str,
    ) -> Result<(), JournalError> {
        if self.parked_records >= PARKED_RECORDS_MAX {
            return Err(JournalError::ParkedFull(self.parked_records));
        }
        let queued = self.parked.get(key).and_then(|p| p.offsets.back());
        if queued.is_some_and(|last| *last >= offset) {
            // A key's queue is in offset order.
            return Err(JournalError::UnknownRecord(offset.0));
        }
        let newest = self.rounds.back().map(|f| f.round.first) == Some(first);
        let current = self.producer;
        let f = self.round_mut(first)?;
        let mut renumbered = None;
        if !f.diverted.remove(&offset) {
            let (&hub_partition, open) = f
                .split
                .iter_mut()
                .find(|(_, open)| open.first().map(|s| s.offset) == Some(offset))
                .ok_or(JournalError::UnknownRecord(offset.0))?;
            if !newest {
                return Err(JournalError::Busy);
            }
            let gone = open.remove(0);
            for s in open.iter_mut() {
                s.sequence = sequence_add(s.sequence, -1);
            }
            if open.is_empty() {
                f.split.remove(&hub_partition);
                f.acked.insert(hub_partition);
            }
            if Some(f.round.producer) == current {
                renumbered = Some((hub_partition, gone.sequence));
            }
        }
        if let Some((hub_partition, next)) = renumbered {
            let next = self
                .singles_after(first, hub_partition)
                .map_or(next, |last| sequence_add(last, 1));
            self.next_sequence.insert(hub_partition, next);
        }
        let parked = self.parked.entry(key.clone()).or_insert_with(|| ParkedKey {
            reason: reason.to_string(),
            offsets: VecDeque::new(),
        });
        parked.offsets.push_back(offset);
        self.parked_records += 1;
        self.settle();
        Ok(())
    }

    /// The last sequence among a split batch's open singles.
    fn singles_after(&self, first: LocalOffset, hub_partition: i32) -> Option<i32> {
        self.singles(first, hub_partition)
            .and_then(|s| s.last())
            .map(|s| s.sequence)
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
        let parked: usize = self.parked.values().map(|p| p.offsets.len()).sum();
        assert_eq!(parked, self.parked_records, "parked records are counted");
        assert!(
            self.parked.values().all(|p| !p.offsets.is_empty()),
            "a parked key holds records"
        );
        if let Some(r) = &self.releasing {
            assert!(
                self.parked.contains_key(&r.key),
                "a release is of a parked key"
            );
        }
    }
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// `sequence + n` as Kafka counts: sequences wrap from `i32::MAX` to 0.
fn sequence_add(sequence: i32, n: i32) -> i32 {
    sequence.wrapping_add(n) & i32::MAX
}

/// A round's own consistency: records in order, batches adding up to them, one per hub
/// partition.
fn check_round(round: &Round) -> Result<(), JournalError> {
    let total: i64 = round
        .batches
        .iter()
        .map(|b| i64::from(b.records))
        .sum::<i64>()
        + round.diverted.len() as i64;
    let partitions: BTreeSet<i32> = round.batches.iter().map(|b| b.hub_partition).collect();
    let fits = round.first <= round.last
        && total == round.last.0 - round.first.0 + 1
        && partitions.len() == round.batches.len()
        && round.diverted.windows(2).all(|w| w[0] < w[1])
        && round
            .diverted
            .iter()
            .all(|o| *o >= round.first && *o <= round.last)
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

/// The largest entry accepted when reading (a round of a few thousand batches, a parked key
/// as large as a record).
const FRAME_BYTES_MAX: u32 = 16 << 20;

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
    assert!(
        body.len() <= FRAME_BYTES_MAX as usize,
        "a journal entry fits a frame"
    );
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
