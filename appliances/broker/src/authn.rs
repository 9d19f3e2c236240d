//! SASL logins on a Kafka connection: SaslHandshake and SaslAuthenticate (v1 framing), the
//! gate that lets nothing but ApiVersions and the login through before it succeeds, and
//! KIP-368 re-authentication (a login that expires must be renewed on the same connection,
//! by the same user, before the next request).
//!
//! A [`Login`] belongs to one connection and is driven by its reader, in request order, with
//! an explicit `now`; the mechanisms themselves are the `sasl` crate's. Credentials come from
//! the cluster metadata (AlterUserScramCredentials), so every broker checks the same ones.
//!
//! A failed login is answered after `failed_authentication_delay`, then the connection is
//! closed (as Kafka does), and every failure of a well-formed exchange tells the client the
//! same thing: whether the user exists never shows.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use quorum::metadata::ClusterState;
use sasl::{Failure, ScramServer, ServerFirst};
use tokio::time::Instant;

use crate::api::{Completion, Reply};
use crate::config::{SaslMechanism, SaslSettings};
use crate::session::{Listener, Principal, Session};
use crate::state::BrokerState;

/// What the gate says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// Handle it as usual.
    Pass,
    /// A SaslHandshake or SaslAuthenticate: for [`Login`].
    Login,
    /// Close the connection: a request before the login, or after it expired.
    Refuse(&'static str),
}

enum Step {
    Idle,
    Handshaken(SaslMechanism),
    Scram(Box<ServerFirst>),
}

/// One connection's login state.
pub struct Login {
    /// Whether the listener is `SASL_*`: nothing but the login passes before it succeeds,
    /// even when no mechanism is usable on it (then no one gets in).
    required: bool,
    /// The mechanisms this listener offers; empty on listeners without SASL.
    offered: Vec<SaslMechanism>,
    step: Step,
    /// Who logged in, once someone has: a re-authentication must be the same user.
    user: Option<Arc<str>>,
    /// When the login runs out (KIP-368), if it does.
    expires: Option<Instant>,
    reauth: std::time::Duration,
    max_receive_bytes: u64,
    /// The logged-in principal's place among its connections (taken at the first login).
    admitted: Option<admission::PrincipalAdmitted>,
}

/// A finished login step: the bytes to send back, and the user once the exchange is done.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    pub reply: Bytes,
    pub user: Option<Arc<str>>,
    /// `session_lifetime_ms` (0: the login does not expire).
    pub session_lifetime_ms: i64,
}

/// Why a login step failed: the detail is logged, the client is told [`LoginError::code`]
/// and [`LoginError::client_message`].
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{0}")]
    Exchange(#[from] Failure),
    #[error("SaslAuthenticate without a SaslHandshake")]
    NoHandshake,
    #[error("re-authentication as {new:?}, but the connection belongs to {old:?}")]
    OtherUser { old: Arc<str>, new: String },
    #[error("OAUTHBEARER is offered without [sasl.oauthbearer]")]
    NoBearerSettings,
}

impl LoginError {
    pub fn code(&self) -> i16 {
        match self {
            LoginError::NoHandshake => ResponseError::IllegalSaslState.code(),
            _ => ResponseError::SaslAuthenticationFailed.code(),
        }
    }

    pub fn client_message(&self) -> &'static str {
        match self {
            LoginError::Exchange(f) => f.client_message(),
            LoginError::NoHandshake => "SaslAuthenticate before SaslHandshake",
            LoginError::OtherUser { .. } => "authentication failed: invalid credentials",
            LoginError::NoBearerSettings => "OAUTHBEARER is not configured",
        }
    }
}

impl Login {
    pub fn new(listener: &Listener, settings: &SaslSettings) -> Login {
        let offered = if listener.security.sasl() {
            settings
                .mechanisms
                .iter()
                .copied()
                // PLAIN sends the password itself, OAUTHBEARER the token: never over plain text.
                .filter(|m| m.scram().is_some() || listener.security.tls())
                .collect()
        } else {
            Vec::new()
        };
        Login {
            required: listener.security.sasl(),
            offered,
            step: Step::Idle,
            user: None,
            expires: None,
            reauth: settings.connections_max_reauth,
            max_receive_bytes: settings.max_receive_bytes,
            admitted: None,
        }
    }

    fn required(&self) -> bool {
        self.required
    }

    /// The largest request this connection may send now: small until it has logged in.
    pub fn max_request_bytes(&self, configured: u64) -> u64 {
        if self.required() && self.user.is_none() {
            configured.min(self.max_receive_bytes)
        } else {
            configured
        }
    }

