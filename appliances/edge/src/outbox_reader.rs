//! The outbox reader: the I/O around [`crate::outbox::Outbox`]. It reads the branch
//! database's replication slot through SQL (`pg_logical_slot_peek_binary_changes`, pgoutput),
//! appends each round's events to the buffer, fsyncs its own position, and only then advances
//! the slot, so that WAL is released as soon as events are buffered, whatever the WAN does.
//!
//! Nothing is buffered twice, although the slot may deliver a transaction again (after a
//! PostgreSQL crash its position is back where the last checkpoint left it, and the gateway
//! may die between appending and writing its position):
//! - transactions that end at or below the position's `buffered_through` are skipped;
//! - a round's rows stream in and are appended in slices of whole transactions; a slice is
//!   fixed before it is appended: its end LSN is written as `pending`, and after a restart
//!   the reader reads exactly the transactions up to it again, so the slice holds the same
//!   events in the same batches;
//! - each event carries the stream `outbox/<slot>` and a sequence numbered from the
//!   position's `next_seq`, and the buffer's outbox topics de-duplicate by stream
//!   (`clk.stream.dedup`): a round appended before the crash is answered as a duplicate.
//!
//! The forwarder replaces the stream headers with its own when it sends events to the hub.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use broker::state::BrokerState;
use bytes::Bytes;
use durable_log::checkpoint;
use durable_log::streams::{SEQUENCE_HEADER, STREAM_HEADER};
use futures::TryStreamExt;
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use serde::{Deserialize, Serialize};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::config::OutboxSettings;
use crate::local::{self, TopicPartition};
use crate::metrics::EdgeMetrics;
use crate::outbox::{Committed, INVALID_HEADER, Outbox, OutboxEvent};
use crate::partitioner::hub_partition;
use crate::pgoutput::{Lsn, decode};

/// Events a slice of a round holds at least (whole transactions): what the reader appends
/// to the buffer at once.
const SLICE_EVENTS: usize = 5_000;
/// Outbox topics the reader keeps partition counts for (one per aggregate type).
const TOPICS_MAX: usize = 1024;
/// The wait before trying again after a failed session, doubled up to the maximum.
const BACKOFF: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The topic config that makes the buffer de-duplicate by stream.
const DEDUP: &str = "clk.stream.dedup";

/// What the reader has durably done, in `<data_dir>/outbox/<slot>.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// Transactions that end at or below this are in the buffer.
    buffered_through: u64,
    /// The sequence of the next event in the stream `outbox/<slot>`.
    next_seq: i64,
    /// A slice being appended: the transactions up to this LSN.
    pending: Option<u64>,
}

struct Reader {
    settings: OutboxSettings,
    /// `[outbox.tls]`, loaded.
    tls: Option<crate::pg_tls::PgTls>,
    state: Arc<BrokerState>,
    metrics: Arc<EdgeMetrics>,
    path: PathBuf,
    stream: Bytes,
    position: Position,
    /// Outbox topic -> its partition count in the buffer.
    partitions: HashMap<String, i32>,
}

