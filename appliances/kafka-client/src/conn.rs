//! One connection to a broker. Requests are written as they are sent; a reader task matches
//! responses to requests in order (Kafka answers in order on a connection) and hands each to
//! its waiter.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("connection closed before the response arrived")]
    Closed,
    #[error("the broker does not support {0:?}")]
    Unsupported(ApiKey),
    #[error("protocol error: {0}")]
    Protocol(String),
}

type Waiter = oneshot::Sender<Result<Bytes, Error>>;

struct InFlight {
    correlation_id: i32,
    waiter: Waiter,
}

/// The requests waiting for responses, and whether the reader has stopped: once it has, no
/// one would ever answer a request queued after it, so sending fails instead of waiting forever.
#[derive(Default)]
struct Pending {
    queue: VecDeque<InFlight>,
    closed: bool,
}

/// The sending half: plain TCP (split without a lock), or TLS.
enum Writer {
    Tcp(OwnedWriteHalf),
    Tls(WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Writer {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Tcp(w) => w.write_all(buf).await,
            Writer::Tls(w) => {
                w.write_all(buf).await?;
                // TLS buffers records: push them out now.
                w.flush().await
            }
        }
    }
}

pub struct Connection {
    writer: Mutex<(Writer, BytesMut)>,
    in_flight: Arc<std::sync::Mutex<Pending>>,
    correlation: AtomicI32,
    client_id: String,
    versions: HashMap<i16, (i16, i16)>,
    /// The task reading responses, which owns the read half: aborted when the connection is
    /// dropped, so that the socket closes (a TLS stream's halves close only together).
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Connect and negotiate versions with ApiVersions.
    pub async fn connect(addr: &str, client_id: &str) -> Result<Connection, Error> {
        Connection::connect_with(addr, client_id, None).await
    }

    /// [`Connection::connect`], over TLS when `tls` is given (the server's certificate must
    /// name the host of `addr`).
    pub async fn connect_with(
        addr: &str,
        client_id: &str,
        tls: Option<&tls::TlsClient>,
    ) -> Result<Connection, Error> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Connect {
                addr: addr.to_string(),
                source,
            })?;
        stream.set_nodelay(true)?;
        let in_flight: Arc<std::sync::Mutex<Pending>> = Default::default();
        let queue = Arc::clone(&in_flight);
        let (writer, reader) = match tls {
            None => {
                let (rd, wr) = stream.into_split();
                (Writer::Tcp(wr), tokio::spawn(read_responses(rd, queue)))
            }
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let stream = tls.connect(host, stream).await.map_err(Error::Tls)?;
                let (rd, wr) = tokio::io::split(stream);
                (Writer::Tls(wr), tokio::spawn(read_responses(rd, queue)))
            }
        };
        let mut conn = Connection {
            writer: Mutex::new((writer, BytesMut::new())),
            in_flight,
            correlation: AtomicI32::new(0),
            client_id: client_id.to_string(),
            versions: HashMap::new(),
            reader,
        };
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("clk"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp: ApiVersionsResponse = conn.send_at(req, 3).await?.await?;
        if resp.error_code != 0 {
            return Err(Error::Protocol(format!(
                "ApiVersions error {}",
                resp.error_code
            )));
        }
        conn.versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(conn)
    }

    /// The version to use for `R`: the highest both sides support, at most `cap`.
    pub fn version_for<R: Request>(&self, cap: i16) -> Result<i16, Error> {
        let key = ApiKey::try_from(R::KEY)
            .map_err(|_| Error::Protocol(format!("unknown api {}", R::KEY)))?;
        let (min, max) = self
            .versions
            .get(&R::KEY)
            .copied()
            .ok_or(Error::Unsupported(key))?;
        let v = max.min(cap).min(R::VERSIONS.max);
        if v < min.max(R::VERSIONS.min) {
            return Err(Error::Unsupported(key));
        }
        Ok(v)
    }

    /// Send a request at the negotiated version (at most `cap`) and wait for its response.
    pub async fn request<R: Request>(&self, req: R, cap: i16) -> Result<R::Response, Error> {
        let v = self.version_for::<R>(cap)?;
        self.send_at(req, v).await?.await
    }

    /// Write a request at version `v` now; the returned future resolves to its response.
    /// Several sends may be outstanding: this is how a connection is pipelined.
    pub async fn send_at<R: Request>(
        &self,
        req: R,
        v: i16,
    ) -> Result<impl std::future::Future<Output = Result<R::Response, Error>> + use<R>, Error> {
        let key = ApiKey::try_from(R::KEY).map_err(|_| Error::Protocol("unknown api".into()))?;
        let correlation_id = self.correlation.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(v)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_string(self.client_id.clone())));
        let (tx, rx) = oneshot::channel();
        {
            let mut guard = self.writer.lock().await;
            let (wr, buf) = &mut *guard;
            buf.clear();
            buf.put_i32(0);
            header
                .encode(buf, key.request_header_version(v))
                .map_err(|e| Error::Protocol(e.to_string()))?;
            req.encode(buf, v)
                .map_err(|e| Error::Protocol(e.to_string()))?;
            let len = (buf.len() - 4) as i32;
            buf[0..4].copy_from_slice(&len.to_be_bytes());
            // Register before writing so the reader always finds the waiter.
            {
                let mut pending = self.in_flight.lock().expect("queue lock");
                if pending.closed {
                    return Err(Error::Closed);
                }
                pending.queue.push_back(InFlight {
                    correlation_id,
                    waiter: tx,
                });
            }
            wr.write_all(buf).await?;
        }
        Ok(async move {
            let mut bytes = rx.await.map_err(|_| Error::Closed)??;
            let _header = ResponseHeader::decode(&mut bytes, R::Response::header_version(v))
                .map_err(|e| Error::Protocol(e.to_string()))?;
            <R::Response as Decodable>::decode(&mut bytes, v)
                .map_err(|e| Error::Protocol(e.to_string()))
        })
    }
}

