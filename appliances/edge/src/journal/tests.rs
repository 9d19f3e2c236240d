use super::*;

const P: Producer = Producer { id: 7, epoch: 0 };

fn started() -> Stream {
    let mut s = Stream::new(LocalOffset(100));
    s.apply(&Entry::Producer(P)).unwrap();
    s
}

fn batches(e: &Entry) -> Vec<Batch> {
    match e {
        Entry::Planned(r) => r.batches.clone(),
        other => panic!("not a round: {other:?}"),
    }
}

#[test]
fn rounds_take_contiguous_sequences_and_the_cursor_passes_only_whole_rounds() {
    let mut s = started();
    let r1 = s.plan(s.next(), &[0, 1, 0, 0], 2).unwrap();
    assert_eq!(
        batches(&r1),
        vec![
            Batch {
                hub_partition: 0,
                base_sequence: 0,
                records: 3
            },
            Batch {
                hub_partition: 1,
                base_sequence: 0,
                records: 1
            },
        ]
    );
    let r2 = s.plan(s.next(), &[1, 1], 2).unwrap();
    assert_eq!(
        batches(&r2),
        vec![Batch {
            hub_partition: 1,
            base_sequence: 1,
            records: 2
        }]
    );
    assert_eq!(
        (s.forwarded(), s.next()),
        (LocalOffset(100), LocalOffset(106))
    );
    // The second round's answer first: the cursor waits for the first round.
    s.ack(LocalOffset(104), 1).unwrap();
    assert_eq!(s.forwarded(), LocalOffset(100));
    s.ack(LocalOffset(100), 0).unwrap();
    assert_eq!(s.forwarded(), LocalOffset(100));
    s.ack(LocalOffset(100), 1).unwrap();
    assert_eq!(s.forwarded(), LocalOffset(106));
    assert_eq!(s.in_flight().count(), 0);
}

#[test]
fn what_does_not_fit_is_refused() {
    let mut s = Stream::new(LocalOffset(0));
    assert_eq!(s.plan(s.next(), &[0], 1), Err(JournalError::NoProducer));
    s.apply(&Entry::Producer(P)).unwrap();
    assert_eq!(s.plan(s.next(), &[], 1), Err(JournalError::BadRound));
    for _ in 0..ROUNDS_IN_FLIGHT_MAX {
        s.plan(s.next(), &[0], 1).unwrap();
    }
    assert_eq!(
        s.plan(s.next(), &[0], 1),
        Err(JournalError::Full(ROUNDS_IN_FLIGHT_MAX))
    );
    assert_eq!(
        s.ack(LocalOffset(99), 0),
        Err(JournalError::UnknownRound(99))
    );
    assert_eq!(
        s.ack(LocalOffset(0), 3),
        Err(JournalError::UnknownBatch {
            first: 0,
            hub_partition: 3
        })
    );
    // A round inside one in flight.
    let mut s = started();
    s.plan(s.next(), &[0, 0, 0], 1).unwrap();
    let stray = Round {
        first: LocalOffset(101),
        last: LocalOffset(101),
        hub_partitions: 1,
        producer: P,
        batches: vec![Batch {
            hub_partition: 0,
            base_sequence: 9,
            records: 1,
        }],
        diverted: vec![],
    };
    assert!(matches!(
        s.apply(&Entry::Planned(stray.clone())),
        Err(JournalError::Overlaps { .. })
    ));
    let wrong_count = Round {
        last: LocalOffset(102),
        ..stray
    };
    assert_eq!(
        s.apply(&Entry::Planned(wrong_count)),
        Err(JournalError::BadRound)
    );
}

