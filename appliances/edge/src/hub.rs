//! The gateway as a client of the hub: its metadata (which broker leads which partition of a
//! hub topic), a producer id, and one batch produced with acks=all. Built on `kafka-client`,
//! not a general Kafka client, because the forwarder must choose every batch's boundaries and
//! sequences itself (see [`crate::journal`]): a client library would re-batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_client::Connection;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{InitProducerIdRequest, MetadataRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};
use tokio::sync::Mutex;

use crate::config::HubSettings;
use crate::journal::Producer;

const METADATA_V: i16 = 9;
const PRODUCE_V: i16 = 9;
const INIT_PRODUCER_ID_V: i16 = 4;
/// Connections kept open at once (one per hub broker; a hub has a handful).
const CONNECTIONS_MAX: usize = 64;
/// A topic's layout is asked for again when it is this old (Kafka's `metadata.max.age.ms`),
/// so that partitions the hub topic gained are used for new rounds.
const LAYOUT_AGE_MAX: Duration = Duration::from_secs(300);

/// Why a request to the hub did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The hub could not be reached or did not answer in time: try again later.
    #[error("the hub is unreachable: {0}")]
    Unreachable(String),
    /// The connection closed while a request waited for its answer (the WAN dropped it, the
    /// hub restarted): worth one immediate try on a new connection.
    #[error("the connection to the hub closed before its answer: {0}")]
    Dropped(String),
    /// The hub answered with an error that may pass (leadership moving, too few replicas).
    #[error("the hub answered {name} ({code}) for {what}")]
    Retriable {
        what: String,
        code: i16,
        name: String,
    },
    /// The hub no longer knows the producer (its state expired) or fenced it: a new
    /// producer is needed.
    #[error("the hub no longer accepts producer {producer:?}: {name} ({code})")]
    ProducerLost {
        producer: Producer,
        code: i16,
        name: String,
    },
    /// The hub refuses this batch for good (too large, invalid, not authorized).
    #[error("the hub refuses the batch for {what}: {name} ({code})")]
    Refused {
        what: String,
        code: i16,
        name: String,
    },
}

impl HubError {
    /// The hub's error name when it refused a batch for something in its records (one may
    /// be too large, invalid, corrupt, or stamped out of the time it accepts): sent one by
    /// one, the others may pass. `None` for what concerns the topic or the producer as a
    /// whole (the rest of [`classify_produce`]'s refusals).
    pub fn refused_for_records(&self) -> Option<&str> {
        use kafka_protocol::error::ResponseError as E;
        let HubError::Refused { code, name, .. } = self else {
            return None;
        };
        E::try_from_code(*code)
            .is_some_and(|e| about_records(&e))
            .then_some(name.as_str())
    }
}

/// A refusal for something in a batch's records (one too large, invalid, corrupt, stamped
/// out of the time the hub accepts), not for the topic or the producer as a whole.
fn about_records(e: &kafka_protocol::error::ResponseError) -> bool {
    use kafka_protocol::error::ResponseError as E;
    matches!(
        e,
        E::MessageTooLarge
            | E::RecordListTooLarge
            | E::InvalidRecord
            | E::CorruptMessage
            | E::InvalidTimestamp
    )
}

fn error_name(code: i16) -> String {
    kafka_protocol::error::ResponseError::try_from_code(code)
        .map_or_else(|| format!("error {code}"), |e| format!("{e:?}"))
}

/// What a hub topic looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    /// The leader (`host:port`) of each partition, by index; `None` while it has none.
    pub leaders: Vec<Option<String>>,
}

impl TopicLayout {
    pub fn partitions(&self) -> i32 {
        self.leaders.len() as i32
    }
}

#[derive(Default)]
struct Known {
    connections: HashMap<String, Arc<Connection>>,
    /// Each topic's layout and when it was learned.
    topics: HashMap<String, (TopicLayout, Instant)>,
}

/// The hub, as every forwarder of this gateway sees it (connections and metadata shared).
pub struct Hub {
    settings: HubSettings,
    tls: Option<Arc<tls::TlsClient>>,
    client_id: String,
    known: Mutex<Known>,
}

impl Hub {
    pub fn new(settings: HubSettings, client_id: String) -> anyhow::Result<Hub> {
        let tls = match (&settings.security, &settings.tls) {
            (tls::SecurityProtocol::Ssl, Some(t)) => Some(
                tls::TlsClient::load(t.clone()).map_err(|e| anyhow::anyhow!("[hub.tls]: {e}"))?,
            ),
            _ => None,
        };
        Ok(Hub {
            settings,
            tls,
            client_id,
            known: Mutex::new(Known::default()),
        })
    }

