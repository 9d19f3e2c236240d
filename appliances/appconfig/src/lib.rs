//! Appliance configuration: TOML files parsed into typed structs, validated, and reported with
//! the file, line and column of the mistake. The image builder uses the same functions to
//! refuse a bad configuration at build time, so a mistake never reaches a booted appliance.
//!
//! Units are written the way operators write them: durations as `"7d"`, `"250ms"`, sizes as
//! `"1GiB"`, `"100MB"` (see [`duration`], [`size`]).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that can check rules serde cannot express (ranges, relations between fields).
pub trait Validate {
    /// Describe the first problem found, naming the setting as written in the file.
    fn validate(&self) -> Result<(), String>;

    /// Fill in defaults that depend on other settings (called after parsing, before
    /// [`Validate::validate`]).
    fn complete(&mut self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The shortest secret a configuration may set.
pub const SECRET_MIN_CHARS: usize = 16;

/// A secret setting (a token, a key) is absent, or long enough and free of spaces.
pub fn check_secret(name: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some(v) if v.chars().count() < SECRET_MIN_CHARS || v.chars().any(char::is_whitespace) => {
            Err(format!(
                "{name} must be at least {SECRET_MIN_CHARS} characters without spaces"
            ))
        }
        _ => Ok(()),
    }
}

/// Parse and validate configuration text; `origin` names it in errors (a path, "cloud-init").
pub fn parse_str<T: DeserializeOwned + Validate>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    let mut value: T = toml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: describe_toml_error(text, &e),
    })?;
    value.complete();
    value.validate().map_err(|message| ConfigError::Invalid {
        origin: origin.to_string(),
        message,
    })?;
    Ok(value)
}

/// Read, parse and validate a configuration file.
pub fn load_file<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_str(&text, &path.display().to_string())
}

/// What an appliance's `main` does with `--config FILE [--check]`: the configuration to run
/// with, or the exit code to leave with (2 and the error on stderr for a bad file; success
/// after printing "FILE: ok" when only checking).
pub fn load_for_main<T: DeserializeOwned + Validate>(
    path: &Path,
    check_only: bool,
) -> Result<T, std::process::ExitCode> {
    match load_file(path) {
        Err(e) => {
            eprintln!("{e}");
            Err(std::process::ExitCode::from(2))
        }
        Ok(_) if check_only => {
            println!("{}: ok", path.display());
            Err(std::process::ExitCode::SUCCESS)
        }
        Ok(config) => Ok(config),
    }
}

/// One line: "line 3, column 7: unknown field `lisen`, expected one of ...".
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            // Quote the offending line and its table: merged or generated text (a cloud-init
            // overlay over the baked file) has line numbers the operator never saw.
            let lines: Vec<&str> = text.lines().collect();
            let quoted = lines.get(line - 1).map_or("", |l| l.trim());
            let table = lines[..(line - 1).min(lines.len())]
                .iter()
                .rev()
                .map(|l| l.trim())
                .find(|l| l.starts_with('['));
            match (quoted.is_empty(), table) {
                (true, _) => format!("line {line}, column {column}: {message}"),
                (false, Some(t)) => {
                    format!("line {line}, column {column} ({t} {quoted}): {message}")
                }
                (false, None) => format!("line {line}, column {column} ({quoted}): {message}"),
            }
        }
        None => message,
    }
}

/// Durations written as humantime strings: `"500ms"`, `"3s"`, `"7d"`, `"1h 30m"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }

    /// Optional durations, where `"forever"` (or an absent key) means none.
    pub mod forever {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_str("forever"),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = String::deserialize(d)?;
            if text == "forever" {
                return Ok(None);
            }
            humantime::parse_duration(&text).map(Some).map_err(|e| {
                serde::de::Error::custom(format!("invalid duration {text:?} (or \"forever\"): {e}"))
            })
        }
    }
}

/// Sizes written with units: `"512KiB"`, `"1GiB"`, `"100MB"`, or a plain number of bytes.
pub mod size {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }

    pub fn parse(text: &str) -> Result<u64, String> {
        text.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| format!("invalid size {text:?}: {e}"))
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(b),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }

    /// Optional sizes, where `"unlimited"` means none.
    pub mod unlimited {
        use serde::{Deserialize, Deserializer, Serializer};

        use super::Raw;

        pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_u64(*b),
                None => s.serialize_str("unlimited"),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            match Raw::deserialize(d)? {
                Raw::Bytes(b) => Ok(Some(b)),
                Raw::Text(t) if t == "unlimited" => Ok(None),
                Raw::Text(t) => super::parse(&t).map(Some).map_err(serde::de::Error::custom),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(with = "duration")]
        timeout: Duration,
        #[serde(with = "duration::forever", default)]
        retention: Option<Duration>,
        #[serde(with = "size")]
        segment: u64,
        #[serde(with = "size::unlimited", default)]
        cap: Option<u64>,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), String> {
            if self.segment < 1024 {
                return Err(format!(
                    "segment = {} is below the minimum 1KiB",
                    self.segment
                ));
            }
            Ok(())
        }
    }

    #[test]
    fn parses_units() {
        let s: Sample = parse_str(
            "timeout = \"250ms\"\nretention = \"forever\"\nsegment = \"1GiB\"\ncap = \"10MB\"\n",
            "test",
        )
        .unwrap();
        assert_eq!(s.timeout, Duration::from_millis(250));
        assert_eq!(s.retention, None);
        assert_eq!(s.segment, 1 << 30);
        assert_eq!(s.cap, Some(10_000_000));
    }

    #[test]
    fn errors_name_the_line_and_the_rule() {
        let e = parse_str::<Sample>("timeout = \"1s\"\nsegmnt = 5\n", "broker.toml").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "config broker.toml: line 2, column 1 (segmnt = 5): unknown field `segmnt`"
            ),
            "{text}"
        );
        let e = parse_str::<Sample>("[t]\nx = 1\n", "x").unwrap_err();
        assert!(
            e.to_string()
                .contains("line 1, column 2 ([t]): unknown field `t`"),
            "{e}"
        );
        let e = parse_str::<Sample>("timeout = \"soon\"\nsegment = 5000\n", "x").unwrap_err();
        assert!(e.to_string().contains("invalid duration \"soon\""), "{e}");
        let e = parse_str::<Sample>("timeout = \"1s\"\nsegment = 5\n", "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config x: segment = 5 is below the minimum 1KiB"
        );
    }
}
