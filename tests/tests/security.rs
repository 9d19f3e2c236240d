//! Zero trust on the Kafka listeners: a branch listener with TLS 1.3 and client certificates
//! from the hub's CA (mTLS) beside the plain-text one, with real clients (kcat,
//! confluent-kafka) reading and writing over it, and every other client refused at the
//! handshake, with the reason in the broker's log.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::Broker;
use e2e::acked::Producer;
use e2e::clients::{kcat, metric, python, run};
use e2e::hub::free_addr;
use tls::test_pki::{Issued, TestPki, Usage, Validity, presented_certificate};

const T: Duration = Duration::from_secs(60);

struct TlsBroker {
    broker: Broker,
    pki: TestPki,
    /// The broker's certificate and key files.
    server: Issued,
    /// The mTLS listener `branches`.
    ssl: SocketAddr,
    _dir: tempfile::TempDir,
}

fn tls_broker() -> TlsBroker {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("broker", &["127.0.0.1", "localhost"]);
    let ssl = free_addr();
    let extra = format!(
        "[[kafka.listeners]]\nname = \"branches\"\nlisten = \"{ssl}\"\nsecurity = \"SSL\"\n\
         [tls]\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"required\"\nreload_check = \"200ms\"\n",
        server.certificate.display(),
        server.key.display(),
        pki.ca.display()
    );
    TlsBroker {
        broker: Broker::start_with(&extra),
        pki,
        server,
        ssl,
        _dir: dir,
    }
}

impl TlsBroker {
    /// A valid client certificate for branch 017.
    fn branch_017(&self) -> Issued {
        let (validity, usage) = (Validity::Current, Usage::ClientAuth);
        self.pki.client("branch-017", "branch-017", validity, usage)
    }
}

/// librdkafka settings for TLS with `cert` (none: no client certificate).
fn ssl_config(ca: &Path, cert: Option<&Issued>) -> Vec<String> {
    let mut c = vec![
        "security.protocol=ssl".to_string(),
        format!("ssl.ca.location={}", ca.display()),
    ];
    if let Some(cert) = cert {
        c.push(format!(
            "ssl.certificate.location={}",
            cert.certificate.display()
        ));
        c.push(format!("ssl.key.location={}", cert.key.display()));
    }
    c
}

fn kcat_args(bootstrap: &str, config: &[String], rest: &[&str]) -> Vec<String> {
    let mut a = vec!["-b".to_string(), bootstrap.to_string()];
    for c in config {
        a.push("-X".into());
        a.push(c.clone());
    }
    a.extend(rest.iter().map(|s| s.to_string()));
    a
}

