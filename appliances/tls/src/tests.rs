use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::*;
use crate::test_pki::{Issued, TestPki, Usage, Validity};

fn settings(server: &Issued, ca: Option<&Path>, auth: ClientAuth) -> TlsSettings {
    TlsSettings {
        certificate: server.certificate.clone(),
        key: server.key.clone(),
        client_ca: ca.map(Path::to_path_buf),
        client_auth: auth,
        server_ca: None,
        min_version: MinVersion::Tls13,
        principal_mapping_rules: principal::default_rules(),
        reload_check: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(5),
        crl: None,
    }
}

/// A client trusting `ca`, presenting `cert` if given.
fn client(ca: &Path, cert: Option<&Issued>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                certificates(&c.certificate).unwrap(),
                private_key(&c.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

/// Handshake `connector` against `server` over an in-memory pipe: the server's result, and
/// the certificate the server presented (when the client got that far).
async fn handshake(
    server: &TlsServer,
    connector: TlsConnector,
) -> (Result<Option<String>, String>, Option<Vec<u8>>) {
    let (a, b) = tokio::io::duplex(64 << 10);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let client = tokio::spawn(async move {
        let mut s = connector.connect(name, a).await.ok()?;
        // TLS 1.3 clients learn of a refused certificate only when they read.
        use tokio::io::AsyncReadExt;
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut [0u8; 1])).await;
        let presented = s.get_ref().1.peer_certificates()?.first()?.to_vec();
        Some(presented)
    });
    let accepted = server
        .accept(b)
        .await
        .map(|a| a.principal)
        .map_err(|e| e.to_string());
    (accepted, client.await.unwrap())
}

#[tokio::test]
async fn client_certificates_map_to_their_cn_and_others_are_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let other = TestPki::new(dir.path(), "other");
    let server_cert = pki.server("broker", &["127.0.0.1"]);
    let server =
        TlsServer::load(settings(&server_cert, Some(&pki.ca), ClientAuth::Required)).unwrap();
    let auth = Usage::ClientAuth;

    let good = pki.client("b17", "branch-017", Validity::Current, auth);
    let (r, _) = handshake(&server, client(&pki.ca, Some(&good))).await;
    assert_eq!(r, Ok(Some("branch-017".to_string())));

    let cases = [
        (
            "another CA",
            other.client("x1", "branch-017", Validity::Current, auth),
            "UnknownIssuer",
        ),
        (
            "expired",
            pki.client("x2", "branch-017", Validity::Expired, auth),
            "expired",
        ),
        (
            "not yet valid",
            pki.client("x3", "branch-017", Validity::NotYetValid, auth),
            "not valid yet",
        ),
        (
            "for servers only",
            pki.client("x4", "branch-017", Validity::Current, Usage::ServerAuth),
            "extended key usage",
        ),
    ];
    for (what, cert, why) in cases {
        let (r, _) = handshake(&server, client(&pki.ca, Some(&cert))).await;
        let e = r.expect_err(what);
        assert!(e.contains(why), "{what}: {e}");
    }
    let (r, _) = handshake(&server, client(&pki.ca, None)).await;
    assert!(r.is_err(), "no certificate where one is required");

    // Requested, not required: a client without one is anonymous.
    let server =
        TlsServer::load(settings(&server_cert, Some(&pki.ca), ClientAuth::Requested)).unwrap();
    let (r, _) = handshake(&server, client(&pki.ca, None)).await;
    assert_eq!(r, Ok(None));
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_handshakes_and_a_broken_one_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let first = pki.server("broker", &["127.0.0.1"]);
    let server = TlsServer::load(settings(&first, None, ClientAuth::None)).unwrap();
    let (r, before) = handshake(&server, client(&pki.ca, None)).await;
    assert_eq!(r, Ok(None));
    assert!(!server.reload_if_changed().unwrap(), "nothing changed");

    // Renewal: a new key and certificate written over the files.
    let renewed = pki.server("renewed", &["127.0.0.1"]);
    std::fs::copy(&renewed.certificate, &first.certificate).unwrap();
    std::fs::copy(&renewed.key, &first.key).unwrap();
    assert!(server.reload_if_changed().unwrap());
    let (r, after) = handshake(&server, client(&pki.ca, None)).await;
    assert_eq!(r, Ok(None));
    assert_ne!(before, after);
    assert_eq!(
        after.unwrap(),
        certificates(&renewed.certificate).unwrap()[0].to_vec()
    );

    // A half-written file: refused, the renewed certificate stays in use.
    std::fs::write(&first.key, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
    assert!(server.reload_if_changed().is_err());
    let (r, still) = handshake(&server, client(&pki.ca, None)).await;
    assert_eq!(r, Ok(None));
    assert_eq!(
        still.unwrap(),
        certificates(&renewed.certificate).unwrap()[0].to_vec()
    );
}

