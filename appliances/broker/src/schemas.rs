//! The Schema Registry's log: the `_schemas` topic (one partition, replicated like any topic)
//! as the [`schema_registry::api::Backend`] of this broker's registry.
//!
//! Every broker that holds a replica of `_schemas` tails it up to the high watermark and
//! applies each record to its in-memory [`Store`] (so reads never see a record that a leader
//! change could still remove). The writer is the partition's leader: it appends the planned
//! records as one batch, waits until they are committed, then until its own tail has applied
//! them, and only then answers. Other brokers forward writes to the leader's registry, at the
//! address it announced in the metadata ([`quorum::metadata::Services`]); brokers without a
//! replica forward reads too. With no leader known, they answer 50003 and clients retry.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use schema_registry::api::{Backend, Writer};
use schema_registry::error::RegistryError;
use schema_registry::records::Record;
use schema_registry::store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::partition::{Partition, ReadBound};
use crate::state::BrokerState;

pub const SCHEMAS_TOPIC: &str = "_schemas";

/// How long a write waits to be committed and applied before it answers 50001.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a tail reads at once.
const READ_BYTES_MAX: usize = 1 << 20;

pub struct SchemasLog {
    state: Arc<BrokerState>,
    pub store: Arc<RwLock<Store>>,
    /// The offset after the last record applied to `store`.
    applied: watch::Sender<i64>,
}

impl SchemasLog {
    pub fn new(state: Arc<BrokerState>, store: Arc<RwLock<Store>>) -> Arc<SchemasLog> {
        Arc::new(SchemasLog {
            state,
            store,
            applied: watch::channel(0).0,
        })
    }

    fn partition(&self) -> Option<Arc<Partition>> {
        self.state.topics.partition(SCHEMAS_TOPIC, 0)
    }

    /// Apply committed records as they come, until shutdown.
    pub async fn tail(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let Some(p) = self.partition() else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            };
            let from = *self.applied.borrow();
            let hw = p.offsets().high_watermark;
            if from < hw {
                if let Err(e) = self.apply_from(&p, from).await {
                    tracing::warn!(error = %e, "reading _schemas failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = p.wait_for_data(from.max(hw), Duration::from_secs(1)) => {}
            }
        }
    }

    /// Read committed batches from `from` and apply their records.
    async fn apply_from(&self, p: &Arc<Partition>, from: i64) -> Result<(), String> {
        let read = p
            .read(from, READ_BYTES_MAX, true, ReadBound::HighWatermark)
            .await
            .map_err(|e| e.to_string())?;
        let batches =
            durable_log::split_stored_batches(&read.records).map_err(|e| e.to_string())?;
        let mut next = from;
        for b in batches {
            let records =
                durable_log::records::decode_records(&b.bytes).map_err(|e| e.to_string())?;
            let mut store = self.store.write();
            for r in records.into_iter().filter(|r| r.offset >= from) {
                let Some(key) = r.key.as_ref() else { continue };
                match Record::decode(key, r.value.as_deref()) {
                    Ok(record) => store.apply(record),
                    Err(e) => {
                        tracing::warn!(offset = r.offset, error = %e, "skipping a _schemas record")
                    }
                }
            }
            next = b.header.next_offset();
        }
        if next == from {
            // Nothing whole below the high watermark yet (cannot happen for committed data);
            // wait for the next change instead of spinning.
            p.wait_for_data(from, Duration::from_millis(100)).await;
        }
        self.applied.send_if_modified(|a| {
            let moved = next > *a;
            *a = (*a).max(next);
            moved
        });
        Ok(())
    }

    /// Keep the broker's `schema_registry` health condition true to what the registry can
    /// answer: with a replica of `_schemas`, ready once the store has applied it up to its
    /// high watermark (so a restarted broker does not answer from a half-read store); without
    /// one, ready while the writer's registry is known (every request is forwarded there).
    pub async fn readiness(
        self: Arc<Self>,
        health: Arc<telemetry::Health>,
        shutdown: CancellationToken,
    ) {
        let mut ready = false;
        loop {
            match self.partition() {
                // No replica here: ready while there is a registry to forward to.
                None => {
                    ready = false;
                    match self.writer() {
                        Writer::Remote(_) => health.set_ok("schema_registry"),
                        _ => health.set_failing(
                            "schema_registry",
                            "no replica of _schemas on this broker, and no writer known to forward to",
                        ),
                    }
                }
                Some(p) => {
                    let (applied, hw) = (*self.applied.borrow(), p.offsets().high_watermark);
                    // Once caught up, a replica that falls behind for a moment (a burst of
                    // writes) stays ready: its reads are committed state, only a little older.
                    if !ready && applied >= hw {
                        ready = true;
                        health.set_ok("schema_registry");
                    } else if !ready {
                        health.set_failing(
                            "schema_registry",
                            format!("reading _schemas: {applied} of {hw} applied"),
                        );
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn wait_applied(&self, offset: i64) -> Result<(), RegistryError> {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(WRITE_TIMEOUT, rx.wait_for(|a| *a >= offset))
            .await
            .map_err(|_| {
                RegistryError::Store(format!(
                    "_schemas was not applied up to {offset} within {WRITE_TIMEOUT:?}"
                ))
            })?
            .map_err(|_| RegistryError::Store("the registry is shutting down".into()))?;
        Ok(())
    }
}

#[async_trait]
impl Backend for SchemasLog {
    /// This broker while it leads `_schemas`; else the leader's registry, as the leader
    /// announced it in the metadata.
    fn writer(&self) -> Writer {
        if self.partition().is_some_and(|p| p.is_leader()) {
            return Writer::Local;
        }
        let state = self.state.metadata();
        let leader = state
            .topic_by_name(SCHEMAS_TOPIC)
            .and_then(|t| t.partitions.first())
            .and_then(|p| p.leader)
            .filter(|l| *l != self.state.cluster.me);
        match leader.and_then(|l| state.services.get(&l)?.schema_registry.clone()) {
            Some(url) => Writer::Remote(url),
            None => Writer::Unknown,
        }
    }

    /// Only a broker with a replica of `_schemas` has the registry's state; another one
    /// forwards every request to the writer.
    fn reads_here(&self) -> bool {
        self.partition().is_some()
    }

    async fn catch_up(&self) -> Result<(), RegistryError> {
        let p = self
            .partition()
            .ok_or_else(|| RegistryError::Forwarding("no replica of _schemas here".into()))?;
        self.wait_applied(p.offsets().log_end).await
    }

    async fn write(&self, records: Vec<Record>) -> Result<(), RegistryError> {
        let p = self
            .partition()
            .ok_or_else(|| RegistryError::Forwarding("no replica of _schemas here".into()))?;
        let batch = encode(&records);
        let batches =
            durable_log::split_batches(&batch).map_err(|e| RegistryError::Store(e.to_string()))?;
        let (result, epoch) = p
            .append(batches)
            .await
            .map_err(|e| RegistryError::Store(e.to_string()))?;
        let end = result.last_offset + 1;
        tokio::time::timeout(WRITE_TIMEOUT, p.wait_committed(end, epoch))
            .await
            .map_err(|_| {
                RegistryError::Store(format!(
                    "_schemas was not committed within {WRITE_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| RegistryError::Store(e.to_string()))?;
        self.wait_applied(end).await
    }
}

/// The records as one uncompressed batch with JSON keys and values.
fn encode(records: &[Record]) -> Bytes {
    crate::internal_log::encode_batch(records.iter().map(|r| {
        let (key, value) = r.encode();
        (Some(Bytes::from(key)), value.map(Bytes::from))
    }))
}