#[test]
fn kcat_and_confluent_kafka_read_and_write_over_mtls_with_their_branch_certificate() {
    let b = tls_broker();
    let branch = b.branch_017();
    let config = ssl_config(&b.pki.ca, Some(&branch));
    let bootstrap = b.ssl.to_string();

    // Metadata over the TLS listener names the TLS listener's address, not the plain one.
    let args = kcat_args(&bootstrap, &config, &["-L"]);
    let listed = kcat(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
        T,
    );
    assert!(listed.contains(&format!("at {}", b.ssl)), "{listed}");
    assert!(!listed.contains(&b.broker.kafka.to_string()), "{listed}");

    let args = kcat_args(
        &bootstrap,
        &config,
        &["-P", "-t", "orders", "-X", "acks=all"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kcat(&args, Some(b"one\ntwo\nthree\n"), T);
    let args = kcat_args(
        &bootstrap,
        &config,
        &["-C", "-t", "orders", "-e", "-o", "beginning"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(kcat(&args, None, T), "one\ntwo\nthree\n");

    let mut py = vec![
        "--bootstrap",
        &bootstrap,
        "--topic",
        "ck-tls",
        "--count",
        "500",
    ];
    let flags: Vec<String> = config.iter().map(|c| format!("--config={c}")).collect();
    py.extend(flags.iter().map(String::as_str));
    let r = python("ck_roundtrip.py", &py, T);
    assert_eq!(r["acked"], 500, "{r}");
    assert_eq!(r["consumed"], 500, "{r}");
    assert_eq!(r["positions_match"], true, "{r}");

    // The plain listener serves on beside it.
    let plain = b.broker.bootstrap();
    let out = kcat(
        &["-b", &plain, "-C", "-t", "orders", "-e", "-o", "beginning"],
        None,
        T,
    );
    assert_eq!(out, "one\ntwo\nthree\n");
}

/// A client the listener must refuse: kcat fails, and the broker says why.
fn refused(b: &TlsBroker, what: &str, config: &[String], reason: &str) {
    let args = kcat_args(&b.ssl.to_string(), config, &["-L", "-m", "5"]);
    let mut cmd = Command::new("kcat");
    cmd.args(&args);
    let out = run(cmd, None, T);
    assert!(
        !out.status.success(),
        "{what}: kcat was served:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    e2e::wait_until(
        &format!("the broker to log why it refused {what}"),
        T,
        || {
            b.broker
                .log()
                .lines()
                .any(|l| l.contains("TLS handshake refused") && l.contains(reason))
                .then_some(())
        },
    );
}

#[test]
fn strangers_are_refused_at_the_handshake_and_the_log_says_why() {
    let b = tls_broker();
    let ca = &b.pki.ca;
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestPki::new(other_dir.path(), "other");
    let cases = [
        (
            "a certificate of another CA",
            Some(other.client("o", "branch-017", Validity::Current, Usage::ClientAuth)),
            "UnknownIssuer",
        ),
        (
            "an expired certificate",
            Some(
                b.pki
                    .client("e", "branch-017", Validity::Expired, Usage::ClientAuth),
            ),
            "expired",
        ),
        (
            "a certificate for servers only",
            Some(
                b.pki
                    .client("s", "branch-017", Validity::Current, Usage::ServerAuth),
            ),
            "extended key usage",
        ),
        ("no certificate", None, "peer sent no certificates"),
    ];
    for (what, cert, reason) in &cases {
        refused(&b, what, &ssl_config(ca, cert.as_ref()), reason);
    }

    // Plain text on the TLS port: no Kafka answer, the connection ends.
    let answer = e2e::clients::plain_text_answer(&b.ssl.to_string());
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "a TLS alert or nothing, not a Kafka answer: {answer:?}"
    );

    let closed = metric(
        &b.broker.metrics_url(),
        "broker_connections_closed_total{listener=\"branches\",reason=\"tls_handshake\"}",
    )
    .unwrap_or(0.0);
    assert!(closed >= 5.0, "{closed} handshakes counted as refused");
    // The plain listener and good clients are served throughout.
    let out = kcat(&["-b", &b.broker.bootstrap(), "-L"], None, T);
    assert!(out.contains("1 brokers"), "{out}");
}

/// A renewed certificate (new key, written over the files as a renewal would) reaches new
/// connections within the reload check, while a producer over mTLS goes on without an error
/// and without reconnecting.
#[test]
fn a_renewed_certificate_reaches_new_connections_while_clients_go_on_undisturbed() {
    let b = tls_broker();
    let branch = b.branch_017();
    let before = presented_certificate(b.ssl, &b.pki.ca);
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = b.ssl.to_string();
    let mut args = vec![
        "--bootstrap",
        &bootstrap,
        "--topic",
        "rotating",
        "--rate",
        "200",
    ];
    let flags: Vec<String> = ssl_config(&b.pki.ca, Some(&branch))
        .iter()
        .map(|c| format!("--config={c}"))
        .collect();
    args.extend(flags.iter().map(String::as_str));
    let producer = Producer::start(&dir.path().join("acked"), &args);
    producer.wait_acked(200, T);
    let accepted = || metric(&b.broker.metrics_url(), "broker_connections_accepted_total").unwrap();
    let accepted_before = accepted();

    let renewed = b.pki.server("renewed", &["127.0.0.1", "localhost"]);
    std::fs::rename(&renewed.key, &b.server.key).unwrap();
    std::fs::rename(&renewed.certificate, &b.server.certificate).unwrap();
    let new_leaf = tls::certificates(&b.server.certificate).unwrap()[0].to_vec();
    let mut probes = 0.0;
    e2e::wait_until("new connections to get the renewed certificate", T, || {
        probes += 1.0;
        (presented_certificate(b.ssl, &b.pki.ca) == new_leaf).then_some(())
    });
    assert_ne!(before, new_leaf);
    assert!(b.broker.log().contains("TLS certificate reloaded"));

    let acked_at_renewal = producer.acked_count();
    producer.wait_acked(acked_at_renewal + 400, T);
    let report = producer.stop(T);
    assert_eq!(report["error_count"], 0, "{report}");
    // Only the test's own probes connected meanwhile: the producer kept its connections.
    assert!(
        accepted() - accepted_before <= probes,
        "{} connections accepted during the renewal",
        accepted() - accepted_before
    );
}

/// The Schema Registry over HTTPS: confluent-kafka's SchemaRegistryClient (trusting the hub's
/// CA) registers, evolves and reads schemas; plain HTTP on that port gets no answer.
#[test]
fn the_schema_registry_serves_confluent_kafkas_client_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("broker", &["127.0.0.1", "localhost"]);
    let registry = free_addr();
    let b = Broker::start_with(&format!(
        "[schema_registry]\nlisten = \"{registry}\"\nsecurity = \"SSL\"\n\
         [tls]\ncertificate = \"{}\"\nkey = \"{}\"\nserver_ca = \"{}\"\n",
        server.certificate.display(),
        server.key.display(),
        pki.ca.display()
    ));
    let url = format!("https://{registry}");
    let ca = pki.ca.display().to_string();
    e2e::wait_until("the registry to answer over HTTPS", T, || {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--cacert", &ca, &format!("{url}/subjects")]);
        run(cmd, None, T).status.success().then_some(())
    });
    let r = python(
        "ck_avro.py",
        &[
            "--bootstrap",
            &b.bootstrap(),
            "--registry",
            &url,
            "--registry-ca",
            &ca,
            "--topic",
            "readings",
        ],
        T,
    );
    assert_eq!(r["v1"]["version"], 1, "{r}");
    assert_eq!(r["v2"]["version"], 2, "{r}");
    assert_eq!(r["refused"]["status"], 409, "{r}");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        &format!("http://{registry}/subjects"),
    ]);
    let out = run(cmd, None, T);
    assert!(!out.status.success(), "plain HTTP was answered: {out:?}");
    assert!(b.log().contains("schema registry: TLS handshake refused"));
}