    pub fn tls(&self) -> Option<&Arc<tls::TlsClient>> {
        self.tls.as_ref()
    }

    fn timeout(&self) -> Duration {
        self.settings.request_timeout
    }

    /// A connection to `addr`, opened if there is none.
    async fn connection(&self, addr: &str) -> Result<Arc<Connection>, HubError> {
        if let Some(c) = self.known.lock().await.connections.get(addr) {
            return Ok(Arc::clone(c));
        }
        let connect = Connection::connect_with(addr, &self.client_id, self.tls.as_deref());
        let conn = tokio::time::timeout(self.timeout(), connect)
            .await
            .map_err(|_| HubError::Unreachable(format!("connecting to {addr} timed out")))?
            .map_err(|e| HubError::Unreachable(format!("{addr}: {e}")))?;
        let conn = Arc::new(conn);
        let mut known = self.known.lock().await;
        if known.connections.len() >= CONNECTIONS_MAX {
            known.connections.clear();
        }
        known
            .connections
            .insert(addr.to_string(), Arc::clone(&conn));
        Ok(conn)
    }

    /// Forget a connection that failed, so the next request opens a new one.
    async fn drop_connection(&self, addr: &str) {
        self.known.lock().await.connections.remove(addr);
    }

    /// Any broker that answers: the bootstrap list in turn.
    async fn any_connection(&self) -> Result<(String, Arc<Connection>), HubError> {
        let mut last = HubError::Unreachable("no bootstrap broker".into());
        for addr in &self.settings.bootstrap {
            match self.connection(addr).await {
                Ok(c) => return Ok((addr.clone(), c)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The layout of hub topic `name`: cached, or asked for when `refresh` (after a
    /// request went to a broker that no longer leads) or not known yet. The hub creates
    /// the topic if it auto-creates topics.
    pub async fn topic(&self, name: &str, refresh: bool) -> Result<TopicLayout, HubError> {
        if !refresh
            && let Some((t, at)) = self.known.lock().await.topics.get(name)
            && at.elapsed() < LAYOUT_AGE_MAX
        {
            return Ok(t.clone());
        }
        let (addr, conn) = self.any_connection().await?;
        let req = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(name.to_string())),
            ))]))
            .with_allow_auto_topic_creation(true);
        let meta = self
            .call(&addr, &conn, req, METADATA_V, self.timeout(), "metadata")
            .await?;
        let brokers = kafka_client::broker_addresses(&meta);
        let t = meta
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| &***n == name))
            .ok_or_else(|| HubError::Unreachable(format!("no metadata for {name}")))?;
        if t.error_code != 0 || t.partitions.is_empty() {
            let code = t.error_code;
            let what = format!("the metadata of hub topic {name}");
            // Unknown topic (3) while it is being created, leader not available (5): both pass.
            return Err(match code {
                0 | 3 | 5 => HubError::Retriable {
                    what,
                    code,
                    name: error_name(code),
                },
                _ => HubError::Refused {
                    what,
                    code,
                    name: error_name(code),
                },
            });
        }
        let mut leaders = vec![None; t.partitions.len()];
        for p in &t.partitions {
            let i = p.partition_index as usize;
            if i < leaders.len() {
                leaders[i] = brokers.get(&p.leader_id.0).cloned();
            }
        }
        let layout = TopicLayout { leaders };
        self.known
            .lock()
            .await
            .topics
            .insert(name.to_string(), (layout.clone(), Instant::now()));
        Ok(layout)
    }

    /// `req` on `conn` (to `addr`), answered within `within`. A connection that failed or
    /// timed out is forgotten: an answer that comes late on it must never be taken for the
    /// answer to a request sent again on another. A connection that closed while the
    /// request waited is `Dropped` (worth one immediate try); other failures `Unreachable`.
    async fn call<R: Request>(
        &self,
        addr: &str,
        conn: &Connection,
        req: R,
        version: i16,
        within: Duration,
        what: &str,
    ) -> Result<R::Response, HubError> {
        let failed = match tokio::time::timeout(within, conn.request(req, version)).await {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => Some(e),
            Err(_) => None,
        };
        self.drop_connection(addr).await;
        Err(match failed {
            Some(e @ (kafka_client::Error::Closed | kafka_client::Error::Io(_))) => {
                HubError::Dropped(format!("{what} at {addr}: {e}"))
            }
            Some(e) => HubError::Unreachable(format!("{what} at {addr}: {e}")),
            None => HubError::Unreachable(format!("{what} at {addr} timed out")),
        })
    }

    /// A new idempotent producer id from the hub.
    pub async fn init_producer(&self) -> Result<Producer, HubError> {
        let (addr, conn) = self.any_connection().await?;
        let req = InitProducerIdRequest::default().with_transaction_timeout_ms(i32::MAX);
        let r = self
            .call(
                &addr,
                &conn,
                req,
                INIT_PRODUCER_ID_V,
                self.timeout(),
                "InitProducerId",
            )
            .await?;
        if r.error_code != 0 {
            return Err(HubError::Retriable {
                what: "a producer id".into(),
                code: r.error_code,
                name: error_name(r.error_code),
            });
        }
        Ok(Producer {
            id: r.producer_id.0,
            epoch: r.producer_epoch,
        })
    }

    /// Produce one batch (already encoded, see [`crate::outgoing`]) to `topic`/`partition`
    /// with acks=all, to the leader `layout` names. `Ok` once the hub has it, whether
    /// written now or recognised as a batch it already held.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        leader: &str,
        producer: Producer,
        batch: Bytes,
    ) -> Result<(), HubError> {
        let conn = self.connection(leader).await?;
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(self.timeout().as_millis().min(i32::MAX as u128) as i32)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(batch)),
                    ]),
            ]);
        // The request timeout plus a margin: the hub answers a slow acks=all itself
        // (REQUEST_TIMED_OUT) at `timeout_ms`.
        let within = self.timeout() + Duration::from_secs(5);
        let r = self
            .call(leader, &conn, req, PRODUCE_V, within, "produce")
            .await?;
        let code = r
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .find(|p| p.index == partition)
            .map_or(-1, |p| p.error_code);
        classify_produce(code, topic, partition, producer)
    }
}

