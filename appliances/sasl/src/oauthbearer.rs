//! SASL OAUTHBEARER (RFC 7628) for people: admins and analysts log in with a JWT from the
//! company's identity provider (Keycloak, Authelia). The token's signature is checked against
//! the issuer's published keys (a JWKS file, re-read when it changes), and its issuer,
//! audience and expiry; the principal is a configured claim (`sub` by default).
//!
//! `jsonwebtoken` (on `ring`, as everything in the appliances) does the JWT work; this module
//! parses the SASL message and applies the hub's policy.

use std::path::PathBuf;
use std::time::SystemTime;

pub use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::Failure;

/// `[sasl.oauthbearer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerSettings {
    /// The tokens' `iss`.
    pub issuer: String,
    /// The `aud` a token must name (the hub).
    pub audience: String,
    /// The issuer's public keys (JWKS, as its `jwks_uri` serves them), re-read on change...
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// ...or fetched from the issuer's `jwks_uri` itself (`https://` checked against
    /// `jwks_ca`) every `jwks_refresh_secs` by the appliance. A failed fetch keeps the keys
    /// it had, so logins go on through an identity provider's outage.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    #[serde(default = "default_refresh")]
    pub jwks_refresh_secs: u64,
    /// The claim that names the principal (`User:<value>`).
    #[serde(default = "default_claim")]
    pub principal_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_claim() -> String {
    "sub".into()
}

fn default_leeway() -> u64 {
    30
}

fn default_refresh() -> u64 {
    300
}

impl BearerSettings {
    /// The checks a configuration must pass; `what` names the section in errors.
    pub fn check(&self, what: &str) -> Result<(), String> {
        match (&self.jwks_file, &self.jwks_url) {
            (Some(_), None) => Ok(()),
            (None, Some(url)) => {
                if url.starts_with("https://") && self.jwks_ca.is_none() {
                    return Err(format!("{what}.jwks_url over HTTPS needs {what}.jwks_ca"));
                }
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(format!("{what}.jwks_url must be an http(s):// URL"));
                }
                if self.jwks_refresh_secs == 0 {
                    return Err(format!("{what}.jwks_refresh_secs must be at least 1"));
                }
                Ok(())
            }
            _ => Err(format!("{what}: give one of jwks_file and jwks_url")),
        }
    }
}

/// A token that passed: who, and until when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    pub principal: String,
    pub expires_unix: u64,
}

/// Checks bearer tokens against the settings and the current JWKS.
pub struct Verifier {
    settings: BearerSettings,
    keys: Mutex<(Option<SystemTime>, JwkSet)>,
}

/// The longest token accepted.
const TOKEN_BYTES_MAX: usize = 16 << 10;

impl Verifier {
    /// With `jwks_file`, its keys; with `jwks_url`, none until [`Verifier::set_keys`]
    /// (the appliance fetches them).
    pub fn load(settings: BearerSettings) -> Result<Verifier, String> {
        settings.check("oauthbearer")?;
        let (stamp, keys) = match &settings.jwks_file {
            Some(path) => read_jwks(path)?,
            None => (None, JwkSet { keys: Vec::new() }),
        };
        Ok(Verifier {
            settings,
            keys: Mutex::new((stamp, keys)),
        })
    }

    pub fn settings(&self) -> &BearerSettings {
        &self.settings
    }

    /// Keys fetched from `jwks_url`; whether they differ from those held.
    pub fn set_keys(&self, fresh: JwkSet) -> bool {
        let mut keys = self.keys.lock();
        let changed = keys.1 != fresh;
        keys.1 = fresh;
        changed
    }

    /// The JWKS, re-read when its file changed (a rotated key; a broken file keeps the old).
    fn keys(&self) -> JwkSet {
        let mut keys = self.keys.lock();
        let Some(path) = &self.settings.jwks_file else {
            return keys.1.clone();
        };
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if stamp != keys.0 {
            match read_jwks(path) {
                Ok(fresh) => *keys = fresh,
                Err(e) => {
                    tracing::error!(error = %e, "the JWKS changed but does not load; keeping the previous keys")
                }
            }
        }
        keys.1.clone()
    }

    /// Check the client's first (and only) OAUTHBEARER message (expiry against the clock).
    pub fn verify(&self, message: &[u8]) -> Result<Bearer, Failure> {
        self.verify_token(bearer_token(message)?)
    }

    /// Check a bearer token itself (an HTTP `Authorization: Bearer` header's).
    pub fn verify_token(&self, token: &str) -> Result<Bearer, Failure> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(Failure::Malformed("bearer token"));
        }
        let header = decode_header(token).map_err(|_| Failure::Malformed("bearer token"))?;
        let keys = self.keys();
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or(Failure::Token("no key of the issuer signed it".into()))?;
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| Failure::Token(format!("issuer key: {e}")))?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.settings.issuer]);
        v.set_audience(&[&self.settings.audience]);
        v.leeway = self.settings.leeway_secs;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
            .map_err(|e| Failure::Token(e.to_string()))?;
        let claims = data.claims;
        let principal = claims
            .get(&self.settings.principal_claim)
            .and_then(|v| v.as_str())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Failure::Token(format!("no {} claim", self.settings.principal_claim)))?;
        let expires_unix = claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(Bearer {
            principal: principal.to_string(),
            expires_unix,
        })
    }
}

/// A JWKS document (an identity provider's `jwks_uri` answer).
pub fn parse_jwks(bytes: &[u8]) -> Result<JwkSet, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))
}