#[test]
fn the_s3_gateway_serves_boto3_over_https_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("s3gw", &["127.0.0.1", "localhost"]);
    let g = e2e::S3gw::start_https(&format!(
        "certificate = \"{}\"\nkey = \"{}\"\n",
        server.certificate.display(),
        server.key.display()
    ));
    let endpoint = format!("https://localhost:{}", g.s3.port());
    let ca = pki.ca.display().to_string();
    let (key, secret) = (e2e::s3gw::ACCESS_KEY, e2e::s3gw::SECRET_KEY);
    let r = python("s3_https.py", &[&endpoint, key, secret, &ca], T);
    assert_eq!(r["roundtrip"], true, "{r}");
    assert_eq!(r["listed"], serde_json::json!(["scan.bin"]), "{r}");
    assert_ne!(r["plain_http"], "served", "{r}");
    assert_eq!(r["untrusted"], "SSLError", "{r}");
    // awscli, checking the gateway against the hub's CA.
    let home = dir.path().join("aws-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut aws = Command::new(e2e::clients::pypi_tool("aws"));
    aws.args(["--endpoint-url", &endpoint, "--ca-bundle", &ca])
        .args(["s3", "ls", "s3://tls-bucket"])
        .env("HOME", &home)
        .env("AWS_CONFIG_FILE", home.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"))
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let out = run(aws, None, T);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("scan.bin"),
        "{out:?}"
    );
}

