//! The broker's Kafka listeners, as Kafka has them: the default one (`[kafka] listen`, named
//! `clients`), more named ones (`[[kafka.listeners]]`: mTLS for branches beside plain text
//! inside the hub), and the replication listener. Each has its own port, advertised address,
//! security protocol and connection limits; a client is told the addresses of the listener
//! it came in on.
//!
//! Accepting runs in this order: the lease gate (a broker that may not lead serves no one),
//! the listener's admission (connection limits), then, on a TLS listener, the handshake
//! (within `[tls] handshake_timeout`, on the connection's own task), whose client certificate
//! gives the session's principal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use admission::{Admission, Refused};
use anyhow::Context;
use tls::TlsServer;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BrokerConfig, DEFAULT_LISTENER, ListenerSecurity, advertised_endpoint};
use crate::connection::RequestMemory;
use crate::server::Gate;
use crate::session::{Listener, ListenerRole, Principal, Session};
use crate::state::BrokerState;

/// A bound Kafka listener, before it accepts.
pub struct Bound {
    socket: TcpListener,
    pub info: Arc<Listener>,
    pub addr: SocketAddr,
    /// `host:port` its clients are told.
    pub advertised: String,
    tls: Option<Arc<TlsServer>>,
}

/// Bind every Kafka listener of `config` (the default one first), loading `[tls]` once for
/// those that use it.
pub async fn bind_all(config: &BrokerConfig) -> anyhow::Result<Vec<Bound>> {
    let tls = match &config.tls {
        Some(settings) => Some(
            TlsServer::load(settings.clone()).context("loading the [tls] certificate and key")?,
        ),
        None => None,
    };
    let tls_for = |security: ListenerSecurity| match security.tls() {
        false => Ok(None),
        true => tls
            .clone()
            .map(Some)
            .context("an SSL or SASL_SSL listener needs [tls]"),
    };
    let separate_replication = config.replication.listen.is_some();
    let mut bound = vec![
        bind(
            DEFAULT_LISTENER,
            ListenerRole::Clients,
            !separate_replication,
            config.kafka.listen,
            config.kafka.advertised.as_deref(),
            config.kafka.security,
            tls_for(config.kafka.security)?,
        )
        .await?,
    ];
    for l in &config.kafka.listeners {
        let b = bind(
            &l.name,
            ListenerRole::Clients,
            false,
            l.listen,
            l.advertised.as_deref(),
            l.security,
            tls_for(l.security)?,
        )
        .await?;
        bound.push(b);
    }
    if let Some(addr) = config.replication.listen {
        let advertised = config.replication.advertised.as_deref();
        let security = config.replication.security.into();
        let b = bind(
            "replication",
            ListenerRole::Replication,
            true,
            addr,
            advertised,
            security,
            tls_for(security)?,
        );
        bound.push(b.await?);
    }
    Ok(bound)
}

async fn bind(
    name: &str,
    role: ListenerRole,
    serves_replication: bool,
    listen: SocketAddr,
    advertised: Option<&str>,
    security: ListenerSecurity,
    tls: Option<Arc<TlsServer>>,
) -> anyhow::Result<Bound> {
    let socket = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the Kafka listener {name} on {listen}"))?;
    let addr = socket.local_addr()?;
    let (host, port) = advertised_endpoint(advertised, addr);
    Ok(Bound {
        socket,
        info: Arc::new(Listener {
            name: name.into(),
            role,
            serves_replication,
            security,
        }),
        addr,
        advertised: format!("{host}:{port}"),
        tls,
    })
}

/// The client listeners' advertised addresses by name (the metadata's `Endpoints.listeners`).
pub fn advertised(bound: &[Bound]) -> BTreeMap<String, String> {
    bound
        .iter()
        .filter(|b| b.info.role == ListenerRole::Clients)
        .map(|b| (b.info.name.to_string(), b.advertised.clone()))
        .collect()
}

/// What every accept loop shares.
pub struct Serving {
    pub state: Arc<BrokerState>,
    pub memory: Arc<RequestMemory>,
    pub connections: TaskTracker,
    pub gate: Arc<Gate>,
    pub shutdown: CancellationToken,
}

/// Accept on every listener (and watch the TLS files of those that have them) until shutdown.
pub fn serve_all(bound: Vec<Bound>, serving: Arc<Serving>) {
    let limits = serving.state.config.kafka.connection_limits();
    let mut watched = false;
    for b in bound {
        if let Some(tls) = &b.tls
            && !watched
        {
            // One TlsServer serves every SSL listener: watch its files once.
            watched = true;
            let what = "[tls]".to_string();
            tokio::spawn(Arc::clone(tls).watch(what, serving.shutdown.clone()));
        }
        // Each listener counts its own connections: a flood of clients never takes the
        // places followers need on the replication listener.
        let admission = Admission::new(limits.clone());
        tokio::spawn(accept_loop(b, admission, Arc::clone(&serving)));
    }
}

