//! SASL mechanisms for the broker's listeners, the server side: SCRAM-SHA-256 and
//! SCRAM-SHA-512 (RFC 5802, RFC 7677) and PLAIN (RFC 4616), all verified against the same
//! stored credentials: a salt, an iteration count, and the stored and server keys SCRAM
//! derives from the password (the password itself is never kept).
//!
//! Written here rather than taken from a crate: `scram` and `scram-2` do SHA-256 only, and
//! `scram-rs` is not open source; what SCRAM needs (HMAC, PBKDF2, digests) comes from `ring`,
//! which the TLS stack already uses.
//!
//! A login for a user that does not exist goes through the same exchange with a credential
//! derived from the user name and a server secret, and fails at the same step with the same
//! message as a wrong password: the answers never tell whether a user exists.

pub mod oauthbearer;
mod scram;

pub use scram::{ClientFinal, ScramServer, ServerFirst};

use ring::{digest, hmac, pbkdf2};
use serde::{Deserialize, Serialize};

/// The SCRAM mechanisms (Kafka's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
            "SCRAM-SHA-512" => Some(Mechanism::ScramSha512),
            _ => None,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Mechanism::ScramSha256 => hmac::HMAC_SHA256,
            Mechanism::ScramSha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Mechanism::ScramSha256 => &digest::SHA256,
            Mechanism::ScramSha512 => &digest::SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Mechanism::ScramSha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Mechanism::ScramSha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

/// Kafka's bounds on SCRAM iterations (`AlterUserScramCredentials` refuses others).
pub const ITERATIONS_MIN: u32 = 4096;
pub const ITERATIONS_MAX: u32 = 16384;

/// What is stored for a user and mechanism (RFC 5802's StoredKey and ServerKey).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub mechanism: Mechanism,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Credential {
    /// The credential for `password` with `salt` and `iterations`.
    pub fn derive(
        mechanism: Mechanism,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Credential {
        Credential::from_salted(
            mechanism,
            &salted_password(mechanism, password, salt, iterations),
            salt,
            iterations,
        )
    }

    /// The credential from a salted password (what Kafka's AlterUserScramCredentials carries).
    pub fn from_salted(
        mechanism: Mechanism,
        salted: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Credential {
        let client_key = mac(mechanism, salted, b"Client Key");
        Credential {
            mechanism,
            salt: salt.to_vec(),
            iterations,
            stored_key: digest::digest(mechanism.digest(), &client_key)
                .as_ref()
                .to_vec(),
            server_key: mac(mechanism, salted, b"Server Key"),
        }
    }

    /// Whether `password` is this credential's (PLAIN logins), in constant time.
    pub fn verifies(&self, password: &[u8]) -> bool {
        let other = Credential::derive(self.mechanism, password, &self.salt, self.iterations);
        constant_time_eq(&other.stored_key, &self.stored_key)
    }
}

fn salted_password(mechanism: Mechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; mechanism.len()];
    let rounds = std::num::NonZeroU32::new(iterations.max(1)).expect("at least one");
    pbkdf2::derive(mechanism.pbkdf2(), rounds, salt, password, &mut out);
    out
}

fn mac(mechanism: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(mechanism.hmac(), key), data)
        .as_ref()
        .to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A credential that stands in for a user who does not exist: derived from the name and a
/// server secret, so it is the same at every attempt (a changing salt would give the absence
/// away) and no password matches it but by chance.
/// Made with HMACs only: a SCRAM server never runs PBKDF2 (the client does), so a decoy
/// costs what a stored credential's look-up costs.
pub fn decoy(mechanism: Mechanism, user: &str, secret: &[u8]) -> Credential {
    let part = |what: &[u8]| mac(mechanism, secret, &[what, user.as_bytes()].concat());
    Credential {
        mechanism,
        salt: part(b"salt:")[..16].to_vec(),
        iterations: ITERATIONS_MIN,
        stored_key: part(b"stored:"),
        server_key: part(b"server:"),
    }
}

