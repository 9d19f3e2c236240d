use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::{ApiKey, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use quorum::metadata::ClusterState;
use sasl::{Credential, Mechanism};
use tokio::time::Instant;

use super::{Gate, Login, LoginError, Progress};
use crate::config::{ListenerSecurity, SaslMechanism, SaslSettings};
use crate::session::{Listener, ListenerRole};

fn listener(security: ListenerSecurity) -> Listener {
    Listener {
        name: "branches".into(),
        role: ListenerRole::Clients,
        serves_replication: false,
        security,
    }
}

fn settings(reauth: Duration) -> SaslSettings {
    SaslSettings {
        mechanisms: vec![
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
            SaslMechanism::Plain,
        ],
        connections_max_reauth: reauth,
        ..SaslSettings::default()
    }
}

/// Metadata with `user`'s credentials for both mechanisms.
fn metadata(user: &str, password: &str) -> Arc<ClusterState> {
    let mut state = ClusterState::default();
    for m in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
        let c = Credential::derive(m, password.as_bytes(), b"salt-of-the-hub", 4096);
        state.scram.entry(user.into()).or_default().insert(m, c);
    }
    state.scram_decoy_secret = Some(b"decoy".to_vec());
    Arc::new(state)
}

fn handshake(login: &mut Login, mechanism: &'static str) -> i16 {
    let r = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
    match login.handshake(&r, 1) {
        Ok(a) => a.error_code,
        Err(a) => a.error_code,
    }
}

/// A whole SCRAM exchange as a client would run it.
async fn scram(
    login: &mut Login,
    meta: &Arc<ClusterState>,
    m: Mechanism,
    user: &str,
    password: &str,
    now: Instant,
) -> Result<Progress, LoginError> {
    assert_eq!(handshake(login, m.name()), 0);
    let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
    let first = login
        .authenticate(meta, None, format!("n,,{bare}").as_bytes(), 1, now)
        .await?;
    assert_eq!(first.user, None, "the first step logs no one in");
    let server_first = String::from_utf8(first.reply.to_vec()).unwrap();
    let last = sasl::client_final(m, password, &bare, &server_first).unwrap();
    let done = login
        .authenticate(meta, None, last.message.as_bytes(), 1, now)
        .await?;
    assert_eq!(
        done.reply, last.server_final,
        "the server proves it knows the credential"
    );
    Ok(done)
}

#[tokio::test]
async fn nothing_but_api_versions_passes_before_the_login_and_both_scram_mechanisms_log_in() {
    let meta = metadata("branch-017", "s3cret");
    let now = Instant::now();
    for m in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
        let mut login = Login::new(
            &listener(ListenerSecurity::SaslPlaintext),
            &settings(Duration::ZERO),
        );
        assert_eq!(login.gate(ApiKey::ApiVersions, now), Gate::Pass);
        assert!(matches!(login.gate(ApiKey::Metadata, now), Gate::Refuse(_)));
        assert!(matches!(login.gate(ApiKey::Produce, now), Gate::Refuse(_)));
        assert_eq!(login.gate(ApiKey::SaslHandshake, now), Gate::Login);
        assert_eq!(login.max_request_bytes(100 << 20), 512 << 10);

        let done = scram(&mut login, &meta, m, "branch-017", "s3cret", now)
            .await
            .unwrap();
        assert_eq!(done.user.as_deref(), Some("branch-017"));
        assert_eq!(done.session_lifetime_ms, 0);
        assert_eq!(login.gate(ApiKey::Produce, now), Gate::Pass);
        assert_eq!(login.max_request_bytes(100 << 20), 100 << 20);
    }
}

#[tokio::test]
async fn a_wrong_password_and_a_stranger_fail_alike() {
    let meta = metadata("branch-017", "s3cret");
    let now = Instant::now();
    let mut messages = Vec::new();
    for (user, password) in [("branch-017", "guess"), ("nobody", "guess")] {
        let mut login = Login::new(
            &listener(ListenerSecurity::SaslPlaintext),
            &settings(Duration::ZERO),
        );
        let e = scram(
            &mut login,
            &meta,
            Mechanism::ScramSha512,
            user,
            password,
            now,
        )
        .await
        .unwrap_err();
        messages.push((e.code(), e.client_message()));
        assert!(matches!(login.gate(ApiKey::Produce, now), Gate::Refuse(_)));
    }
    assert_eq!(messages[0], messages[1]);
    assert_eq!(messages[0].0, 58, "SASL_AUTHENTICATION_FAILED");
}

