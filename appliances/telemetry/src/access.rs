//! Who may use an appliance's admin port, the same way on every appliance (`[admin]`): the
//! node's static token (for automation and `clk`), and people or machines by principal:
//! an OIDC bearer token from the company's identity provider (checked as the broker's
//! SASL/OAUTHBEARER checks it) or, over HTTPS, a client certificate. Reads (`/metrics`,
//! `/health`, `/ready`) are open unless `protect_reads`, so probes and Prometheus need no
//! credentials by default.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::Request;
use sasl::oauthbearer::{BearerSettings, Verifier};
use serde::{Deserialize, Serialize};

/// An appliance's admin port, where `[admin] listen` does not say otherwise (a type, as
/// serde's derive takes no const generics).
pub trait AdminPort: Clone + Default + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    const PORT: u16;
}

/// Declare `$name` as an appliance's admin port `$port`.
#[macro_export]
macro_rules! admin_port {
    ($name:ident, $port:expr) => {
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $name;
        impl $crate::access::AdminPort for $name {
            const PORT: u16 = $port;
        }
    };
}

/// `[admin]` of an appliance whose admin port is `P::PORT` unless `listen` says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, bound = "")]
pub struct AdminSettings<P: AdminPort> {
    /// Address of the metrics, health and admin HTTP server.
    pub listen: SocketAddr,
    /// Bearer token that authorizes changes through this port (`clk cluster replace-voter
    /// --token`, `clk pki push`); without one (and without `admins`), changes are refused
    /// and only reads are served.
    pub token: Option<String>,
    /// `/metrics`, `/health` and `/ready` need credentials too (off: probes and Prometheus
    /// read them without).
    pub protect_reads: bool,
    /// `SSL`: HTTPS with the appliance's `[tls]`; with its `client_ca`, client certificates
    /// name principals too.
    pub security: tls::SecurityProtocol,
    /// Principals (`User:ops-alice`) that count as holding the token: by an OIDC bearer
    /// token (`oauthbearer`) or a client certificate (`security = "SSL"`).
    pub admins: Vec<String>,
    /// How bearer tokens of people are checked (as `[sasl.oauthbearer]`).
    pub oauthbearer: Option<BearerSettings>,
    #[serde(skip)]
    pub port: std::marker::PhantomData<P>,
}

impl<P: AdminPort> Default for AdminSettings<P> {
    fn default() -> Self {
        AdminSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], P::PORT)),
            token: None,
            protect_reads: false,
            security: tls::SecurityProtocol::Plaintext,
            admins: Vec::new(),
            oauthbearer: None,
            port: std::marker::PhantomData,
        }
    }
}

impl<P: AdminPort> AdminSettings<P> {
    /// The checks a configuration must pass; `tls` is the appliance's `[tls]`.
    pub fn check(&self, tls: Option<&tls::TlsSettings>) -> Result<(), String> {
        appconfig::check_secret("admin.token", self.token.as_deref())?;
        let https = self.security == tls::SecurityProtocol::Ssl;
        if https && tls.is_none() {
            return Err("admin.security = \"SSL\" needs [tls] with certificate and key".into());
        }
        if let Some(a) = self
            .admins
            .iter()
            .find(|a| a.strip_prefix("User:").is_none_or(str::is_empty))
        {
            return Err(format!("admin.admins: {a:?} is not User:<name>"));
        }
        let certificates = https && tls.is_some_and(|t| t.client_ca.is_some());
        if !self.admins.is_empty() && self.oauthbearer.is_none() && !certificates {
            return Err(
                "admin.admins needs admin.oauthbearer, or admin.security = \"SSL\" with \
                 [tls] client_ca, to know who is calling"
                    .into(),
            );
        }
        if let Some(o) = &self.oauthbearer {
            o.check("admin.oauthbearer")?;
        }
        if self.protect_reads && self.token.is_none() && self.admins.is_empty() {
            return Err("admin.protect_reads needs admin.token or admin.admins".into());
        }
        Ok(())
    }

    /// Who may use the port, with the JWKS and TLS files loaded.
    pub fn access(&self, tls: Option<&tls::TlsSettings>) -> anyhow::Result<AdminAccess> {
        use anyhow::Context;
        let bearer = match &self.oauthbearer {
            Some(s) => Some(Arc::new(
                Verifier::load(s.clone())
                    .map_err(anyhow::Error::msg)
                    .context("admin.oauthbearer")?,
            )),
            None => None,
        };
        let tls = match (self.security, tls) {
            (tls::SecurityProtocol::Ssl, Some(t)) => Some(
                tls::TlsServer::load(t.clone()).context("loading [tls] for the admin listener")?,
            ),
            (tls::SecurityProtocol::Ssl, None) => {
                anyhow::bail!("admin.security = \"SSL\" needs [tls]")
            }
            (tls::SecurityProtocol::Plaintext, _) => None,
        };
        Ok(AdminAccess {
            token: self.token.clone(),
            protect_reads: self.protect_reads,
            admins: self.admins.clone(),
            bearer,
            tls,
        })
    }
}

/// Who may use the admin port, loaded.
#[derive(Clone, Default)]
pub struct AdminAccess {
    /// `Authorization: Bearer <token>` that changes need; without one (and no `admins`),
    /// there are none.
    pub token: Option<String>,
    /// Whether `/metrics`, `/health` and `/ready` need credentials too (off by default, for
    /// probes and Prometheus).
    pub protect_reads: bool,
    /// Principals that count as holding the token.
    pub admins: Vec<String>,
    /// Checks people's bearer tokens.
    pub bearer: Option<Arc<Verifier>>,
    /// HTTPS.
    pub tls: Option<Arc<tls::TlsServer>>,
}

/// Why a request was not let in.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No way to authorize anything is configured.
    NothingConfigured,
    /// No credential, or not a good one.
    Unauthorized(String),
}

impl AdminAccess {
    /// Whether any credential could authorize a change.
    pub fn changes_possible(&self) -> bool {
        self.token.is_some() || !self.admins.is_empty()
    }

    /// Whether `req`, on a connection whose client certificate names `certificate` (a
    /// principal, `User:...`), holds the token or is one of the admins.
    pub fn check<B>(&self, req: &Request<B>, certificate: Option<&str>) -> Result<(), Refusal> {
        if !self.changes_possible() {
            return Err(Refusal::NothingConfigured);
        }
        if certificate.is_some_and(|p| self.admins.iter().any(|a| a == p)) {
            return Ok(());
        }
        let Some(given) = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return Err(Refusal::Unauthorized(
                "no Authorization: Bearer header".into(),
            ));
        };
        if self
            .token
            .as_deref()
            .is_some_and(|t| constant_time_eq(given, t))
        {
            return Ok(());
        }
        let Some(verifier) = &self.bearer else {
            return Err(Refusal::Unauthorized("not the admin token".into()));
        };
        match verifier.verify_token(given) {
            Ok(b) => {
                let principal = format!("User:{}", b.principal);
                if self.admins.contains(&principal) {
                    Ok(())
                } else {
                    Err(Refusal::Unauthorized(format!(
                        "{principal} is not in admin.admins"
                    )))
                }
            }
            Err(e) => Err(Refusal::Unauthorized(format!("bearer token refused: {e}"))),
        }
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
