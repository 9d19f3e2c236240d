//! The server side of a SCRAM exchange (RFC 5802, without channel binding, as Kafka uses it):
//! client-first, server-first, client-final, server-final.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};

use crate::{Credential, Failure, Mechanism, constant_time_eq, decoy, mac};

/// The longest client message accepted (a name, a nonce and a proof fit well within it).
const MESSAGE_BYTES_MAX: usize = 4096;

pub struct ScramServer;

/// The exchange after the server's first message.
pub struct ServerFirst {
    mechanism: Mechanism,
    user: String,
    credential: Credential,
    gs2_header: String,
    client_first_bare: String,
    message: String,
    nonce: String,
}

/// A successful exchange: who logged in, and the server's final message.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientFinal {
    pub user: String,
    pub server_final: Vec<u8>,
}

impl ScramServer {
    /// Answer a client-first message: look the user up (a decoy stands in for one that does
    /// not exist) and build the server-first message.
    pub fn first(
        mechanism: Mechanism,
        message: &[u8],
        lookup: impl Fn(&str) -> Option<Credential>,
        secret: &[u8],
    ) -> Result<ServerFirst, Failure> {
        ScramServer::first_with_nonce(mechanism, message, lookup, secret, &server_nonce())
    }

    /// [`ScramServer::first`] with a given server nonce (tests replay published exchanges).
    pub(crate) fn first_with_nonce(
        mechanism: Mechanism,
        message: &[u8],
        lookup: impl Fn(&str) -> Option<Credential>,
        secret: &[u8],
        server_nonce: &str,
    ) -> Result<ServerFirst, Failure> {
        let text = text(message, "client-first message")?;
        // gs2-header: a channel-binding flag and an optional authorization id.
        let mut parts = text.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::Malformed("client-first message"));
        };
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(Failure::Unsupported("channel binding")),
            _ => return Err(Failure::Malformed("gs2 header")),
        }
        let gs2_header = format!("{flag},{authzid},");
        let mut user = None;
        let mut client_nonce = None;
        for attr in bare.split(',') {
            match attr.split_once('=') {
                Some(("n", v)) => user = Some(saslname(v)?),
                Some(("r", v)) if !v.is_empty() && v.bytes().all(printable) => {
                    client_nonce = Some(v)
                }
                Some(("m", _)) => return Err(Failure::Unsupported("mandatory extensions")),
                Some(("tokenauth", "true")) => {
                    return Err(Failure::Unsupported("delegation tokens"));
                }
                Some((k, _)) if !k.is_empty() => {} // other extensions: ignored
                _ => return Err(Failure::Malformed("client-first attribute")),
            }
        }
        let user = user.ok_or(Failure::Malformed("client-first: no user"))?;
        let client_nonce = client_nonce.ok_or(Failure::Malformed("client-first: no nonce"))?;
        if user.is_empty() {
            return Err(Failure::Malformed("client-first: an empty user"));
        }
        if let Some(a) = authzid.strip_prefix("a=")
            && saslname(a)? != user
        {
            return Err(Failure::Unsupported(
                "an authorization id other than the user",
            ));
        }
        let credential = lookup(&user)
            .filter(|c| c.mechanism == mechanism)
            .unwrap_or_else(|| decoy(mechanism, &user, secret));
        let nonce = format!("{client_nonce}{server_nonce}");
        let message = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&credential.salt),
            credential.iterations
        );
        Ok(ServerFirst {
            mechanism,
            user,
            credential,
            gs2_header,
            client_first_bare: bare.to_string(),
            message,
            nonce,
        })
    }
}

impl ServerFirst {
    /// The server-first message to send.
    pub fn message(&self) -> &[u8] {
        self.message.as_bytes()
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Check the client-final message's proof; on success, the server-final message.
    pub fn finish(self, message: &[u8]) -> Result<ClientFinal, Failure> {
        let text = text(message, "client-final message")?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(Failure::Malformed("client-final: no proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            match attr.split_once('=') {
                Some(("c", v)) => binding = Some(v),
                Some(("r", v)) => nonce = Some(v),
                Some((k, _)) if !k.is_empty() => {}
                _ => return Err(Failure::Malformed("client-final attribute")),
            }
        }
        let binding = binding.ok_or(Failure::Malformed("client-final: no channel binding"))?;
        if STANDARD.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(Failure::Malformed("client-final: channel binding"));
        }
        // RFC 5802 wants the combined nonce itself; librdkafka sends its own nonce in front of
        // it again, and Kafka accepts any nonce that ends with the combined one (the proof
        // covers what was sent either way), so this does too.
        if !nonce.is_some_and(|n| n.ends_with(self.nonce.as_str())) {
            return Err(Failure::Nonce);
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| Failure::Malformed("client-final: proof"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.message
        );
        let m = self.mechanism;
        let signature = mac(m, &self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(Failure::Proof);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let stored = ring::digest::digest(m.digest(), &client_key);
        if !constant_time_eq(stored.as_ref(), &self.credential.stored_key) {
            return Err(Failure::Proof);
        }
        let server_signature = mac(m, &self.credential.server_key, auth_message.as_bytes());
        Ok(ClientFinal {
            user: self.user,
            server_final: format!("v={}", STANDARD.encode(server_signature)).into_bytes(),
        })
    }
}

fn text<'a>(message: &'a [u8], what: &'static str) -> Result<&'a str, Failure> {
    if message.len() > MESSAGE_BYTES_MAX {
        return Err(Failure::Malformed(what));
    }
    std::str::from_utf8(message).map_err(|_| Failure::Malformed(what))
}

/// A `saslname`: `=2C` stands for `,` and `=3D` for `=`; any other `=` is malformed.
fn saslname(v: &str) -> Result<String, Failure> {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(Failure::Malformed("user name escape")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

fn server_nonce() -> String {
    let mut bytes = [0u8; 18];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source");
    STANDARD.encode(bytes)
}
