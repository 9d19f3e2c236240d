//! The forwarder: one task per local partition (a *stream*) that sends its records to the
//! hub, in offset order, with no loss and no duplicates.
//!
//! Each step of a stream is: have a hub producer; send again what the journal says is in
//! flight (after a restart, or after a failed attempt), batch for batch as first planned;
//! then plan the next round from the local log, journal it (fsynced), and send it. The
//! journal's [`Stream`] decides; this module only does the I/O around it. A round is sent
//! whole before the next is planned (one round in flight per stream): simple, and enough for
//! a branch's rates; the journal allows up to five.
//!
//! A batch the hub refuses for something in its records (too large, invalid, a timestamp
//! out of range) is split: its records go one per batch, in order, and the one refused alone
//! is *parked*: copied beside the journal ([`crate::parked`]), journaled, counted, shown on
//! the admin port ([`crate::parking`]). The records of its key after it are parked behind it
//! (diverted as rounds are planned), so the key's order holds; other keys flow on. An
//! operator releases the key (its records go to the hub in order, then the key is free) or
//! drops it. What the hub refuses for the topic as a whole (not authorized, a policy) blocks
//! the stream, counted and logged, until an operator acts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use broker::partition::{Partition, ReadBound};
use durable_log::batch::{TimestampType, split_stored_batches};
use kafka_protocol::records::Record;
use tokio_util::sync::CancellationToken;

use crate::config::ForwardSettings;
use crate::hub::{Hub, HubError, TopicLayout};
use crate::journal::{
    Batch, Entry, JournalFile, LocalOffset, PARKED_RECORDS_MAX, ParkKey, Round, Stream,
};
use crate::limits::Cursors;
use crate::metrics::EdgeMetrics;
use crate::outgoing::{self, StreamId};
use crate::parked::ParkedStore;
use crate::parking::{Action, Parking};
use crate::partitioner::hub_partition;

/// Journal appends after which the journal is rewritten as a snapshot of its state.
const JOURNAL_APPENDS_MAX: u32 = 4096;
/// How long a stream waits for new local records before looking at its shutdown again.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// What every stream of this gateway shares.
pub struct Forwarding {
    pub gateway: String,
    pub hub: Arc<Hub>,
    pub settings: ForwardSettings,
    /// `[hub] retry_backoff` and `retry_backoff_max`.
    pub backoff: (Duration, Duration),
    pub metrics: Arc<EdgeMetrics>,
    /// Where the journals are.
    pub dir: PathBuf,
    /// Each stream's acknowledged cursor, for the buffer's monitor (`limits`).
    pub cursors: Cursors,
    /// Large payloads to the hub's S3 gateway (`[claim_check]`).
    pub claim_check: Option<crate::claim_check::ClaimCheck>,
    /// Parked keys shown to the operator, and the operator's requests.
    pub parking: Arc<Parking>,
}

/// Why a step stopped short.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Hub(#[from] HubError),
    /// A failure after some progress (batches acknowledged, a new producer): try again at
    /// once, since a lost answer or a dropped connection costs no wait.
    #[error("{0} (after progress)")]
    Again(HubError),
    #[error("the local buffer: {0}")]
    Local(String),
    #[error("the journal: {0}")]
    Journal(String),
    /// A payload could not be uploaded to the hub's S3 gateway: its batch waits.
    #[error("the claim check: {0}")]
    ClaimCheck(String),
    /// A record to park, but [`PARKED_RECORDS_MAX`] are parked already: the stream waits
    /// for an operator.
    #[error("{0} records are parked already: release or drop some")]
    ParkedFull(usize),
}

/// One stream's state and the I/O it needs.
struct StreamTask {
    f: Arc<Forwarding>,
    id: StreamId,
    hub_topic: String,
    local: Arc<Partition>,
    journal: Arc<std::sync::Mutex<JournalFile>>,
    appends: u32,
    stream: Stream,
    parked: ParkedStore,
    /// Keys an operator released whose records are still parked (in memory: after a
    /// restart the rest of a key waits for the operator again, in order).
    releases: Vec<ParkKey>,
    /// Acknowledgements applied to `stream` but not journaled yet: they go with the next
    /// entry (the next round's plan, mostly), saving an fsync per round. Lost in a crash,
    /// they cost the round's re-sending, which the hub recognises as its last batch.
    staged: Vec<Entry>,
    /// What the journal says is forwarded: the cursor the buffer may remove records below
    /// (an acknowledgement only staged must not let a round in flight be removed).
    durable_forwarded: LocalOffset,
}

