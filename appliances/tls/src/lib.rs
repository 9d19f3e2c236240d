//! TLS for every appliance's listeners: rustls on the `ring` provider (the static musl images
//! carry no C crypto), TLS 1.3 unless 1.2 is allowed in the configuration, certificates and
//! keys read from PEM files and reloaded when the files change (new handshakes use the new
//! ones; connections already made keep theirs, so a renewal drops nothing), and client
//! certificates (mTLS) verified against the configured CA and mapped to a principal by
//! Kafka's `ssl.principal.mapping.rules`.
//!
//! A handshake that fails (plain text on a TLS port, a client certificate of another CA,
//! expired, not yet valid, or not for client authentication) is refused by rustls; the
//! listener logs why ([`TlsServer::accept`] returns the reason).

pub mod install;
mod principal;
mod revocation;
#[cfg(feature = "test-pki")]
pub mod test_pki;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use principal::{PrincipalRules, dn_of};
pub use revocation::{Revocation, Revoked};
/// The rustls this crate builds on, for libraries that take its configurations.
pub use rustls::ClientConfig;
/// The DER types callers hand in (certificates, CRLs).
pub use rustls::pki_types;
pub use tokio_rustls::client::TlsStream as ClientTlsStream;
pub use tokio_rustls::server::TlsStream;

/// How a listener secures its connections (Kafka's `security.protocol` names; the SASL ones
/// come with SASL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SecurityProtocol {
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    /// TLS with the node's `[tls]` certificate.
    #[serde(rename = "SSL")]
    Ssl,
}

/// Whether a listener asks for client certificates (Kafka's `ssl.client.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; a client without one is anonymous, one with a bad one is refused.
    Requested,
    /// A client without a valid certificate is refused at the handshake.
    Required,
}

/// The oldest protocol version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MinVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
}

/// A TLS listener's configuration (`[tls]` in each appliance's file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM, leaf first).
    pub certificate: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates must chain to; needed unless `client_auth`
    /// is `none`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// CA certificates (PEM) the servers this node connects to as a client (other brokers'
    /// replication listeners) chain to; default: `client_ca`. This node then presents
    /// `certificate` as its client certificate, which must allow client authentication too.
    #[serde(default)]
    pub server_ca: Option<PathBuf>,
    #[serde(default)]
    pub min_version: MinVersion,
    /// Kafka's `ssl.principal.mapping.rules`, applied to the client certificate's subject
    /// (RFC 2253: `CN=branch-017,O=Hub`). Default: the subject's CN.
    #[serde(default = "principal::default_rules")]
    pub principal_mapping_rules: Vec<String>,
    /// How often the files are checked for a change.
    #[serde(default = "default_reload_check", with = "appconfig::duration")]
    pub reload_check: Duration,
    /// A handshake must complete within this.
    #[serde(default = "default_handshake_timeout", with = "appconfig::duration")]
    pub handshake_timeout: Duration,
    /// Certificate revocation lists (PEM, `clk pki`'s `crl.pem`): a peer whose certificate
    /// is listed is refused at the handshake (the end entity's status is checked; its CA's
    /// is not). Reloaded when it changes, like the other files.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

fn default_reload_check() -> Duration {
    Duration::from_secs(10)
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl TlsSettings {
    /// The configuration errors that do not need the files (`what` names the section).
    pub fn check(&self, what: &str) -> Result<(), String> {
        if self.client_auth != ClientAuth::None && self.client_ca.is_none() {
            return Err(format!(
                "{what}.client_auth = \"{:?}\" needs {what}.client_ca",
                self.client_auth
            )
            .to_lowercase());
        }
        PrincipalRules::parse(&self.principal_mapping_rules)
            .map_err(|e| format!("{what}.principal_mapping_rules: {e}"))?;
        if self.reload_check < Duration::from_millis(100) {
            return Err(format!("{what}.reload_check must be at least 100ms"));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Content { path: PathBuf, what: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    Verifier(String),
    #[error("{0}")]
    Rules(String),
}

/// Why a handshake did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Refused(std::io::Error),
    #[error("the client certificate maps to no principal: {0}")]
    Principal(String),
}

/// A TLS-accepted connection: the stream, and the principal its client certificate maps to
/// (`None`: no certificate given).
pub struct Accepted<S> {
    pub stream: TlsStream<S>,
    pub principal: Option<String>,
    /// Resolves when a CRL loaded later revokes the client certificate: close the connection.
    pub revocation: Revocation,
}

/// Modification time and length of each file, to notice a change.
type Stamps = Vec<Option<(SystemTime, u64)>>;

/// A rustls configuration built from a node's `[tls]` files, rebuilt when they change.
struct Reloading<C> {
    settings: TlsSettings,
    build: fn(&TlsSettings) -> Result<Arc<C>, TlsError>,
    current: RwLock<Arc<C>>,
    stamps: Mutex<Stamps>,
}

impl<C: Send + Sync + 'static> Reloading<C> {
    fn load(
        settings: TlsSettings,
        build: fn(&TlsSettings) -> Result<Arc<C>, TlsError>,
    ) -> Result<Reloading<C>, TlsError> {
        let stamps = stamps(&settings);
        let config = build(&settings)?;
        Ok(Reloading {
            settings,
            build,
            current: RwLock::new(config),
            stamps: Mutex::new(stamps),
        })
    }

    fn current(&self) -> Arc<C> {
        Arc::clone(&self.current.read())
    }

    /// Rebuild when a file changed. A configuration that does not load is an error and the
    /// previous one stays: a half-written renewal never takes a listener down.
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.settings);
        if *self.stamps.lock() == now {
            return Ok(false);
        }
        *self.current.write() = (self.build)(&self.settings)?;
        *self.stamps.lock() = now;
        Ok(true)
    }
}

