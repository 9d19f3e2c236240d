//! The Confluent REST API over the [`Store`]: routing, request bodies and the answers' JSON,
//! independent of HTTP (the server in [`crate::server`] carries requests here), so that every
//! route is tested without sockets.
//!
//! Reads are answered from this broker's copy of the store. Writes are planned and appended by
//! the one writer ([`Backend::writer`]): here under `write_lock` when this broker is it, else
//! forwarded to it unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::error::RegistryError;
use crate::metrics::{RegistryMetrics, RequestLabels, route_template};
use crate::records::Record;
use crate::store::{RegisterRequest, Store, VersionSpec, VersionView};

/// Confluent's content type; plain `application/json` is accepted as well.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Who appends to `_schemas` now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// This broker (it leads `_schemas`).
    Local,
    /// Another broker's registry, at this base URL (`http://host:8081`).
    Remote(String),
    /// No writer known here (no leader elected, or one whose registry this broker cannot
    /// reach yet): writes answer 50003 and the client retries.
    Unknown,
}

/// What the broker provides: the log the records go to.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    fn writer(&self) -> Writer;
    /// Whether this broker's store holds the registry's state (a replica of its log); if
    /// not, reads are forwarded to the writer too.
    fn reads_here(&self) -> bool {
        true
    }
    /// As the writer: make sure the store has applied the whole log (after this broker became
    /// the writer, its log may hold records the store has not applied yet).
    async fn catch_up(&self) -> Result<()>;
    /// As the writer: append `records` (one batch, acks=all) and return once the store has
    /// applied them.
    async fn write(&self, records: Vec<Record>) -> Result<()>;
}

/// An HTTP request as the API sees it.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as it arrived (percent-encoded; decoded here segment by segment, so that a
    /// subject may hold a `/`).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    /// Already forwarded by another broker: answered here or refused, never forwarded again.
    pub forwarded: bool,
}

/// The answer: a status and a JSON body, or "forward this request to the writer".
#[derive(Debug)]
pub enum Answer {
    Json(u16, Json),
    Forward(String),
}

impl Answer {
    fn ok(body: Json) -> Answer {
        Answer::Json(200, body)
    }
    fn error(e: &RegistryError) -> Answer {
        Answer::Json(
            e.codes().0,
            serde_json::to_value(e.body()).expect("error bodies serialize"),
        )
    }
}

pub struct Registry {
    pub store: Arc<RwLock<Store>>,
    backend: Arc<dyn Backend>,
    metrics: Option<Arc<RegistryMetrics>>,
    /// Held by the writer from planning to applied: one write at a time, each planned against
    /// the state every earlier write left (no two registrations get one id).
    write_lock: tokio::sync::Mutex<()>,
}

type Result<T> = std::result::Result<T, RegistryError>;

