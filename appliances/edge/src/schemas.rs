//! Schema validation at the branch: the hub's Avro schemas, mirrored to disk so that they
//! work through a WAN outage.
//!
//! Every `schema_refresh` the gateway asks the hub's registry for its subjects and the
//! versions of each `<topic>-value` Avro subject it does not know yet (a version's schema
//! never changes, so it is fetched once), and writes what changed to
//! `<data_dir>/schemas/cache.json` (atomically). At start the file is read back, so a gateway
//! restarted during an outage validates as before.
//!
//! A topic with such a subject takes only values in Confluent's wire format (`0x00`, the
//! schema id, the Avro datum) whose id is one of the subject's versions and whose datum
//! decodes with it, whole; null values (tombstones) pass. Everything else is refused with
//! INVALID_RECORD, naming the record ([`broker::state::RecordCheck`], in the produce path
//! of Kafka clients and of the HTTP ingest alike). A schema registered at the hub after the
//! last refresh is unknown until the next one.
//!
//! Subjects with references, or of another type than Avro, are not validated (logged once).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use bytes::{BufMut, Bytes, BytesMut};
use durable_log::checkpoint;
use kafka_protocol::records::Record;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::EdgeMetrics;
use crate::registry_client::RegistryClient;

/// Subjects mirrored at most, and versions per subject.
const SUBJECTS_MAX: usize = 10_000;
const VERSIONS_MAX: usize = 1_000;
const SUFFIX: &str = "-value";

/// What is on disk: per subject its versions' ids, and each id's schema text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct CacheFile {
    subjects: BTreeMap<String, BTreeMap<i32, i32>>,
    schemas: BTreeMap<i32, String>,
}

/// A topic's schemas: the ids its subject's versions have, the latest last.
struct TopicSchemas {
    ids: BTreeSet<i32>,
    latest: i32,
}

#[derive(Default)]
struct Known {
    file: CacheFile,
    parsed: HashMap<i32, Arc<Schema>>,
    topics: HashMap<String, TopicSchemas>,
}

impl Known {
    fn from_file(file: CacheFile) -> Known {
        let mut parsed = HashMap::new();
        for (id, text) in &file.schemas {
            match Schema::parse_str(text) {
                Ok(s) => {
                    parsed.insert(*id, Arc::new(s));
                }
                Err(e) => tracing::warn!(id, error = %e, "a cached schema does not parse; ignored"),
            }
        }
        let mut topics = HashMap::new();
        for (subject, versions) in &file.subjects {
            let Some(topic) = subject.strip_suffix(SUFFIX) else {
                continue;
            };
            let ids: BTreeSet<i32> = versions
                .values()
                .copied()
                .filter(|id| parsed.contains_key(id))
                .collect();
            let latest = versions.values().rev().find(|id| ids.contains(id));
            if let Some(&latest) = latest {
                topics.insert(topic.to_string(), TopicSchemas { ids, latest });
            }
        }
        Known {
            file,
            parsed,
            topics,
        }
    }
}

/// The hub's Avro schemas as the gateway knows them.
pub struct Schemas {
    path: PathBuf,
    known: RwLock<Known>,
    metrics: Arc<EdgeMetrics>,
}