/// Something built from `[tls]` files that reloads them when they change.
trait Reload {
    fn reload_if_changed(&self) -> Result<bool, TlsError>;
    fn reload_check(&self) -> Duration;
}

/// Check the files every `reload_check` until `shutdown`; `what` names them in the log.
async fn watch_files(
    me: Arc<impl Reload + Send + Sync + 'static>,
    what: String,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(me.reload_check());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = Arc::clone(&me);
        match tokio::task::spawn_blocking(move || m.reload_if_changed()).await {
            Ok(Ok(true)) => tracing::info!(files = %what, "TLS certificate reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(
                files = %what,
                error = %e,
                "TLS files changed but do not load; keeping the previous certificate"
            ),
            Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
        }
    }
}

/// A listener's TLS: the current server configuration, reloaded when its files change.
pub struct TlsServer {
    rules: PrincipalRules,
    config: Reloading<ServerConfig>,
    /// What the CRLs revoke, for live connections ([`Accepted::revocation`]).
    revoked: tokio::sync::watch::Sender<Arc<Revoked>>,
}

impl Reload for TlsServer {
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        TlsServer::reload_if_changed(self)
    }

    fn reload_check(&self) -> Duration {
        self.settings().reload_check
    }
}

impl TlsServer {
    /// Read the files and build the configuration.
    pub fn load(settings: TlsSettings) -> Result<Arc<TlsServer>, TlsError> {
        let rules =
            PrincipalRules::parse(&settings.principal_mapping_rules).map_err(TlsError::Rules)?;
        let revoked = Revoked::of(&revocations(&settings)?);
        Ok(Arc::new(TlsServer {
            rules,
            config: Reloading::load(settings, build)?,
            revoked: tokio::sync::watch::Sender::new(Arc::new(revoked)),
        }))
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.config.settings
    }

    /// The TLS handshake on `stream`, within the handshake timeout, and the principal of the
    /// client certificate.
    pub async fn accept<S>(&self, stream: S) -> Result<Accepted<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        let within = self.settings().handshake_timeout;
        let stream = tokio::time::timeout(within, acceptor.accept(stream))
            .await
            .map_err(|_| HandshakeError::Timeout(within))?
            .map_err(HandshakeError::Refused)?;
        let leaf = match stream.get_ref().1.peer_certificates() {
            Some([leaf, ..]) => Some(leaf.clone()),
            _ => None,
        };
        let principal = match &leaf {
            Some(leaf) => Some(
                self.rules
                    .principal_of(leaf)
                    .map_err(HandshakeError::Principal)?,
            ),
            None => None,
        };
        let revocation = Revocation::new(leaf.as_ref(), self.revoked.subscribe());
        Ok(Accepted {
            stream,
            principal,
            revocation,
        })
    }

    /// Reload when a file changed (see [`TlsServer::watch`]); live connections whose
    /// certificate a new CRL revokes are told ([`Accepted::revocation`]).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let changed = self.config.reload_if_changed()?;
        if changed {
            let revoked = Revoked::of(&revocations(self.settings())?);
            self.revoked.send_replace(Arc::new(revoked));
        }
        Ok(changed)
    }

    /// Check the files every `reload_check` until `shutdown`.
    pub async fn watch(self: Arc<Self>, what: String, shutdown: CancellationToken) {
        watch_files(self, what, shutdown).await
    }
}

/// This node as a TLS client of its peers (a follower fetching from another broker's
/// replication listener): it trusts `server_ca` (or `client_ca`) and presents its own
/// certificate. Reloaded like [`TlsServer`].
pub struct TlsClient {
    config: Reloading<rustls::ClientConfig>,
}