fn read_jwks(path: &std::path::Path) -> Result<(Option<SystemTime>, JwkSet), String> {
    let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let keys = parse_jwks(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((stamp, keys))
}

/// The token of an OAUTHBEARER initial client response: `gs2-header %x01 auth=Bearer <token>
/// %x01 ... %x01` (RFC 7628 section 3.1).
fn bearer_token(message: &[u8]) -> Result<&str, Failure> {
    if message.len() > TOKEN_BYTES_MAX {
        return Err(Failure::Malformed("OAUTHBEARER message"));
    }
    let text =
        std::str::from_utf8(message).map_err(|_| Failure::Malformed("OAUTHBEARER message"))?;
    let mut parts = text.split('\x01');
    let gs2 = parts.next().unwrap_or_default();
    if !(gs2.starts_with("n,") || gs2.starts_with("y,")) {
        return Err(Failure::Malformed("OAUTHBEARER gs2 header"));
    }
    parts
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "auth")
        .and_then(|(_, v)| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(Failure::Malformed("OAUTHBEARER: no auth=Bearer"))
}

/// A throw-away token issuer for tests: an ECDSA P-256 key, its JWKS file, and tokens signed
/// with it (the hub's tests stand in for Keycloak with it).
#[cfg(any(test, feature = "test-issuer"))]
pub mod test_issuer {
    use std::path::{Path, PathBuf};

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    pub struct TestIssuer {
        pub issuer: String,
        pub kid: String,
        pub jwks: PathBuf,
        key: EncodingKey,
    }

    impl TestIssuer {
        /// A new key named `kid`, its JWKS written to `dir/<kid>.jwks.json`.
        pub fn new(dir: &Path, issuer: &str, kid: &str) -> TestIssuer {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("a key");
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .expect("the key");
            // An uncompressed point: 0x04, x, y.
            let point = pair.public_key().as_ref();
            let (x, y) = (&point[1..33], &point[33..65]);
            let jwks = serde_json::json!({ "keys": [{
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            }]});
            let path = dir.join(format!("{kid}.jwks.json"));
            std::fs::write(&path, jwks.to_string()).expect("write the JWKS");
            TestIssuer {
                issuer: issuer.to_string(),
                kid: kid.to_string(),
                jwks: path,
                key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            }
        }

        /// A token for `sub` and `aud`, valid from `nbf` to `exp` seconds relative to now.
        pub fn token(&self, sub: &str, aud: &str, nbf: i64, exp: i64) -> String {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs() as i64;
            let claims = serde_json::json!({
                "iss": self.issuer, "sub": sub, "aud": aud,
                "iat": now, "nbf": now + nbf, "exp": now + exp,
            });
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(self.kid.clone());
            encode(&header, &claims, &self.key).expect("a token")
        }
    }

    /// The OAUTHBEARER client message carrying `token`.
    pub fn message(token: &str) -> Vec<u8> {
        format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::test_issuer::{TestIssuer, message};
    use super::*;

    fn verifier(issuer: &TestIssuer) -> Verifier {
        Verifier::load(BearerSettings {
            issuer: issuer.issuer.clone(),
            audience: "hub".into(),
            jwks_file: Some(issuer.jwks.clone()),
            jwks_url: None,
            jwks_ca: None,
            jwks_refresh_secs: 300,
            principal_claim: "sub".into(),
            leeway_secs: 5,
        })
        .unwrap()
    }

    #[test]
    fn a_token_of_the_issuer_for_the_hub_names_its_principal_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keycloak = TestIssuer::new(dir.path(), "https://sso.example/realms/hub", "k1");
        let v = verifier(&keycloak);
        let ok = v
            .verify(&message(&keycloak.token("analyst", "hub", 0, 600)))
            .unwrap();
        assert_eq!(ok.principal, "analyst");
        assert!(ok.expires_unix > 0);

        let refused = |m: Vec<u8>, why: &str| {
            let e = v.verify(&m).unwrap_err();
            assert!(
                matches!(e, Failure::Token(_) | Failure::Malformed(_)),
                "{why}: {e}"
            );
            assert!(
                e.client_message().starts_with("authentication failed")
                    || matches!(e, Failure::Malformed(_)),
                "{why}"
            );
        };
        refused(
            message(&keycloak.token("analyst", "hub", -600, -60)),
            "expired",
        );
        refused(
            message(&keycloak.token("analyst", "hub", 600, 1200)),
            "not yet valid",
        );
        refused(
            message(&keycloak.token("analyst", "other", 0, 600)),
            "another audience",
        );
        let stranger = TestIssuer::new(dir.path(), "https://sso.example/realms/hub", "k2");
        refused(
            message(&stranger.token("analyst", "hub", 0, 600)),
            "signed by a key not in the JWKS",
        );
        let other_issuer = TestIssuer::new(dir.path(), "https://evil.example", "k1b");
        let mixed = Verifier::load(BearerSettings {
            jwks_file: Some(other_issuer.jwks.clone()),
            ..v.settings.clone()
        })
        .unwrap();
        assert!(
            mixed
                .verify(&message(&other_issuer.token("analyst", "hub", 0, 600)))
                .is_err(),
            "another issuer"
        );
        refused(b"n,,\x01auth=Basic abc\x01\x01".to_vec(), "not a bearer");
        refused(b"garbage".to_vec(), "no gs2 header");
        refused(message("not.a.jwt"), "not a JWT");

        // A rotated JWKS is read again: the new key's tokens pass.
        std::fs::copy(&stranger.jwks, &keycloak.jwks).unwrap();
        // A different modification time, whatever the file system's clock granularity.
        let later = SystemTime::now() + std::time::Duration::from_secs(60);
        let f = std::fs::File::options()
            .write(true)
            .open(&keycloak.jwks)
            .unwrap();
        f.set_modified(later).unwrap();
        let rotated = v.verify(&message(&stranger.token("analyst", "hub", 0, 600)));
        assert_eq!(rotated.unwrap().principal, "analyst");
    }
}