#[test]
fn s3_client_certificates_get_the_grants_of_their_principal() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("s3gw", &["127.0.0.1", "localhost"]);
    let admin = pki.client("admin", "hub-admin", Validity::Current, Usage::ClientAuth);
    // The gateway's writer key (`biometrics` = write) names this principal.
    let branch = pki.client("branch", "branch-018", Validity::Current, Usage::ClientAuth);
    let g = e2e::S3gw::start_https(&format!(
        "certificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"requested\"\n",
        server.certificate.display(),
        server.key.display(),
        pki.ca.display(),
    ));
    let endpoint = format!("https://localhost:{}", g.s3.port());
    let path = |p: &Path| p.display().to_string();
    let r = python(
        "s3_mtls.py",
        &[
            &endpoint,
            &path(&pki.ca),
            &path(&admin.certificate),
            &path(&admin.key),
            &path(&branch.certificate),
            &path(&branch.key),
            e2e::s3gw::ACCESS_KEY,
            e2e::s3gw::SECRET_KEY,
        ],
        T,
    );
    let expect = serde_json::json!({
        "admin_creates": "ok",
        "admin_creates_private": "ok",
        "admin_writes_private": "ok",
        // Refused rather than stored with its chunk framing.
        "branch_writes_chunked": "InvalidRequest",
        "branch_writes": "ok",
        "branch_reads_its_write_only_bucket": "AccessDenied",
        "branch_reads_private": "AccessDenied",
        "branch_creates_bucket": "AccessDenied",
        // A good signature with another principal's key, over this branch's certificate.
        "branch_signs_with_admin_key": "AccessDenied",
        "admin_key_without_certificate": "ok",
        "anonymous_reads_private": "AccessDenied",
        "admin_reads_scan": "scan",
    });
    assert_eq!(r, expect);
}

/// The admin port over HTTPS: probes and Prometheus read `/metrics` with only the CA (no
/// credentials by default), plain HTTP gets nothing, and a change is let through for the
/// static token or an admin's client certificate, never for another certificate or none.
#[test]
fn the_admin_port_serves_https_and_lets_admins_in_by_their_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("broker", &["127.0.0.1", "localhost"]);
    let ops = pki.client("ops", "ops", Validity::Current, Usage::ClientAuth);
    let branch = pki.client("branch", "branch-017", Validity::Current, Usage::ClientAuth);
    let b = Broker::start_with(&format!(
        "[admin]\nsecurity = \"SSL\"\nadmins = [\"User:ops\"]\n\
         [tls]\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"requested\"\n",
        server.certificate.display(),
        server.key.display(),
        pki.ca.display()
    ));
    let https = format!("https://localhost:{}", b.admin.port());
    let ca = pki.ca.display().to_string();
    let status = |url: &str, extra: &[&str]| {
        let mut args = vec!["--cacert", ca.as_str()];
        args.extend(extra);
        e2e::clients::http_status(url, &args)
    };
    assert_eq!(status(&format!("{https}/metrics"), &[]), "200");
    let plain = status(&format!("http://127.0.0.1:{}/metrics", b.admin.port()), &[]);
    assert_ne!(plain, "200", "plain HTTP was served");
    let post = |extra: &[&str]| {
        let mut args = vec!["-X", "POST", "--data", "not a TLS update"];
        args.extend(extra);
        status(&format!("{https}/v1/tls"), &args)
    };
    let cert = |i: &Issued| {
        [
            "--cert".to_string(),
            i.certificate.display().to_string(),
            "--key".to_string(),
            i.key.display().to_string(),
        ]
    };
    let (ops_cert, branch_cert) = (cert(&ops), cert(&branch));
    fn refs(a: &[String; 4]) -> Vec<&str> {
        a.iter().map(String::as_str).collect()
    }
    // Let in (and then refused for the body): the admin's certificate, the node's token.
    assert_eq!(post(&refs(&ops_cert)), "400");
    let bearer = format!("Authorization: Bearer {}", e2e::ADMIN_TOKEN);
    assert_eq!(post(&["-H", &bearer]), "400");
    // Not let in: another certificate, no credentials.
    assert_eq!(post(&refs(&branch_cert)), "401");
    assert_eq!(post(&[]), "401");
    // The operator's CLI over HTTPS, checking the node against the CA.
    let clk_status = |ca: Option<&str>| {
        let mut cmd = Command::new(e2e::broker::bin("clk"));
        cmd.args(["cluster", "status", "--json", "--admin", &https]);
        if let Some(ca) = ca {
            cmd.args(["--admin-ca", ca]);
        }
        run(cmd, None, T)
    };
    let shown = clk_status(Some(&ca));
    assert!(shown.status.success(), "{shown:?}");
    assert!(!clk_status(None).status.success());
}