#[test]
fn a_new_producer_renumbers_only_what_the_hub_has_not_acknowledged() {
    let mut s = started();
    s.plan(s.next(), &[0, 1], 2).unwrap();
    s.plan(s.next(), &[0], 2).unwrap();
    s.ack(LocalOffset(100), 1).unwrap();
    let q = Producer { id: 8, epoch: 0 };
    let entries = s.new_producer(q);
    assert_eq!(entries.len(), 3);
    let in_flight: Vec<(LocalOffset, Vec<Batch>)> =
        s.in_flight().map(|(r, open)| (r.first, open)).collect();
    assert_eq!(
        in_flight,
        vec![
            (
                LocalOffset(100),
                vec![Batch {
                    hub_partition: 0,
                    base_sequence: 0,
                    records: 1
                }]
            ),
            (
                LocalOffset(102),
                vec![Batch {
                    hub_partition: 0,
                    base_sequence: 1,
                    records: 1
                }]
            ),
        ]
    );
    // The next round goes on from there.
    assert_eq!(
        batches(&s.plan(s.next(), &[0, 1], 2).unwrap()),
        vec![
            Batch {
                hub_partition: 0,
                base_sequence: 2,
                records: 1
            },
            Batch {
                hub_partition: 1,
                base_sequence: 0,
                records: 1
            },
        ]
    );
}

/// Deterministic choices (xorshift), so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The state as entries, to compare two streams.
fn state(s: &Stream) -> Vec<Entry> {
    s.snapshot()
}

/// Random forwarding with answers in any order, new producers, journal rewrites and crashes
/// at every step: the journal replayed always gives back the same state, every round is
/// acknowledged once, sequences per hub partition follow on without gaps under each
/// producer, and the cursor never passes an unacknowledged record.
#[test]
fn replaying_the_journal_gives_back_the_state_at_every_step() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut s = started();
        let mut journal = vec![Entry::Start {
            next: LocalOffset(100),
            producer: Some(P),
            next_sequence: BTreeMap::new(),
            released: 0,
        }];
        // Per producer and hub partition: the next sequence a new batch must start at.
        let mut expected_seq: BTreeMap<(i64, i32), i32> = BTreeMap::new();
        let mut acked_records = 0i64;
        // The test's own record of what was planned and acknowledged: the cursor must never
        // pass a round one of whose batches is unacknowledged.
        let mut model_rounds: BTreeMap<i64, (i64, BTreeSet<i32>)> = BTreeMap::new();
        let mut model_acked: BTreeSet<(i64, i32)> = BTreeSet::new();
        for step in 0..300 {
            match rng.below(10) {
                0..=3 => {
                    let n = 1 + rng.below(6) as usize;
                    let hubs: Vec<i32> = (0..n).map(|_| rng.below(3) as i32).collect();
                    // Now and then offsets with nothing to forward (control records).
                    let gap = if rng.below(5) == 0 {
                        rng.below(3) as i64
                    } else {
                        0
                    };
                    match s.plan(LocalOffset(s.next().0 + gap), &hubs, 3) {
                        Ok(e) => {
                            if let Entry::Planned(r) = &e {
                                let hubs = r.batches.iter().map(|b| b.hub_partition).collect();
                                model_rounds.insert(r.first.0, (r.last.0, hubs));
                            }
                            let producer = s.producer().unwrap();
                            for b in batches(&e) {
                                let next = expected_seq
                                    .entry((producer.id, b.hub_partition))
                                    .or_insert(0);
                                assert_eq!(b.base_sequence, *next, "seed {seed} step {step}");
                                *next += b.records;
                            }
                            journal.push(e);
                        }
                        Err(JournalError::Full(_)) => {}
                        Err(e) => panic!("seed {seed} step {step}: {e}"),
                    }
                }
                4..=7 => {
                    let open: Vec<(LocalOffset, i32)> = s
                        .in_flight()
                        .flat_map(|(r, open)| {
                            open.into_iter().map(move |b| (r.first, b.hub_partition))
                        })
                        .collect();
                    if !open.is_empty() {
                        let (first, h) = open[rng.below(open.len() as u64) as usize];
                        let before = s.forwarded();
                        model_acked.insert((first.0, h));
                        journal.push(s.ack(first, h).unwrap());
                        acked_records += s.forwarded().0 - before.0;
                    }
                }
                8 => {
                    if rng.below(4) == 0 {
                        let id = 100 + step as i64;
                        let entries = s.new_producer(Producer { id, epoch: 0 });
                        for e in &entries[1..] {
                            for b in batches(e) {
                                let next = expected_seq.entry((id, b.hub_partition)).or_insert(0);
                                if s.in_flight().any(|(r, open)| {
                                    Entry::Planned(r.clone()) == *e && open.contains(&b)
                                }) {
                                    assert_eq!(b.base_sequence, *next, "seed {seed} step {step}");
                                    *next += b.records;
                                }
                            }
                        }
                        journal.extend(entries);
                    }
                }
                _ => {
                    // The journal grew: rewrite it as a snapshot.
                    journal = s.snapshot();
                }
            }
            // A crash here: the journal replayed is the state.
            let replayed = Stream::replay(journal.iter().cloned())
                .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
            assert_eq!(state(&replayed), state(&s), "seed {seed} step {step}");
            assert!(s.forwarded() <= s.next());
            for (first, (last, hubs)) in &model_rounds {
                if *last < s.forwarded().0 {
                    assert!(
                        hubs.iter().all(|h| model_acked.contains(&(*first, *h))),
                        "seed {seed} step {step}: the cursor passed round {first} unacknowledged"
                    );
                }
            }
        }
        assert_eq!(acked_records, s.forwarded().0 - 100, "seed {seed}");
    }
}