    /// Whether a request for `api` may be handled at `now`.
    pub fn gate(&self, api: ApiKey, now: Instant) -> Gate {
        let login = matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate);
        if login {
            return Gate::Login;
        }
        if !self.required() {
            return Gate::Pass;
        }
        match (&self.user, self.expires) {
            _ if api == ApiKey::ApiVersions => Gate::Pass,
            (None, _) => Gate::Refuse("a request other than ApiVersions before the SASL login"),
            (Some(_), Some(at)) if now >= at => {
                Gate::Refuse("the SASL login expired and was not renewed (connections_max_reauth)")
            }
            (Some(_), _) => Gate::Pass,
        }
    }

    /// SaslHandshake (v1: SaslAuthenticate requests carry the exchange). `Err` carries the
    /// answer after which the connection closes. A v0 handshake (the exchange outside Kafka's
    /// framing, from clients older than Kafka 1.0) is answered as an unsupported mechanism.
    pub fn handshake(
        &mut self,
        r: &SaslHandshakeRequest,
        version: i16,
    ) -> Result<SaslHandshakeResponse, SaslHandshakeResponse> {
        let names = self
            .offered
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        let answer = SaslHandshakeResponse::default().with_mechanisms(names);
        if !self.required() || !matches!(self.step, Step::Idle) {
            return Err(answer.with_error_code(ResponseError::IllegalSaslState.code()));
        }
        if version < 1 {
            return Err(answer.with_error_code(ResponseError::UnsupportedSaslMechanism.code()));
        }
        match self.offered.iter().find(|m| m.name() == &*r.mechanism) {
            Some(m) => {
                self.step = Step::Handshaken(*m);
                Ok(answer)
            }
            None => Err(answer.with_error_code(ResponseError::UnsupportedSaslMechanism.code())),
        }
    }

    /// The mechanism of the exchange in progress (for metrics and logs).
    pub fn mechanism(&self) -> Option<&'static str> {
        match &self.step {
            Step::Idle => None,
            Step::Handshaken(m) => Some(m.name()),
            Step::Scram(first) => Some(first.mechanism().name()),
        }
    }

    /// One SaslAuthenticate step against the credentials in `metadata`. `version` decides
    /// whether the login may expire (KIP-368 needs v1 to tell the client when).
    pub async fn authenticate(
        &mut self,
        metadata: &Arc<ClusterState>,
        bearer: Option<&sasl::oauthbearer::Verifier>,
        auth_bytes: &[u8],
        version: i16,
        now: Instant,
    ) -> Result<Progress, LoginError> {
        let step = std::mem::replace(&mut self.step, Step::Idle);
        let secret = decoy_secret(metadata);
        let done = match step {
            Step::Idle => return Err(LoginError::NoHandshake),
            Step::Handshaken(SaslMechanism::Plain) => {
                // PBKDF2 of the offered password: thousands of HMACs, off the runtime.
                let (m, bytes) = (Arc::clone(metadata), auth_bytes.to_vec());
                let user = tokio::task::spawn_blocking(move || {
                    sasl::plain(&bytes, |u| plain_credential(&m, u), &secret)
                })
                .await
                .expect("PLAIN verification does not panic")?;
                (user, Bytes::new(), None)
            }
            Step::Handshaken(SaslMechanism::OAuthBearer) => {
                let verifier = bearer.ok_or(LoginError::NoBearerSettings)?;
                let b = verifier.verify(auth_bytes)?;
                (b.principal, Bytes::new(), Some(b.expires_unix))
            }
            Step::Handshaken(m) => {
                let mechanism = m.scram().expect("every other mechanism is SCRAM");
                let first = ScramServer::first(
                    mechanism,
                    auth_bytes,
                    |u| scram_credential(metadata, u, mechanism),
                    &secret,
                )?;
                let reply = Bytes::copy_from_slice(first.message());
                self.step = Step::Scram(Box::new(first));
                return Ok(Progress {
                    reply,
                    user: None,
                    session_lifetime_ms: 0,
                });
            }
            Step::Scram(first) => {
                let done = first.finish(auth_bytes)?;
                (done.user, Bytes::from(done.server_final), None)
            }
        };
        self.logged_in(done.0, done.1, done.2, version, now)
    }

    fn logged_in(
        &mut self,
        user: String,
        reply: Bytes,
        token_expires_unix: Option<u64>,
        version: i16,
        now: Instant,
    ) -> Result<Progress, LoginError> {
        if let Some(old) = &self.user
            && **old != *user
        {
            return Err(LoginError::OtherUser {
                old: Arc::clone(old),
                new: user,
            });
        }
        let user: Arc<str> = self.user.clone().unwrap_or_else(|| user.into());
        self.user = Some(Arc::clone(&user));
        // The login lasts `connections_max_reauth`, and no longer than its token. A v0 client
        // cannot learn when to log in again: its login does not expire.
        let reauth = (!self.reauth.is_zero()).then_some(self.reauth);
        let token = token_expires_unix.map(|exp| {
            let now_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            std::time::Duration::from_secs(exp.saturating_sub(now_unix))
        });
        let lifetime = [reauth, token]
            .into_iter()
            .flatten()
            .min()
            .filter(|_| version >= 1);
        self.expires = lifetime.map(|l| now + l);
        Ok(Progress {
            reply,
            user: Some(user),
            session_lifetime_ms: lifetime.map_or(0, |l| l.as_millis().max(1) as i64),
        })
    }
}