/// `clk pki` with `args`: whether it succeeded.
fn try_clk_pki(args: &[&str]) -> bool {
    let mut cmd = Command::new(e2e::broker::bin("clk"));
    cmd.arg("pki").args(args);
    run(cmd, None, T).status.success()
}

/// `clk pki` with `args`; panics unless it succeeds.
fn clk_pki(args: &[&str]) {
    assert!(try_clk_pki(args), "clk pki {args:?} failed");
}

#[test]
fn clk_pki_issues_what_brokers_and_branches_use_and_a_revoked_branch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let at = pki.display().to_string();
    clk_pki(&["init", "--dir", &at, "--name", "Hub"]);
    clk_pki(&[
        "server",
        "--dir",
        &at,
        "broker",
        "--san",
        "127.0.0.1",
        "--san",
        "localhost",
    ]);
    clk_pki(&["branches", "--dir", &at, "--count", "2"]);
    let (ssl, registry) = (free_addr(), free_addr());
    let file = |f: &str| pki.join(f).display().to_string();
    let broker = Broker::start_with(&format!(
        "[[kafka.listeners]]\nname = \"branches\"\nlisten = \"{ssl}\"\nsecurity = \"SSL\"\n\
         [schema_registry]\nlisten = \"{registry}\"\nsecurity = \"SSL\"\n\
         [tls]\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"required\"\n\
         crl = \"{}\"\nreload_check = \"200ms\"\n",
        file("issued/broker.pem"),
        file("issued/broker.key"),
        file("ca.pem"),
        file("crl.pem"),
    ));
    let branch = |n: &str| Issued {
        certificate: pki.join(format!("issued/{n}.pem")),
        key: pki.join(format!("issued/{n}.key")),
    };
    let list = |n: &str| {
        let config = ssl_config(&pki.join("ca.pem"), Some(&branch(n)));
        let args = kcat_args(&ssl.to_string(), &config, &["-L", "-m", "5"]);
        let mut cmd = Command::new("kcat");
        cmd.args(&args);
        run(cmd, None, T).status.success()
    };
    assert!(
        list("branch-001"),
        "a branch with its clk pki certificate is served"
    );

    // A connection made before the revocation, kept open.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = tls::TlsClient::load(tls::TlsSettings {
        certificate: branch("branch-001").certificate,
        key: branch("branch-001").key,
        client_ca: None,
        client_auth: tls::ClientAuth::None,
        server_ca: Some(pki.join("ca.pem")),
        min_version: tls::MinVersion::Tls13,
        principal_mapping_rules: vec!["DEFAULT".into()],
        reload_check: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(10),
        crl: None,
    })
    .unwrap();
    let live = rt
        .block_on(kafka_client::Connection::connect_with(
            &ssl.to_string(),
            "live",
            Some(&tls),
        ))
        .unwrap();
    let metadata = || {
        let request = kafka_protocol::messages::MetadataRequest::default();
        rt.block_on(live.request(request, 12)).is_ok()
    };
    assert!(metadata());
    // And one to the Schema Registry, answered once.
    let mut registry_live = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(registry).await.unwrap();
        let mut s = tls.connect("127.0.0.1", tcp).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: registry\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        s
    });

    clk_pki(&["revoke", "--dir", &at, "branch-001"]);
    e2e::wait_until("the revoked branch to be refused", T, || {
        (!list("branch-001")).then_some(())
    });
    assert!(
        broker
            .log()
            .lines()
            .any(|l| l.contains("TLS handshake refused") && l.contains("Revoked")),
        "{}",
        broker.log()
    );
    assert!(list("branch-002"), "the other branch is served on");
    // The connection made before is closed too.
    e2e::wait_until("the revoked branch's live connection to close", T, || {
        (!metadata()).then_some(())
    });
    let closed = metric(
        &broker.metrics_url(),
        "broker_connections_closed_total{listener=\"branches\",reason=\"revoked\"}",
    );
    // At least the kept one (kcat's own connections may still be closing).
    assert!(closed >= Some(1.0), "{closed:?}");
    // The registry's kept connection is closed as well: it reads to its end.
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        let read = registry_live.read_to_end(&mut rest);
        tokio::time::timeout(T, read)
            .await
            .expect("closed within the deadline")
            .ok();
    });
    assert!(
        broker
            .log()
            .lines()
            .any(|l| l.contains("schema registry") && l.contains("a CRL revokes its certificate")),
        "{}",
        broker.log()
    );
}