#[test]
fn the_file_keeps_whole_entries_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stream-0.journal");
    let mut s = started();
    let (mut file, entries) = JournalFile::open(&path).unwrap();
    assert!(entries.is_empty());
    let mut written = vec![Entry::Producer(P)];
    written.push(s.plan(s.next(), &[0, 1], 2).unwrap());
    written.push(s.ack(LocalOffset(100), 0).unwrap());
    file.append(&written).unwrap();
    drop(file);
    // A crash mid-append: half a frame at the end.
    let whole = std::fs::metadata(&path).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
    drop(f);
    let (mut file, entries) = JournalFile::open(&path).unwrap();
    assert_eq!(entries, written);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
    // A flipped byte ends the journal at the frame before it.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x40;
    assert_eq!(decode_frames(&bytes).0, written[..2]);
    // A rewrite replaces it by the snapshot, and appends go on after it.
    file.rewrite(&s.snapshot()).unwrap();
    let more = s.ack(LocalOffset(100), 1).unwrap();
    file.append(std::slice::from_ref(&more)).unwrap();
    let (_, entries) = JournalFile::open(&path).unwrap();
    let replayed = Stream::replay(entries).unwrap();
    assert_eq!(state(&replayed), state(&s));
    assert_eq!(replayed.forwarded(), LocalOffset(102));
}

/// Apply `e` to `s` and keep it in `journal`; the journal replayed is always `s`.
fn step(s: &mut Stream, journal: &mut Vec<Entry>, e: Entry) {
    s.apply(&e).unwrap_or_else(|err| panic!("{e:?}: {err}"));
    journal.push(e);
    let replayed = Stream::replay(journal.iter().cloned()).unwrap();
    assert_eq!(state(&replayed), state(s));
    let rewritten = Stream::replay(s.snapshot()).unwrap();
    assert_eq!(state(&rewritten), state(s));
}

fn key(k: &str) -> ParkKey {
    ParkKey::Key(k.as_bytes().to_vec())
}

fn parked(first: i64, offset: i64, k: &str) -> Entry {
    Entry::Parked {
        first: LocalOffset(first),
        offset: LocalOffset(offset),
        key: key(k),
        reason: "MessageTooLarge".into(),
    }
}

fn single(first: i64, offset: i64) -> Entry {
    Entry::AckedSingle {
        first: LocalOffset(first),
        hub_partition: 0,
        offset: LocalOffset(offset),
    }
}

