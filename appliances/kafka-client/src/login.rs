//! A SASL/SCRAM login on a [`Connection`] (SaslHandshake v1, then SaslAuthenticate), for the
//! hub's own tools and appliances that log in with a password instead of a certificate.

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use sasl::Mechanism;

use crate::conn::{Connection, Error};

/// A login that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedIn {
    /// When the login must be renewed (KIP-368), in ms from now; 0: never.
    pub session_lifetime_ms: i64,
}

impl Connection {
    /// Log in as `user` with SCRAM (the first login, or a renewal on the same connection).
    /// The server's final message is checked, so a server that does not know the password
    /// cannot pass for the broker.
    pub async fn login_scram(
        &self,
        mechanism: Mechanism,
        user: &str,
        password: &str,
    ) -> Result<LoggedIn, Error> {
        let handshake = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_static_str(mechanism.name()));
        let answer = self.request(handshake, 1).await?;
        if answer.error_code != 0 {
            return Err(Error::Protocol(format!(
                "SaslHandshake for {} refused (error {})",
                mechanism.name(),
                answer.error_code
            )));
        }
        let nonce = client_nonce();
        // RFC 5802's saslname escapes ',' and '='.
        let name = user.replace('=', "=3D").replace(',', "=2C");
        let bare = format!("n={name},r={nonce}");
        let first = self.authenticate(format!("n,,{bare}").into_bytes()).await?;
        let server_first = String::from_utf8(first.auth_bytes.to_vec())
            .map_err(|_| Error::Protocol("server-first message is not UTF-8".into()))?;
        if !server_first.starts_with(&format!("r={nonce}")) {
            return Err(Error::Protocol(
                "server-first message does not continue our nonce".into(),
            ));
        }
        let last = sasl::client_final(mechanism, password, &bare, &server_first)
            .map_err(|e| Error::Protocol(format!("server-first message: {e}")))?;
        let done = self.authenticate(last.message.into_bytes()).await?;
        if done.auth_bytes != last.server_final {
            return Err(Error::Protocol(
                "the server's final SCRAM message does not prove it knows the credential".into(),
            ));
        }
        Ok(LoggedIn {
            session_lifetime_ms: done.session_lifetime_ms,
        })
    }

    async fn authenticate(
        &self,
        bytes: Vec<u8>,
    ) -> Result<kafka_protocol::messages::SaslAuthenticateResponse, Error> {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes));
        let answer = self.request(request, 2).await?;
        if answer.error_code != 0 {
            return Err(Error::Protocol(format!(
                "SASL login refused (error {}): {}",
                answer.error_code,
                answer.error_message.as_deref().unwrap_or("")
            )));
        }
        Ok(answer)
    }
}

fn client_nonce() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&sasl::random_secret()[..24])
}