async fn accept_loop(b: Bound, admission: Arc<Admission>, s: Arc<Serving>) {
    loop {
        let accepted = tokio::select! {
            _ = s.shutdown.cancelled() => return,
            a = b.socket.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(serving) = s.gate.current() else {
            tracing::debug!(%peer, "refusing a connection: no lease");
            continue;
        };
        let admitted = match admission.admit(peer.ip()) {
            Ok(a) => a,
            Err(why) => {
                refused(&s.state, &b.info, peer, why);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (tls, info, shared) = (b.tls.clone(), Arc::clone(&b.info), Arc::clone(&s));
        s.connections.spawn(async move {
            let session = Session::new(info, peer);
            match tls {
                None => serve(&shared, stream, session, serving).await,
                Some(tls) => serve_tls(&shared, &tls, stream, session, serving).await,
            }
            drop(admitted);
        });
    }
}

async fn serve<S: crate::connection::Stream>(
    s: &Serving,
    stream: S,
    session: Session,
    serving: CancellationToken,
) {
    let (state, memory) = (Arc::clone(&s.state), Arc::clone(&s.memory));
    crate::connection::serve(state, stream, session, memory, serving).await;
}

/// The TLS handshake, then the connection as the client certificate's principal. A refused
/// handshake is logged with its reason (an unknown CA, an expired certificate, plain text on
/// a TLS port) and counted.
async fn serve_tls(
    s: &Serving,
    tls: &TlsServer,
    stream: TcpStream,
    mut session: Session,
    serving: CancellationToken,
) {
    let accepted = tokio::select! {
        _ = serving.cancelled() => return,
        a = tls.accept(stream) => a,
    };
    match accepted {
        Ok(a) => {
            let mut admitted = None;
            if let Some(p) = a.principal {
                session.principal = Principal::User(p.into());
                match s.state.principals.admit(&session.principal.to_string()) {
                    Ok(place) => admitted = Some(place),
                    Err(full) => return principal_refused(&s.state, &session, full),
                }
            }
            tracing::debug!(peer = %session.peer, principal = %session.principal, "TLS connection");
            // A CRL loaded later that revokes the client certificate ends the connection.
            let closing = serving.child_token();
            let watch = revoked_closes(s, &session, a.revocation, closing.clone());
            serve(s, a.stream, session, closing.clone()).await;
            closing.cancel();
            let _ = watch.await;
            drop(admitted);
        }
        Err(e) => {
            let listener = &session.listener.name;
            s.state.metrics.connection_closed(listener, "tls_handshake");
            tracing::warn!(
                peer = %session.peer,
                listener = %session.listener.name,
                reason = %e,
                "TLS handshake refused"
            );
        }
    }
}

/// Count and log a connection closed because its principal has its maximum open.
pub(crate) fn principal_refused(
    state: &BrokerState,
    session: &Session,
    why: admission::PrincipalFull,
) {
    let listener = &session.listener.name;
    state
        .metrics
        .connection_closed(listener, "max_connections_per_principal");
    tracing::info!(peer = %session.peer, principal = %session.principal, reason = %why, "closing a connection");
}

/// Cancel `closing` (the connection's token) if its certificate is revoked while it lives.
fn revoked_closes(
    s: &Serving,
    session: &Session,
    revocation: tls::Revocation,
    closing: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (state, listener) = (Arc::clone(&s.state), session.listener.name.to_string());
    let (peer, principal) = (session.peer, session.principal.to_string());
    tokio::spawn(async move {
        tokio::select! {
            _ = closing.cancelled() => {}
            _ = revocation.revoked() => {
                state.metrics.connection_closed(&listener, "revoked");
                tracing::warn!(%peer, %principal, "closing a connection: a CRL revokes its certificate");
                closing.cancel();
            }
        }
    })
}

/// Count and log a connection refused at accept. The log line is at debug level: a flood
/// would otherwise flood the log too; the counter shows it.
fn refused(state: &BrokerState, listener: &Listener, peer: SocketAddr, why: Refused) {
    state
        .metrics
        .connections_refused
        .get_or_create(&crate::metrics::ReasonLabel {
            listener: listener.name.to_string(),
            reason: why.reason(),
        })
        .inc();
    tracing::debug!(%peer, listener = %listener.name, reason = %why, "refusing a connection");
}
