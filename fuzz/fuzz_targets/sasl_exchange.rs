//! SASL messages as an unauthenticated client sends them: a SCRAM client-first message, then a
//! client-final message (split at the first NUL of the input), for both mechanisms, and the
//! same bytes as a PLAIN login and as an OAUTHBEARER message (checked against a JWKS with
//! one key). Nothing panics, and nothing but the right proof logs in.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sasl::{Credential, Mechanism, ScramServer};

/// The one user's credential per mechanism, derived once (PBKDF2 is slow on purpose).
fn stored(m: Mechanism) -> Credential {
    static CREDENTIALS: OnceLock<[Credential; 2]> = OnceLock::new();
    let [a, b] = CREDENTIALS.get_or_init(|| {
        [Mechanism::ScramSha256, Mechanism::ScramSha512]
            .map(|m| Credential::derive(m, b"pencil", b"salt", 4096))
    });
    match m {
        Mechanism::ScramSha256 => a.clone(),
        Mechanism::ScramSha512 => b.clone(),
    }
}

/// A verifier whose one key no fuzzed token is signed with.
fn bearer() -> &'static sasl::oauthbearer::Verifier {
    static VERIFIER: OnceLock<sasl::oauthbearer::Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sasl-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let issuer = sasl::oauthbearer::test_issuer::TestIssuer::new(&dir, "iss", "k1");
        sasl::oauthbearer::Verifier::load(sasl::oauthbearer::BearerSettings {
            issuer: "iss".into(),
            audience: "hub".into(),
            jwks_file: Some(issuer.jwks),
            jwks_url: None,
            jwks_ca: None,
            jwks_refresh_secs: 300,
            principal_claim: "sub".into(),
            leeway_secs: 0,
        })
        .expect("the verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    assert!(bearer().verify(data).is_err(), "a fuzzed token is never signed by the key");
    let (first, last) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    for m in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
        let lookup = |u: &str| (u == "user").then(|| stored(m));
        if let Ok(server_first) = ScramServer::first(m, first, lookup, b"secret") {
            // The server nonce is random: a fuzzed proof cannot match it.
            assert!(server_first.finish(last).is_err());
        }
    }
    let lookup = |u: &str| (u == "user").then(|| stored(Mechanism::ScramSha256));
    if let Ok(user) = sasl::plain(data, lookup, b"secret") {
        assert_eq!(user, "user");
        assert!(data.ends_with(b"\0pencil"));
    }
});
