//! Avro schemas as the registry holds them: parsed with their references, bounded in size,
//! and reduced to one canonical text so that the same schema registered twice (or under two
//! subjects) is recognised and shares one id.

use apache_avro::Schema;
use apache_avro::schema::{Name, ResolvedSchema};
use std::collections::HashMap;

/// Why a schema text is not a valid Avro schema (Confluent's 42201).
#[derive(Debug, thiserror::Error)]
#[error("Invalid schema: {0}")]
pub struct InvalidSchema(pub String);

/// A parsed Avro schema with the schemas it references (Confluent's schema references: named
/// types defined under other subjects), and the names they define.
pub struct Parsed {
    pub schema: Schema,
    pub references: Vec<Schema>,
}

impl Parsed {
    /// Parse `text`, resolving names against `references` (the referenced schemas' texts, in
    /// the order the registration lists them). `max_bytes` bounds the text: a schema is held in
    /// memory on every broker, so an unbounded one is refused before it is parsed.
    pub fn parse(
        text: &str,
        references: &[&str],
        max_bytes: usize,
    ) -> Result<Parsed, InvalidSchema> {
        if text.len() > max_bytes {
            return Err(InvalidSchema(format!(
                "the schema is {} bytes, over the limit of {max_bytes}",
                text.len()
            )));
        }
        let (schema, references) = if references.is_empty() {
            (
                Schema::parse_str(text).map_err(|e| InvalidSchema(e.to_string()))?,
                vec![],
            )
        } else {
            Schema::parse_str_with_list(text, references.iter().copied())
                .map_err(|e| InvalidSchema(e.to_string()))?
        };
        let parsed = Parsed { schema, references };
        // Every name must resolve (a dangling reference is invalid, not a later panic).
        parsed.names()?;
        Ok(parsed)
    }

    /// Every named type the schema and its references define.
    pub fn names(&self) -> Result<HashMap<Name, &Schema>, InvalidSchema> {
        let mut all: Vec<&Schema> = self.references.iter().collect();
        all.push(&self.schema);
        let resolved =
            ResolvedSchema::new_with_schemata(all).map_err(|e| InvalidSchema(e.to_string()))?;
        Ok(resolved.get_names().clone())
    }

    /// The schema's canonical text: its JSON with the attributes that change how data is read
    /// kept (defaults, aliases, logical types, order) and whitespace and key order fixed.
    /// Two registrations of the same schema compare equal by this text; it is also what the
    /// registry stores and returns. Avro's Parsing Canonical Form is not used for identity:
    /// it drops defaults, and two schemas that differ in a default are different schemas.
    pub fn canonical(&self) -> String {
        serde_json::to_string(&self.schema).expect("a parsed schema serializes")
    }
}