impl Reload for TlsClient {
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        TlsClient::reload_if_changed(self)
    }

    fn reload_check(&self) -> Duration {
        self.config.settings.reload_check
    }
}

impl TlsClient {
    pub fn load(settings: TlsSettings) -> Result<Arc<TlsClient>, TlsError> {
        Ok(Arc::new(TlsClient {
            config: Reloading::load(settings, build_client)?,
        }))
    }

    /// The handshake on `stream` with the server named `host` (a DNS name or an IP address,
    /// which its certificate must carry), within the handshake timeout.
    pub async fn connect<S>(
        &self,
        host: &str,
        stream: S,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let within = self.config.settings.handshake_timeout;
        connect(self.config.current(), within, host, stream).await
    }

    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.config.reload_if_changed()
    }

    /// The configuration as the files are now (a new `Arc` after each reload), for a
    /// client library that takes a rustls configuration (an HTTPS client).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.current()
    }

    /// Check the files every `reload_check` until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        watch_files(self, "[tls] (as a client)".into(), shutdown).await
    }
}

fn build_client(s: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let ca = s
        .server_ca
        .as_ref()
        .or(s.client_ca.as_ref())
        .ok_or_else(|| TlsError::Verifier("a TLS client needs server_ca (or client_ca)".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(ca)?),
        Arc::clone(&provider),
    )
    .with_crls(revocations(s)?)
    .only_check_end_entity_revocation()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(s.min_version))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certificates(&s.certificate)?, private_key(&s.key)?)?;
    Ok(Arc::new(config))
}

static TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_AND_13: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(min: MinVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        MinVersion::Tls13 => TLS13,
        MinVersion::Tls12 => TLS12_AND_13,
    }
}

fn stamps(s: &TlsSettings) -> Stamps {
    [
        Some(&s.certificate),
        Some(&s.key),
        s.client_ca.as_ref(),
        s.server_ca.as_ref(),
        s.crl.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

fn build(s: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions(s.min_version))?;
    let builder = match (&s.client_ca, s.client_auth) {
        (_, ClientAuth::None) => builder.with_no_client_auth(),
        (None, _) => return Err(TlsError::Verifier("client_auth needs client_ca".into())),
        (Some(ca), auth) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                    .with_crls(revocations(s)?)
                    .only_check_end_entity_revocation();
            let verifier = match auth {
                ClientAuth::Requested => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certificates(&s.certificate)?, private_key(&s.key)?)?;
    Ok(Arc::new(config))
}

/// The client handshake on `stream` with the server named `host`, within `within`.
async fn connect<S>(
    config: Arc<rustls::ClientConfig>,
    within: Duration,
    host: &str,
    stream: S,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
        .to_owned();
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(within, connector.connect(name, stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
}

/// A one-off TLS client (the operator's `clk` calling an admin port over HTTPS): servers
/// are checked against `ca`; `identity` (certificate, key) is presented when given. Files
/// are read once, as a command runs briefly.
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
}

impl Connector {
    pub fn new(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Connector, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(TLS12_AND_13)?
            .with_root_certificates(roots(ca)?);
        let config = match identity {
            Some((cert, key)) => {
                builder.with_client_auth_cert(certificates(cert)?, private_key(key)?)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Connector {
            config: Arc::new(config),
        })
    }

    /// The handshake on `stream` with the server named `host`, within 10 s.
    pub async fn connect<S>(
        &self,
        host: &str,
        stream: S,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let within = default_handshake_timeout();
        connect(Arc::clone(&self.config), within, host, stream).await
    }
}

/// The CA certificates of a PEM file, as trust anchors.
fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca)? {
        roots.add(c).map_err(|e| TlsError::Content {
            path: ca.to_path_buf(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The revocation lists of `[tls] crl` (none without it).
fn revocations(
    s: &TlsSettings,
) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, TlsError> {
    match &s.crl {
        Some(path) => pem_items(path, "CRL"),
        None => Ok(Vec::new()),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_items(path, "certificate")
}

/// Every item of one kind (`what`) in a PEM file: at least one.
fn pem_items<T: rustls::pki_types::pem::PemObject>(
    path: &Path,
    what: &str,
) -> Result<Vec<T>, TlsError> {
    let bytes = read(path)?;
    let items: Vec<T> = T::pem_reader_iter(&mut BufReader::new(&bytes[..]))
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Content {
            path: path.to_path_buf(),
            what: format!("not PEM ({what}): {e}"),
        })?;
    if items.is_empty() {
        return Err(TlsError::Content {
            path: path.to_path_buf(),
            what: format!("holds no {what}"),
        });
    }
    Ok(items)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Content {
        path: path.to_path_buf(),
        what: format!("no private key: {e}"),
    })
}

#[cfg(test)]
mod tests;