#[test]
fn principal_rules_follow_kafkas_syntax() {
    let rules =
        |r: &[&str]| PrincipalRules::parse(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let default = rules(
        &principal::default_rules()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(default.map("CN=branch-017,O=Hub").unwrap(), "branch-017");
    assert_eq!(default.map("O=Hub,CN=analyst").unwrap(), "analyst");
    assert_eq!(default.map("O=Hub").unwrap(), "O=Hub");

    let r = rules(&[
        r"RULE:^CN=(.*?),OU=(.*?)$/$1@$2/L",
        r"RULE:^CN=([^,]+),O=Hub$/branch:$1/U",
        r"RULE:^O=a\/b$/slash/",
    ])
    .unwrap();
    assert_eq!(r.map("CN=Ann,OU=Ops").unwrap(), "ann@ops");
    assert_eq!(r.map("CN=b17,O=Hub").unwrap(), "BRANCH:B17");
    assert_eq!(r.map("O=a/b").unwrap(), "slash");
    assert!(
        r.map("C=FR")
            .unwrap_err()
            .contains("no principal mapping rule")
    );
    assert!(rules(&["RULE:^(.*$/x/"]).is_err(), "a bad pattern");
    assert!(rules(&["RULE:a/b/Q"]).is_err(), "an unknown flag");
    assert!(rules(&["CN"]).is_err());
    assert!(rules(&[]).is_err());
}

#[test]
fn installed_files_must_load_together_and_a_bad_upload_changes_nothing() {
    use crate::install::{TlsUpdate, install};
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let old = pki.server("server", &["localhost"]);
    let renewed = pki.server("renewed", &["localhost"]);
    let other = pki.server("other", &["localhost"]);
    let s = settings(&old, None, ClientAuth::None);
    let before = std::fs::read(&old.certificate).unwrap();
    let read = |p: &std::path::PathBuf| std::fs::read_to_string(p).unwrap();

    // A key that is not the certificate's: refused, the files stay as they were.
    let mismatched = TlsUpdate {
        certificate: Some(read(&renewed.certificate)),
        key: Some(read(&other.key)),
        ..TlsUpdate::default()
    };
    assert!(install(&s, &mismatched).is_err());
    assert_eq!(std::fs::read(&old.certificate).unwrap(), before);
    assert!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .all(|e| { !e.unwrap().file_name().to_string_lossy().ends_with(".new") }),
        "nothing staged is left behind"
    );
    let alone = TlsUpdate {
        certificate: Some(read(&renewed.certificate)),
        ..TlsUpdate::default()
    };
    assert!(
        install(&s, &alone).is_err(),
        "a certificate without its key"
    );
    let crl = TlsUpdate {
        crl: Some("x".into()),
        ..TlsUpdate::default()
    };
    assert!(install(&s, &crl).is_err(), "no crl configured to replace");

    // The renewed pair: installed, and the server reloads it.
    let server = TlsServer::load(s.clone()).unwrap();
    let pair = TlsUpdate {
        certificate: Some(read(&renewed.certificate)),
        key: Some(read(&renewed.key)),
        ..TlsUpdate::default()
    };
    assert_eq!(install(&s, &pair).unwrap(), vec!["certificate", "key"]);
    assert_eq!(read(&old.certificate), read(&renewed.certificate));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&old.key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(server.reload_if_changed().unwrap());
}
