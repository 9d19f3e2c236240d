//! Schema validation at the branch: the hub's Avro schemas, mirrored to disk so that they
//! work through a WAN outage.
//!
//! Every `schema_refresh` the gateway asks the hub's registry for its subjects and the
//! versions of each `<topic>-value` and `<topic>-key` Avro subject it does not know yet (a version's schema
//! never changes, so it is fetched once), and writes what changed to
//! `<data_dir>/schemas/cache.json` (atomically). At start the file is read back, so a gateway
//! restarted during an outage validates as before.
//!
//! A topic with such a subject takes only values in Confluent's wire format (`0x00`, the
//! schema id, the Avro datum) whose id is one of the subject's versions and whose datum
//! decodes with it, whole; null values (tombstones) pass. Keys likewise for a topic with a
//! `<topic>-key` subject (null keys pass). Everything else is refused with
//! INVALID_RECORD, naming the record ([`broker::state::RecordCheck`], in the produce path
//! of Kafka clients and of the HTTP ingest alike). A schema registered at the hub after the
//! last refresh is unknown until the next one.
//!
//! A version with references (Confluent's schema references: named types registered under
//! other subjects) is fetched with the schemas it references, transitively (at most
//! [`REFERENCES_MAX`]), kept beside it in the cache, and parsed and read with them.
//! Subjects of another type than Avro are not validated (logged).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
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
/// Schemas one version references at most, transitively.
pub const REFERENCES_MAX: usize = 64;
const VERSIONS_MAX: usize = 1_000;
const SUFFIX: &str = "-value";
const KEY_SUFFIX: &str = "-key";

/// The topic a mirrored subject is of, and whether it is its key's.
fn subject_topic(subject: &str) -> Option<(&str, bool)> {
    let (topic, key) = match subject.strip_suffix(SUFFIX) {
        Some(t) => (t, false),
        None => (subject.strip_suffix(KEY_SUFFIX)?, true),
    };
    broker::topics::validate_name(topic).ok()?;
    Some((topic, key))
}

/// What is on disk: per subject its versions' ids, each id's schema text, and the texts of
/// the schemas it references (transitively).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct CacheFile {
    subjects: BTreeMap<String, BTreeMap<i32, i32>>,
    schemas: BTreeMap<i32, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    references: BTreeMap<i32, Vec<String>>,
}

/// A schema parsed with the schemas it references.
pub struct Parsed {
    pub schema: Schema,
    pub references: Vec<Schema>,
}

impl Parsed {
    /// Parse `text`, its names resolved against `references` (their texts, in any order).
    pub fn parse(text: &str, references: &[String]) -> Result<Parsed, String> {
        if references.is_empty() {
            let schema = Schema::parse_str(text).map_err(|e| e.to_string())?;
            return Ok(Parsed {
                schema,
                references: Vec::new(),
            });
        }
        let (schema, references) =
            Schema::parse_str_with_list(text, references.iter().map(String::as_str))
                .map_err(|e| e.to_string())?;
        Ok(Parsed { schema, references })
    }

    /// Every schema names resolve against: the referenced ones and this one.
    fn schemata(&self) -> Vec<&Schema> {
        self.references
            .iter()
            .chain(std::iter::once(&self.schema))
            .collect()
    }
}

/// A topic's schemas: the ids its subject's versions have, the latest last.
struct TopicSchemas {
    ids: BTreeSet<i32>,
    latest: i32,
}

#[derive(Default)]
struct Known {
    file: CacheFile,
    parsed: HashMap<i32, Arc<Parsed>>,
    topics: HashMap<String, TopicSchemas>,
    /// Topics with a key subject.
    keys: HashMap<String, TopicSchemas>,
}

