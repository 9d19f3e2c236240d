//! Avro compatibility: can a reader with one schema read data written with another, by Avro's
//! schema resolution rules, and the registry's modes built on that question.
//!
//! Written here rather than taken from apache-avro's `SchemaCompatibility` because that one
//! (0.22) differs from the rules Confluent's registry applies (Java Avro's
//! `SchemaCompatibility`) where it matters to users: it ignores a reader's aliases for named
//! types (a renamed record with the old name as alias is refused), answers "partially
//! compatible" for an enum that lost symbols or a union that lost branches (data that the new
//! reader cannot read, which the registry must refuse), and does not say where in the schema a
//! change breaks compatibility, which `?verbose=true` must. This checker follows Java's: the
//! same rules, the same error kinds and paths. Parsing stays apache-avro's.
//!
//! Logical types are read as their underlying types, as Avro's resolution rules (and Java's
//! checker) do, with one exception: two decimals whose precision or scale differ are refused,
//! because reading one as the other silently changes every value.

use std::collections::{HashMap, HashSet};
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, RecordSchema, UuidSchema,
};

/// The registry's compatibility levels (Confluent's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase())).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the new schema is checked against every earlier version, not only the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }
}

/// What kind of change breaks reading (Java Avro's `SchemaIncompatibilityType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NameMismatch,
    FixedSizeMismatch,
    MissingEnumSymbols,
    ReaderFieldMissingDefaultValue,
    TypeMismatch,
    MissingUnionBranch,
    DecimalMismatch,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::NameMismatch => "NAME_MISMATCH",
            Kind::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
            Kind::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            Kind::ReaderFieldMissingDefaultValue => "READER_FIELD_MISSING_DEFAULT_VALUE",
            Kind::TypeMismatch => "TYPE_MISMATCH",
            Kind::MissingUnionBranch => "MISSING_UNION_BRANCH",
            Kind::DecimalMismatch => "DECIMAL_MISMATCH",
        }
    }
}

/// One reason a reader cannot read a writer's data, at a path in the reader's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    pub kind: Kind,
    /// JSON-pointer-like path in the reader's schema (`/fields/1/type`).
    pub path: String,
    /// The offending name, symbols or type.
    pub info: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{errorType:'{}', path:'{}', additionalInfo:'{}'}}",
            self.kind.name(),
            self.path,
            self.info
        )
    }
}

/// A schema with the named types it (and its references) define, as the checker needs it.
pub struct Resolved<'a> {
    pub schema: &'a Schema,
    pub names: &'a HashMap<Name, &'a Schema>,
}

/// Every reason `reader` cannot read data written with `writer` (empty: it can).
pub fn can_read(writer: &Resolved<'_>, reader: &Resolved<'_>) -> Vec<Incompatibility> {
    let mut c = Checker {
        writer_names: writer.names,
        reader_names: reader.names,
        in_progress: HashSet::new(),
        found: Vec::new(),
        path: Vec::new(),
    };
    c.check(writer.schema, reader.schema);
    c.found
}