/// A batch the hub refuses goes record by record; the refused record is parked, the records
/// after it move down one sequence (the hub took none for it), later records of its key are
/// diverted behind it, and a release sends them on in order under the next sequences.
#[test]
fn a_refused_record_is_parked_and_its_key_waits_behind_it_until_released() {
    let mut s = started();
    let mut journal = s.snapshot();
    let planned = s.plan(LocalOffset(100), &[0, 0, 0, 0], 1).unwrap();
    journal.push(planned);
    let offsets: Vec<LocalOffset> = (100..104).map(LocalOffset).collect();
    let split = s.split(LocalOffset(100), 0, &offsets).unwrap();
    journal.push(split);
    let seqs = |s: &Stream| -> Vec<i32> {
        s.singles(LocalOffset(100), 0)
            .unwrap_or(&[])
            .iter()
            .map(|x| x.sequence)
            .collect()
    };
    assert_eq!(seqs(&s), vec![0, 1, 2, 3]);
    step(&mut s, &mut journal, single(100, 100));
    // 101 is refused: parked; 102 and 103 take sequences 1 and 2.
    step(&mut s, &mut journal, parked(100, 101, "k"));
    assert_eq!(seqs(&s), vec![1, 2]);
    assert!(s.is_parked(Some(b"k")) && !s.is_parked(Some(b"j")) && !s.is_parked(None));
    // Singles go in order only.
    assert!(s.apply(&single(100, 103)).is_err());
    step(&mut s, &mut journal, single(100, 102));
    assert_eq!(s.forwarded(), LocalOffset(100), "103 is still open");
    // 103 has key k too: it waits behind 101, and the hub's next sequence is 2.
    step(&mut s, &mut journal, parked(100, 103, "k"));
    assert_eq!(s.forwarded(), LocalOffset(104));
    // The next round diverts k's record 105.
    let e = s
        .plan_diverting(LocalOffset(104), &[Some(0), None, Some(0)], 1)
        .unwrap();
    let Entry::Planned(r) = &e else { panic!() };
    assert_eq!(r.batches[0].base_sequence, 2);
    assert_eq!(r.diverted, vec![LocalOffset(105)]);
    journal.push(e);
    assert!(
        s.release(&key("k"), 0).is_err(),
        "no release while a round is in flight"
    );
    step(&mut s, &mut journal, parked(104, 105, "k"));
    assert_eq!(s.forwarded(), LocalOffset(104), "the batch is open");
    let ack = s.ack(LocalOffset(104), 0).unwrap();
    journal.push(ack);
    assert_eq!(s.forwarded(), LocalOffset(107));
    assert_eq!(s.parked_records(), 3);
    // Released one record at a time, in order, under sequences 4, 5, 6.
    for (offset, sequence) in [(101, 4), (103, 5), (105, 6)] {
        let e = s.release(&key("k"), 0).unwrap();
        let Entry::Releasing(r) = &e else { panic!() };
        assert_eq!((r.offset, r.sequence), (LocalOffset(offset), sequence));
        assert_eq!(
            r.number,
            i64::from(sequence) - 4,
            "released records are numbered"
        );
        journal.push(e);
        let released = Entry::Released {
            key: key("k"),
            offset: LocalOffset(offset),
        };
        step(&mut s, &mut journal, released);
    }
    assert!(!s.is_parked(Some(b"k")) && s.parked_records() == 0);
}

/// A release the hub refuses again leaves the key parked and its sequence unused; a new
/// producer renumbers split batches and the release in flight; a dropped key's records never
/// leave.
#[test]
fn a_refused_release_keeps_its_key_parked_and_a_new_producer_renumbers_singles() {
    let mut s = started();
    let mut journal = s.snapshot();
    let e = s.plan(LocalOffset(100), &[0, 0, 0], 1).unwrap();
    journal.push(e);
    let offsets: Vec<LocalOffset> = (100..103).map(LocalOffset).collect();
    let e = s.split(LocalOffset(100), 0, &offsets).unwrap();
    journal.push(e);
    step(&mut s, &mut journal, parked(100, 100, "k"));
    // A new producer: the two open singles start at 0 again.
    let entries = s.new_producer(Producer { id: 8, epoch: 0 });
    for e in entries {
        journal.push(e);
    }
    let seqs: Vec<i32> = s
        .singles(LocalOffset(100), 0)
        .unwrap()
        .iter()
        .map(|x| x.sequence)
        .collect();
    assert_eq!(seqs, vec![0, 1]);
    step(&mut s, &mut journal, single(100, 101));
    step(&mut s, &mut journal, single(100, 102));
    assert_eq!(s.forwarded(), LocalOffset(103));
    let e = s.release(&key("k"), 0).unwrap();
    journal.push(e);
    assert_eq!(s.releasing().unwrap().sequence, 2);
    let refused = Entry::ReleaseRefused {
        key: key("k"),
        reason: "InvalidRecord".into(),
    };
    step(&mut s, &mut journal, refused);
    assert_eq!(s.parked()[&key("k")].reason, "InvalidRecord");
    let e = s.release(&key("k"), 0).unwrap();
    let Entry::Releasing(r) = &e else { panic!() };
    assert_eq!(r.sequence, 2, "the refused release took no sequence");
    journal.push(e);
    let entries = s.new_producer(Producer { id: 9, epoch: 0 });
    assert!(matches!(entries.last(), Some(Entry::Releasing(r)) if r.sequence == 0));
    journal.extend(entries);
    step(&mut s, &mut journal, Entry::Dropped { key: key("k") });
    assert!(s.releasing().is_none() && s.parked().is_empty());
    assert!(s.release(&key("k"), 0).is_err());
}