/// Forward `local` to `hub_topic` until `stop`.
pub async fn run(
    f: Arc<Forwarding>,
    local: Arc<Partition>,
    hub_topic: String,
    stop: CancellationToken,
) {
    let id = StreamId {
        gateway: f.gateway.clone(),
        topic: local.topic.to_string(),
        partition: local.index,
    };
    let open = || {
        StreamTask::open(
            Arc::clone(&f),
            id.clone(),
            hub_topic.clone(),
            Arc::clone(&local),
        )
    };
    let mut backoff = f.backoff.0;
    // A dropped connection is tried again at once, but only once in a row.
    let mut dropped_before = false;
    // `None` until the journal is read (again, after it failed to take an entry: the
    // state in memory may then be ahead of it).
    let mut task: Option<StreamTask> = None;
    loop {
        let current = match task.as_mut() {
            Some(t) => t,
            None => match open().await {
                Ok(t) => task.insert(t),
                Err(e) => {
                    tracing::error!(stream = %id, error = %e, "the stream's journal cannot be read; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(f.backoff.1) => {}
                    }
                    continue;
                }
            },
        };
        let step = tokio::select! {
            _ = stop.cancelled() => return,
            r = current.step() => r,
        };
        current.publish_lag();
        let e = match step {
            Ok(()) => {
                (backoff, dropped_before) = (f.backoff.0, false);
                continue;
            }
            Err(StepError::Again(e)) => {
                current.count_error(&StepError::Hub(e));
                (backoff, dropped_before) = (f.backoff.0, false);
                continue;
            }
            Err(e) => e,
        };
        current.count_error(&e);
        let dropped = matches!(e, StepError::Hub(HubError::Dropped(_)));
        if dropped && !dropped_before {
            tracing::info!(stream = %current.id, error = %e, "trying again on a new connection");
            dropped_before = true;
            continue;
        }
        tracing::warn!(stream = %current.id, error = %e, retry_in_ms = backoff.as_millis() as u64, "forwarding stopped short; trying again");
        if let StepError::Journal(_) = e {
            task = None;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(f.backoff.1);
    }
}

impl StreamTask {
    async fn open(
        f: Arc<Forwarding>,
        id: StreamId,
        hub_topic: String,
        local: Arc<Partition>,
    ) -> Result<StreamTask, StepError> {
        // The topic id in the name: a topic deleted and created again starts a new stream.
        let path = f.dir.join(format!(
            "{}-{}-{}.journal",
            local.topic,
            local.index,
            local.topic_id.simple()
        ));
        let start = local.offsets().log_start;
        let parked_dir = path.with_extension("parked");
        let (file, stream, fresh, parked) = tokio::task::spawn_blocking(move || {
            let (mut file, entries) =
                JournalFile::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
            let fresh = entries.is_empty();
            let stream = if fresh {
                let stream = Stream::new(LocalOffset(start));
                file.append(&stream.snapshot())
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                stream
            } else {
                Stream::replay(entries).map_err(|e| format!("replaying {}: {e}", path.display()))?
            };
            let parked = ParkedStore::open(parked_dir.clone())
                .map_err(|e| format!("opening {}: {e}", parked_dir.display()))?;
            // Files no entry names: a crash between writing one and journaling it.
            parked
                .retain(&parked_offsets(&stream))
                .map_err(|e| format!("cleaning {}: {e}", parked_dir.display()))?;
            Ok((file, stream, fresh, parked))
        })
        .await
        .map_err(|e| StepError::Journal(e.to_string()))?
        .map_err(StepError::Journal)?;
        tracing::info!(
            stream = %id,
            hub_topic,
            forwarded = stream.forwarded().0,
            in_flight = stream.in_flight().count(),
            parked = stream.parked_records(),
            fresh,
            "forwarding a local partition"
        );
        let stream_forwarded = stream.forwarded();
        let task = StreamTask {
            f,
            id,
            hub_topic,
            local,
            journal: Arc::new(std::sync::Mutex::new(file)),
            appends: 0,
            stream,
            parked,
            releases: Vec::new(),
            staged: Vec::new(),
            durable_forwarded: stream_forwarded,
        };
        task.publish_parked();
        Ok(task)
    }

    /// Append the staged entries and `entries` (all already applied to `stream`) and fsync
    /// them; now and then rewrite the journal as a snapshot so it stays small.
    async fn journal(&mut self, entries: Vec<Entry>) -> Result<(), StepError> {
        let mut entries = entries;
        if !self.staged.is_empty() {
            entries.splice(0..0, self.staged.drain(..));
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.appends += 1;
        let snapshot = (self.appends >= JOURNAL_APPENDS_MAX).then(|| self.stream.snapshot());
        if snapshot.is_some() {
            self.appends = 0;
        }
        let file = Arc::clone(&self.journal);
        tokio::task::spawn_blocking(move || {
            let mut file = file.lock().expect("journal lock");
            file.append(&entries)?;
            if let Some(s) = snapshot {
                file.rewrite(&s)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| StepError::Journal(e.to_string()))?
        .map_err(|e| StepError::Journal(e.to_string()))?;
        self.durable_forwarded = self.stream.forwarded();
        Ok(())
    }

    async fn step(&mut self) -> Result<(), StepError> {
        if self.stream.producer().is_none() {
            self.new_producer().await?;
        }
        self.take_requests().await?;
        let in_flight: Vec<(Round, Vec<Batch>)> = self
            .stream
            .in_flight()
            .map(|(r, open)| (r.clone(), open))
            .collect();
        for (round, open) in in_flight {
            let records = self.read(round.first, round.last).await?;
            self.send(&round, &open, &records).await?;
        }
        self.release().await?;
        let Some((first, records)) = self.next_records().await? else {
            // Idle: what was acknowledged becomes durable (and removable) now.
            return self.journal(Vec::new()).await;
        };
        let layout = self.f.hub.topic(&self.hub_topic, false).await?;
        let partitions = layout.partitions();
        // A record whose key is parked is diverted behind it.
        let hubs: Vec<Option<i32>> = records
            .iter()
            .map(|(_, r)| {
                let key = r.key.as_deref();
                (!self.stream.is_parked(key))
                    .then(|| hub_partition(key, self.local.index, partitions))
            })
            .collect();
        let entry = self
            .stream
            .plan_diverting(first, &hubs, partitions)
            .map_err(|e| StepError::Journal(e.to_string()))?;
        let Entry::Planned(round) = &entry else {
            unreachable!("plan returns a planned round")
        };
        let round = round.clone();
        // Journaled before the first byte of it leaves.
        self.journal(vec![entry]).await?;
        self.send(&round, &round.batches, &records).await
    }

    /// A new hub producer: sequences restart, unacknowledged batches are renumbered.
    async fn new_producer(&mut self) -> Result<(), StepError> {
        let producer = self.f.hub.init_producer().await?;
        tracing::info!(stream = %self.id, producer_id = producer.id, epoch = producer.epoch, "a new hub producer");
        self.f.metrics.new_producers.inc();
        let entries = self.stream.new_producer(producer);
        self.journal(entries).await
    }

    /// Send a round's `open` batches, all at once (each goes to another hub partition, so
    /// their order does not matter), and journal the acknowledgements the hub gave (in one
    /// fsync). The first failure is returned after that: what was acknowledged counts.
    async fn send(
        &mut self,
        round: &Round,
        open: &[Batch],
        records: &[(LocalOffset, Record)],
    ) -> Result<(), StepError> {
        let layout = self.f.hub.topic(&self.hub_topic, false).await?;
        let mut by_partition: BTreeMap<i32, Vec<(LocalOffset, Record)>> = BTreeMap::new();
        for (o, r) in records {
            if round.diverted.binary_search(o).is_ok() {
                continue;
            }
            let p = hub_partition(r.key.as_deref(), self.local.index, round.hub_partitions);
            by_partition.entry(p).or_default().push((*o, r.clone()));
        }
        for o in self.stream.diverted(round.first) {
            let r = records
                .iter()
                .find(|(at, _)| *at == o)
                .map(|(_, r)| r)
                .ok_or_else(|| StepError::Local(format!("diverted record {} not read", o.0)))?;
            self.park(round.first, o, r, BEHIND).await?;
        }
        let mut sends = Vec::with_capacity(open.len());
        let mut split = Vec::new();
        for b in open {
            let mine = by_partition.remove(&b.hub_partition).unwrap_or_default();
            if self.stream.singles(round.first, b.hub_partition).is_some() {
                split.push((b.hub_partition, mine));
                continue;
            }
            let mine = self.claim_checked(mine).await?;
            let bytes = outgoing::encode(&self.id.header_value(), &mine, round.producer, b)
                .map_err(StepError::Local)?;
            let hub = Arc::clone(&self.f.hub);
            let (topic, partition, producer) =
                (self.hub_topic.clone(), b.hub_partition, round.producer);
            let leader = leader(&layout, partition);
            let count = mine.len() as u64;
            sends.push(async move {
                let sent = match leader {
                    Some(leader) => {
                        hub.produce(&topic, partition, &leader, producer, bytes)
                            .await
                    }
                    None => Err(HubError::Retriable {
                        what: format!("{topic}/{partition}"),
                        code: 5,
                        name: "LeaderNotAvailable".into(),
                    }),
                };
                (partition, count, sent)
            });
        }
        let mut entries = Vec::new();
        let mut failure = None;
        for (partition, count, sent) in futures::future::join_all(sends).await {
            match sent {
                Ok(()) => {
                    let entry = self
                        .stream
                        .ack(round.first, partition)
                        .map_err(|e| StepError::Journal(e.to_string()))?;
                    entries.push(entry);
                    self.f.metrics.forwarded(&self.id.topic, count);
                }
                Err(e) if e.refused_for_records().is_some() => {
                    // Something in the records: they go one by one, and only the culprit
                    // stays behind (the hub took none of the batch).
                    tracing::warn!(stream = %self.id, first = round.first.0, hub_partition = partition, error = %e, "the hub refused a batch: sending its records one by one");
                    self.f.metrics.error(&self.id.topic, "refused");
                    let mine = by_partition_of(records, round, partition, self.local.index);
                    let offsets: Vec<LocalOffset> = mine.iter().map(|(o, _)| *o).collect();
                    let entry = self
                        .stream
                        .split(round.first, partition, &offsets)
                        .map_err(|e| StepError::Journal(e.to_string()))?;
                    entries.push(entry);
                    split.push((partition, mine));
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let mut progress = !entries.is_empty();
        if split.is_empty() {
            // Acknowledgements only: they go with the next entry.
            self.staged.extend(entries);
        } else {
            // A split is durable before its first single leaves.
            self.journal(entries).await?;
        }
        for (partition, mine) in split {
            match self.send_singles(round, partition, &mine).await {
                Ok(sent) => progress |= sent,
                Err(StepError::Hub(e)) => {
                    failure.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        let Some(e) = failure else {
            return Ok(());
        };
        if let HubError::ProducerLost { .. } = e {
            // The batches not yet acknowledged go again under a new producer; the hub
            // recognises what it already holds by the events' headers.
            tracing::warn!(stream = %self.id, error = %e, "the hub lost this stream's producer");
            self.new_producer().await?;
        } else {
            // The leader may have moved: ask again before the next attempt.
            let _ = self.f.hub.topic(&self.hub_topic, true).await;
        }
        Err(if progress {
            StepError::Again(e)
        } else {
            e.into()
        })
    }

    /// Send the open records of a split batch one per batch, in order: each acknowledged
    /// is journaled, each the hub refuses for something in it is parked (with every later
    /// record of its key). Whether any record was settled; the first other failure.
    async fn send_singles(
        &mut self,
        round: &Round,
        partition: i32,
        mine: &[(LocalOffset, Record)],
    ) -> Result<bool, StepError> {
        let layout = self.f.hub.topic(&self.hub_topic, false).await?;
        let mut progress = false;
        while let Some(next) = self
            .stream
            .singles(round.first, partition)
            .and_then(|s| s.first().copied())
        {
            let (_, record) = mine
                .iter()
                .find(|(o, _)| *o == next.offset)
                .ok_or_else(|| StepError::Local(format!("record {} not read", next.offset.0)))?;
            if self.stream.is_parked(record.key.as_deref()) {
                self.park(round.first, next.offset, record, BEHIND).await?;
                progress = true;
                continue;
            }
            let one = self
                .claim_checked(vec![(next.offset, record.clone())])
                .await?;
            let batch = Batch {
                hub_partition: partition,
                base_sequence: next.sequence,
                records: 1,
            };
            let bytes = outgoing::encode(&self.id.header_value(), &one, round.producer, &batch)
                .map_err(StepError::Local)?;
            let leader = leader(&layout, partition).ok_or_else(|| HubError::Retriable {
                what: format!("{}/{partition}", self.hub_topic),
                code: 5,
                name: "LeaderNotAvailable".into(),
            })?;
            let sent = self
                .f
                .hub
                .produce(&self.hub_topic, partition, &leader, round.producer, bytes)
                .await;
            match sent {
                Ok(()) => {
                    let entry = Entry::AckedSingle {
                        first: round.first,
                        hub_partition: partition,
                        offset: next.offset,
                    };
                    self.apply_and_journal(entry).await?;
                    self.f.metrics.forwarded(&self.id.topic, 1);
                }
                Err(e) => match e.refused_for_records() {
                    Some(reason) => self.park(round.first, next.offset, record, reason).await?,
                    None => return Err(e.into()),
                },
            }
            progress = true;
        }
        Ok(progress)
    }

    /// Park record `offset` of the round starting at `first`: its copy fsynced beside the
    /// journal, then its entry journaled.
    async fn park(
        &mut self,
        first: LocalOffset,
        offset: LocalOffset,
        record: &Record,
        reason: &str,
    ) -> Result<(), StepError> {
        if self.stream.parked_records() >= PARKED_RECORDS_MAX {
            return Err(StepError::ParkedFull(self.stream.parked_records()));
        }
        let key = match &record.key {
            Some(k) => ParkKey::Key(k.to_vec()),
            None => ParkKey::Keyless(offset),
        };
        let store = self.parked.clone();
        let copy = record.clone();
        tokio::task::spawn_blocking(move || store.put(offset, &copy))
            .await
            .map_err(|e| StepError::Local(e.to_string()))?
            .map_err(|e| StepError::Local(format!("parking record {}: {e}", offset.0)))?;
        let entry = Entry::Parked {
            first,
            offset,
            key: key.clone(),
            reason: reason.to_string(),
        };
        self.apply_and_journal(entry).await?;
        let label = crate::metrics::ParkLabel {
            topic: self.id.topic.clone(),
            reason: reason.to_string(),
        };
        self.f.metrics.parked_total.get_or_create(&label).inc();
        let key = record.key.as_deref().map(String::from_utf8_lossy);
        tracing::warn!(stream = %self.id, offset = offset.0, key = ?key, reason, "a record is parked at the branch: its key waits for an operator");
        self.publish_parked();
        Ok(())
    }

    async fn apply_and_journal(&mut self, entry: Entry) -> Result<(), StepError> {
        self.stream
            .apply(&entry)
            .map_err(|e| StepError::Journal(e.to_string()))?;
        self.journal(vec![entry]).await
    }

    /// The operator's requests: drops at once, releases queued for [`StreamTask::release`].
    async fn take_requests(&mut self) -> Result<(), StepError> {
        let requests = self.f.parking.take(&self.id.topic, self.id.partition);
        if requests.is_empty() {
            return Ok(());
        }
        for (key, action) in requests {
            let Some(parked) = self.stream.parked().get(&key) else {
                continue;
            };
            let releasing = self.stream.releasing().is_some_and(|r| r.key == key);
            match action {
                Action::Release => {
                    if !self.releases.contains(&key) {
                        self.releases.push(key);
                    }
                }
                // A record on its way to the hub may be stored there already: it is
                // released whole, and a drop must be asked again after it.
                Action::Drop if releasing => {
                    tracing::warn!(stream = %self.id, ?key, "not dropped: a record of the key is being released");
                }
                Action::Drop => {
                    let records = parked.offsets.len() as u64;
                    self.apply_and_journal(Entry::Dropped { key: key.clone() })
                        .await?;
                    self.releases.retain(|k| *k != key);
                    self.remove_unparked().await?;
                    let label = crate::metrics::TopicLabel {
                        topic: self.id.topic.clone(),
                    };
                    self.f
                        .metrics
                        .dropped_records
                        .get_or_create(&label)
                        .inc_by(records);
                    tracing::warn!(stream = %self.id, ?key, records, "parked records dropped by an operator");
                }
            }
        }
        self.publish_parked();
        Ok(())
    }

    /// Remove the copies of records no longer parked.
    async fn remove_unparked(&self) -> Result<(), StepError> {
        let store = self.parked.clone();
        let keep = parked_offsets(&self.stream);
        tokio::task::spawn_blocking(move || store.retain(&keep))
            .await
            .map_err(|e| StepError::Local(e.to_string()))?
            .map_err(|e| StepError::Local(format!("removing parked copies: {e}")))?;
        Ok(())
    }

    /// Send the released keys' records, one at a time, oldest first, while no round is in
    /// flight (a release journaled before a restart first).
    async fn release(&mut self) -> Result<(), StepError> {
        loop {
            if self.stream.releasing().is_none() {
                if self.stream.in_flight().next().is_some() {
                    return Ok(());
                }
                let parked = self.stream.parked();
                self.releases.retain(|k| parked.contains_key(k));
                let Some(key) = self.releases.first().cloned() else {
                    return Ok(());
                };
                let layout = self.f.hub.topic(&self.hub_topic, false).await?;
                let bytes = match &key {
                    ParkKey::Key(k) => Some(k.as_slice()),
                    ParkKey::Keyless(_) => None,
                };
                let partition = hub_partition(bytes, self.local.index, layout.partitions());
                let entry = self
                    .stream
                    .release(&key, partition)
                    .map_err(|e| StepError::Journal(e.to_string()))?;
                self.journal(vec![entry]).await?;
                self.publish_parked();
            }
            self.send_release().await?;
        }
    }

    /// Send the release in flight and journal what the hub answered.
    async fn send_release(&mut self) -> Result<(), StepError> {
        let r = self
            .stream
            .releasing()
            .cloned()
            .expect("a release in flight");
        let store = self.parked.clone();
        let record = tokio::task::spawn_blocking(move || store.get(r.offset))
            .await
            .map_err(|e| StepError::Local(e.to_string()))?
            .map_err(|e| StepError::Local(format!("reading parked record {}: {e}", r.offset.0)))?;
        let one = self.claim_checked(vec![(r.offset, record)]).await?;
        // Numbered in the stream of released records (see `StreamId::released_header`).
        let numbered = vec![(LocalOffset(r.number), one[0].1.clone())];
        let batch = Batch {
            hub_partition: r.hub_partition,
            base_sequence: r.sequence,
            records: 1,
        };
        let stream = self.id.released_header();
        let bytes =
            outgoing::encode(&stream, &numbered, r.producer, &batch).map_err(StepError::Local)?;
        let layout = self.f.hub.topic(&self.hub_topic, false).await?;
        let leader = leader(&layout, r.hub_partition).ok_or_else(|| HubError::Retriable {
            what: format!("{}/{}", self.hub_topic, r.hub_partition),
            code: 5,
            name: "LeaderNotAvailable".into(),
        })?;
        let sent = self
            .f
            .hub
            .produce(&self.hub_topic, r.hub_partition, &leader, r.producer, bytes)
            .await;
        let label = crate::metrics::TopicLabel {
            topic: self.id.topic.clone(),
        };
        match sent {
            Ok(()) => {
                let entry = Entry::Released {
                    key: r.key.clone(),
                    offset: r.offset,
                };
                self.apply_and_journal(entry).await?;
                self.remove_unparked().await?;
                self.f.metrics.released_records.get_or_create(&label).inc();
                self.f.metrics.forwarded(&self.id.topic, 1);
            }
            Err(e) => {
                let Some(reason) = e.refused_for_records() else {
                    if let HubError::ProducerLost { .. } = e {
                        self.new_producer().await?;
                    }
                    return Err(e.into());
                };
                tracing::warn!(stream = %self.id, key = ?r.key, offset = r.offset.0, reason, "the hub refused a released record again: its key stays parked");
                let entry = Entry::ReleaseRefused {
                    key: r.key.clone(),
                    reason: reason.to_string(),
                };
                self.apply_and_journal(entry).await?;
                self.releases.retain(|k| *k != r.key);
            }
        }
        self.publish_parked();
        Ok(())
    }

    fn publish_parked(&self) {
        self.f
            .parking
            .publish(&self.id.topic, self.id.partition, &self.stream);
        let label = crate::metrics::StreamLabel {
            topic: self.id.topic.clone(),
            partition: self.id.partition.to_string(),
        };
        let parked = self.stream.parked_records() as i64;
        self.f
            .metrics
            .parked_records
            .get_or_create(&label)
            .set(parked);
    }

    /// `records` with the payloads that travel by claim check uploaded (complete and
    /// checked by the S3 gateway) and replaced by their references.
    async fn claim_checked(
        &self,
        mut records: Vec<(LocalOffset, Record)>,
    ) -> Result<Vec<(LocalOffset, Record)>, StepError> {
        let Some(cc) = &self.f.claim_check else {
            return Ok(records);
        };
        for (offset, r) in records.iter_mut() {
            if !cc.wants(r) {
                continue;
            }
            let (checked, bytes) = cc
                .check_in(&self.id, *offset, r)
                .await
                .map_err(|e| StepError::ClaimCheck(format!("{e:#}")))?;
            *r = checked;
            let label = crate::metrics::TopicLabel {
                topic: self.id.topic.clone(),
            };
            self.f.metrics.claim_checks.get_or_create(&label).inc();
            self.f.metrics.claim_check_bytes.inc_by(bytes);
        }
        Ok(records)
    }

    /// The records of `first..=last` (a round planned before), with their offsets.
    async fn read(
        &self,
        first: LocalOffset,
        last: LocalOffset,
    ) -> Result<Vec<(LocalOffset, Record)>, StepError> {
        let mut out = Vec::new();
        let mut at = first.0;
        while at <= last.0 {
            let (records, next) = self.read_from(at).await?;
            if next <= at {
                return Err(StepError::Local(format!(
                    "records {at}..={} of a round in flight cannot be read",
                    last.0
                )));
            }
            out.extend(
                records
                    .into_iter()
                    .filter(|(o, _)| *o >= first && *o <= last),
            );
            at = next;
        }
        let expected = (last.0 - first.0 + 1) as usize;
        if out.len() != expected {
            return Err(StepError::Local(format!(
                "a round in flight holds {expected} records from offset {}, the buffer {}",
                first.0,
                out.len()
            )));
        }
        Ok(out)
    }

    /// The next round's records: from [`Stream::next`], at most `batch_records`, without a
    /// gap in their offsets, once the local log has some (waiting up to `linger` for a full
    /// round). `None` when there is nothing yet.
    async fn next_records(
        &self,
    ) -> Result<Option<(LocalOffset, Vec<(LocalOffset, Record)>)>, StepError> {
        let want = self.f.settings.batch_records;
        let mut at = self.stream.next().0;
        let offsets = self.local.offsets();
        if at < offsets.log_start {
            // Removed from the buffer before it was forwarded: never by the gateway's own
            // limits (they act on ingest); an operator deleted records.
            tracing::error!(stream = %self.id, from = at, to = offsets.log_start, "records removed from the buffer before they were forwarded");
            self.f
                .metrics
                .lost_locally
                .inc_by((offsets.log_start - at) as u64);
            at = offsets.log_start;
        }
        if offsets.high_watermark <= at {
            self.local.wait_for_data(at, IDLE_WAIT).await;
            return Ok(None);
        }
        if ((offsets.high_watermark - at) as usize) < want {
            // Linger: wait for a full round, or the time.
            self.local
                .wait_for_data(at + want as i64 - 1, self.f.settings.linger)
                .await;
        }
        let mut out: Vec<(LocalOffset, Record)> = Vec::new();
        let mut bytes = 0u64;
        while out.len() < want && bytes < self.f.settings.batch_bytes {
            let (records, next) = self.read_from(at).await?;
            if next <= at {
                break;
            }
            for (o, r) in records {
                if o.0 < at || out.len() >= want {
                    continue;
                }
                if let Some((prev, _)) = out.last()
                    && o.0 != prev.0 + 1
                {
                    // A gap (control records): this round ends before it.
                    return Ok(Some((out[0].0, out)));
                }
                bytes += record_bytes(&r);
                out.push((o, r));
            }
            at = next;
        }
        Ok(out.first().map(|(o, _)| *o).map(|first| (first, out)))
    }

    /// The data records of the local log's batches from `at` (a batch may begin before it),
    /// and the offset after the last batch read (`at` when nothing could be read).
    async fn read_from(&self, at: i64) -> Result<(Vec<(LocalOffset, Record)>, i64), StepError> {
        let max = self.f.settings.batch_bytes as usize;
        let read = self
            .local
            .read(at, max, true, ReadBound::HighWatermark)
            .await
            .map_err(|e| StepError::Local(e.to_string()))?;
        let batches =
            split_stored_batches(&read.records).map_err(|e| StepError::Local(e.to_string()))?;
        let mut out = Vec::new();
        let mut next = at;
        for b in batches {
            next = next.max(b.header.next_offset());
            if b.header.is_control() {
                continue;
            }
            let records = durable_log::records::decode_records(&b.bytes)
                .map_err(|e| StepError::Local(e.to_string()))?;
            let append_time = b.header.timestamp_type() == TimestampType::LogAppendTime;
            for mut r in records {
                if append_time {
                    r.timestamp = b.header.max_timestamp;
                }
                out.push((LocalOffset(r.offset), r));
            }
        }
        Ok((out, next))
    }

    fn publish_lag(&self) {
        self.f.cursors.lock().expect("cursors lock").insert(
            (self.local.topic_id, self.local.index),
            self.durable_forwarded.0,
        );
        let hw = self.local.high_watermark();
        let lag = (hw - self.stream.forwarded().0).max(0);
        self.f
            .metrics
            .unforwarded(&self.id.topic, self.id.partition, lag);
    }

    fn count_error(&self, e: &StepError) {
        let reason = match e {
            StepError::Hub(h) | StepError::Again(h) => match h {
                HubError::Unreachable(_) => "unreachable",
                HubError::Dropped(_) => "dropped",
                HubError::Retriable { .. } => "retriable",
                HubError::ProducerLost { .. } => "producer_lost",
                HubError::Refused { .. } => "refused",
            },
            StepError::Local(_) => "local",
            StepError::Journal(_) => "journal",
            StepError::ClaimCheck(_) => "claim_check",
            StepError::ParkedFull(_) => "parked_full",
        };
        self.f.metrics.error(&self.id.topic, reason);
    }
}

/// The reason parked records of a key give for the records behind the first.
const BEHIND: &str = "behind_parked_key";

/// The records of `round` that go to hub partition `partition` (not the diverted ones).
fn by_partition_of(
    records: &[(LocalOffset, Record)],
    round: &Round,
    partition: i32,
    local_partition: i32,
) -> Vec<(LocalOffset, Record)> {
    records
        .iter()
        .filter(|(o, r)| {
            round.diverted.binary_search(o).is_err()
                && hub_partition(r.key.as_deref(), local_partition, round.hub_partitions)
                    == partition
        })
        .cloned()
        .collect()
}

/// The local offsets of every record parked in `stream`.
fn parked_offsets(stream: &Stream) -> std::collections::BTreeSet<LocalOffset> {
    stream
        .parked()
        .values()
        .flat_map(|p| p.offsets.iter().copied())
        .collect()
}

fn leader(layout: &TopicLayout, partition: i32) -> Option<String> {
    layout.leaders.get(partition as usize).cloned().flatten()
}

/// A record's size as it counts against `batch_bytes`.
fn record_bytes(r: &Record) -> u64 {
    let headers: usize = r
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
        .sum();
    (r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len()) + headers)
        as u64
        + 16
}