impl Schemas {
    /// What `<dir>/cache.json` holds (nothing if it is missing or unreadable: logged).
    pub fn load(dir: PathBuf, metrics: Arc<EdgeMetrics>) -> anyhow::Result<Arc<Schemas>> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("cache.json");
        let file = match checkpoint::read_optional(&path) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "the schema cache is unreadable; starting empty");
                CacheFile::default()
            }),
            Ok(None) => CacheFile::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let known = Known::from_file(file);
        metrics.schema_subjects.set(known.topics.len() as i64);
        Ok(Arc::new(Schemas {
            path,
            known: RwLock::new(known),
            metrics,
        }))
    }

    /// The value of a record for `topic` as the registry's latest schema encodes `json`, in
    /// Confluent's wire format; `None` when the topic has no schema.
    pub fn encode_json(
        &self,
        topic: &str,
        json: &serde_json::Value,
    ) -> Option<Result<Bytes, String>> {
        let known = self.known.read();
        let t = known.topics.get(topic)?;
        let schema = Arc::clone(&known.parsed[&t.latest]);
        let id = t.latest;
        drop(known);
        Some(encode(&schema, id, json))
    }

    /// Why `value` is not a valid value for `topic` (whose subject exists), if it is not.
    fn invalid(known: &Known, topic: &str, value: Option<&Bytes>) -> Option<String> {
        let t = known.topics.get(topic)?;
        let v = value?;
        if v.len() < 5 || v[0] != 0 {
            return Some(format!(
                "the value is not in Confluent's wire format (0x00, schema id, Avro): \
                 {topic}{SUFFIX} is an Avro subject"
            ));
        }
        let id = i32::from_be_bytes([v[1], v[2], v[3], v[4]]);
        if !t.ids.contains(&id) {
            return Some(format!(
                "schema id {id} is not a version of subject {topic}{SUFFIX}"
            ));
        }
        datum_error(&known.parsed[&id], id, &v[5..])
    }

    /// Ask the hub's registry for what changed; whether anything did.
    async fn refresh(&self, client: &RegistryClient) -> anyhow::Result<bool> {
        let mut subjects: Vec<String> = client.get("/subjects").await?;
        subjects.retain(|s| {
            s.strip_suffix(SUFFIX)
                .is_some_and(|t| broker::topics::validate_name(t).is_ok())
        });
        subjects.truncate(SUBJECTS_MAX);
        let old = self.known.read().file.clone();
        let mut file = CacheFile::default();
        for subject in subjects {
            let mut versions: Vec<i32> =
                client.get(&format!("/subjects/{subject}/versions")).await?;
            versions.sort_unstable();
            versions.truncate(VERSIONS_MAX);
            let mut have = BTreeMap::new();
            for v in versions {
                let known = old.subjects.get(&subject).and_then(|m| m.get(&v));
                let id = match known {
                    Some(id) if old.schemas.contains_key(id) => {
                        file.schemas.insert(*id, old.schemas[id].clone());
                        *id
                    }
                    _ => match fetch(client, &subject, v).await? {
                        Some((id, schema)) => {
                            file.schemas.insert(id, schema);
                            id
                        }
                        None => continue,
                    },
                };
                have.insert(v, id);
            }
            if !have.is_empty() {
                file.subjects.insert(subject, have);
            }
        }
        if file == old {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(&file).expect("the cache serializes");
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || checkpoint::write_atomic(&path, &bytes))
            .await
            .context("the cache writer")?
            .with_context(|| format!("writing {}", self.path.display()))?;
        let known = Known::from_file(file);
        self.metrics.schema_subjects.set(known.topics.len() as i64);
        *self.known.write() = known;
        Ok(true)
    }
}

/// One version of a subject: its id and schema, `None` unless it is a plain Avro schema.
async fn fetch(
    client: &RegistryClient,
    subject: &str,
    version: i32,
) -> anyhow::Result<Option<(i32, String)>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Version {
        id: i32,
        schema: String,
        #[serde(default)]
        schema_type: Option<String>,
        #[serde(default)]
        references: Vec<serde_json::Value>,
    }
    let v: Version = client
        .get(&format!("/subjects/{subject}/versions/{version}"))
        .await?;
    let avro = v.schema_type.as_deref().is_none_or(|t| t == "AVRO");
    if !avro || !v.references.is_empty() || Schema::parse_str(&v.schema).is_err() {
        tracing::info!(
            subject,
            version,
            "a schema with references, or not Avro: not validated at the edge"
        );
        return Ok(None);
    }
    Ok(Some((v.id, v.schema)))
}

/// Why `datum` is not exactly one Avro datum of `schema` (schema id `id`), if it is not.
/// Values come from the branch's applications: hostile bytes are an error, never a panic
/// (the `avro_datum` fuzz target).
pub fn datum_error(schema: &Schema, id: i32, mut datum: &[u8]) -> Option<String> {
    let reader = GenericDatumReader::builder(schema).build();
    match reader.and_then(|r| r.read_value(&mut datum)) {
        Ok(_) if datum.is_empty() => None,
        Ok(_) => Some(format!(
            "the value holds {} bytes past its Avro datum (schema id {id})",
            datum.len()
        )),
        Err(e) => Some(format!("the value does not match schema id {id}: {e}")),
    }
}

