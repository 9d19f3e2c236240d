use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;
use crate::scram::ScramServer;

const SECRET: &[u8] = b"test server secret";

fn users(entries: &[(&str, Mechanism, &str)]) -> impl Fn(&str) -> Option<Credential> + use<> {
    let creds: Vec<(String, Credential)> = entries
        .iter()
        .map(|(u, m, p)| {
            (
                u.to_string(),
                Credential::derive(*m, p.as_bytes(), format!("salt-{u}").as_bytes(), 4096),
            )
        })
        .collect();
    move |name| {
        creds
            .iter()
            .find(|(u, _)| u == name)
            .map(|(_, c)| c.clone())
    }
}

/// RFC 7677's SCRAM-SHA-256 example, message for message.
#[test]
fn the_published_scram_sha_256_exchange_replays() {
    let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let credential = Credential::derive(Mechanism::ScramSha256, b"pencil", &salt, 4096);
    let lookup = |u: &str| (u == "user").then(|| credential.clone());
    let first = ScramServer::first_with_nonce(
        Mechanism::ScramSha256,
        b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        lookup,
        SECRET,
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    )
    .unwrap();
    assert_eq!(
        first.message(),
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    );
    let done = first
        .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        .unwrap();
    assert_eq!(done.user, "user");
    assert_eq!(
        done.server_final,
        b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
}

fn login(
    m: Mechanism,
    lookup: &dyn Fn(&str) -> Option<Credential>,
    user: &str,
    password: &str,
) -> Result<ClientFinal, Failure> {
    let bare = format!("n={user},r=clientnonce123");
    let first = ScramServer::first(m, format!("n,,{bare}").as_bytes(), lookup, SECRET)?;
    let server_first = String::from_utf8(first.message().to_vec()).unwrap();
    let proof = crate::client_final(m, password, &bare, &server_first).unwrap();
    let done = first.finish(proof.message.as_bytes())?;
    assert_eq!(done.server_final, proof.server_final);
    Ok(done)
}

#[test]
fn both_mechanisms_log_in_and_wrong_passwords_and_strangers_fail_alike() {
    let lookup = users(&[
        ("branch-017", Mechanism::ScramSha512, "s3cret-512"),
        ("analyst", Mechanism::ScramSha256, "s3cret-256"),
    ]);
    let ok = login(Mechanism::ScramSha512, &lookup, "branch-017", "s3cret-512").unwrap();
    assert_eq!(ok.user, "branch-017");
    assert!(ok.server_final.starts_with(b"v="));
    assert_eq!(
        login(Mechanism::ScramSha256, &lookup, "analyst", "s3cret-256")
            .unwrap()
            .user,
        "analyst"
    );

    let wrong = login(Mechanism::ScramSha512, &lookup, "branch-017", "guess").unwrap_err();
    let stranger = login(Mechanism::ScramSha512, &lookup, "nobody", "guess").unwrap_err();
    // A user only has the mechanism it was given.
    let other_mechanism =
        login(Mechanism::ScramSha256, &lookup, "branch-017", "s3cret-512").unwrap_err();
    for f in [&wrong, &stranger, &other_mechanism] {
        assert_eq!(f, &Failure::Proof);
        assert_eq!(f.client_message(), wrong.client_message());
    }
    // A stranger's salt is the same at every attempt, as a real user's is.
    let salt_of = |user: &str| {
        let first = ScramServer::first(
            Mechanism::ScramSha512,
            format!("n,,n={user},r=abc").as_bytes(),
            &lookup,
            SECRET,
        )
        .unwrap();
        String::from_utf8(first.message().to_vec())
            .unwrap()
            .split(',')
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(salt_of("nobody"), salt_of("nobody"));
    assert_ne!(salt_of("nobody"), salt_of("someone-else"));
}

#[test]
fn malformed_and_unsupported_messages_are_refused_without_panicking() {
    let lookup = users(&[("u", Mechanism::ScramSha256, "p")]);
    let m = Mechanism::ScramSha256;
    for bad in [
        &b""[..],
        b"n,,",
        b"n,,n=u",
        b"n,,r=abc",
        b"x,,n=u,r=abc",
        b"p=tls-unique,,n=u,r=abc",
        b"n,,n=u=,r=abc",
        b"n,,n=,r=abc",
        b"n,,n=u,r=abc,m=ext",
        b"n,,n=u,r=abc,tokenauth=true",
        b"n,a=other,n=u,r=abc",
        b"\xff\xfe",
    ] {
        assert!(
            ScramServer::first(m, bad, &lookup, SECRET).is_err(),
            "{bad:?}"
        );
    }
    let start = || ScramServer::first(m, b"n,,n=u,r=abc", &lookup, SECRET).unwrap();
    for bad in [
        &b""[..],
        b"c=biws,r=abc",
        b"c=biws,r=wrong,p=AAAA",
        b"c=eSws,r=abc,p=AAAA",
        b"c=biws,r=abc,p=!!!",
    ] {
        assert!(start().finish(bad).is_err(), "{bad:?}");
    }
    let long = vec![b'a'; 10_000];
    assert!(ScramServer::first(m, &long, &lookup, SECRET).is_err());
    // Escaped names: `=2C` is `,` and `=3D` is `=`.
    let lookup = users(&[("a,b=c", m, "p")]);
    let first = ScramServer::first(m, b"n,,n=a=2Cb=3Dc,r=abc", &lookup, SECRET).unwrap();
    assert_eq!(first.user(), "a,b=c");
}

#[test]
fn plain_logins_check_the_same_credentials() {
    let lookup = users(&[("branch-017", Mechanism::ScramSha512, "s3cret")]);
    assert_eq!(
        plain(b"\0branch-017\0s3cret", &lookup, SECRET).unwrap(),
        "branch-017"
    );
    assert_eq!(
        plain(b"branch-017\0branch-017\0s3cret", &lookup, SECRET).unwrap(),
        "branch-017"
    );
    assert_eq!(
        plain(b"\0branch-017\0guess", &lookup, SECRET),
        Err(Failure::Proof)
    );
    assert_eq!(
        plain(b"\0nobody\0guess", &lookup, SECRET),
        Err(Failure::Proof)
    );
    assert!(plain(b"\0branch-017", &lookup, SECRET).is_err());
    assert!(plain(b"admin\0branch-017\0s3cret", &lookup, SECRET).is_err());
}
