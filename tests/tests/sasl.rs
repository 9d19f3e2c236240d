//! SASL on the Kafka listeners: SCRAM-SHA-256 and SCRAM-SHA-512 on a SASL_PLAINTEXT listener,
//! PLAIN and SCRAM on a SASL_SSL one, credentials managed with Kafka's admin API (confluent-
//! kafka's AdminClient) and used by kcat, confluent-kafka and kafka-python; failed logins
//! refused alike, late and counted; nothing but ApiVersions before the login; and KIP-368
//! re-authentication, which cuts off a removed user's live connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use e2e::Broker;
use e2e::clients::{kcat, metric, python, run};
use e2e::hub::free_addr;
use tls::test_pki::{Issued, TestPki};

const T: Duration = Duration::from_secs(60);

struct SaslBroker {
    broker: Broker,
    pki: TestPki,
    _server: Issued,
    /// SASL_PLAINTEXT (SCRAM only).
    apps: SocketAddr,
    /// SASL_SSL (SCRAM and PLAIN).
    branches: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A broker whose default listener is plain text (inside the hub: where credentials are
/// managed until ACLs guard them), with two SASL listeners.
fn sasl_broker(reauth: &str) -> SaslBroker {
    sasl_broker_with(reauth, "")
}

/// [`sasl_broker`] with more `[kafka]` settings.
fn sasl_broker_with(reauth: &str, kafka: &str) -> SaslBroker {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("broker", &["127.0.0.1", "localhost"]);
    let (apps, branches) = (free_addr(), free_addr());
    let extra = format!(
        "[kafka]\n{kafka}\n[[kafka.listeners]]\nname = \"apps\"\nlisten = \"{apps}\"\nsecurity = \"SASL_PLAINTEXT\"\n\
         [[kafka.listeners]]\nname = \"branches\"\nlisten = \"{branches}\"\nsecurity = \"SASL_SSL\"\n\
         [tls]\ncertificate = \"{}\"\nkey = \"{}\"\n\
         [sasl]\nmechanisms = [\"SCRAM-SHA-256\", \"SCRAM-SHA-512\", \"PLAIN\"]\n\
         failed_authentication_delay = \"500ms\"\nconnections_max_reauth = \"{reauth}\"\n",
        server.certificate.display(),
        server.key.display(),
    );
    SaslBroker {
        broker: Broker::start_with(&extra),
        pki,
        _server: server,
        apps,
        branches,
        _dir: dir,
    }
}

impl SaslBroker {
    /// confluent-kafka's AdminClient on the plain listener: alter and describe credentials.
    fn scram_admin(&self, args: &[&str]) -> serde_json::Value {
        let bootstrap = self.broker.bootstrap();
        let mut a = vec!["--bootstrap", &bootstrap];
        a.extend(args);
        python("ck_scram.py", &a, T)
    }

    fn logins(&self, listener: &str, mechanism: &str, result: &str) -> f64 {
        let name = format!(
            "broker_sasl_authentications_total{{listener=\"{listener}\",mechanism=\"{mechanism}\",result=\"{result}\"}}"
        );
        metric(&self.broker.metrics_url(), &name).unwrap_or(0.0)
    }
}

/// librdkafka settings for a SASL login.
fn login(protocol: &str, mechanism: &str, user: &str, password: &str) -> Vec<String> {
    vec![
        format!("security.protocol={protocol}"),
        format!("sasl.mechanism={mechanism}"),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
    ]
}

fn kcat_with(
    bootstrap: SocketAddr,
    config: &[String],
    rest: &[&str],
    stdin: Option<&[u8]>,
) -> String {
    let mut args = vec!["-b".to_string(), bootstrap.to_string()];
    for c in config {
        args.extend(["-X".to_string(), c.clone()]);
    }
    args.extend(rest.iter().map(|s| s.to_string()));
    kcat(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        stdin,
        T,
    )
}

#[test]
fn credentials_are_managed_with_kafkas_admin_api_and_kcat_confluent_kafka_and_kafka_python_log_in()
{
    let b = sasl_broker("0s");
    let altered = b.scram_admin(&[
        "--upsert=branch-017:SCRAM-SHA-256:s3cret",
        "--upsert=branch-017:SCRAM-SHA-512:s3cret:4096",
        "--upsert=analyst:SCRAM-SHA-512:pa55",
        "--upsert=weak:SCRAM-SHA-256:x:100",
        "--delete=ghost:SCRAM-SHA-256",
        "--describe=branch-017",
        "--describe=ghost",
    ]);
    assert_eq!(
        altered["altered"]["branch-017"],
        serde_json::Value::Null,
        "{altered}"
    );
    assert_eq!(
        altered["altered"]["analyst"],
        serde_json::Value::Null,
        "{altered}"
    );
    assert_eq!(
        altered["altered"]["weak"], "UNACCEPTABLE_CREDENTIAL",
        "{altered}"
    );
    assert_eq!(
        altered["altered"]["ghost"], "RESOURCE_NOT_FOUND",
        "{altered}"
    );
    assert_eq!(
        altered["described"]["branch-017"],
        serde_json::json!([["SCRAM_SHA_256", 8192], ["SCRAM_SHA_512", 4096]]),
        "{altered}"
    );
    assert_eq!(
        altered["described"]["ghost"], "RESOURCE_NOT_FOUND",
        "{altered}"
    );
    let everyone = b.scram_admin(&["--describe-all"]);
    assert_eq!(
        everyone["described"]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["analyst".to_string(), "branch-017".to_string()]),
        "{everyone}"
    );

    // kcat writes with SCRAM-SHA-256 and reads back with SCRAM-SHA-512, on SASL_PLAINTEXT.
    let sha256 = login("sasl_plaintext", "SCRAM-SHA-256", "branch-017", "s3cret");
    let sha512 = login("sasl_plaintext", "SCRAM-SHA-512", "branch-017", "s3cret");
    kcat_with(
        b.apps,
        &sha256,
        &["-P", "-t", "orders", "-X", "acks=all"],
        Some(b"one\ntwo\nthree\n"),
    );
    let read = kcat_with(
        b.apps,
        &sha512,
        &["-C", "-t", "orders", "-e", "-o", "beginning"],
        None,
    );
    assert_eq!(read, "one\ntwo\nthree\n");
    // Metadata on a SASL listener names that listener's address.
    let listed = kcat_with(b.apps, &sha512, &["-L"], None);
    assert!(listed.contains(&format!("at {}", b.apps)), "{listed}");

    // kcat with PLAIN over SASL_SSL.
    let mut plain = login("sasl_ssl", "PLAIN", "analyst", "pa55");
    plain.push(format!("ssl.ca.location={}", b.pki.ca.display()));
    let read = kcat_with(
        b.branches,
        &plain,
        &["-C", "-t", "orders", "-e", "-o", "beginning"],
        None,
    );
    assert_eq!(read, "one\ntwo\nthree\n");

    // confluent-kafka: 500 keyed records each way with SCRAM-SHA-512.
    let bootstrap = b.apps.to_string();
    let flags: Vec<String> = sha512.iter().map(|c| format!("--config={c}")).collect();
    let mut args = vec![
        "--bootstrap",
        &bootstrap,
        "--topic",
        "ck-sasl",
        "--count",
        "500",
    ];
    args.extend(flags.iter().map(String::as_str));
    let r = python("ck_roundtrip.py", &args, T);
    assert_eq!(
        (r["acked"].as_u64(), r["consumed"].as_u64()),
        (Some(500), Some(500)),
        "{r}"
    );
    assert_eq!(r["positions_match"], true, "{r}");

    // kafka-python with SCRAM-SHA-256 over SASL_SSL.
    let bootstrap = b.branches.to_string();
    let ca = format!("--config=ssl_cafile={}", b.pki.ca.display());
    let args = [
        "--bootstrap",
        &bootstrap,
        "--topic",
        "kp-sasl",
        "--count",
        "300",
        "--config=security_protocol=SASL_SSL",
        "--config=sasl_mechanism=SCRAM-SHA-256",
        "--config=sasl_plain_username=branch-017",
        "--config=sasl_plain_password=s3cret",
        &ca,
    ];
    let r = python("kp_roundtrip.py", &args, T);
    assert_eq!(
        (r["acked"].as_u64(), r["consumed"].as_u64()),
        (Some(300), Some(300)),
        "{r}"
    );

    assert!(b.logins("apps", "SCRAM-SHA-256", "success") >= 1.0);
    assert!(b.logins("apps", "SCRAM-SHA-512", "success") >= 3.0);
    assert!(b.logins("branches", "PLAIN", "success") >= 1.0);
    assert!(b.logins("branches", "SCRAM-SHA-256", "success") >= 1.0);
    assert_eq!(b.logins("apps", "SCRAM-SHA-512", "failure"), 0.0);
}

/// kcat's error for a login, with the timing librdkafka adds taken out.
fn refused_login(b: &SaslBroker, user: &str, password: &str) -> String {
    let mut cmd = Command::new("kcat");
    cmd.args(["-b", &b.apps.to_string(), "-L", "-m", "5"]);
    for c in login("sasl_plaintext", "SCRAM-SHA-512", user, password) {
        cmd.args(["-X", &c]);
    }
    let out = run(cmd, None, T);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{user} was let in:\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("SASL authentication error"))
        .unwrap_or_else(|| panic!("no SASL error for {user}:\n{stderr}"));
    // "... SASL authentication error: <message> (after 512ms in state AUTH_REQ)"
    let message = line.split("SASL authentication error:").nth(1).unwrap();
    message.split(" (after").next().unwrap().trim().to_string()
}

