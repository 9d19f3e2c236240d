//! Kafka's `ssl.principal.mapping.rules` over a client certificate's subject, written as
//! RFC 2253 does (`CN=branch-017,OU=branches,O=Hub`, last RDN first): the first rule whose
//! pattern matches the whole subject gives the principal.
//! - `RULE:pattern/replacement/` (a `java.util.regex` style pattern; `$1` in the
//!   replacement), optionally followed by `L` or `U` to lower- or upper-case the result;
//! - `DEFAULT`: the subject as it is.
//!
//! A subject no rule matches, or that maps to an empty name, is refused.

use regex::Regex;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// The rules when none are configured: the subject's CN, else the whole subject.
pub fn default_rules() -> Vec<String> {
    vec!["RULE:^.*?(?:^|,)CN=([^,]+).*$/$1/".into(), "DEFAULT".into()]
}

#[derive(Debug, Clone)]
enum Rule {
    Default,
    Map {
        pattern: Regex,
        replacement: String,
        case: Option<char>,
    },
}

#[derive(Debug, Clone)]
pub struct PrincipalRules(Vec<Rule>);

impl PrincipalRules {
    pub fn parse(rules: &[String]) -> Result<PrincipalRules, String> {
        if rules.is_empty() {
            return Err("at least one rule is needed (\"DEFAULT\" keeps the subject)".into());
        }
        rules
            .iter()
            .map(|r| parse_rule(r.trim()).map_err(|e| format!("{r:?}: {e}")))
            .collect::<Result<_, _>>()
            .map(PrincipalRules)
    }

    /// The principal of a subject.
    pub fn map(&self, dn: &str) -> Result<String, String> {
        for rule in &self.0 {
            let name = match rule {
                Rule::Default => dn.to_string(),
                Rule::Map {
                    pattern,
                    replacement,
                    case,
                } => {
                    if !pattern.is_match(dn) {
                        continue;
                    }
                    let out = pattern.replace(dn, replacement.as_str()).into_owned();
                    match case {
                        Some('L') => out.to_lowercase(),
                        Some('U') => out.to_uppercase(),
                        _ => out,
                    }
                }
            };
            if name.is_empty() {
                return Err(format!("subject {dn:?} maps to an empty name"));
            }
            return Ok(name);
        }
        Err(format!("no principal mapping rule matches subject {dn:?}"))
    }

    /// The principal of a DER certificate's subject.
    pub fn principal_of(&self, cert: &CertificateDer<'_>) -> Result<String, String> {
        self.map(&dn_of(cert)?)
    }
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    if text == "DEFAULT" {
        return Ok(Rule::Default);
    }
    let body = text
        .strip_prefix("RULE:")
        .ok_or("a rule is DEFAULT or RULE:pattern/replacement/[LU]")?;
    let parts = split_unescaped(body);
    let [pattern, replacement, flags] = parts.as_slice() else {
        return Err("expected RULE:pattern/replacement/[LU]".into());
    };
    let case = match flags.as_str() {
        "" => None,
        "L" => Some('L'),
        "U" => Some('U'),
        other => return Err(format!("unknown flag {other:?} (L or U)")),
    };
    // The whole subject must match, as Java's Matcher.matches() requires.
    let pattern =
        Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("bad pattern: {e}"))?;
    // `$1` followed by a letter would name another group in this regex dialect.
    let groups = Regex::new(r"\$(\d+)").expect("a static pattern");
    let replacement = groups.replace_all(replacement, "$${${1}}").into_owned();
    Ok(Rule::Map {
        pattern,
        replacement,
        case,
    })
}

/// Split on `/` not escaped by a backslash (`\/` stands for `/`).
fn split_unescaped(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('/') => parts.last_mut().expect("one part").push('/'),
                Some(n) => {
                    let p = parts.last_mut().expect("one part");
                    p.push('\\');
                    p.push(n);
                }
                None => parts.last_mut().expect("one part").push('\\'),
            },
            '/' => parts.push(String::new()),
            c => parts.last_mut().expect("one part").push(c),
        }
    }
    parts
}

/// A certificate's subject in RFC 2253 form.
pub fn dn_of(cert: &CertificateDer<'_>) -> Result<String, String> {
    let (_, parsed) =
        X509Certificate::from_der(cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    Ok(rfc2253(parsed.subject()))
}

fn rfc2253(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let key = x509_parser::objects::oid2abbrev(atv.attr_type(), registry)
                        .map_or_else(|_| atv.attr_type().to_id_string(), str::to_string);
                    let value = atv.as_str().map_or_else(|_| "#".to_string(), escape);
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let edge = (i == 0 && (c == '#' || c == ' ')) || (i + 1 == value.len() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
