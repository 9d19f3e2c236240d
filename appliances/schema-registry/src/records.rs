//! The registry's state as records of the compacted `_schemas` topic: JSON keys and values in
//! Confluent's layout (`{"keytype":"SCHEMA","subject":...,"version":...,"magic":1}`), so that a
//! record's key names what it sets and compaction keeps the newest value of each. A null value
//! (a tombstone) removes what the key names.
//!
//! One key is this registry's own: `ID_HIGH_WATER`, written with every new id. Compaction keeps
//! its newest value, so an id stays used after a permanent delete's tombstones have been
//! compacted away and the schema records that carried it are gone: ids are never reused.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::compat::Level;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Key {
    Schema {
        subject: String,
        version: i32,
        magic: u8,
    },
    Config {
        subject: Option<String>,
        magic: u8,
    },
    Mode {
        subject: Option<String>,
        magic: u8,
    },
    IdHighWater {
        magic: u8,
    },
    /// Written to learn the log's end (a read barrier); sets nothing.
    Noop {
        magic: u8,
    },
}

impl Key {
    pub fn schema(subject: &str, version: i32) -> Key {
        Key::Schema {
            subject: subject.to_string(),
            version,
            magic: 1,
        }
    }
    pub fn config(subject: Option<&str>) -> Key {
        Key::Config {
            subject: subject.map(str::to_string),
            magic: 0,
        }
    }
    pub fn mode(subject: Option<&str>) -> Key {
        Key::Mode {
            subject: subject.map(str::to_string),
            magic: 0,
        }
    }
    pub fn id_high_water() -> Key {
        Key::IdHighWater { magic: 0 }
    }
}

/// A schema reference: a named type defined by `subject`'s `version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: i32,
}

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaValue {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_set: Option<Json>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigValue {
    pub compatibility_level: Level,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    Readwrite,
    Readonly,
    Import,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        serde_json::from_value(Json::String(s.to_ascii_uppercase())).ok()
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Readwrite => "READWRITE",
            Mode::Readonly => "READONLY",
            Mode::Import => "IMPORT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeValue {
    pub mode: Mode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdHighWaterValue {
    pub id: i32,
}

/// A record's key and value bytes as `_schemas` holds them (`None`: a tombstone).
pub type RawRecord = (Vec<u8>, Option<Vec<u8>>);

/// A decoded record: what the key names and its new value (`None`: removed).
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Schema {
        subject: String,
        version: i32,
        value: Option<SchemaValue>,
    },
    Config {
        subject: Option<String>,
        value: Option<ConfigValue>,
    },
    Mode {
        subject: Option<String>,
        value: Option<ModeValue>,
    },
    IdHighWater(Option<IdHighWaterValue>),
    Noop,
}

/// Why a record of `_schemas` could not be decoded. Such a record is skipped with a log line
/// (it was not written by this registry), never applied half-way.
#[derive(Debug, thiserror::Error)]
#[error("undecodable _schemas record: {0}")]
pub struct BadRecord(String);

impl Record {
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Record, BadRecord> {
        let key: Key = serde_json::from_slice(key).map_err(|e| BadRecord(format!("key: {e}")))?;
        fn value_of<T: serde::de::DeserializeOwned>(
            v: Option<&[u8]>,
        ) -> Result<Option<T>, BadRecord> {
            v.map(|v| serde_json::from_slice(v).map_err(|e| BadRecord(format!("value: {e}"))))
                .transpose()
        }
        Ok(match key {
            Key::Schema {
                subject, version, ..
            } => {
                let value: Option<SchemaValue> = value_of(value)?;
                if let Some(v) = &value
                    && (v.subject != subject || v.version != version)
                {
                    return Err(BadRecord(format!(
                        "value names {}/{} under key {subject}/{version}",
                        v.subject, v.version
                    )));
                }
                Record::Schema {
                    subject,
                    version,
                    value,
                }
            }
            Key::Config { subject, .. } => Record::Config {
                subject,
                value: value_of(value)?,
            },
            Key::Mode { subject, .. } => Record::Mode {
                subject,
                value: value_of(value)?,
            },
            Key::IdHighWater { .. } => Record::IdHighWater(value_of(value)?),
            Key::Noop { .. } => Record::Noop,
        })
    }

    /// The key and value bytes to append.
    pub fn encode(&self) -> RawRecord {
        fn json<T: Serialize>(v: &T) -> Vec<u8> {
            serde_json::to_vec(v).expect("registry records serialize")
        }
        match self {
            Record::Schema {
                subject,
                version,
                value,
            } => (
                json(&Key::schema(subject, *version)),
                value.as_ref().map(json),
            ),
            Record::Config { subject, value } => (
                json(&Key::config(subject.as_deref())),
                value.as_ref().map(json),
            ),
            Record::Mode { subject, value } => (
                json(&Key::mode(subject.as_deref())),
                value.as_ref().map(json),
            ),
            Record::IdHighWater(value) => (json(&Key::id_high_water()), value.as_ref().map(json)),
            Record::Noop => (json(&Key::Noop { magic: 0 }), None),
        }
    }
}
