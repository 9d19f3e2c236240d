//! The registry's state, rebuilt on every broker by applying the `_schemas` records in offset
//! order ([`Store::apply`]), and the checks that turn a request into the records to append
//! ([`Store::plan_register`] and friends). Pure: no I/O, no clock. The writer (the leader of
//! `_schemas`, one request at a time) plans against a store that has applied the whole log,
//! appends the planned records, and answers once the store has applied them, so two
//! registrations can never be given one id or both pass a compatibility check that only one
//! of them should.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use crate::avro::Parsed;
use crate::compat::{self, Level, Resolved};
use crate::error::RegistryError;
use crate::records::{
    ConfigValue, IdHighWaterValue, Mode, ModeValue, Record, Reference, SchemaValue,
};

/// Limits that keep one registry's memory bounded on every broker.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub schema_bytes_max: usize,
    pub subjects_max: usize,
    pub versions_per_subject_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            schema_bytes_max: 1 << 20,
            subjects_max: 100_000,
            versions_per_subject_max: 10_000,
        }
    }
}

/// What a registration asks for (the body of `POST /subjects/{s}/versions`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub schema: String,
    #[serde(default)]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub references: Vec<Reference>,
    /// Only in IMPORT mode: the id and version to register under.
    #[serde(default)]
    pub id: Option<i32>,
    #[serde(default)]
    pub version: Option<i32>,
    #[serde(default)]
    pub metadata: Option<Json>,
    #[serde(default)]
    pub rule_set: Option<Json>,
}

/// One version of a subject as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionView {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema: String,
    pub references: Vec<Reference>,
    pub deleted: bool,
    pub metadata: Option<Json>,
    pub rule_set: Option<Json>,
}

/// Which version a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(i32),
}

