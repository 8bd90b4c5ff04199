//! The local service behind the tunnel in tests: a small hyper server with one route per need.
//!
//! | route | answer |
//! |---|---|
//! | `/echo` | the request body, streamed back |
//! | `/upload` | `{"len": n, "hash": fnv1a}` of the request body |
//! | `/bytes/{n}` | `n` bytes of [`pattern`], streamed |
//! | `/headers` | `{"method", "uri", "headers"}` of the request |
//! | `/sse` | two server-sent events 400 ms apart |
//! | `/slow/{ms}` | `ok` after `ms` milliseconds |
//! | `/drip/{ms}` | `tick` lines, the first at once, then one every `ms` milliseconds, without end |
//! | `/name` | this server's name |
//! | `/ws` | WebSocket echo |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, std::io::Error>;

/// Byte `i` of the test pattern.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// `n` bytes of the test pattern starting at offset 0.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n as u64).map(pattern_byte).collect()
}

/// FNV-1a hash, to compare large bodies without keeping them.
pub fn fnv1a(data: &[u8], mut h: u64) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// FNV-1a's starting value.
pub const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// A running local service.
pub struct EchoUpstream {
    /// Its address.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

fn io_err(e: hyper::Error) -> std::io::Error {
    std::io::Error::other(e)
}

async fn handle(name: String, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next().unwrap_or(""), parts.next()) {
        ("echo", None) => Response::new(req.into_body().map_err(io_err).boxed()),
        ("upload", None) => {
            let mut body = req.into_body();
            let (mut len, mut hash) = (0u64, FNV_INIT);
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            len += d.len() as u64;
                            hash = fnv1a(d, hash);
                        }
                    }
                    Err(e) => return full(StatusCode::BAD_REQUEST, e.to_string()),
                }
            }
            full(
                StatusCode::OK,
                serde_json::json!({"len": len, "hash": hash}).to_string(),
            )
        }
        ("bytes", Some(n)) => {
            let total: u64 = n.parse().unwrap_or(0);
            let chunks = futures_util::stream::unfold(0u64, move |off| async move {
                if off >= total {
                    return None;
                }
                let len = (total - off).min(64 * 1024);
                let chunk: Vec<u8> = (off..off + len).map(pattern_byte).collect();
                Some((
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))),
                    off + len,
                ))
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, total.into());
            r
        }
        ("headers", None) => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
                    )
                })
                .collect();
            let v = serde_json::json!({"method": req.method().as_str(), "uri": req.uri().to_string(), "headers": headers});
            full(StatusCode::OK, v.to_string())
        }
        ("sse", None) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))))
                    .await;
                tokio::time::sleep(Duration::from_millis(400)).await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))))
                    .await;
            });
            let stream = tokio_stream_from(rx);
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "text/event-stream".parse().expect("header"),
            );
            r
        }
        ("slow", Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
            full(StatusCode::OK, "ok")
        }
        ("drip", Some(ms)) => {
            let every = Duration::from_millis(ms.parse().unwrap_or(100));
            // The first at once, so the response has started.
            let ticks = futures_util::stream::unfold(false, move |later| async move {
                if later {
                    tokio::time::sleep(every).await;
                }
                Some((
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"tick\n"))),
                    true,
                ))
            });
            Response::new(BodyExt::boxed(StreamBody::new(ticks)))
        }
        ("name", None) => full(StatusCode::OK, name),
        ("ws", None) => {
            let key = req
                .headers()
                .get(http::header::SEC_WEBSOCKET_KEY)
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_default();
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on_upgrade.await else { return };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
            let h = r.headers_mut();
            h.insert(http::header::CONNECTION, "upgrade".parse().expect("header"));
            h.insert(http::header::UPGRADE, "websocket".parse().expect("header"));
            h.insert(
                http::header::SEC_WEBSOCKET_ACCEPT,
                accept.parse().expect("header"),
            );
            r
        }
        _ => full(StatusCode::NOT_FOUND, "no such route"),
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl EchoUpstream {
    /// Start a service named `echo` on an ephemeral loopback port.
    pub async fn start() -> Self {
        Self::named("echo").await
    }

    /// Start a service that answers `/name` with `name`.
    pub async fn named(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let name = name.clone();
                let svc = service_fn(move |req| {
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(handle(name, req).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    /// `host:port` of the service, as a connector target.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Collect a response body stream's chunks with their arrival times (for streaming checks).
pub async fn timed_chunks(resp: reqwest::Response) -> Vec<(Duration, Bytes)> {
    let start = tokio::time::Instant::now();
    resp.bytes_stream()
        .map_ok(move |b| (start.elapsed(), b))
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await
}