#[test]
fn a_renewed_certificate_reaches_a_running_broker_through_its_admin_api_with_clk_pki_push() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let at = pki.display().to_string();
    clk_pki(&["init", "--dir", &at]);
    clk_pki(&["server", "--dir", &at, "broker", "--san", "127.0.0.1"]);
    // The broker's own copies, as cloud-init wrote them on an appliance.
    let own = dir.path().join("tls");
    std::fs::create_dir(&own).unwrap();
    for (from, to) in [
        ("issued/broker.pem", "cert.pem"),
        ("issued/broker.key", "key.pem"),
        ("ca.pem", "ca.pem"),
        ("crl.pem", "crl.pem"),
    ] {
        std::fs::copy(pki.join(from), own.join(to)).unwrap();
    }
    let ssl = free_addr();
    let file = |f: &str| own.join(f).display().to_string();
    let broker = Broker::start_with(&format!(
        "[[kafka.listeners]]\nname = \"branches\"\nlisten = \"{ssl}\"\nsecurity = \"SSL\"\n\
         [tls]\ncertificate = \"{}\"\nkey = \"{}\"\nserver_ca = \"{}\"\ncrl = \"{}\"\nreload_check = \"200ms\"\n",
        file("cert.pem"),
        file("key.pem"),
        file("ca.pem"),
        file("crl.pem"),
    ));
    let ca = pki.join("ca.pem");
    let leaf = |p: &Path| tls::certificates(p).unwrap()[0].to_vec();
    assert_eq!(
        presented_certificate(ssl, &ca),
        leaf(&pki.join("issued/broker.pem"))
    );

    clk_pki(&["renew", "--dir", &at, "--within-days", "400", "broker"]);
    let renewed = leaf(&pki.join("issued/broker.pem"));
    let admin = broker.admin.to_string();
    // A wrong token is refused; the right one installs the files.
    let push = |token: &str| {
        let args = [
            "push", "--dir", &at, "broker", "--admin", &admin, "--token", token,
        ];
        try_clk_pki(&args)
    };
    assert!(!push("wrong-token-0123456789"));
    assert!(push(e2e::ADMIN_TOKEN));
    e2e::wait_until("the broker to present the renewed certificate", T, || {
        (presented_certificate(ssl, &ca) == renewed).then_some(())
    });
    assert_eq!(
        std::fs::read(own.join("key.pem")).unwrap(),
        std::fs::read(pki.join("issued/broker.key")).unwrap()
    );
}