#[test]
fn wrong_passwords_and_strangers_are_refused_alike_late_and_counted() {
    let b = sasl_broker("0s");
    b.scram_admin(&["--upsert=branch-017:SCRAM-SHA-512:s3cret"]);
    let wrong = refused_login(&b, "branch-017", "guess");
    let stranger = refused_login(&b, "nobody", "guess");
    assert_eq!(wrong, stranger, "the answers tell whether a user exists");
    assert!(wrong.contains("invalid credentials"), "{wrong}");
    assert!(b.logins("apps", "SCRAM-SHA-512", "failure") >= 2.0);
    assert_eq!(b.logins("apps", "SCRAM-SHA-512", "success"), 0.0);
    let log = b.broker.log();
    assert!(
        log.lines()
            .any(|l| l.contains("SASL login failed") && l.contains("proof does not match")),
        "{log}"
    );
}

/// Send `bytes` on a fresh connection to `addr` and return what comes back before the
/// broker closes it (or the read times out).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(T))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        // Closed with bytes of ours unread: a reset instead of an orderly close.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(out),
        r => r.map(|_| out),
    }
}

#[test]
fn before_the_login_only_small_api_versions_and_login_requests_are_served() {
    let b = sasl_broker("0s");
    // A Metadata request (v0, no topics) before any login: closed, unanswered.
    let metadata: &[u8] = &[0, 0, 0, 14, 0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0, 0, 0, 0];
    assert_eq!(exchange(b.apps, metadata).unwrap(), Vec::<u8>::new());
    // An announced 600 KiB request (more than max_receive_bytes): closed at once.
    let mut big = (600u32 << 10).to_be_bytes().to_vec();
    big.extend([0u8; 64]);
    assert_eq!(exchange(b.apps, &big).unwrap(), Vec::<u8>::new());
    // The same Metadata request on the plain listener is answered.
    assert!(!exchange_one(b.broker.kafka, metadata).is_empty());
    // ApiVersions (v0) before the login is answered on the SASL listener.
    let versions: &[u8] = &[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 2, 0xff, 0xff];
    assert!(!exchange_one(b.apps, versions).is_empty());

    let closed = |reason: &str| {
        let name =
            format!("broker_connections_closed_total{{listener=\"apps\",reason=\"{reason}\"}}");
        metric(&b.broker.metrics_url(), &name).unwrap_or(0.0)
    };
    assert_eq!(closed("unauthenticated"), 1.0);
    assert_eq!(closed("bad_request"), 1.0);
}