/// Check `new` against the `existing` versions (oldest first) under `level`: every reason it
/// is incompatible, each message saying which version and direction (Confluent's verbose
/// answer). Non-transitive levels compare with the latest version only.
pub fn check_level(
    level: Level,
    new: &Resolved<'_>,
    existing: &[(i32, Resolved<'_>)],
) -> Vec<String> {
    let against: &[(i32, Resolved<'_>)] = match (level.transitive(), existing.len()) {
        (_, 0) => &[],
        (true, _) => existing,
        (false, n) => &existing[n - 1..],
    };
    let mut messages = Vec::new();
    for (version, old) in against.iter().rev() {
        if level.backward() {
            for i in can_read(old, new) {
                messages.push(format!(
                    "{i} (the new schema cannot read data written with version {version})"
                ));
            }
        }
        if level.forward() {
            for i in can_read(new, old) {
                messages.push(format!(
                    "{i} (version {version} cannot read data written with the new schema)"
                ));
            }
        }
    }
    messages
}

struct Checker<'a> {
    writer_names: &'a HashMap<Name, &'a Schema>,
    reader_names: &'a HashMap<Name, &'a Schema>,
    /// Named (writer, reader) pairs being compared: a recursive type meets itself again and is
    /// taken as compatible there (the comparison in progress decides).
    in_progress: HashSet<(String, String)>,
    found: Vec<Incompatibility>,
    path: Vec<String>,
}

/// A schema reduced to what resolution compares: logical types read as their underlying type.
enum Base<'a> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes(Option<&'a DecimalSchema>),
    String,
    Fixed(&'a FixedSchema, Option<&'a DecimalSchema>),
    Enum(&'a EnumSchema),
    Record(&'a RecordSchema),
    Array(&'a Schema),
    Map(&'a Schema),
    Union(&'a [Schema]),
}

impl Base<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Base::Null => "null",
            Base::Boolean => "boolean",
            Base::Int => "int",
            Base::Long => "long",
            Base::Float => "float",
            Base::Double => "double",
            Base::Bytes(_) => "bytes",
            Base::String => "string",
            Base::Fixed(..) => "fixed",
            Base::Enum(_) => "enum",
            Base::Record(_) => "record",
            Base::Array(_) => "array",
            Base::Map(_) => "map",
            Base::Union(_) => "union",
        }
    }
}

fn base<'a>(s: &'a Schema, names: &HashMap<Name, &'a Schema>) -> Base<'a> {
    match s {
        Schema::Null => Base::Null,
        Schema::Boolean => Base::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Base::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Base::Long,
        Schema::Float => Base::Float,
        Schema::Double => Base::Double,
        Schema::Bytes | Schema::BigDecimal | Schema::Uuid(UuidSchema::Bytes) => Base::Bytes(None),
        Schema::String | Schema::Uuid(UuidSchema::String) => Base::String,
        Schema::Decimal(d) => match &d.inner {
            InnerDecimalSchema::Bytes => Base::Bytes(Some(d)),
            InnerDecimalSchema::Fixed(f) => Base::Fixed(f, Some(d)),
        },
        Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Duration(f) | Schema::Fixed(f) => {
            Base::Fixed(f, None)
        }
        Schema::Enum(e) => Base::Enum(e),
        Schema::Record(r) => Base::Record(r),
        Schema::Array(a) => Base::Array(&a.items),
        Schema::Map(m) => Base::Map(&m.types),
        Schema::Union(u) => Base::Union(u.variants()),
        Schema::Ref { name } => match names.get(name) {
            Some(s) => base(s, names),
            // Parsing resolved every name; an unknown one cannot be read at all.
            None => Base::Null,
        },
    }
}

impl<'a> Checker<'a> {
    fn report(&mut self, kind: Kind, info: impl Into<String>) {
        let path = if self.path.is_empty() {
            "/".to_string()
        } else {
            format!("/{}", self.path.join("/"))
        };
        self.found.push(Incompatibility {
            kind,
            path,
            info: info.into(),
        });
    }

    fn at<T>(&mut self, step: impl Into<String>, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(step.into());
        let out = f(self);
        self.path.pop();
        out
    }

    /// Whether the reader can read the writer's data, without recording why not (for union
    /// branch matching, where one failing branch is not an error).
    fn quietly(&mut self, writer: &'a Schema, reader: &'a Schema) -> bool {
        let (found, path) = (std::mem::take(&mut self.found), self.path.clone());
        self.check(writer, reader);
        let ok = self.found.is_empty();
        self.found = found;
        self.path = path;
        ok
    }

    fn check(&mut self, writer: &'a Schema, reader: &'a Schema) {
        let (w, r) = (
            base(writer, self.writer_names),
            base(reader, self.reader_names),
        );
        match (&w, &r) {
            // A writer union: every branch it may have written must be readable.
            (Base::Union(ws), _) => {
                for (i, branch) in ws.iter().enumerate() {
                    if matches!(r, Base::Union(_)) {
                        self.check(branch, reader);
                    } else {
                        self.at(i.to_string(), |c| c.check(branch, reader));
                    }
                }
            }
            // A reader union: some branch must read what the writer wrote.
            (_, Base::Union(rs)) => {
                if !rs.iter().any(|branch| self.quietly(writer, branch)) {
                    self.report(
                        Kind::MissingUnionBranch,
                        format!(
                            "reader union lacking writer type: {}",
                            w.type_name().to_uppercase()
                        ),
                    );
                }
            }
            (Base::Null, Base::Null) | (Base::Boolean, Base::Boolean) => {}
            // Promotions: int to long, float, double; long to float, double; float to double;
            // string and bytes either way.
            (Base::Int, Base::Int | Base::Long | Base::Float | Base::Double)
            | (Base::Long, Base::Long | Base::Float | Base::Double)
            | (Base::Float, Base::Float | Base::Double)
            | (Base::Double, Base::Double)
            | (Base::String, Base::String | Base::Bytes(None)) => {}
            (Base::Bytes(wd), Base::Bytes(rd)) => self.decimals(*wd, *rd),
            (Base::Bytes(None), Base::String) => {}
            (Base::Fixed(wf, wd), Base::Fixed(rf, rd)) => {
                if self.names_match(&wf.name, &rf.name, rf.aliases.as_deref()) {
                    if wf.size != rf.size {
                        self.at("size", |c| {
                            c.report(
                                Kind::FixedSizeMismatch,
                                format!("expected: {}, found: {}", wf.size, rf.size),
                            )
                        });
                    } else {
                        self.decimals(*wd, *rd);
                    }
                }
            }
            (Base::Enum(we), Base::Enum(re)) => {
                if self.names_match(&we.name, &re.name, re.aliases.as_deref()) {
                    let missing: Vec<&str> = we
                        .symbols
                        .iter()
                        .filter(|s| !re.symbols.contains(s))
                        .map(String::as_str)
                        .collect();
                    // A reader's enum default reads every symbol it does not know.
                    if !missing.is_empty() && re.default.is_none() {
                        self.at("symbols", |c| {
                            c.report(
                                Kind::MissingEnumSymbols,
                                format!("[{}]", missing.join(", ")),
                            )
                        });
                    }
                }
            }
            (Base::Record(wr), Base::Record(rr)) => {
                if self.names_match(&wr.name, &rr.name, rr.aliases.as_deref()) {
                    self.records(wr, rr);
                }
            }
            (Base::Array(wi), Base::Array(ri)) => self.at("items", |c| c.check(wi, ri)),
            (Base::Map(wv), Base::Map(rv)) => self.at("values", |c| c.check(wv, rv)),
            _ => self.report(
                Kind::TypeMismatch,
                format!(
                    "reader type: {} not compatible with writer type: {}",
                    r.type_name().to_uppercase(),
                    w.type_name().to_uppercase()
                ),
            ),
        }
    }

    fn decimals(&mut self, w: Option<&DecimalSchema>, r: Option<&DecimalSchema>) {
        if let (Some(w), Some(r)) = (w, r)
            && (w.precision != r.precision || w.scale != r.scale)
        {
            self.report(
                Kind::DecimalMismatch,
                format!(
                    "decimal({}, {}) read as decimal({}, {})",
                    w.precision, w.scale, r.precision, r.scale
                ),
            );
        }
    }

    /// Named types match by unqualified name, or when the reader lists the writer's full name
    /// among its aliases (Java Avro's `schemaNameEquals`).
    fn names_match(
        &mut self,
        w: &Name,
        r: &Name,
        r_aliases: Option<&[apache_avro::schema::Alias]>,
    ) -> bool {
        let w_full = w.fullname(None);
        let aliased = r_aliases
            .unwrap_or_default()
            .iter()
            .any(|a| a.fullname(r.namespace()) == w_full || a.name() == w.name());
        if w.name() == r.name() || aliased {
            return true;
        }
        self.at("name", |c| {
            c.report(Kind::NameMismatch, format!("expected: {w_full}"))
        });
        false
    }

    fn records(&mut self, w: &'a RecordSchema, r: &'a RecordSchema) {
        let key = (w.name.fullname(None), r.name.fullname(None));
        if !self.in_progress.insert(key.clone()) {
            return;
        }
        for (i, rf) in r.fields.iter().enumerate() {
            let wf = std::iter::once(&rf.name)
                .chain(rf.aliases.iter())
                .find_map(|n| w.fields.iter().find(|wf| &wf.name == n));
            match wf {
                Some(wf) => self.at(format!("fields/{i}/type"), |c| {
                    c.check(&wf.schema, &rf.schema)
                }),
                None if rf.default.is_some() => {}
                None => self.at(format!("fields/{i}"), |c| {
                    c.report(Kind::ReaderFieldMissingDefaultValue, rf.name.clone())
                }),
            }
        }
        self.in_progress.remove(&key);
    }
}
