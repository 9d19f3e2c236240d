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