/// Match responses to requests in order and hand each to its waiter, until the connection
/// ends; then fail every request still waiting (and any sent later).
async fn read_responses<R: AsyncRead + Unpin>(mut rd: R, queue: Arc<std::sync::Mutex<Pending>>) {
    let result: Result<(), Error> = async {
        loop {
            let size = rd.read_i32().await?;
            if size < 4 {
                return Err(Error::Protocol(format!("response size {size}")));
            }
            let mut buf = vec![0u8; size as usize];
            rd.read_exact(&mut buf).await?;
            let correlation = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let next = queue.lock().expect("queue lock").queue.pop_front();
            match next {
                Some(w) if w.correlation_id == correlation => {
                    let _ = w.waiter.send(Ok(Bytes::from(buf)));
                }
                Some(w) => {
                    let _ = w.waiter.send(Err(Error::Protocol(format!(
                        "response for correlation id {correlation}, expected {}",
                        w.correlation_id
                    ))));
                }
                None => {
                    return Err(Error::Protocol(format!(
                        "unexpected response {correlation}"
                    )));
                }
            }
        }
    }
    .await;
    let _ = result;
    let mut pending = queue.lock().expect("queue lock");
    pending.closed = true;
    for w in pending.queue.drain(..) {
        let _ = w.waiter.send(Err(Error::Closed));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kafka_protocol::messages::MetadataRequest;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    use super::*;

    /// A broker that answers ApiVersions and then closes the connection (as one that loses
    /// its lease does).
    async fn answer_once_then_close() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let size = stream.read_i32().await.unwrap();
            let mut request = vec![0u8; size as usize];
            stream.read_exact(&mut request).await.unwrap();
            let mut body = BytesMut::new();
            body.put_slice(&request[4..8]); // the correlation id
            ApiVersionsResponse::default()
                .with_api_keys(vec![
                    ApiVersion::default().with_api_key(3).with_max_version(12),
                ])
                .encode(&mut body, 3)
                .unwrap();
            stream.write_i32(body.len() as i32).await.unwrap();
            stream.write_all(&body).await.unwrap();
        });
        addr
    }

    /// Requests on a connection the broker closed fail, whether sent before the reader saw
    /// the close or after: none waits forever for an answer no one will read.
    #[tokio::test]
    async fn requests_on_a_closed_connection_fail_instead_of_hanging() {
        let addr = answer_once_then_close().await;
        let conn = Connection::connect(&addr, "test").await.expect("connect");
        for _ in 0..3 {
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                conn.request(MetadataRequest::default(), 12),
            )
            .await
            .expect("a request on a closed connection returns");
            assert!(answer.is_err(), "{answer:?}");
        }
    }
}