impl Known {
    fn from_file(file: CacheFile) -> Known {
        let mut parsed = HashMap::new();
        for (id, text) in &file.schemas {
            let references = file.references.get(id).map_or(&[][..], Vec::as_slice);
            match Parsed::parse(text, references) {
                Ok(s) => {
                    parsed.insert(*id, Arc::new(s));
                }
                Err(e) => tracing::warn!(id, error = %e, "a cached schema does not parse; ignored"),
            }
        }
        let (mut topics, mut keys) = (HashMap::new(), HashMap::new());
        for (subject, versions) in &file.subjects {
            let Some((topic, key)) = subject_topic(subject) else {
                continue;
            };
            let ids: BTreeSet<i32> = versions
                .values()
                .copied()
                .filter(|id| parsed.contains_key(id))
                .collect();
            let latest = versions.values().rev().find(|id| ids.contains(id));
            if let Some(&latest) = latest {
                let map = if key { &mut keys } else { &mut topics };
                map.insert(topic.to_string(), TopicSchemas { ids, latest });
            }
        }
        Known {
            file,
            parsed,
            topics,
            keys,
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
        let subjects = known.topics.len() + known.keys.len();
        metrics.schema_subjects.set(subjects as i64);
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
        self.encode_with(false, topic, json)
    }

    /// [`Schemas::encode_json`] for a key, with the topic's key subject.
    pub fn encode_json_key(
        &self,
        topic: &str,
        json: &serde_json::Value,
    ) -> Option<Result<Bytes, String>> {
        self.encode_with(true, topic, json)
    }

    fn encode_with(
        &self,
        key: bool,
        topic: &str,
        json: &serde_json::Value,
    ) -> Option<Result<Bytes, String>> {
        let known = self.known.read();
        let map = if key { &known.keys } else { &known.topics };
        let t = map.get(topic)?;
        let schema = Arc::clone(&known.parsed[&t.latest]);
        let id = t.latest;
        drop(known);
        Some(encode(&schema, id, json))
    }

    /// Why `value` (or the key, with `key`) is not valid for `topic` when its subject
    /// exists, if it is not.
    fn invalid(known: &Known, key: bool, topic: &str, value: Option<&Bytes>) -> Option<String> {
        let (map, suffix, what) = match key {
            false => (&known.topics, SUFFIX, "value"),
            true => (&known.keys, KEY_SUFFIX, "key"),
        };
        let t = map.get(topic)?;
        let v = value?;
        if v.len() < 5 || v[0] != 0 {
            return Some(format!(
                "the {what} is not in Confluent's wire format (0x00, schema id, Avro): \
                 {topic}{suffix} is an Avro subject"
            ));
        }
        let id = i32::from_be_bytes([v[1], v[2], v[3], v[4]]);
        if !t.ids.contains(&id) {
            return Some(format!(
                "schema id {id} is not a version of subject {topic}{suffix}"
            ));
        }
        datum_error(&known.parsed[&id], id, &v[5..])
    }

    /// Ask the hub's registry for what changed; whether anything did.
    async fn refresh(&self, client: &RegistryClient) -> anyhow::Result<bool> {
        let mut subjects: Vec<String> = client.get("/subjects").await?;
        subjects.retain(|s| subject_topic(s).is_some());
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
                        if let Some(r) = old.references.get(id) {
                            file.references.insert(*id, r.clone());
                        }
                        *id
                    }
                    _ => match fetch(client, &subject, v).await? {
                        Some((id, schema, references)) => {
                            file.schemas.insert(id, schema);
                            if !references.is_empty() {
                                file.references.insert(id, references);
                            }
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
        let subjects = known.topics.len() + known.keys.len();
        self.metrics.schema_subjects.set(subjects as i64);
        *self.known.write() = known;
        Ok(true)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Version {
    id: i32,
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    subject: String,
    version: i32,
}

/// One version of a subject: its id, its schema and the texts of the schemas it references
/// (transitively); `None` unless they are all Avro and parse.
async fn fetch(
    client: &RegistryClient,
    subject: &str,
    version: i32,
) -> anyhow::Result<Option<(i32, String, Vec<String>)>> {
    let get = |subject: &str, version: i32| {
        let path = format!("/subjects/{subject}/versions/{version}");
        async move { client.get::<Version>(&path).await }
    };
    let avro = |v: &Version| v.schema_type.as_deref().is_none_or(|t| t == "AVRO");
    let v = get(subject, version).await?;
    let mut texts = Vec::new();
    let mut seen = BTreeSet::new();
    let mut next: Vec<(String, i32)> = v
        .references
        .iter()
        .map(|r| (r.subject.clone(), r.version))
        .collect();
    let mut fits = avro(&v);
    while let Some(r) = next.pop() {
        if !fits || !seen.insert(r.clone()) {
            continue;
        }
        if seen.len() > REFERENCES_MAX {
            fits = false;
            break;
        }
        let referenced = get(&r.0, r.1).await?;
        fits = avro(&referenced);
        next.extend(
            referenced
                .references
                .iter()
                .map(|x| (x.subject.clone(), x.version)),
        );
        texts.push(referenced.schema);
    }
    if !fits || Parsed::parse(&v.schema, &texts).is_err() {
        tracing::info!(
            subject,
            version,
            "not an Avro schema (or its references are not, or too many): not validated at the edge"
        );
        return Ok(None);
    }
    Ok(Some((v.id, v.schema, texts)))
}

/// Why `datum` is not exactly one Avro datum of `schema` (schema id `id`), if it is not.
/// Values come from the branch's applications: hostile bytes are an error, never a panic
/// (the `avro_datum` fuzz target).
pub fn datum_error(schema: &Parsed, id: i32, mut datum: &[u8]) -> Option<String> {
    let reader = GenericDatumReader::builder(&schema.schema)
        .writer_schemata(schema.schemata())
        .and_then(|b| b.build());
    let names = match ResolvedSchema::new_with_schemata(schema.schemata()) {
        Ok(r) => r,
        Err(e) => return Some(format!("schema id {id} does not resolve: {e}")),
    };
    match reader.and_then(|r| r.read_value(&mut datum)) {
        // apache-avro reads a string or bytes cut short at the end as null: the value must
        // also be one of the schema's.
        Ok(v) if !v.validate_with_names(&schema.schema, names.get_names()) => Some(format!(
            "the value does not match schema id {id}: cut short, or not of its types"
        )),
        Ok(_) if datum.is_empty() => None,
        Ok(_) => Some(format!(
            "the value holds {} bytes past its Avro datum (schema id {id})",
            datum.len()
        )),
        Err(e) => Some(format!("the value does not match schema id {id}: {e}")),
    }
}

/// `json` as an Avro datum of `schema`, framed as Confluent's serializers frame it.
fn encode(schema: &Parsed, id: i32, json: &serde_json::Value) -> Result<Bytes, String> {
    let value = apache_avro::types::Value::try_from(json.clone())
        .map_err(|e| format!("the value cannot be Avro: {e}"))?
        .resolve_schemata(&schema.schema, schema.schemata())
        .map_err(|e| format!("the value does not match schema id {id}: {e}"))?;
    let datum = GenericDatumWriter::builder(&schema.schema)
        .schemata(schema.schemata())
        .and_then(|b| b.build())
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
        let known = self.known.read();
        known.topics.contains_key(topic) || known.keys.contains_key(topic)
    }

    fn check(&self, topic: &str, records: &[Record]) -> Vec<(i32, String)> {
        let known = self.known.read();
        let refused: Vec<(i32, String)> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                Schemas::invalid(&known, false, topic, r.value.as_ref())
                    .or_else(|| Schemas::invalid(&known, true, topic, r.key.as_ref()))
                    .map(|why| (i as i32, why))
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
    const ALARM: &str = r#"{"type":"record","name":"Alarm","fields":[{"name":"level","type":"int"},{"name":"at","type":"Reading"}]}"#;

    fn schemas(dir: &std::path::Path) -> Arc<Schemas> {
        let file = CacheFile {
            subjects: BTreeMap::from([
                ("readings-value".into(), BTreeMap::from([(1, 7)])),
                ("alarms-value".into(), BTreeMap::from([(1, 9)])),
                ("alarms-key".into(), BTreeMap::from([(1, 11)])),
            ]),
            schemas: BTreeMap::from([
                (7, READING.to_string()),
                (9, ALARM.to_string()),
                (11, r#""string""#.to_string()),
            ]),
            // Alarm names the Reading type, registered under readings-value.
            references: BTreeMap::from([(9, vec![READING.to_string()])]),
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

    /// A topic with a key subject takes only keys of it (null keys pass); JSON keys are
    /// encoded with it.
    #[test]
    fn keys_are_checked_against_the_key_subject() {
        let dir = tempfile::tempdir().unwrap();
        let s = schemas(dir.path());
        let key = s
            .encode_json_key("alarms", &serde_json::json!("pump-7"))
            .unwrap()
            .unwrap();
        assert_eq!(&key[..5], &[0, 0, 0, 0, 11]);
        assert!(
            s.encode_json_key("readings", &serde_json::json!("x"))
                .is_none()
        );
        assert!(
            s.encode_json_key("alarms", &serde_json::json!(7))
                .unwrap()
                .is_err()
        );
        let alarm = serde_json::json!({"level": 3, "at": {"bar": 9.5, "pump": "p2"}});
        let value = s.encode_json("alarms", &alarm).unwrap().unwrap();
        let keyed = |key: Option<Bytes>| {
            let mut r = record(Some(value.clone()));
            r.key = key;
            r
        };
        let records = [
            keyed(Some(key)),
            keyed(None),
            keyed(Some(Bytes::from_static(b"pump-7"))),
        ];
        let refused = s.check("alarms", &records);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, 2);
        assert!(
            refused[0]
                .1
                .contains("the key is not in Confluent's wire format")
        );
        // A topic without a key subject takes any key.
        let reading = serde_json::json!({"bar": 1.0, "pump": "p"});
        let mut r = record(Some(s.encode_json("readings", &reading).unwrap().unwrap()));
        r.key = Some(Bytes::from_static(b"raw"));
        assert!(s.check("readings", &[r]).is_empty());
    }

    /// A schema that names a type registered under another subject (a reference) is parsed,
    /// read and written with the schema it references.
    #[test]
    fn a_schema_with_references_validates_and_encodes() {
        let dir = tempfile::tempdir().unwrap();
        let s = schemas(dir.path());
        assert!(s.checks("alarms"));
        let alarm = serde_json::json!({"level": 3, "at": {"bar": 9.5, "pump": "p2"}});
        let good = s.encode_json("alarms", &alarm).unwrap().unwrap();
        assert_eq!(&good[..5], &[0, 0, 0, 0, 9]);
        let reading = s
            .encode_json("readings", &serde_json::json!({"bar": 1.0, "pump": "p"}))
            .unwrap()
            .unwrap();
        let mut short = BytesMut::from(&good[..good.len() - 1]);
        short[4] = 9;
        let records = [
            record(Some(good)),
            record(Some(reading)),
            record(Some(short.freeze())),
        ];
        let refused: Vec<i32> = s
            .check("alarms", &records)
            .iter()
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(refused, vec![1, 2], "another subject's id, a cut datum");
        let bad = serde_json::json!({"level": 3, "at": {"bar": "x"}});
        assert!(s.encode_json("alarms", &bad).unwrap().is_err());
    }
}