/// The SaslAuthenticate answer for a step's outcome.
pub fn response(outcome: &Result<Progress, LoginError>) -> SaslAuthenticateResponse {
    match outcome {
        Ok(p) => SaslAuthenticateResponse::default()
            .with_auth_bytes(p.reply.clone())
            .with_session_lifetime_ms(p.session_lifetime_ms),
        Err(e) => SaslAuthenticateResponse::default()
            .with_error_code(e.code())
            .with_error_message(Some(StrBytes::from_static_str(e.client_message()))),
    }
}

/// Why a login step ends its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// A failed login: answered late, then closed.
    LoginFailed,
    /// The principal has its maximum of connections open (counted where refused).
    PrincipalFull,
}

/// Run a SaslHandshake or SaslAuthenticate request on `login`, counting and logging the
/// outcome; a success gives `session` its principal. Returns the completion and whether the
/// connection must close after it.
pub async fn step(
    state: &BrokerState,
    login: &mut Login,
    session: &mut Session,
    version: i16,
    body: RequestKind,
) -> (Completion, Option<Closing>) {
    match body {
        RequestKind::SaslHandshake(r) => match login.handshake(&r, version) {
            Ok(answer) => (ready(ResponseKind::SaslHandshake(answer)), None),
            Err(answer) => {
                tracing::info!(peer = %session.peer, mechanism = %&*r.mechanism, code = answer.error_code, "SASL handshake refused");
                let reply = Reply::Last(ResponseKind::SaslHandshake(answer));
                (
                    Box::pin(std::future::ready(reply)),
                    Some(Closing::LoginFailed),
                )
            }
        },
        RequestKind::SaslAuthenticate(r) => {
            let mechanism = login.mechanism().unwrap_or("none");
            let metadata = state.metadata();
            let bearer = state.bearer.as_deref();
            let outcome = login
                .authenticate(&metadata, bearer, &r.auth_bytes, version, Instant::now())
                .await;
            let answer = ResponseKind::SaslAuthenticate(response(&outcome));
            let result = |result| crate::metrics::LoginLabel {
                listener: session.listener.name.to_string(),
                mechanism,
                result,
            };
            match outcome {
                Ok(Progress { user: None, .. }) => (ready(answer), None),
                Ok(Progress { user: Some(u), .. }) => {
                    state
                        .metrics
                        .sasl_authentications
                        .get_or_create(&result("success"))
                        .inc();
                    if login.admitted.is_none() {
                        match state.principals.admit(&format!("User:{u}")) {
                            Ok(place) => login.admitted = Some(place),
                            Err(full) => {
                                session.principal = Principal::User(u);
                                crate::listeners::principal_refused(state, session, full);
                                let close = Box::pin(std::future::ready(Reply::Close));
                                return (close, Some(Closing::PrincipalFull));
                            }
                        }
                    }
                    tracing::debug!(peer = %session.peer, user = %u, mechanism, "SASL login");
                    session.principal = Principal::User(u);
                    (ready(answer), None)
                }
                Err(e) => {
                    state
                        .metrics
                        .sasl_authentications
                        .get_or_create(&result("failure"))
                        .inc();
                    tracing::info!(peer = %session.peer, listener = %session.listener.name, mechanism, reason = %e, "SASL login failed");
                    let delay = state.config.sasl.failed_authentication_delay;
                    let late = async move {
                        tokio::time::sleep(delay).await;
                        Reply::Last(answer)
                    };
                    (Box::pin(late), Some(Closing::LoginFailed))
                }
            }
        }
        _ => unreachable!("the gate sends only SASL requests here"),
    }
}

fn ready(r: ResponseKind) -> Completion {
    Box::pin(std::future::ready(Reply::Send(r)))
}

fn scram_credential(
    metadata: &ClusterState,
    user: &str,
    mechanism: sasl::Mechanism,
) -> Option<sasl::Credential> {
    metadata.scram.get(user)?.get(&mechanism).cloned()
}

/// PLAIN checks the password against the user's strongest SCRAM credential.
fn plain_credential(metadata: &ClusterState, user: &str) -> Option<sasl::Credential> {
    let credentials = metadata.scram.get(user)?;
    credentials
        .get(&sasl::Mechanism::ScramSha512)
        .or_else(|| credentials.get(&sasl::Mechanism::ScramSha256))
        .cloned()
}

/// The cluster's decoy secret; before the first credential exists (no user to hide), one of
/// this process's own.
fn decoy_secret(metadata: &ClusterState) -> Vec<u8> {
    static OWN: OnceLock<Vec<u8>> = OnceLock::new();
    metadata
        .scram_decoy_secret
        .clone()
        .unwrap_or_else(|| OWN.get_or_init(sasl::random_secret).clone())
}

#[cfg(test)]
mod tests;