#[tokio::test]
async fn plain_is_offered_over_tls_only_and_checks_the_same_credentials() {
    let meta = metadata("analyst", "pa55");
    let now = Instant::now();
    // A SASL_PLAINTEXT listener whose mechanisms all need TLS lets no one in.
    let mut only_plain = settings(Duration::ZERO);
    only_plain.mechanisms = vec![SaslMechanism::Plain, SaslMechanism::OAuthBearer];
    let closed = Login::new(&listener(ListenerSecurity::SaslPlaintext), &only_plain);
    assert!(matches!(closed.gate(ApiKey::Produce, now), Gate::Refuse(_)));
    let mut plain_text = Login::new(
        &listener(ListenerSecurity::SaslPlaintext),
        &settings(Duration::ZERO),
    );
    assert_eq!(
        handshake(&mut plain_text, "PLAIN"),
        33,
        "UNSUPPORTED_SASL_MECHANISM"
    );

    for (password, ok) in [("pa55", true), ("wrong", false)] {
        let mut login = Login::new(
            &listener(ListenerSecurity::SaslSsl),
            &settings(Duration::ZERO),
        );
        assert_eq!(handshake(&mut login, "PLAIN"), 0);
        let message = format!("\0analyst\0{password}");
        let r = login
            .authenticate(&meta, None, message.as_bytes(), 1, now)
            .await;
        assert_eq!(r.is_ok(), ok, "{password}");
    }
}

#[tokio::test]
async fn an_expired_login_must_be_renewed_by_the_same_user() {
    let mut meta = (*metadata("branch-017", "s3cret")).clone();
    let other = Credential::derive(Mechanism::ScramSha256, b"other", b"salt", 4096);
    meta.scram
        .entry("branch-018".into())
        .or_default()
        .insert(Mechanism::ScramSha256, other);
    let meta = Arc::new(meta);
    let reauth = Duration::from_secs(60);
    let start = Instant::now();
    let mut login = Login::new(&listener(ListenerSecurity::SaslSsl), &settings(reauth));
    let done = scram(
        &mut login,
        &meta,
        Mechanism::ScramSha256,
        "branch-017",
        "s3cret",
        start,
    )
    .await
    .unwrap();
    assert_eq!(done.session_lifetime_ms, 60_000);
    assert_eq!(
        login.gate(ApiKey::Fetch, start + Duration::from_secs(59)),
        Gate::Pass
    );
    let late = start + Duration::from_secs(61);
    assert!(matches!(login.gate(ApiKey::Fetch, late), Gate::Refuse(_)));
    assert_eq!(login.gate(ApiKey::SaslHandshake, late), Gate::Login);

    // Renewed by the same user: requests pass again until the new expiry.
    scram(
        &mut login,
        &meta,
        Mechanism::ScramSha512,
        "branch-017",
        "s3cret",
        late,
    )
    .await
    .unwrap();
    assert_eq!(
        login.gate(ApiKey::Fetch, late + Duration::from_secs(59)),
        Gate::Pass
    );

    // Another user may not take the connection over.
    let e = scram(
        &mut login,
        &meta,
        Mechanism::ScramSha256,
        "branch-018",
        "other",
        late,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, LoginError::OtherUser { .. }), "{e}");
}

#[tokio::test]
async fn listeners_without_sasl_refuse_the_login_requests_and_pass_the_rest() {
    let now = Instant::now();
    for security in [ListenerSecurity::Plaintext, ListenerSecurity::Ssl] {
        let mut login = Login::new(&listener(security), &settings(Duration::ZERO));
        assert_eq!(login.gate(ApiKey::Produce, now), Gate::Pass);
        assert_eq!(login.max_request_bytes(100 << 20), 100 << 20);
        assert_eq!(
            handshake(&mut login, "SCRAM-SHA-256"),
            34,
            "ILLEGAL_SASL_STATE"
        );
    }
}

#[tokio::test]
async fn authenticate_without_a_handshake_and_a_second_handshake_are_illegal() {
    let meta = metadata("u", "p");
    let mut login = Login::new(
        &listener(ListenerSecurity::SaslPlaintext),
        &settings(Duration::ZERO),
    );
    let e = login
        .authenticate(&meta, None, b"n,,n=u,r=x", 1, Instant::now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), 34);
    assert_eq!(handshake(&mut login, "SCRAM-SHA-256"), 0);
    assert_eq!(handshake(&mut login, "SCRAM-SHA-256"), 34);
}