/// The hub as the forwarder's sequences meet it: per producer and partition the next
/// sequence it expects and the last batch it took (a re-send of it is a duplicate); a batch
/// holding a poison record is refused whole and takes no sequence. Then, as
/// `clk.stream.dedup`, per partition and stream (the main one, or the released one) the
/// highest sequence held: a batch at or below it is a duplicate whatever its producer, and
/// leaves the producer's state as it was (its next batch is then out of order, and the
/// forwarder takes a new producer). Any other sequence out of order is one the forwarder got
/// wrong, and fails the test.
#[derive(Default)]
struct ModelHub {
    next: BTreeMap<(i64, i32), i32>,
    last: BTreeMap<(i64, i32), (i32, Vec<i64>)>,
    marks: BTreeMap<(i32, bool), i64>,
    /// Producers and partitions whose state a stream duplicate left behind.
    behind: BTreeSet<(i64, i32)>,
    /// The last producer id given.
    ids: i64,
    /// Per key, the local offsets the hub holds, in the order it took them.
    held: BTreeMap<Option<u8>, Vec<i64>>,
    poison: BTreeSet<i64>,
}

enum Answer {
    Taken,
    Refused,
    ProducerLost,
}

impl ModelHub {
    /// `records` are `(local offset, key)`; `released` is the released record's number.
    fn produce(
        &mut self,
        producer: Producer,
        partition: i32,
        base: i32,
        records: &[(i64, Option<u8>)],
        released: Option<i64>,
        what: &str,
    ) -> Answer {
        if records.iter().any(|(o, _)| self.poison.contains(o)) {
            return Answer::Refused;
        }
        let at = (producer.id, partition);
        let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
        if self.last.get(&at) == Some(&(base, offsets.clone())) {
            return Answer::Taken;
        }
        let expected = self.next.get(&at).copied().unwrap_or(0);
        if base != expected {
            assert!(
                self.behind.contains(&at),
                "{what}: sequence {base} out of order at the hub, {expected} expected"
            );
            return Answer::ProducerLost;
        }
        let (stream, first, last) = match released {
            Some(n) => ((partition, true), n, n),
            None => ((partition, false), offsets[0], *offsets.last().unwrap()),
        };
        let mark = self.marks.get(&stream).copied().unwrap_or(-1);
        if last <= mark {
            self.behind.insert(at);
            return Answer::Taken;
        }
        assert!(first > mark, "{what}: a batch straddles its stream's mark");
        self.marks.insert(stream, last);
        self.next.insert(at, expected + records.len() as i32);
        self.last.insert(at, (base, offsets));
        for (o, k) in records {
            self.held.entry(*k).or_default().push(*o);
        }
        Answer::Taken
    }
}

