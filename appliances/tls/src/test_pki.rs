//! A throw-away private CA for tests: server certificates for loopback addresses and client
//! certificates with a given CN, validity and key usage, written as PEM files. (`clk pki` is
//! the operator's PKI; this only serves tests.)

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

pub struct TestPki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM) clients and servers trust.
    pub ca: PathBuf,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// What a client certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy)]
pub enum Usage {
    ClientAuth,
    ServerAuth,
}

/// How long an issued certificate is valid, relative to now.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    Current,
    Expired,
    NotYetValid,
}

impl TestPki {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestPki {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("a CA certificate");
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).expect("write the CA");
        TestPki {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, file: &str, names: &[&str]) -> Issued {
        let mut params = server_params(names);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params)
    }

    /// A node's certificate for `names`, good for serving and for connecting to its peers
    /// (a broker's, whose followers present it to other brokers).
    pub fn node(&self, file: &str, names: &[&str]) -> Issued {
        let mut params = server_params(names);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(file, params)
    }

    /// A client certificate with `cn` (and `O=Hub`), valid as `validity` says, for client
    /// authentication unless `usage` says otherwise.
    pub fn client(&self, file: &str, cn: &str, validity: Validity, usage: Usage) -> Issued {
        // rcgen's default name holds a CN already: start empty, most significant first, so
        // the subject reads `CN=<cn>,O=Hub` in RFC 2253 form.
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Hub");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![match usage {
            Usage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            Usage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        let now = time_now();
        let day = 86_400;
        let (from, to) = match validity {
            Validity::Current => (now - day, now + 30 * day),
            Validity::Expired => (now - 30 * day, now - day),
            Validity::NotYetValid => (now + day, now + 30 * day),
        };
        let at = |t| time::OffsetDateTime::from_unix_timestamp(t).expect("a time");
        (params.not_before, params.not_after) = (at(from), at(to));
        self.issue(file, params)
    }

    fn issue(&self, file: &str, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        let issued = Issued {
            certificate: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.certificate, cert.pem()).expect("write a certificate");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write a key");
        issued
    }
}

fn server_params(names: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("server"),
    );
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*n).try_into().expect("a DNS name")),
        })
        .collect();
    params
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// The leaf certificate (DER) the TLS server at `addr` presents to a client trusting `ca`
/// (no client certificate: the handshake may then be refused, after the server's certificate
/// was seen).
pub fn presented_certificate(addr: std::net::SocketAddr, ca: &Path) -> Vec<u8> {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::certificates(ca).expect("the CA") {
        roots.add(c).expect("a CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(config),
        rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
    )
    .expect("a client");
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("a timeout");
    while conn.peer_certificates().is_none() {
        if conn.complete_io(&mut sock).is_err() {
            break;
        }
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .expect("the server presented a certificate")
        .to_vec()
}
