//! The listener over real sockets: JSON answers with Confluent's content type, the gate, the
//! body limit, and a write sent to a broker that does not write forwarded to the one that does.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value as Json, json};
use tokio::net::{TcpListener, TcpStream};

use crate::api::{CONTENT_TYPE, Registry, Writer};
use crate::api_tests::registry;
use crate::gate::{Action, SubjectOp};
use crate::server::{Caller, Gate, Open, ServerLimits, serve};

/// Serve `registry` on a loopback port; returns its address.
async fn listen(registry: Arc<Registry>, gate: Arc<dyn Gate>, limits: ServerLimits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        registry,
        gate,
        limits,
        None,
        std::future::pending(),
    ));
    addr
}

/// One HTTP exchange: (status, content type, JSON body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, Json) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        ct,
        serde_json::from_slice(&bytes).unwrap_or(Json::Null),
    )
}

const SCHEMA: &str = r#"{"schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"int\"}]}"}"#;

#[tokio::test]
async fn answers_json_with_confluents_content_type() {
    let (r, _) = registry();
    let addr = listen(Arc::new(r), Arc::new(Open), ServerLimits::default()).await;
    let (status, ct, body) = http(addr, "POST", "/subjects/s/versions", SCHEMA).await;
    assert_eq!(
        (status, ct.as_str(), body),
        (200, CONTENT_TYPE, json!({"id": 1}))
    );
    let (status, _, body) = http(addr, "GET", "/subjects/s/versions/9", "").await;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40402)));
}

#[tokio::test]
async fn the_gate_and_the_body_limit_refuse_before_the_registry_sees_anything() {
    struct ReadOnly;
    impl Gate for ReadOnly {
        fn allow(&self, _: &Caller, action: Action<'_>) -> bool {
            !matches!(action, Action::Subject(_, SubjectOp::Write))
        }
    }
    let (r, _) = registry();
    let small = ServerLimits {
        body_bytes_max: 64,
        ..ServerLimits::default()
    };
    let addr = listen(Arc::new(r), Arc::new(ReadOnly), small).await;
    assert_eq!(
        http(addr, "POST", "/subjects/s/versions", SCHEMA).await.0,
        403
    );
    assert_eq!(http(addr, "GET", "/subjects", "").await.2, json!([]));
    let (r, _) = registry();
    let addr = listen(Arc::new(r), Arc::new(Open), small).await;
    let (status, _, body) = http(addr, "POST", "/subjects/s/versions", SCHEMA).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (400, json!(400)),
        "{body}"
    );
}

#[tokio::test]
async fn a_write_to_a_follower_is_forwarded_to_the_writer_once() {
    let (writer, writer_log) = registry();
    let writer_addr = listen(Arc::new(writer), Arc::new(Open), ServerLimits::default()).await;
    let (follower, follower_log) = registry();
    *follower_log.writer.lock() = Writer::Remote(format!("http://{writer_addr}"));
    let follower_addr = listen(Arc::new(follower), Arc::new(Open), ServerLimits::default()).await;
    assert_eq!(
        http(follower_addr, "POST", "/subjects/s/versions", SCHEMA)
            .await
            .2,
        json!({"id": 1})
    );
    assert_eq!(
        http(writer_addr, "GET", "/subjects", "").await.2,
        json!(["s"])
    );
    // A writer that itself points elsewhere refuses a forwarded request instead of passing it on.
    *writer_log.writer.lock() = Writer::Remote(format!("http://{follower_addr}"));
    let (status, _, body) = http(follower_addr, "POST", "/subjects/t/versions", SCHEMA).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (500, json!(50003)),
        "{body}"
    );
    // Nobody writes: 50003 at once.
    *follower_log.writer.lock() = Writer::Unknown;
    assert_eq!(
        http(follower_addr, "POST", "/subjects/t/versions", SCHEMA)
            .await
            .2["error_code"],
        50003
    );
}

/// What the server does with a connection: closes it (EOF or reset), or answers with a status
/// line, within ten seconds.
async fn outcome(stream: &mut TcpStream) -> Result<String, &'static str> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 256];
    match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await {
        Err(_) => Err("neither answered nor closed"),
        Ok(Ok(0)) | Ok(Err(_)) => Err("closed"),
        Ok(Ok(n)) => Ok(String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()),
    }
}

/// Slow senders hold nothing for long: a head or a body not received within the request
/// timeout ends the request (the connection closed, or 400), while others are served.
#[tokio::test]
async fn a_head_or_body_not_received_in_time_ends_its_request() {
    use tokio::io::AsyncWriteExt;
    let (r, _) = registry();
    let limits = ServerLimits {
        request_timeout: std::time::Duration::from_millis(500),
        ..ServerLimits::default()
    };
    let addr = listen(Arc::new(r), Arc::new(Open), limits).await;
    let mut head = TcpStream::connect(addr).await.unwrap();
    head.write_all(b"GET /subjects HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut body = TcpStream::connect(addr).await.unwrap();
    body.write_all(
        b"POST /subjects/s/versions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"schema\":",
    )
    .await
    .unwrap();
    let (status, _, _) = http(addr, "GET", "/subjects", "").await;
    assert_eq!(status, 200);
    assert_eq!(outcome(&mut head).await, Err("closed"));
    let answer = outcome(&mut body).await;
    assert!(
        answer == Err("closed") || answer.as_ref().is_ok_and(|l| l.contains(" 400 ")),
        "{answer:?}"
    );
}