/// Random rounds over a few keys, some records poison (refused by the hub until "fixed"),
/// crashes (the journal replayed), new producers, journal rewrites, releases and drops, the
/// forwarder's steps done as `forwarder.rs` does them: the hub never sees a sequence out of
/// order, holds every record not parked or dropped exactly once, and each key's records in
/// offset order. `SEED=<n>` runs one seed.
#[test]
fn parking_keeps_sequences_and_per_key_order_through_crashes_and_releases() {
    let only: Option<u64> = std::env::var("SEED").ok().map(|v| v.parse().unwrap());
    for seed in 1..=300u64 {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let mut s = started();
        let mut journal = s.snapshot();
        let mut hub = ModelHub {
            ids: 1000,
            ..ModelHub::default()
        };
        // Local records: offset -> key (None: keyless); keys 0..4.
        let mut keys: BTreeMap<i64, Option<u8>> = BTreeMap::new();
        let mut dropped: BTreeSet<i64> = BTreeSet::new();
        let mut fixed = false;
        let partitions = 2;
        let hub_of = |k: Option<u8>| i32::from(k.unwrap_or(0) % 2);
        for step in 0..200 {
            let what = format!("seed {seed} step {step}");
            // New local records now and then, some poison.
            for _ in 0..rng.below(4) {
                let o = 100 + keys.len() as i64;
                let k = (rng.below(6) != 0).then(|| rng.below(4) as u8);
                keys.insert(o, k);
                if rng.below(8) == 0 {
                    hub.poison.insert(o);
                }
            }
            match rng.below(12) {
                0 => {
                    // A crash: the journal is the state, without the acknowledgements the
                    // forwarder had only staged (it journals them with the next entry).
                    for _ in 0..rng.below(3) {
                        if matches!(journal.last(), Some(Entry::Acked { .. })) {
                            journal.pop();
                        }
                    }
                    s = Stream::replay(journal.iter().cloned()).unwrap();
                }
                1 => new_producer(&mut s, &mut journal, &mut hub),
                2 => journal = s.snapshot(),
                3 if !s.parked().is_empty() && s.in_flight().next().is_none() => {
                    // An operator acts on the first parked key.
                    let key = s.parked().keys().next().unwrap().clone();
                    if rng.below(3) == 0 && s.releasing().is_none() {
                        dropped.extend(s.parked()[&key].offsets.iter().map(|o| o.0));
                        let e = Entry::Dropped { key };
                        s.apply(&e).unwrap();
                        journal.push(e);
                    } else {
                        fixed |= rng.below(2) == 0;
                        release(&mut s, &mut journal, &mut hub, &keys, &key, fixed, &what);
                    }
                }
                _ => {
                    send_in_flight(&mut s, &mut journal, &mut hub, &keys, &what);
                    if let Some(r) = s.releasing().cloned() {
                        // The forwarder answers a release in flight before the next round.
                        release(&mut s, &mut journal, &mut hub, &keys, &r.key, fixed, &what);
                    }
                    let next = s.next().0;
                    let n = (keys.len() as i64 + 100 - next).min(5);
                    let idle = s.in_flight().next().is_none() && s.releasing().is_none();
                    if n > 0 && idle {
                        let hubs: Vec<Option<i32>> = (next..next + n)
                            .map(|o| {
                                let k = keys[&o];
                                let key = k.map(|k| vec![k]);
                                (!s.is_parked(key.as_deref())).then(|| hub_of(k))
                            })
                            .collect();
                        let e = s
                            .plan_diverting(LocalOffset(next), &hubs, partitions)
                            .unwrap();
                        journal.push(e);
                        send_in_flight(&mut s, &mut journal, &mut hub, &keys, &what);
                    }
                }
            }
            let replayed =
                Stream::replay(journal.iter().cloned()).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(state(&replayed), state(&s), "{what}");
        }
        // Everything settles: every parked key released, the hub's limit lifted.
        hub.poison.clear();
        for round in 0.. {
            assert!(round < 1000, "seed {seed}: does not settle");
            if s.in_flight().next().is_some() {
                send_in_flight(&mut s, &mut journal, &mut hub, &keys, "settle");
            } else if let Some(key) = s.parked().keys().next().cloned() {
                release(&mut s, &mut journal, &mut hub, &keys, &key, true, "settle");
            } else {
                break;
            }
        }
        let mut all: Vec<i64> = hub.held.values().flatten().copied().collect();
        all.sort();
        let expected: Vec<i64> = (100..s.forwarded().0)
            .filter(|o| !dropped.contains(o))
            .collect();
        assert_eq!(all, expected, "seed {seed}: each record once, none lost");
        for (k, offsets) in &hub.held {
            if k.is_some() {
                assert!(
                    offsets.is_sorted(),
                    "seed {seed}: key {k:?} out of order: {offsets:?}"
                );
            }
        }
    }
}