/// The client's side of a SCRAM exchange's last step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientProof {
    /// The client-final message to send.
    pub message: String,
    /// The server-final message a server that knows the credential answers with.
    pub server_final: Vec<u8>,
}

/// The client's side of a SCRAM exchange: the client-final message for `password`, given
/// the client-first-bare message sent and the server-first message received (RFC 5802,
/// section 3; no channel binding, as Kafka uses it). For tools and tests that log in.
pub fn client_final(
    m: Mechanism,
    password: &str,
    client_first_bare: &str,
    server_first: &str,
) -> Result<ClientProof, Failure> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let attrs: std::collections::HashMap<&str, &str> = server_first
        .split(',')
        .filter_map(|a| a.split_once('='))
        .collect();
    let (Some(salt), Some(iterations), Some(nonce)) =
        (attrs.get("s"), attrs.get("i"), attrs.get("r"))
    else {
        return Err(Failure::Malformed("server-first message"));
    };
    let salt = STANDARD
        .decode(salt)
        .map_err(|_| Failure::Malformed("server-first salt"))?;
    let iterations: u32 = iterations
        .parse()
        .map_err(|_| Failure::Malformed("server-first iterations"))?;
    let salted = salted_password(m, password.as_bytes(), &salt, iterations);
    let client_key = mac(m, &salted, b"Client Key");
    let stored = digest::digest(m.digest(), &client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = mac(m, stored.as_ref(), auth.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let server_signature = mac(m, &mac(m, &salted, b"Server Key"), auth.as_bytes());
    Ok(ClientProof {
        message: format!("{without_proof},p={}", STANDARD.encode(proof)),
        server_final: format!("v={}", STANDARD.encode(server_signature)).into_bytes(),
    })
}

/// The salted password Kafka's AlterUserScramCredentials carries (RFC 5802's Hi()).
pub fn salted(m: Mechanism, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    salted_password(m, password.as_bytes(), salt, iterations)
}

/// A random secret for [`decoy`] credentials, for a node that has no shared one yet.
pub fn random_secret() -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut secret = vec![0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .expect("the OS random source works");
    secret
}

/// Why a login failed. Every failure of a well-formed exchange says the same thing to the
/// client ([`Failure::client_message`]); the detail is for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    #[error("the nonce does not continue the exchange")]
    Nonce,
    #[error("the proof does not match")]
    Proof,
    /// A bearer token that does not pass (signature, issuer, audience, expiry, claim).
    #[error("the token is refused: {0}")]
    Token(String),
}

impl Failure {
    /// What the client is told.
    pub fn client_message(&self) -> &'static str {
        match self {
            Failure::Malformed(_) | Failure::Unsupported(_) => "malformed SASL message",
            Failure::Nonce | Failure::Proof => "authentication failed: invalid credentials",
            Failure::Token(_) => "authentication failed: invalid token",
        }
    }
}

/// A PLAIN login (`authzid NUL user NUL password`): the user, if the password is right.
pub fn plain(
    message: &[u8],
    lookup: impl Fn(&str) -> Option<Credential>,
    secret: &[u8],
) -> Result<String, Failure> {
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::Malformed("PLAIN message"));
    };
    let user = std::str::from_utf8(user).map_err(|_| Failure::Malformed("PLAIN user"))?;
    if user.is_empty() || !(authzid.is_empty() || authzid == user.as_bytes()) {
        return Err(Failure::Unsupported(
            "an authorization id other than the user",
        ));
    }
    // Unknown users cost the same work as known ones.
    let credential = lookup(user).unwrap_or_else(|| decoy(Mechanism::ScramSha512, user, secret));
    if credential.verifies(password) {
        Ok(user.to_string())
    } else {
        Err(Failure::Proof)
    }
}

#[cfg(test)]
mod tests;
