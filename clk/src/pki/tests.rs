use std::path::Path;
use std::time::Duration;

use super::*;

fn settings(pki: &Pki, dir: &Path, name: &str) -> tls::TlsSettings {
    tls::TlsSettings {
        certificate: pki.certificate_path(name),
        key: pki.key_path(name),
        client_ca: Some(dir.join("ca.pem")),
        client_auth: tls::ClientAuth::Required,
        server_ca: Some(dir.join("ca.pem")),
        min_version: tls::MinVersion::Tls13,
        principal_mapping_rules: vec!["RULE:^CN=([^,]+),O=Test hub$/$1/".into()], // Kafka's form
        reload_check: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(5),
        crl: Some(dir.join("crl.pem")),
    }
}

/// A handshake between `server` and `client` in memory: the principal the server sees.
async fn handshake(server: &tls::TlsServer, client: &tls::TlsClient) -> Result<String, String> {
    let (a, b) = tokio::io::duplex(64 << 10);
    let (served, connected) = tokio::join!(server.accept(a), client.connect("broker-a1.hub", b));
    connected.map_err(|e| format!("client: {e}"))?;
    let accepted = served.map_err(|e| format!("server: {e}"))?;
    accepted.principal.ok_or_else(|| "no principal".into())
}

#[tokio::test]
async fn certificates_chain_to_the_root_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(dir.path(), "Test hub", 3650, 1825).unwrap();
    assert!(Pki::init(dir.path(), "again", 1, 1).is_err(), "init twice");
    let sans = ["broker-a1.hub".to_string(), "10.0.1.11".to_string()];
    pki.issue("broker-a1", Kind::Server, &sans, 397).unwrap();
    pki.issue("branch-017", Kind::Client, &[], 397).unwrap();
    let server = tls::TlsServer::load(settings(&pki, dir.path(), "broker-a1")).unwrap();
    let branch = tls::TlsClient::load(settings(&pki, dir.path(), "branch-017")).unwrap();
    assert_eq!(handshake(&server, &branch).await.unwrap(), "branch-017");
    // A broker's certificate serves and connects (replication, quorum).
    let peer = tls::TlsClient::load(settings(&pki, dir.path(), "broker-a1")).unwrap();
    assert_eq!(handshake(&server, &peer).await.unwrap(), "broker-a1");

    // Reopened from disk, the PKI revokes: the next handshake after the reload is refused.
    let mut pki = Pki::open(dir.path()).unwrap();
    pki.revoke("branch-017").unwrap();
    assert!(server.reload_if_changed().unwrap(), "the CRL changed");
    let refused = handshake(&server, &branch).await.unwrap_err();
    assert!(refused.contains("server:"), "{refused}");
    assert_eq!(handshake(&server, &peer).await.unwrap(), "broker-a1");
    // Keys are the owner's only.
    use std::os::unix::fs::PermissionsExt;
    for key in [dir.path().join("root.key"), pki.key_path("broker-a1")] {
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(pki.issue("../etc", Kind::Client, &[], 30).is_err());
}

#[test]
fn renewal_reissues_what_expires_soon_and_revocation_covers_every_serial_of_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(dir.path(), "Test hub", 3650, 1825).unwrap();
    let first = pki.issue("branch-001", Kind::Client, &[], 10).unwrap();
    pki.issue("branch-002", Kind::Client, &[], 397).unwrap();
    assert_eq!(pki.renew(&[], 30).unwrap(), vec!["branch-001".to_string()]);
    let e = &pki.inventory.certificates["branch-001"];
    assert!(e.serial > first);
    assert_eq!(e.earlier_serials, vec![first]);
    assert!(pki.renew(&["nobody".into()], 30).is_err());
    pki.revoke("branch-001").unwrap();
    assert!(pki.inventory.revoked.contains_key(&first));
    assert_eq!(
        pki.renew(&[], 400).unwrap(),
        vec!["branch-002".to_string()],
        "revoked ones are not renewed"
    );
}

#[test]
fn cloud_init_user_data_gives_one_vm_its_files_and_its_tls_settings() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = Pki::init(dir.path(), "Test hub", 3650, 1825).unwrap();
    pki.issue("broker-a1", Kind::Server, &["broker-a1.hub".into()], 397)
        .unwrap();
    let text = pki.cloud_init("broker-a1", Some("broker-a1")).unwrap();
    let mut ci = pid1::cloudinit::CloudInit::default();
    pid1::cloudinit::apply_user_data(&mut ci, &text).unwrap();
    assert_eq!(ci.hostname.as_deref(), Some("broker-a1"));
    let files: BTreeMap<&str, (usize, u32)> = ci
        .files
        .iter()
        .map(|f| (f.path.as_str(), (f.content.len(), f.mode)))
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    assert_eq!(files["/config/tls/key.pem"].1, 0o600);
    let key = std::fs::read(pki.key_path("broker-a1")).unwrap();
    assert_eq!(
        ci.files
            .iter()
            .find(|f| f.path.ends_with("key.pem"))
            .unwrap()
            .content,
        key
    );
    let overlay = ci.appliance_config.unwrap();
    let tls: toml::Value = toml::from_str(&overlay).unwrap();
    assert_eq!(tls["tls"]["crl"].as_str(), Some("/config/tls/crl.pem"));
    pki.revoke("broker-a1").unwrap();
    assert!(
        pki.cloud_init("broker-a1", None).is_err(),
        "a revoked certificate is not handed out"
    );
}