/// `json` as an Avro datum of `schema`, framed as Confluent's serializers frame it.
fn encode(schema: &Schema, id: i32, json: &serde_json::Value) -> Result<Bytes, String> {
    let value = apache_avro::types::Value::try_from(json.clone())
        .map_err(|e| format!("the value cannot be Avro: {e}"))?
        .resolve(schema)
        .map_err(|e| format!("the value does not match schema id {id}: {e}"))?;
    let datum = GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map_err(|e| format!("encoding the value with schema id {id}: {e}"))?;
    let mut out = BytesMut::with_capacity(5 + datum.len());
    out.put_u8(0);
    out.put_i32(id);
    out.put_slice(&datum);
    Ok(out.freeze())
}

impl broker::state::RecordCheck for Schemas {
    fn checks(&self, topic: &str) -> bool {
        self.known.read().topics.contains_key(topic)
    }

    fn check(&self, topic: &str, records: &[Record]) -> Vec<(i32, String)> {
        let known = self.known.read();
        let refused: Vec<(i32, String)> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                Schemas::invalid(&known, topic, r.value.as_ref()).map(|why| (i as i32, why))
            })
            .collect();
        if !refused.is_empty() {
            self.metrics.refused_by_schema(topic, refused.len() as u64);
        }
        refused
    }
}

/// Mirror the hub's schemas every `interval` until `stop`.
pub async fn refresh(
    schemas: Arc<Schemas>,
    client: RegistryClient,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        match schemas.refresh(&client).await {
            Ok(true) => tracing::info!(
                subjects = schemas.known.read().topics.len(),
                "the hub's schemas changed"
            ),
            Ok(false) => {}
            Err(e) => {
                schemas.metrics.schema_refresh_errors.inc();
                tracing::warn!(error = %format!("{e:#}"), "the hub's schema registry cannot be read; validating with the cached schemas");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::state::RecordCheck;

    const READING: &str = r#"{"type":"record","name":"Reading","fields":[{"name":"bar","type":"double"},{"name":"pump","type":"string"}]}"#;

    fn schemas(dir: &std::path::Path) -> Arc<Schemas> {
        let file = CacheFile {
            subjects: BTreeMap::from([("readings-value".into(), BTreeMap::from([(1, 7)]))]),
            schemas: BTreeMap::from([(7, READING.to_string())]),
        };
        std::fs::write(dir.join("cache.json"), serde_json::to_vec(&file).unwrap()).unwrap();
        Schemas::load(dir.to_path_buf(), Arc::new(EdgeMetrics::default())).unwrap()
    }

    fn record(value: Option<Bytes>) -> Record {
        crate::local::decoded((None, value, Default::default()))
    }

    #[test]
    fn values_are_checked_against_the_subjects_versions() {
        let dir = tempfile::tempdir().unwrap();
        let s = schemas(dir.path());
        assert!(s.checks("readings") && !s.checks("other"));
        let good = s
            .encode_json("readings", &serde_json::json!({"bar": 3.5, "pump": "p7"}))
            .unwrap()
            .unwrap();
        assert_eq!(&good[..5], &[0, 0, 0, 0, 7]);
        let mut trailing = BytesMut::from(&good[..]);
        trailing.put_u8(1);
        let mut other_id = BytesMut::from(&good[..]);
        other_id[4] = 8;
        let records = [
            record(Some(good.clone())),
            record(None),
            record(Some(Bytes::from_static(b"{\"bar\":1}"))),
            record(Some(other_id.freeze())),
            record(Some(trailing.freeze())),
            record(Some(Bytes::from_static(&[0, 0, 0, 0, 7, 1]))),
        ];
        let refused: Vec<i32> = s
            .check("readings", &records)
            .iter()
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(refused, vec![2, 3, 4, 5]);
    }

    #[test]
    fn json_that_does_not_fit_the_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = schemas(dir.path());
        let e = s
            .encode_json("readings", &serde_json::json!({"bar": "high"}))
            .unwrap()
            .unwrap_err();
        assert!(e.contains("does not match schema id 7"), "{e}");
        assert!(s.encode_json("other", &serde_json::json!({})).is_none());
    }
}
