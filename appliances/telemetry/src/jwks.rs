//! An identity provider's published keys fetched from its `jwks_uri` (`[sasl.oauthbearer]`
//! or `[admin.oauthbearer]` `jwks_url`), for the verifier that checks people's bearer
//! tokens. Fetched at start and every `jwks_refresh_secs`; soon again while none has come.
//! A failed fetch keeps the keys held, so logins go on through the provider's outage.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use sasl::oauthbearer::{Verifier, parse_jwks};
use tokio_util::sync::CancellationToken;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a failed fetch is retried while no keys are held.
const RETRY_WITHOUT_KEYS: Duration = Duration::from_secs(5);

/// Keep `verifier`'s keys fresh from its `jwks_url` until `shutdown` (returns at once for
/// a verifier that reads a file).
pub async fn refresh(verifier: Arc<Verifier>, shutdown: CancellationToken) {
    let settings = verifier.settings().clone();
    let Some(url) = settings.jwks_url.clone() else {
        return;
    };
    let tls = match (&settings.jwks_ca, url.starts_with("https://")) {
        (Some(ca), true) => match tls::Connector::new(ca, None) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "jwks_ca does not load: bearer tokens cannot be checked");
                return;
            }
        },
        _ => None,
    };
    let every = Duration::from_secs(settings.jwks_refresh_secs);
    let mut held = false;
    loop {
        match fetch(&url, tls.as_ref()).await {
            Ok(keys) => {
                let count = keys.keys.len();
                if verifier.set_keys(keys) {
                    tracing::info!(%url, keys = count, "identity provider keys loaded");
                }
                held = true;
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, held, "fetching the identity provider's keys failed")
            }
        }
        let wait = if held {
            every
        } else {
            RETRY_WITHOUT_KEYS.min(every)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One GET of the JWKS at `url`.
async fn fetch(
    url: &str,
    tls: Option<&tls::Connector>,
) -> anyhow::Result<sasl::oauthbearer::JwkSet> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow::anyhow!("not a URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let target = format!("{scheme}://{authority}");
    let (status, body) =
        crate::admin::call(&target, tls, Method::GET, path, None, None, FETCH_TIMEOUT).await?;
    if status != StatusCode::OK {
        anyhow::bail!("answered {status}");
    }
    parse_jwks(body.as_bytes()).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use parking_lot::Mutex;
    use sasl::oauthbearer::BearerSettings;
    use sasl::oauthbearer::test_issuer::TestIssuer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serve `body` to every GET until the test ends (an identity provider's `jwks_uri`),
    /// counting the answers in `served`.
    async fn serve(body: Arc<Mutex<String>>, served: Arc<AtomicUsize>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut head = vec![0u8; 4096];
                let _ = s.read(&mut head).await;
                let text = body.lock().clone();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                served.fetch_add(1, Ordering::SeqCst);
            }
        });
        addr
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn keys_come_from_the_url_and_follow_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let iss = "https://sso.example/realms/hub";
        let (k1, k2) = (
            TestIssuer::new(dir.path(), iss, "k1"),
            TestIssuer::new(dir.path(), iss, "k2"),
        );
        let published = Arc::new(Mutex::new(std::fs::read_to_string(&k1.jwks).unwrap()));
        let served = Arc::new(AtomicUsize::new(0));
        let addr = serve(Arc::clone(&published), Arc::clone(&served)).await;
        let verifier = Arc::new(
            Verifier::load(BearerSettings {
                issuer: iss.into(),
                audience: "hub".into(),
                jwks_file: None,
                jwks_url: Some(format!(
                    "http://{addr}/realms/hub/protocol/openid-connect/certs"
                )),
                jwks_ca: None,
                jwks_refresh_secs: 1,
                principal_claim: "sub".into(),
                leeway_secs: 0,
            })
            .unwrap(),
        );
        let (t1, t2) = (
            k1.token("ops", "hub", 0, 600),
            k2.token("ops", "hub", 0, 600),
        );
        // Nothing verifies before the keys came.
        assert!(verifier.verify_token(&t1).is_err());
        let shutdown = CancellationToken::new();
        tokio::spawn(refresh(Arc::clone(&verifier), shutdown.clone()));
        until("the first keys", || verifier.verify_token(&t1).is_ok()).await;
        assert!(verifier.verify_token(&t2).is_err());
        // The provider rotates its key: the next refresh follows.
        *published.lock() = std::fs::read_to_string(&k2.jwks).unwrap();
        until("the rotated keys", || verifier.verify_token(&t2).is_ok()).await;
        assert!(verifier.verify_token(&t1).is_err());
        // A broken answer keeps the keys held.
        *published.lock() = "not a key set".into();
        let broken_from = served.load(Ordering::SeqCst);
        until("two broken answers", || {
            served.load(Ordering::SeqCst) >= broken_from + 2
        })
        .await;
        assert!(verifier.verify_token(&t2).is_ok());
        shutdown.cancel();
    }
}