/// A produce answer's error code, as the forwarder acts on it.
fn classify_produce(
    code: i16,
    topic: &str,
    partition: i32,
    producer: Producer,
) -> Result<(), HubError> {
    use kafka_protocol::error::ResponseError as E;
    let what = format!("{topic}/{partition}");
    let name = error_name(code);
    match E::try_from_code(code) {
        None => Ok(()),
        // The hub holds this batch already (older than the last five it remembers).
        Some(E::DuplicateSequenceNumber) => Ok(()),
        Some(E::UnknownProducerId | E::InvalidProducerEpoch | E::OutOfOrderSequenceNumber) => {
            Err(HubError::ProducerLost {
                producer,
                code,
                name,
            })
        }
        Some(e) if about_records(&e) => Err(HubError::Refused { what, code, name }),
        Some(
            E::InvalidTopicException
            | E::TopicAuthorizationFailed
            | E::ClusterAuthorizationFailed
            | E::UnsupportedForMessageFormat
            | E::InvalidRequiredAcks
            | E::PolicyViolation,
        ) => Err(HubError::Refused { what, code, name }),
        _ => Err(HubError::Retriable { what, code, name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_answers_are_classified() {
        let p = Producer { id: 7, epoch: 0 };
        assert!(classify_produce(0, "t", 0, p).is_ok());
        assert!(classify_produce(46, "t", 0, p).is_ok());
        for lost in [59, 47, 45] {
            assert!(matches!(
                classify_produce(lost, "t", 0, p),
                Err(HubError::ProducerLost { .. })
            ));
        }
        for refused in [10, 18, 2, 29] {
            assert!(matches!(
                classify_produce(refused, "t", 0, p),
                Err(HubError::Refused { .. })
            ));
        }
        // Too large, invalid, corrupt, a timestamp out of range: something in the records,
        // sent one by one; not authorized: the topic as a whole.
        let about_records = |code| {
            classify_produce(code, "t", 0, p)
                .unwrap_err()
                .refused_for_records()
                .map(str::to_string)
        };
        assert_eq!(about_records(10).as_deref(), Some("MessageTooLarge"));
        for records in [18, 87, 2, 32] {
            assert!(about_records(records).is_some(), "{records}");
        }
        assert_eq!(about_records(29), None);
        assert_eq!(about_records(6), None);
        // Not the leader, too few in-sync replicas, timed out, unknown: try again.
        for retry in [6, 19, 20, 7, -1] {
            assert!(matches!(
                classify_produce(retry, "t", 0, p),
                Err(HubError::Retriable { .. })
            ));
        }
    }
}