/// One request's answer on a connection the broker keeps open.
fn exchange_one(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(bytes).unwrap();
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

#[test]
fn logins_are_renewed_on_the_connection_and_a_removed_user_is_cut_off_within_the_reauth_time() {
    let b = sasl_broker("2s");
    b.scram_admin(&["--upsert=branch-017:SCRAM-SHA-512:s3cret"]);
    let (bootstrap, admin) = (b.apps.to_string(), b.broker.bootstrap());
    let args = [
        "--bootstrap",
        &bootstrap,
        "--admin",
        &admin,
        "--topic",
        "reauth",
        "--user",
        "branch-017",
        "--password",
        "s3cret",
        "--seconds",
        "14",
        "--remove-after",
        "5",
    ];
    let r = python("ck_reauth.py", &args, Duration::from_secs(90));
    let removed_at = r["removed_at"].as_f64().expect("removed");
    let last = r["last_acked_at"]
        .as_f64()
        .expect("some records were acknowledged");
    assert!(r["acked"].as_u64().unwrap() > 0, "{r}");
    // Before the removal the login was renewed at least once on the live connection.
    assert!(b.logins("apps", "SCRAM-SHA-512", "success") >= 2.0, "{r}");
    // Without expiry, the connection would go on being served to the end (14 s).
    assert!(
        last < removed_at + 2.0 + 3.0,
        "served {:.1} s after the removal: {r}",
        last - removed_at
    );
    assert!(r["error_count"].as_u64().unwrap() > 0, "{r}");
    assert!(b.logins("apps", "SCRAM-SHA-512", "failure") >= 1.0, "{r}");
}

#[test]
fn an_expired_login_is_cut_off_at_its_next_request_unless_the_same_user_renews_it() {
    use kafka_client::Connection;
    use kafka_protocol::messages::MetadataRequest;
    use sasl::Mechanism::ScramSha256;

    let b = sasl_broker("2s");
    b.scram_admin(&[
        "--upsert=branch-017:SCRAM-SHA-256:s3cret",
        "--upsert=branch-018:SCRAM-SHA-256:other",
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = b.apps.to_string();
        let renewing = Connection::connect(&addr, "renewing").await.unwrap();
        let lapsing = Connection::connect(&addr, "lapsing").await.unwrap();
        for c in [&renewing, &lapsing] {
            let l = c
                .login_scram(ScramSha256, "branch-017", "s3cret")
                .await
                .unwrap();
            assert_eq!(l.session_lifetime_ms, 2000);
        }
        async fn metadata(c: &Connection) -> Result<(), kafka_client::Error> {
            c.request(MetadataRequest::default(), 12).await.map(drop)
        }
        // Both are served, until the one that never renews is cut off at a request.
        let deadline = tokio::time::Instant::now() + T;
        let mut renewed_at = tokio::time::Instant::now();
        let mut served = 0;
        while metadata(&lapsing).await.is_ok() {
            served += 1;
            assert!(
                tokio::time::Instant::now() < deadline,
                "an expired login is still served"
            );
            if renewed_at.elapsed() > Duration::from_secs(1) {
                renewing
                    .login_scram(ScramSha256, "branch-017", "s3cret")
                    .await
                    .unwrap();
                renewed_at = tokio::time::Instant::now();
            }
            metadata(&renewing)
                .await
                .expect("a renewed login is served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served > 0, "the login was never served");
        renewing
            .login_scram(ScramSha256, "branch-017", "s3cret")
            .await
            .unwrap();
        metadata(&renewing)
            .await
            .expect("served after the other was cut off");
        // Another user may not take the connection over.
        let other = renewing
            .login_scram(ScramSha256, "branch-018", "other")
            .await;
        assert!(other.is_err(), "{other:?}");
    });
    let closed = metric(
        &b.broker.metrics_url(),
        "broker_connections_closed_total{listener=\"apps\",reason=\"unauthenticated\"}",
    );
    assert_eq!(closed, Some(1.0));
}

#[test]
fn people_log_in_with_a_jwt_of_the_identity_provider_and_bad_tokens_are_refused() {
    use sasl::oauthbearer::test_issuer::TestIssuer;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("broker", &["127.0.0.1", "localhost"]);
    let sso = TestIssuer::new(dir.path(), "https://sso.example/realms/hub", "k1");
    let people = free_addr();
    let broker = Broker::start_with(&format!(
        "[[kafka.listeners]]\nname = \"people\"\nlisten = \"{people}\"\nsecurity = \"SASL_SSL\"\n\
         [tls]\ncertificate = \"{}\"\nkey = \"{}\"\n\
         [sasl]\nmechanisms = [\"SCRAM-SHA-512\", \"OAUTHBEARER\"]\nfailed_authentication_delay = \"100ms\"\n\
         [sasl.oauthbearer]\nissuer = \"{}\"\naudience = \"hub\"\njwks_file = \"{}\"\n",
        server.certificate.display(),
        server.key.display(),
        sso.issuer,
        sso.jwks.display(),
    ));
    let (bootstrap, ca) = (people.to_string(), pki.ca.display().to_string());
    let with = |token: &str| {
        let args = ["--bootstrap", &bootstrap, "--token", token, "--ca", &ca];
        python("ck_oauth.py", &args, T)
    };
    let ok = with(&sso.token("analyst", "hub", 0, 600));
    assert_eq!(ok["errors"], serde_json::json!([]), "{ok}");
    assert!(
        ok["topics"]
            .as_array()
            .is_some_and(|t| t.contains(&"people".into())),
        "{ok}"
    );

    let stranger = TestIssuer::new(dir.path(), &sso.issuer, "k2");
    for (what, token) in [
        ("expired", sso.token("analyst", "hub", -600, -120)),
        (
            "for another audience",
            sso.token("analyst", "grafana", 0, 600),
        ),
        (
            "signed by another key",
            stranger.token("analyst", "hub", 0, 600),
        ),
    ] {
        let r = with(&token);
        assert_ne!(r["errors"], serde_json::json!([]), "{what}: {r}");
    }
    let logins = |result: &str| {
        let name = format!(
            "broker_sasl_authentications_total{{listener=\"people\",mechanism=\"OAUTHBEARER\",result=\"{result}\"}}"
        );
        metric(&broker.metrics_url(), &name).unwrap_or(0.0)
    };
    assert!(logins("success") >= 1.0);
    assert!(logins("failure") >= 3.0);
    assert!(
        broker.log().contains("the token is refused"),
        "the log says why"
    );
}

#[test]
fn one_principal_holds_at_most_its_share_of_connections() {
    use kafka_client::Connection;
    use sasl::Mechanism::ScramSha256;

    let b = sasl_broker_with("0s", "max_connections_per_principal = 2");
    b.scram_admin(&[
        "--upsert=branch-017:SCRAM-SHA-256:s3cret",
        "--upsert=branch-018:SCRAM-SHA-256:other",
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = b.apps.to_string();
        let login = |user: &'static str, password: &'static str| {
            let addr = addr.clone();
            async move {
                let c = Connection::connect(&addr, user).await.unwrap();
                c.login_scram(ScramSha256, user, password).await.map(|_| c)
            }
        };
        let first = login("branch-017", "s3cret").await.unwrap();
        let _second = login("branch-017", "s3cret").await.unwrap();
        let third = login("branch-017", "s3cret").await;
        assert!(third.is_err(), "a third connection of branch-017 is closed");
        let _other = login("branch-018", "other")
            .await
            .expect("another branch is served");
        drop(first);
        // Its place comes back once the broker has seen the connection close.
        let deadline = tokio::time::Instant::now() + T;
        while login("branch-017", "s3cret").await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "branch-017's place never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let closed = metric(
        &b.broker.metrics_url(),
        "broker_connections_closed_total{listener=\"apps\",reason=\"max_connections_per_principal\"}",
    );
    assert!(closed >= Some(1.0), "{closed:?}");
}