/// Read the outbox until `stop`.
pub async fn run(
    settings: OutboxSettings,
    state: Arc<BrokerState>,
    dir: PathBuf,
    metrics: Arc<EdgeMetrics>,
    stop: CancellationToken,
) {
    let path = dir.join(format!("{}.json", settings.slot));
    let position = match load(&path) {
        Ok(p) => p,
        Err(e) => {
            // Guessing a position could buffer events twice or skip them: an operator looks.
            tracing::error!(path = %path.display(), error = %format!("{e:#}"), "the outbox position cannot be read; the outbox is not read");
            metrics.outbox_errors.inc();
            return;
        }
    };
    let tls = match settings.tls.clone().map(tls::TlsClient::load).transpose() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "[outbox.tls] cannot be loaded; the outbox is not read");
            metrics.outbox_errors.inc();
            return;
        }
    };
    if let Some(t) = &tls {
        tokio::spawn(Arc::clone(t).watch(stop.clone()));
    }
    let mut reader = Reader {
        tls: tls.map(crate::pg_tls::PgTls),
        stream: Bytes::from(format!("outbox/{}", settings.slot)),
        settings,
        state,
        metrics,
        path,
        position,
        partitions: HashMap::new(),
    };
    reader
        .metrics
        .outbox_buffered_lsn
        .set(position.buffered_through as i64);
    let mut backoff = BACKOFF;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = reader.session(&mut backoff) => r,
        };
        if let Err(e) = outcome {
            reader.metrics.outbox_errors.inc();
            tracing::warn!(slot = %reader.settings.slot, error = %format!("{e:#}"), "reading the outbox failed; trying again");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Position> {
    match checkpoint::read_optional(path).with_context(|| format!("reading {}", path.display()))? {
        None => Ok(Position::default()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not an outbox position", path.display())),
    }
}

impl Reader {
    /// One connection's life: prepare the slot, then read rounds until something fails.
    async fn session(&mut self, backoff: &mut Duration) -> anyhow::Result<()> {
        let mut config: tokio_postgres::Config = self
            .settings
            .connection
            .parse()
            .context("[outbox] connection")?;
        let (client, connection) = match &self.tls {
            None => {
                let (client, connection) = config
                    .connect(NoTls)
                    .await
                    .context("connecting to the branch database")?;
                (client, tokio::spawn(connection))
            }
            Some(tls) => {
                // With [outbox.tls], never in plain text, whatever the string says.
                config.ssl_mode(SslMode::Require);
                let (client, connection) = config
                    .connect(tls.clone())
                    .await
                    .context("connecting to the branch database over TLS")?;
                (client, tokio::spawn(connection))
            }
        };
        let _abort = AbortOnDrop(connection);
        self.prepare(&client).await?;
        loop {
            let more = self.round(&client).await?;
            *backoff = BACKOFF;
            if !more {
                tokio::time::sleep(self.settings.poll_interval).await;
            }
        }
    }

    /// Create the publication and the slot unless they exist.
    async fn prepare(&self, client: &Client) -> anyhow::Result<()> {
        let s = &self.settings;
        let (schema, table) = s.table_parts();
        // Identifiers are checked by the config to be plain lower-case names: no quoting.
        let has_publication = client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&s.publication],
            )
            .await
            .context("looking for the publication")?
            .is_some();
        if !has_publication {
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {schema}.{table}",
                s.publication
            );
            client
                .batch_execute(&sql)
                .await
                .with_context(|| sql.clone())?;
            tracing::info!(publication = %s.publication, table = %s.table, "created the outbox publication");
        }
        let has_slot = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&s.slot],
            )
            .await
            .context("looking for the replication slot")?
            .is_some();
        if !has_slot {
            client
                .query_one(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&s.slot],
                )
                .await
                .context("creating the replication slot")?;
            tracing::info!(slot = %s.slot, "created the outbox replication slot");
        }
        Ok(())
    }

    /// Read, buffer and acknowledge one round; whether the slot may hold more right away.
    ///
    /// The round's rows stream in and are buffered slice by slice (whole transactions, at
    /// least [`SLICE_EVENTS`] events each), so that memory holds one slice whatever the
    /// round's size; the slot advances once, after the last slice.
    async fn round(&mut self, client: &Client) -> anyhow::Result<bool> {
        let (flushed, retained) = self.wal(client).await?;
        self.metrics.outbox_retained_wal_bytes.set(retained);
        let pending = self.position.pending;
        let start = self.position.buffered_through;
        // A pending slice is read again exactly; a new round is bounded by count.
        let limit = pending
            .is_none()
            .then_some(self.settings.changes_max as i32);
        let upto = pending.map(|l| Lsn(l).to_string());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
            &self.settings.slot,
            &upto,
            &limit,
            &self.settings.publication,
        ];
        let rows = client
            .query_raw(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, \
                 'proto_version', '1', 'publication_names', $4)",
                params,
            )
            .await
            .context("reading the replication slot")?;
        futures::pin_mut!(rows);
        let (schema, table) = self.settings.table_parts();
        let mut outbox = Outbox::new(schema, table, Lsn(start));
        let (mut slice, mut slice_events, mut changes) = (Vec::new(), 0, 0usize);
        while let Some(row) = rows
            .try_next()
            .await
            .context("reading the replication slot")?
        {
            changes += 1;
            let data: &[u8] = row.get(0);
            let message = decode(&Bytes::copy_from_slice(data)).context("a replication message")?;
            let Some(c) = outbox.feed(message).context("the outbox table")? else {
                continue;
            };
            let end = c.end_lsn.0;
            if pending.is_some_and(|p| end > p) {
                continue;
            }
            slice_events += c.events.len();
            slice.push(c);
            // A pending slice ends exactly where it ended before; a new one at its size.
            if pending.map_or(slice_events >= SLICE_EVENTS, |p| end == p) {
                self.buffer_slice(std::mem::take(&mut slice), end).await?;
                slice_events = 0;
            }
        }
        self.metrics
            .outbox_redelivered_transactions
            .inc_by(outbox.redelivered());
        let truncated = limit.is_some_and(|l| changes >= l as usize);
        let last = slice.last().map(|t: &Committed| t.end_lsn.0);
        let end = match (pending, last) {
            (Some(p), _) => p,
            // Everything up to what was flushed before the read was decoded: the slot may go
            // there even if no outbox row was in it (other tables' WAL is released too).
            (None, last) if !truncated => flushed.max(last.unwrap_or(0)),
            (None, last) => last.unwrap_or(start),
        };
        self.buffer_slice(slice, end).await?;
        if self.position.buffered_through > start {
            self.advance(client, self.position.buffered_through).await?;
        }
        Ok(truncated)
    }

    /// Buffer a slice's events and move the position to `end`: the slice is first fixed as
    /// `pending` (unless it is the pending one read again), so that after a crash it is read
    /// again whole.
    async fn buffer_slice(&mut self, slice: Vec<Committed>, end: u64) -> anyhow::Result<()> {
        if end <= self.position.buffered_through {
            return Ok(());
        }
        assert!(
            self.position.pending.is_none_or(|p| p == end),
            "a pending slice is read again up to its end"
        );
        let events: Vec<&OutboxEvent> = slice.iter().flat_map(|t| &t.events).collect();
        if !events.is_empty() {
            if self.position.pending.is_none() {
                self.save(Position {
                    pending: Some(end),
                    ..self.position
                })
                .await?;
            }
            self.append(&events).await?;
        }
        let count = events.len() as i64;
        let next = Position {
            buffered_through: end,
            next_seq: self.position.next_seq + count,
            pending: None,
        };
        self.save(next).await?;
        self.metrics.outbox_events.inc_by(count as u64);
        self.metrics.outbox_buffered_lsn.set(end as i64);
        Ok(())
    }

    /// The database's flushed WAL position, and the WAL the slot keeps.
    async fn wal(&self, client: &Client) -> anyhow::Result<(u64, i64)> {
        let row = client
            .query_opt(
                "SELECT pg_current_wal_flush_lsn()::text, \
                 pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.settings.slot],
            )
            .await
            .context("reading the WAL position")?
            .context("the replication slot is gone")?;
        let flushed: String = row.get(0);
        let retained: Option<i64> = row.get(1);
        let flushed = flushed.parse::<Lsn>().map_err(anyhow::Error::msg)?;
        Ok((flushed.0, retained.unwrap_or(0)))
    }

    async fn save(&mut self, next: Position) -> anyhow::Result<()> {
        assert!(
            next.buffered_through >= self.position.buffered_through,
            "the outbox position only grows"
        );
        assert!(
            next.next_seq >= self.position.next_seq,
            "outbox sequences only grow"
        );
        let path = self.path.clone();
        let bytes = serde_json::to_vec(&next).expect("a position serializes");
        tokio::task::spawn_blocking(move || checkpoint::write_atomic(&path, &bytes))
            .await
            .context("the position writer")?
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.position = next;
        Ok(())
    }

    /// Let the slot go to `end` (never back: after a lost position file the slot may be ahead).
    async fn advance(&self, client: &Client, end: u64) -> anyhow::Result<()> {
        client
            .query_opt(
                "SELECT pg_replication_slot_advance(slot_name, \
                 GREATEST($2::text::pg_lsn, confirmed_flush_lsn)) \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.settings.slot, &Lsn(end).to_string()],
            )
            .await
            .context("advancing the replication slot")?;
        Ok(())
    }

    /// Append a slice's events to their buffer partitions and wait until they are fsynced.
    async fn append(&mut self, events: &[&OutboxEvent]) -> anyhow::Result<()> {
        let mut batches: BTreeMap<TopicPartition, Vec<local::Entry>> = BTreeMap::new();
        // Sequences in commit order: they grow within every partition, as the stream's
        // de-duplication needs.
        for (seq, e) in (self.position.next_seq..).zip(events) {
            let (topic, invalid) = e.route();
            if let Some(why) = &invalid {
                tracing::warn!(id = %String::from_utf8_lossy(&e.id), why, "an outbox row that is no valid event goes to {}", crate::outbox::INVALID_TOPIC);
                self.metrics.outbox_invalid_rows.inc();
            }
            let partitions = self.partition_count(&topic).await?;
            let partition = hub_partition(Some(&e.aggregate_id), 0, partitions);
            batches
                .entry((topic, partition))
                .or_default()
                .push(self.record(e, seq, invalid));
        }
        let access = broker::authz::Access::everything();
        for ((topic, partition), result) in local::append(&self.state, &access, batches).await {
            if let Err(refused) = result {
                bail!("the buffer refused outbox events for {topic}-{partition}: {refused}");
            }
        }
        Ok(())
    }

    /// An event as a record, with its id, type, stream and sequence.
    fn record(&self, e: &OutboxEvent, seq: i64, invalid: Option<String>) -> local::Entry {
        let mut headers = IndexMap::new();
        let mut header = |name: &'static str, value: Bytes| {
            headers.insert(StrBytes::from_static_str(name), Some(value));
        };
        header("id", e.id.clone());
        header("type", e.event_type.clone());
        header(STREAM_HEADER, self.stream.clone());
        header(SEQUENCE_HEADER, Bytes::copy_from_slice(&seq.to_be_bytes()));
        if let Some(why) = invalid {
            header(INVALID_HEADER, Bytes::from(why));
        }
        (Some(e.aggregate_id.clone()), e.payload.clone(), headers)
    }

    /// The partition count of an outbox topic, created (de-duplicating by stream) if missing.
    async fn partition_count(&mut self, topic: &str) -> anyhow::Result<i32> {
        if let Some(n) = self.partitions.get(topic) {
            return Ok(*n);
        }
        let wanted = BTreeMap::from([(DEDUP.to_string(), "true".to_string())]);
        let (partitions, configs) = local::partitions(&self.state, topic, true, &wanted).await?;
        let dedup = configs
            .get(DEDUP)
            .map_or(self.state.config.topics.stream_dedup, |v| v == "true");
        if !dedup {
            bail!(
                "outbox topic {topic} exists without {DEDUP}=true: events could be buffered twice"
            );
        }
        if self.partitions.len() >= TOPICS_MAX {
            self.partitions.clear();
        }
        self.partitions.insert(topic.to_string(), partitions);
        Ok(partitions)
    }
}

/// Stops the connection task when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
