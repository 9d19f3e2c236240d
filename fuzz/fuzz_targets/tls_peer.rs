//! What the TLS layer reads from a peer beyond rustls itself: a client certificate's subject
//! mapped to a principal by Kafka's rules (x509-parser, then the RFC 2253 form and the rules'
//! regular expressions), and revocation lists (the serials a CRL names, which close live
//! connections). The input is taken as a certificate and as a CRL; the first byte picks the
//! mapping rules. Nothing panics; a principal, when there is one, is never empty.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tls::PrincipalRules;
use tls::Revoked;
use tls::pki_types::{CertificateDer, CertificateRevocationListDer};

/// Three rule sets, compiled once (their regular expressions are slow to build).
fn rules(pick: u8) -> &'static PrincipalRules {
    static RULES: OnceLock<[PrincipalRules; 3]> = OnceLock::new();
    let all = RULES.get_or_init(|| {
        [
            &["DEFAULT"][..],
            &["RULE:^.*?(?:^|,)CN=([^,]+).*$/$1/", "DEFAULT"],
            &["RULE:^CN=(.*?),OU=(.*?),O=(.*)$/$1@$2/L", "RULE:^.*$/anon/U"],
        ]
        .map(|r| {
            PrincipalRules::parse(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("static rules parse")
        })
    });
    &all[usize::from(pick) % 3]
}

fuzz_target!(|data: &[u8]| {
    let Some((pick, der)) = data.split_first() else {
        return;
    };
    if let Ok(p) = rules(*pick).principal_of(&CertificateDer::from(der)) {
        assert!(!p.is_empty());
    }
    let _ = tls::dn_of(&CertificateDer::from(der));
    let _ = Revoked::of(&[CertificateRevocationListDer::from(der)]);
});