impl VersionSpec {
    pub fn parse(s: &str) -> Result<VersionSpec, RegistryError> {
        if s == "latest" || s == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match s.parse::<i32>() {
            Ok(n) if n >= 1 => Ok(VersionSpec::Number(n)),
            _ => Err(RegistryError::InvalidVersion(s.to_string())),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Subject {
    versions: BTreeMap<i32, SchemaValue>,
}

impl Subject {
    fn live(&self) -> impl DoubleEndedIterator<Item = &SchemaValue> {
        self.versions.values().filter(|v| !v.deleted)
    }
}

/// The registry's state.
#[derive(Debug, Default)]
pub struct Store {
    subjects: BTreeMap<String, Subject>,
    /// Which (subject, version) records carry each id (an id's schema text is theirs).
    ids: BTreeMap<i32, BTreeSet<(String, i32)>>,
    /// The highest id ever given: ids are never reused.
    id_high_water: i32,
    global_config: Option<ConfigValue>,
    subject_config: BTreeMap<String, ConfigValue>,
    global_mode: Option<Mode>,
    subject_mode: BTreeMap<String, Mode>,
    limits: Limits,
    /// Subjects with a live (not soft-deleted) version, kept as records apply: metrics read
    /// it on every request, and counting would walk every subject.
    live_subjects: usize,
}

impl Store {
    pub fn new(limits: Limits) -> Store {
        Store {
            limits,
            ..Store::default()
        }
    }

    /// Apply one record of `_schemas` (in offset order).
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Schema {
                subject,
                version,
                value,
            } => self.apply_schema(subject, version, value),
            Record::Config {
                subject: None,
                value,
            } => self.global_config = value,
            Record::Config {
                subject: Some(s),
                value: Some(v),
            } => {
                self.subject_config.insert(s, v);
            }
            Record::Config {
                subject: Some(s),
                value: None,
            } => {
                self.subject_config.remove(&s);
            }
            Record::Mode {
                subject: None,
                value,
            } => self.global_mode = value.map(|m| m.mode),
            Record::Mode {
                subject: Some(s),
                value: Some(m),
            } => {
                self.subject_mode.insert(s, m.mode);
            }
            Record::Mode {
                subject: Some(s),
                value: None,
            } => {
                self.subject_mode.remove(&s);
            }
            Record::IdHighWater(Some(IdHighWaterValue { id })) => {
                self.id_high_water = self.id_high_water.max(id);
            }
            Record::IdHighWater(None) | Record::Noop => {}
        }
    }

    fn apply_schema(&mut self, subject: String, version: i32, value: Option<SchemaValue>) {
        let was_live = self
            .subjects
            .get(&subject)
            .is_some_and(|s| s.live().next().is_some());
        self.apply_schema_version(&subject, version, value);
        let is_live = self
            .subjects
            .get(&subject)
            .is_some_and(|s| s.live().next().is_some());
        match (was_live, is_live) {
            (false, true) => self.live_subjects += 1,
            (true, false) => self.live_subjects -= 1,
            _ => {}
        }
        debug_assert_eq!(
            self.live_subjects,
            self.subjects
                .values()
                .filter(|s| s.live().next().is_some())
                .count()
        );
    }

    fn apply_schema_version(&mut self, subject: &str, version: i32, value: Option<SchemaValue>) {
        let subject = subject.to_string();
        let entry = self.subjects.entry(subject.clone()).or_default();
        if let Some(old) = entry.versions.remove(&version)
            && let Some(carriers) = self.ids.get_mut(&old.id)
        {
            carriers.remove(&(subject.clone(), version));
            if carriers.is_empty() {
                self.ids.remove(&old.id);
            }
        }
        if let Some(v) = value {
            self.id_high_water = self.id_high_water.max(v.id);
            self.ids
                .entry(v.id)
                .or_default()
                .insert((subject.clone(), version));
            entry.versions.insert(version, v);
        }
        if entry.versions.is_empty() {
            self.subjects.remove(&subject);
        }
    }

    // ----- reads -----

    pub fn subjects(&self, deleted: bool, prefix: &str) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(name, s)| name.starts_with(prefix) && (deleted || s.live().next().is_some()))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn subject(&self, subject: &str, deleted: bool) -> Result<&Subject, RegistryError> {
        self.subjects
            .get(subject)
            .filter(|s| deleted || s.live().next().is_some())
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))
    }

    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<i32>, RegistryError> {
        let s = self.subject(subject, deleted)?;
        Ok(s.versions
            .values()
            .filter(|v| deleted || !v.deleted)
            .map(|v| v.version)
            .collect())
    }

    pub fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        deleted: bool,
    ) -> Result<VersionView, RegistryError> {
        let s = self.subject(subject, deleted)?;
        let found = match spec {
            VersionSpec::Latest => s.versions.values().rev().find(|v| deleted || !v.deleted),
            VersionSpec::Number(n) => s.versions.get(&n).filter(|v| deleted || !v.deleted),
        };
        let v = found.ok_or_else(|| {
            RegistryError::VersionNotFound(match spec {
                VersionSpec::Latest => "latest".into(),
                VersionSpec::Number(n) => n.to_string(),
            })
        })?;
        Ok(view(v))
    }

    /// The schema with id `id`, as any version carrying it has it.
    pub fn schema_by_id(&self, id: i32) -> Result<VersionView, RegistryError> {
        self.ids
            .get(&id)
            .and_then(|carriers| carriers.iter().next())
            .and_then(|(s, v)| self.subjects.get(s)?.versions.get(v))
            .map(view)
            .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
    }

    /// Every (subject, version) carrying `id`.
    pub fn versions_of_id(
        &self,
        id: i32,
        deleted: bool,
    ) -> Result<Vec<(String, i32)>, RegistryError> {
        let carriers = self
            .ids
            .get(&id)
            .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))?;
        Ok(carriers
            .iter()
            .filter(|(s, v)| {
                deleted || self.subjects[s].versions.get(v).is_some_and(|x| !x.deleted)
            })
            .cloned()
            .collect())
    }

    /// Ids of the schemas that reference `subject`'s `version`.
    pub fn referenced_by(&self, subject: &str, version: i32) -> Vec<i32> {
        let mut out = BTreeSet::new();
        for s in self.subjects.values() {
            for v in s.live() {
                if v.references
                    .iter()
                    .any(|r| r.subject == subject && r.version == version)
                {
                    out.insert(v.id);
                }
            }
        }
        out.into_iter().collect()
    }

    /// The compatibility level in force for `subject` (its own, else the global one, else
    /// BACKWARD, Confluent's default).
    pub fn level(&self, subject: Option<&str>) -> Level {
        subject
            .and_then(|s| self.subject_config.get(s))
            .or(self.global_config.as_ref())
            .map_or(Level::Backward, |c| c.compatibility_level)
    }

    pub fn config(
        &self,
        subject: Option<&str>,
        default_to_global: bool,
    ) -> Result<ConfigValue, RegistryError> {
        let global = || {
            self.global_config.clone().unwrap_or(ConfigValue {
                compatibility_level: Level::Backward,
                normalize: None,
            })
        };
        match subject {
            None => Ok(global()),
            Some(s) => match self.subject_config.get(s) {
                Some(c) => Ok(c.clone()),
                None if default_to_global => Ok(global()),
                None => Err(RegistryError::NoSubjectCompatibility(s.to_string())),
            },
        }
    }

    pub fn mode(
        &self,
        subject: Option<&str>,
        default_to_global: bool,
    ) -> Result<Mode, RegistryError> {
        let global = self.global_mode.unwrap_or(Mode::Readwrite);
        match subject {
            None => Ok(global),
            Some(s) => match self.subject_mode.get(s) {
                Some(m) => Ok(*m),
                None if default_to_global => Ok(global),
                None => Err(RegistryError::NoSubjectMode(s.to_string())),
            },
        }
    }

    /// The texts of `references`, in order; every one must name a live version.
    fn reference_texts(&self, references: &[Reference]) -> Result<Vec<String>, RegistryError> {
        references
            .iter()
            .map(|r| {
                self.version(&r.subject, VersionSpec::Number(r.version), false)
                    .map(|v| v.schema)
                    .map_err(|_| {
                        RegistryError::InvalidSchema(format!(
                            "Invalid schema: reference '{}' to subject '{}' version {} does not exist",
                            r.name, r.subject, r.version
                        ))
                    })
            })
            .collect()
    }

    /// Parse a schema with its references (42201 when it is not valid Avro).
    pub fn parse(&self, req: &RegisterRequest) -> Result<Parsed, RegistryError> {
        match req
            .schema_type
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("AVRO") => {}
            Some(other) => return Err(RegistryError::UnsupportedSchemaType(other.to_string())),
        }
        let texts = self.reference_texts(&req.references)?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        Parsed::parse(&req.schema, &refs, self.limits.schema_bytes_max)
            .map_err(|e| RegistryError::InvalidSchema(e.to_string()))
    }

    /// `POST /subjects/{s}` (is this schema registered under the subject?).
    pub fn lookup(
        &self,
        subject: &str,
        req: &RegisterRequest,
        deleted: bool,
    ) -> Result<VersionView, RegistryError> {
        let s = self.subject(subject, deleted)?;
        let canonical = self.parse(req)?.canonical();
        s.versions
            .values()
            .rev()
            .find(|v| {
                (deleted || !v.deleted) && v.schema == canonical && v.references == req.references
            })
            .map(view)
            .ok_or_else(|| RegistryError::SchemaNotFound(String::new()))
    }

    /// Reasons `req` is incompatible with `subject`'s live versions under its level (empty:
    /// compatible). Also `POST /compatibility/subjects/{s}/versions/{v}`, against one version
    /// (`against`) or the ones the level names.
    pub fn incompatibilities(
        &self,
        subject: &str,
        req: &RegisterRequest,
        against: Option<VersionSpec>,
    ) -> Result<Vec<String>, RegistryError> {
        let parsed = self.parse(req)?;
        let level = self.level(Some(subject));
        let history: Vec<&SchemaValue> = match (self.subjects.get(subject), against) {
            (None, _) => vec![],
            (Some(s), None) => s.live().collect(),
            (Some(_), Some(spec)) => {
                let v = self.version(subject, spec, false)?;
                vec![&self.subjects[subject].versions[&v.version]]
            }
        };
        let parsed_history: Vec<(i32, Parsed)> = history
            .iter()
            .map(|v| {
                let req = RegisterRequest {
                    schema: v.schema.clone(),
                    references: v.references.clone(),
                    ..Default::default()
                };
                self.parse(&req).map(|p| (v.version, p))
            })
            .collect::<Result<_, _>>()?;
        let names: Vec<_> = parsed_history
            .iter()
            .map(|(_, p)| p.names())
            .collect::<Result<_, _>>()
            .map_err(|e| RegistryError::Store(e.to_string()))?;
        let existing: Vec<(i32, Resolved<'_>)> = parsed_history
            .iter()
            .zip(&names)
            .map(|((v, p), n)| {
                (
                    *v,
                    Resolved {
                        schema: &p.schema,
                        names: n,
                    },
                )
            })
            .collect();
        let new_names = parsed
            .names()
            .map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
        let level = if against.is_some() && level.transitive() {
            non_transitive(level)
        } else {
            level
        };
        Ok(compat::check_level(
            level,
            &Resolved {
                schema: &parsed.schema,
                names: &new_names,
            },
            &existing,
        ))
    }

    // ----- writes: checks and the records to append -----

    fn writable(&self, subject: &str, importing: bool) -> Result<(), RegistryError> {
        let mode = self.mode(Some(subject), true)?;
        match (mode, importing) {
            (Mode::Readonly, _) => Err(RegistryError::OperationNotPermitted(format!(
                "Subject {subject} is in read-only mode"
            ))),
            (Mode::Readwrite, true) => Err(RegistryError::OperationNotPermitted(format!(
                "Subject {subject} is not in import mode: a schema id may only be given in IMPORT mode"
            ))),
            _ => Ok(()),
        }
    }

    /// `POST /subjects/{s}/versions`: the id the schema has or gets, and the records that
    /// register it (none when it is already registered under the subject).
    pub fn plan_register(
        &self,
        subject: &str,
        req: &RegisterRequest,
    ) -> Result<(i32, Vec<Record>), RegistryError> {
        let importing = req.id.is_some_and(|id| id >= 0);
        self.writable(subject, importing)?;
        let canonical = self.parse(req)?.canonical();
        let existing = self.subjects.get(subject);
        if !importing
            && let Some(v) = existing.and_then(|s| {
                s.live()
                    .rev()
                    .find(|v| v.schema == canonical && v.references == req.references)
            })
        {
            return Ok((v.id, vec![]));
        }
        if self.mode(Some(subject), true)? != Mode::Import {
            let reasons = self.incompatibilities(subject, req, None)?;
            if !reasons.is_empty() {
                return Err(RegistryError::Incompatible {
                    subject: subject.to_string(),
                    details: reasons.join(", "),
                });
            }
        }
        if existing.is_none() && self.subjects.len() >= self.limits.subjects_max {
            return Err(RegistryError::OperationNotPermitted(format!(
                "the registry holds its limit of {} subjects",
                self.limits.subjects_max
            )));
        }
        let last = existing
            .and_then(|s| s.versions.keys().next_back().copied())
            .unwrap_or(0);
        if existing.is_some_and(|s| s.versions.len() >= self.limits.versions_per_subject_max) {
            return Err(RegistryError::OperationNotPermitted(format!(
                "subject {subject} holds its limit of {} versions",
                self.limits.versions_per_subject_max
            )));
        }
        let version = match req.version {
            Some(v) if importing && v >= 1 => v,
            _ => last + 1,
        };
        let (id, new_id) = match req.id.filter(|id| *id >= 0) {
            Some(id) => {
                if let Ok(other) = self.schema_by_id(id)
                    && other.schema != canonical
                {
                    return Err(RegistryError::OperationNotPermitted(format!(
                        "id {id} already holds another schema"
                    )));
                }
                (id, id > self.id_high_water)
            }
            None => match self.id_of(&canonical, &req.references) {
                Some(id) => (id, false),
                None => (
                    self.id_high_water
                        .checked_add(1)
                        .ok_or_else(|| RegistryError::Store("schema ids exhausted".into()))?,
                    true,
                ),
            },
        };
        let mut records = vec![];
        if new_id {
            records.push(Record::IdHighWater(Some(IdHighWaterValue { id })));
        }
        records.push(Record::Schema {
            subject: subject.to_string(),
            version,
            value: Some(SchemaValue {
                subject: subject.to_string(),
                version,
                id,
                schema: canonical,
                schema_type: None,
                references: req.references.clone(),
                deleted: false,
                metadata: req.metadata.clone(),
                rule_set: req.rule_set.clone(),
            }),
        });
        Ok((id, records))
    }

    /// The id an identical schema (text and references) already has, under any subject.
    fn id_of(&self, canonical: &str, references: &[Reference]) -> Option<i32> {
        self.ids.iter().find_map(|(id, carriers)| {
            let (s, v) = carriers.iter().next()?;
            let v = self.subjects.get(s)?.versions.get(v)?;
            (v.schema == canonical && v.references == references).then_some(*id)
        })
    }

    /// `DELETE /subjects/{s}/versions/{v}[?permanent=true]`: the version deleted, and the
    /// records that do it. A permanent delete needs a soft delete first (Confluent's rule).
    pub fn plan_delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<(i32, Vec<Record>), RegistryError> {
        self.writable(subject, false)?;
        let v = self.version(subject, spec, permanent)?;
        if !self.referenced_by(subject, v.version).is_empty() {
            return Err(RegistryError::ReferenceExists {
                subject: subject.to_string(),
                version: v.version,
            });
        }
        let record = |value| Record::Schema {
            subject: subject.to_string(),
            version: v.version,
            value,
        };
        match (permanent, v.deleted) {
            (false, true) => Err(RegistryError::VersionSoftDeleted {
                subject: subject.to_string(),
                version: v.version,
            }),
            (false, false) => {
                let mut value = self.subjects[subject].versions[&v.version].clone();
                value.deleted = true;
                Ok((v.version, vec![record(Some(value))]))
            }
            (true, false) => Err(RegistryError::VersionNotSoftDeleted {
                subject: subject.to_string(),
                version: v.version,
            }),
            (true, true) => Ok((v.version, vec![record(None)])),
        }
    }

    /// `DELETE /subjects/{s}[?permanent=true]`: the versions deleted and the records.
    pub fn plan_delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<i32>, Vec<Record>), RegistryError> {
        self.writable(subject, false)?;
        let s = self.subject(subject, permanent)?;
        let live: Vec<&SchemaValue> = s.live().collect();
        if permanent && !live.is_empty() {
            return Err(RegistryError::SubjectNotSoftDeleted(subject.to_string()));
        }
        if !permanent && live.is_empty() {
            return Err(RegistryError::SubjectSoftDeleted(subject.to_string()));
        }
        for v in s.versions.values() {
            if !self.referenced_by(subject, v.version).is_empty() {
                return Err(RegistryError::ReferenceExists {
                    subject: subject.to_string(),
                    version: v.version,
                });
            }
        }
        let mut versions = vec![];
        let mut records = vec![];
        for v in s.versions.values() {
            versions.push(v.version);
            let value = (!permanent).then(|| SchemaValue {
                deleted: true,
                ..v.clone()
            });
            records.push(Record::Schema {
                subject: subject.to_string(),
                version: v.version,
                value,
            });
        }
        if permanent {
            // The subject's own settings go with it.
            if self.subject_config.contains_key(subject) {
                records.push(Record::Config {
                    subject: Some(subject.to_string()),
                    value: None,
                });
            }
            if self.subject_mode.contains_key(subject) {
                records.push(Record::Mode {
                    subject: Some(subject.to_string()),
                    value: None,
                });
            }
        }
        Ok((versions, records))
    }

    /// `PUT /config[/{s}]`.
    pub fn plan_config(
        &self,
        subject: Option<&str>,
        level: &str,
        normalize: Option<bool>,
    ) -> Result<(ConfigValue, Vec<Record>), RegistryError> {
        let level = Level::parse(level).ok_or(RegistryError::InvalidCompatibility)?;
        let value = ConfigValue {
            compatibility_level: level,
            normalize,
        };
        Ok((
            value.clone(),
            vec![Record::Config {
                subject: subject.map(str::to_string),
                value: Some(value),
            }],
        ))
    }

    /// `DELETE /config[/{s}]`: the level that was in force, and the records.
    pub fn plan_delete_config(
        &self,
        subject: Option<&str>,
    ) -> Result<(ConfigValue, Vec<Record>), RegistryError> {
        let was = self.config(subject, subject.is_none())?;
        Ok((
            was,
            vec![Record::Config {
                subject: subject.map(str::to_string),
                value: None,
            }],
        ))
    }

    /// `PUT /mode[/{s}]`. IMPORT only on an empty registry or subject, unless forced.
    pub fn plan_mode(
        &self,
        subject: Option<&str>,
        mode: &str,
        force: bool,
    ) -> Result<(Mode, Vec<Record>), RegistryError> {
        let mode = Mode::parse(mode).ok_or(RegistryError::InvalidMode)?;
        let empty = match subject {
            None => self.subjects.is_empty(),
            Some(s) => !self.subjects.contains_key(s),
        };
        if mode == Mode::Import && !empty && !force {
            return Err(RegistryError::OperationNotPermitted(
                "Cannot import since found existing subjects".to_string(),
            ));
        }
        Ok((
            mode,
            vec![Record::Mode {
                subject: subject.map(str::to_string),
                value: Some(ModeValue { mode }),
            }],
        ))
    }

    /// `DELETE /mode/{s}`.
    pub fn plan_delete_mode(&self, subject: &str) -> Result<(Mode, Vec<Record>), RegistryError> {
        let was = self.mode(Some(subject), false)?;
        Ok((
            was,
            vec![Record::Mode {
                subject: Some(subject.to_string()),
                value: None,
            }],
        ))
    }

    /// Counts for metrics: (subjects with a live version, distinct schema ids).
    pub fn counts(&self) -> (usize, usize) {
        (self.live_subjects, self.ids.len())
    }
}

fn non_transitive(level: Level) -> Level {
    match level {
        Level::BackwardTransitive => Level::Backward,
        Level::ForwardTransitive => Level::Forward,
        Level::FullTransitive => Level::Full,
        other => other,
    }
}

fn view(v: &SchemaValue) -> VersionView {
    VersionView {
        subject: v.subject.clone(),
        version: v.version,
        id: v.id,
        schema: v.schema.clone(),
        references: v.references.clone(),
        deleted: v.deleted,
        metadata: v.metadata.clone(),
        rule_set: v.rule_set.clone(),
    }
}