/// Send what is in flight as the forwarder does: diverted records parked, whole batches
/// (split when refused), then singles in order.
fn send_in_flight(
    s: &mut Stream,
    journal: &mut Vec<Entry>,
    hub: &mut ModelHub,
    keys: &BTreeMap<i64, Option<u8>>,
    what: &str,
) {
    let rounds: Vec<(Round, Vec<Batch>)> =
        s.in_flight().map(|(r, open)| (r.clone(), open)).collect();
    for (round, open) in rounds {
        let park = |s: &mut Stream, journal: &mut Vec<Entry>, o: LocalOffset| {
            let key = match keys[&o.0] {
                Some(k) => ParkKey::Key(vec![k]),
                None => ParkKey::Keyless(o),
            };
            let e = Entry::Parked {
                first: round.first,
                offset: o,
                key,
                reason: "refused".into(),
            };
            s.apply(&e).unwrap_or_else(|err| panic!("{what}: {err}"));
            journal.push(e);
        };
        for o in s.diverted(round.first) {
            park(s, journal, o);
        }
        for b in open {
            let mine: Vec<(i64, Option<u8>)> = (round.first.0..=round.last.0)
                .filter(|o| round.diverted.binary_search(&LocalOffset(*o)).is_err())
                .map(|o| (o, keys[&o]))
                .filter(|(_, k)| i32::from(k.unwrap_or(0) % 2) == b.hub_partition)
                .collect();
            if s.singles(round.first, b.hub_partition).is_none() {
                match hub.produce(
                    round.producer,
                    b.hub_partition,
                    b.base_sequence,
                    &mine,
                    None,
                    what,
                ) {
                    Answer::Taken => journal.push(s.ack(round.first, b.hub_partition).unwrap()),
                    Answer::ProducerLost => return new_producer(s, journal, hub),
                    Answer::Refused => {
                        let offsets: Vec<LocalOffset> =
                            mine.iter().map(|(o, _)| LocalOffset(*o)).collect();
                        journal.push(s.split(round.first, b.hub_partition, &offsets).unwrap());
                    }
                }
            }
            while let Some(next) = s
                .singles(round.first, b.hub_partition)
                .and_then(|x| x.first().copied())
            {
                let k = keys[&next.offset.0];
                if s.is_parked(k.map(|k| vec![k]).as_deref()) {
                    park(s, journal, next.offset);
                    continue;
                }
                let one = [(next.offset.0, k)];
                let (p, seq) = (b.hub_partition, next.sequence);
                match hub.produce(round.producer, p, seq, &one, None, what) {
                    Answer::ProducerLost => return new_producer(s, journal, hub),
                    Answer::Taken => {
                        let e = Entry::AckedSingle {
                            first: round.first,
                            hub_partition: b.hub_partition,
                            offset: next.offset,
                        };
                        s.apply(&e).unwrap();
                        journal.push(e);
                    }
                    Answer::Refused => park(s, journal, next.offset),
                }
            }
        }
    }
}

/// The hub lost track of the producer: a new one, as the forwarder takes it.
fn new_producer(s: &mut Stream, journal: &mut Vec<Entry>, hub: &mut ModelHub) {
    hub.ids += 1;
    journal.extend(s.new_producer(Producer {
        id: hub.ids,
        epoch: 0,
    }));
}

/// Release `key` as the forwarder does: its records one at a time until one is refused.
fn release(
    s: &mut Stream,
    journal: &mut Vec<Entry>,
    hub: &mut ModelHub,
    keys: &BTreeMap<i64, Option<u8>>,
    key: &ParkKey,
    fixed: bool,
    what: &str,
) {
    if fixed {
        hub.poison.clear();
    }
    loop {
        // A release in flight first (of whatever key), as the forwarder sends it.
        if s.releasing().is_none() {
            if !s.parked().contains_key(key) {
                return;
            }
            let partition = match key {
                ParkKey::Key(k) => i32::from(k[0] % 2),
                ParkKey::Keyless(_) => 0,
            };
            let e = s.release(key, partition).unwrap();
            journal.push(e);
        }
        let r = s.releasing().unwrap().clone();
        let one = [(r.offset.0, keys[&r.offset.0])];
        let (p, seq) = (r.hub_partition, r.sequence);
        match hub.produce(r.producer, p, seq, &one, Some(r.number), what) {
            Answer::ProducerLost => return new_producer(s, journal, hub),
            Answer::Taken => {
                let e = Entry::Released {
                    key: r.key.clone(),
                    offset: r.offset,
                };
                s.apply(&e).unwrap();
                journal.push(e);
            }
            Answer::Refused => {
                let e = Entry::ReleaseRefused {
                    key: r.key.clone(),
                    reason: "again".into(),
                };
                s.apply(&e).unwrap();
                journal.push(e);
                return;
            }
        }
    }
}
