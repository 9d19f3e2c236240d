//! Which certificates the loaded CRLs revoke, published to live connections: a connection
//! made with a certificate that a CRL loaded later revokes is closed (rustls checks the CRL
//! only at the handshake).

use std::collections::HashSet;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// A certificate as a CRL names it: its issuer's name (DER) and its serial number.
type Id = (Vec<u8>, Vec<u8>);

/// The certificates the current CRLs revoke.
#[derive(Debug, Default)]
pub struct Revoked(HashSet<Id>);

impl Revoked {
    /// The revoked certificates of `crls` (a CRL that does not parse here was refused by
    /// rustls already when the configuration was built).
    pub fn of(crls: &[CertificateRevocationListDer<'_>]) -> Revoked {
        let mut ids = HashSet::new();
        for der in crls {
            let Ok((_, crl)) = CertificateRevocationList::from_der(der) else {
                continue;
            };
            let issuer = crl.issuer().as_raw().to_vec();
            for r in crl.iter_revoked_certificates() {
                ids.insert((issuer.clone(), r.raw_serial().to_vec()));
            }
        }
        Revoked(ids)
    }

    fn contains(&self, id: &Id) -> bool {
        self.0.contains(id)
    }
}

/// The issuer and serial of a leaf certificate.
fn id_of(leaf: &CertificateDer<'_>) -> Option<Id> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    Some((cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec()))
}

/// Watches whether one connection's client certificate has been revoked since.
pub struct Revocation {
    id: Option<Id>,
    current: watch::Receiver<Arc<Revoked>>,
}

impl Revocation {
    pub(crate) fn new(
        leaf: Option<&CertificateDer<'_>>,
        current: watch::Receiver<Arc<Revoked>>,
    ) -> Revocation {
        Revocation {
            id: leaf.and_then(id_of),
            current,
        }
    }

    /// Run `serve` (one connection of a listener named `listener`, from `peer`) until it
    /// ends, or until a CRL revoking the connection's certificate loads: then `serve` is
    /// dropped, which closes the connection, and the closing is logged.
    pub async fn serve_until_revoked<F>(self, serve: F, listener: &str, peer: std::net::SocketAddr)
    where
        F: std::future::Future,
    {
        tokio::select! {
            _ = serve => {}
            () = self.revoked() => tracing::warn!(listener, %peer,
                "closing a connection: a CRL revokes its certificate"),
        }
    }

    /// Resolves once a CRL revoking the connection's certificate has loaded; never for a
    /// connection without a client certificate.
    pub async fn revoked(mut self) {
        let Some(id) = self.id.take() else {
            return std::future::pending().await;
        };
        loop {
            if self.current.borrow_and_update().contains(&id) {
                return;
            }
            if self.current.changed().await.is_err() {
                // The server is gone: no CRL will load any more.
                return std::future::pending().await;
            }
        }
    }
}