impl Registry {
    pub fn new(store: Arc<RwLock<Store>>, backend: Arc<dyn Backend>) -> Registry {
        Registry {
            store,
            backend,
            metrics: None,
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Count requests and the store's size in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<RegistryMetrics>) -> Registry {
        self.metrics = Some(metrics);
        self
    }

    pub async fn handle(&self, req: Request<'_>) -> Answer {
        let method = req.method.to_string();
        let (answer, route) = self.answer(req).await;
        if let Some(m) = &self.metrics {
            // 0: forwarded to the writer (its status is counted there).
            let status = match &answer {
                Answer::Json(status, _) => *status,
                Answer::Forward(_) => 0,
            };
            let labels = RequestLabels {
                method,
                route: route.to_string(),
                status,
            };
            m.requests.get_or_create(&labels).inc();
            let (subjects, schemas) = self.store.read().counts();
            m.subjects.set(subjects as i64);
            m.schemas.set(schemas as i64);
        }
        answer
    }

    /// The answer and the route template it was routed by.
    async fn answer(&self, req: Request<'_>) -> (Answer, &'static str) {
        let segments = crate::gate::segments(req.path);
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let route = route_template(&segs);
        let query = Query::parse(req.query);
        let write = !matches!(req.method, "GET" | "HEAD")
            && !matches!(segs.as_slice(), ["compatibility", ..] | ["subjects", _]);
        if write || !self.backend.reads_here() {
            match self.backend.writer() {
                Writer::Local => {}
                Writer::Remote(_) if req.forwarded => {
                    let e = RegistryError::Forwarding(
                        "the writer moved while the request was forwarded; retry".into(),
                    );
                    return (Answer::error(&e), route);
                }
                Writer::Remote(url) => return (Answer::Forward(url), route),
                Writer::Unknown => {
                    let e = RegistryError::Forwarding(
                        "this broker cannot answer this itself (it does not lead _schemas, or \
                         holds no replica of it) and knows no registry that can; retry"
                            .into(),
                    );
                    return (Answer::error(&e), route);
                }
            }
        }
        let result = if write {
            let _one_at_a_time = self.write_lock.lock().await;
            match self.backend.catch_up().await {
                Ok(()) => self.route(req.method, &segs, &query, req.body).await,
                Err(e) => Err(e),
            }
        } else {
            self.route(req.method, &segs, &query, req.body).await
        };
        let answer = match result {
            Ok(body) => Answer::ok(body),
            Err(e) => Answer::error(&e),
        };
        (answer, route)
    }

    async fn route(&self, method: &str, segs: &[&str], q: &Query, body: &[u8]) -> Result<Json> {
        let deleted = q.flag("deleted");
        match (method, segs) {
            ("GET", []) => Ok(json!({})),
            ("GET", ["schemas", "types"]) => Ok(json!(["AVRO"])),
            ("GET", ["subjects"]) => Ok(json!(
                self.store
                    .read()
                    .subjects(deleted, q.get("subjectPrefix").unwrap_or(""))
            )),
            ("GET", ["subjects", s, "versions"]) => {
                Ok(json!(self.store.read().versions(s, deleted)?))
            }
            ("POST", ["subjects", s, "versions"]) => {
                let req: RegisterRequest = parse_body(body)?;
                let (id, records) = self.store.read().plan_register(s, &req)?;
                self.write(records).await?;
                Ok(json!({ "id": id }))
            }
            ("GET", ["subjects", s, "versions", v]) => Ok(version_json(
                &self
                    .store
                    .read()
                    .version(s, VersionSpec::parse(v)?, deleted)?,
            )),
            ("GET", ["subjects", s, "versions", v, "schema"]) => {
                let view = self
                    .store
                    .read()
                    .version(s, VersionSpec::parse(v)?, deleted)?;
                raw_schema(&view.schema)
            }
            ("GET", ["subjects", s, "versions", v, "referencedby"]) => {
                let store = self.store.read();
                let view = store.version(s, VersionSpec::parse(v)?, true)?;
                Ok(json!(store.referenced_by(s, view.version)))
            }
            ("DELETE", ["subjects", s, "versions", v]) => {
                let (version, records) = self.store.read().plan_delete_version(
                    s,
                    VersionSpec::parse(v)?,
                    q.flag("permanent"),
                )?;
                self.write(records).await?;
                Ok(json!(version))
            }
            ("POST", ["subjects", s]) => {
                let req: RegisterRequest = parse_body(body)?;
                Ok(version_json(&self.store.read().lookup(s, &req, deleted)?))
            }
            ("DELETE", ["subjects", s]) => {
                let (versions, records) = self
                    .store
                    .read()
                    .plan_delete_subject(s, q.flag("permanent"))?;
                self.write(records).await?;
                Ok(json!(versions))
            }
            ("GET", ["schemas", "ids", id]) => {
                let view = self.store.read().schema_by_id(parse_id(id)?)?;
                let mut out = json!({ "schema": view.schema });
                if !view.references.is_empty() {
                    out["references"] = json!(view.references);
                }
                Ok(out)
            }
            ("GET", ["schemas", "ids", id, "schema"]) => {
                raw_schema(&self.store.read().schema_by_id(parse_id(id)?)?.schema)
            }
            ("GET", ["schemas", "ids", id, "versions"]) => {
                let versions = self.store.read().versions_of_id(parse_id(id)?, deleted)?;
                Ok(json!(
                    versions
                        .into_iter()
                        .map(|(s, v)| json!({"subject": s, "version": v}))
                        .collect::<Vec<_>>()
                ))
            }
            ("GET", ["schemas", "ids", id, "subjects"]) => {
                let versions = self.store.read().versions_of_id(parse_id(id)?, deleted)?;
                let mut subjects: Vec<String> = versions.into_iter().map(|(s, _)| s).collect();
                subjects.dedup();
                Ok(json!(subjects))
            }
            ("POST", ["compatibility", "subjects", s, "versions", rest @ ..]) => {
                let req: RegisterRequest = parse_body(body)?;
                let against = match rest {
                    [] => None,
                    [v] => Some(VersionSpec::parse(v)?),
                    _ => return Err(not_found_route()),
                };
                let store = self.store.read();
                if let Some(spec) = against
                    && store.subjects(false, "").iter().any(|x| x == s)
                {
                    store.version(s, spec, false)?;
                }
                let messages = store.incompatibilities(s, &req, against)?;
                let mut out = json!({ "is_compatible": messages.is_empty() });
                if q.flag("verbose") {
                    out["messages"] = json!(messages);
                }
                Ok(out)
            }
            ("GET", ["config"]) => Ok(config_json(
                &self.store.read().config(None, true)?,
                "compatibilityLevel",
            )),
            ("GET", ["config", s]) => Ok(config_json(
                &self
                    .store
                    .read()
                    .config(Some(s), q.flag("defaultToGlobal"))?,
                "compatibilityLevel",
            )),
            ("PUT", ["config", rest @ ..]) if rest.len() <= 1 => {
                let body: ConfigBody = parse_body(body)?;
                let level = body
                    .compatibility
                    .or(body.compatibility_level)
                    .ok_or(RegistryError::InvalidCompatibility)?;
                let (value, records) =
                    self.store
                        .read()
                        .plan_config(rest.first().copied(), &level, body.normalize)?;
                self.write(records).await?;
                Ok(config_json(&value, "compatibility"))
            }
            ("DELETE", ["config", rest @ ..]) if rest.len() <= 1 => {
                let (was, records) = self
                    .store
                    .read()
                    .plan_delete_config(rest.first().copied())?;
                self.write(records).await?;
                Ok(config_json(&was, "compatibilityLevel"))
            }
            ("GET", ["mode"]) => Ok(json!({ "mode": self.store.read().mode(None, true)?.name() })),
            ("GET", ["mode", s]) => Ok(
                json!({ "mode": self.store.read().mode(Some(s), q.flag("defaultToGlobal"))?.name() }),
            ),
            ("PUT", ["mode", rest @ ..]) if rest.len() <= 1 => {
                let body: ModeBody = parse_body(body)?;
                let (mode, records) = self.store.read().plan_mode(
                    rest.first().copied(),
                    &body.mode,
                    q.flag("force"),
                )?;
                self.write(records).await?;
                Ok(json!({ "mode": mode.name() }))
            }
            ("DELETE", ["mode", s]) => {
                let (was, records) = self.store.read().plan_delete_mode(s)?;
                self.write(records).await?;
                Ok(json!({ "mode": was.name() }))
            }
            _ => Err(not_found_route()),
        }
    }

    async fn write(&self, records: Vec<Record>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.backend.write(records).await
    }
}

fn not_found_route() -> RegistryError {
    RegistryError::NoSuchRoute
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigBody {
    compatibility: Option<String>,
    compatibility_level: Option<String>,
    normalize: Option<bool>,
}

#[derive(Deserialize)]
struct ModeBody {
    mode: String,
}

/// A JSON body, or 400 for one that is not (Confluent's answer to unparseable JSON).
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| RegistryError::BadRequest(format!("Unrecognized request body: {e}")))
}

fn parse_id(s: &str) -> Result<i32> {
    s.parse()
        .map_err(|_| RegistryError::SchemaNotFound(s.to_string()))
}

/// `/schema` routes answer the schema itself, as JSON.
fn raw_schema(text: &str) -> Result<Json> {
    serde_json::from_str(text)
        .map_err(|e| RegistryError::Store(format!("a stored schema is not JSON: {e}")))
}

fn version_json(v: &VersionView) -> Json {
    let mut out =
        json!({ "subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema });
    if !v.references.is_empty() {
        out["references"] = json!(v.references);
    }
    if let Some(m) = &v.metadata {
        out["metadata"] = m.clone();
    }
    if let Some(r) = &v.rule_set {
        out["ruleSet"] = r.clone();
    }
    if v.deleted {
        out["deleted"] = json!(true);
    }
    out
}

fn config_json(c: &crate::records::ConfigValue, key: &str) -> Json {
    let mut out = json!({ key: c.compatibility_level.name() });
    if let Some(n) = c.normalize {
        out["normalize"] = json!(n);
    }
    out
}

/// Query parameters.
struct Query(BTreeMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    fn flag(&self, k: &str) -> bool {
        self.get(k).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}
