//! The local service every system under test forwards to: a small, fast hyper HTTP/1.1 server
//! and a TCP source/sink for raw throughput.
//!
//! | HTTP route | answer |
//! |---|---|
//! | `GET /` | [`SMALL_BODY`] (about 20 bytes) |
//! | `GET /1m` | 1 MiB of bytes, one chunk |
//! | `POST /upload` | reads and discards the body, answers its length |
//! | `GET /ws` | WebSocket echo |
//!
//! TCP protocol (see [`TcpRequest`]): the client sends one byte (`d` or `u`) and a big-endian
//! `u64` length. `d`: the service writes that many bytes. `u`: the service reads that many bytes
//! and writes one byte back per MiB received, so the client counts *delivered* bytes.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// Body of `GET /`.
pub const SMALL_BODY: &[u8] = b"hello from piko-bench";

/// Size of `GET /1m` and of the upload body.
pub const MIB: usize = 1 << 20;

/// Bytes acknowledged by one ack byte of a TCP upload.
pub const UPLOAD_ACK_EVERY: u64 = MIB as u64;

/// The first bytes of a TCP throughput connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpRequest {
    /// The service sends this many bytes.
    Download(u64),
    /// The client sends this many bytes.
    Upload(u64),
}

impl TcpRequest {
    /// The 9-byte header on the wire.
    pub fn encode(self) -> [u8; 9] {
        let (tag, n) = match self {
            TcpRequest::Download(n) => (b'd', n),
            TcpRequest::Upload(n) => (b'u', n),
        };
        let mut b = [0u8; 9];
        b[0] = tag;
        b[1..].copy_from_slice(&n.to_be_bytes());
        b
    }

    fn decode(b: &[u8; 9]) -> Option<Self> {
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[1..]);
        let n = u64::from_be_bytes(n);
        match b[0] {
            b'd' => Some(TcpRequest::Download(n)),
            b'u' => Some(TcpRequest::Upload(n)),
            _ => None,
        }
    }
}

/// Bind both listeners and serve until the process ends. Returns the bound addresses at once.
pub async fn start(http: SocketAddr, tcp: SocketAddr) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let http_l = TcpListener::bind(http).await?;
    let tcp_l = TcpListener::bind(tcp).await?;
    let addrs = (http_l.local_addr()?, tcp_l.local_addr()?);
    tokio::spawn(serve_http(http_l));
    tokio::spawn(serve_tcp(tcp_l));
    Ok(addrs)
}

async fn serve_http(listener: TcpListener) {
    let big = Bytes::from(vec![b'x'; MIB]);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let big = big.clone();
        let svc = service_fn(move |req| {
            let big = big.clone();
            async move { Ok::<_, Infallible>(handle(req, big).await) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn full(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

async fn handle(mut req: Request<Incoming>, big: Bytes) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/" => full(StatusCode::OK, Bytes::from_static(SMALL_BODY)),
        "/1m" => full(StatusCode::OK, big),
        "/upload" => {
            let mut body = req.into_body();
            let mut len = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => len += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => return full(StatusCode::BAD_REQUEST, Bytes::from(e.to_string())),
                }
            }
            full(StatusCode::OK, Bytes::from(len.to_string()))
        }
        "/ws" => {
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
            h.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            h.insert(
                http::header::UPGRADE,
                http::HeaderValue::from_static("websocket"),
            );
            if let Ok(v) = http::HeaderValue::from_str(&accept) {
                h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
            }
            r
        }
        _ => full(StatusCode::NOT_FOUND, Bytes::from_static(b"no such route")),
    }
}

async fn serve_tcp(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = tcp_conn(stream).await;
        });
    }
}

async fn tcp_conn(mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await?;
    let buf = vec![0u8; 256 * 1024];
    match TcpRequest::decode(&head) {
        Some(TcpRequest::Download(mut left)) => {
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                stream.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            stream.flush().await?;
            // Let the client close first, so no unread data turns into a reset.
            let mut sink = [0u8; 64];
            while stream.read(&mut sink).await? > 0 {}
        }
        Some(TcpRequest::Upload(total)) => {
            let mut buf = buf;
            let (mut got, mut acked) = (0u64, 0u64);
            while got < total {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
                let due = got / UPLOAD_ACK_EVERY - acked;
                if due > 0 {
                    stream.write_all(&vec![b'k'; due as usize]).await?;
                    acked += due;
                }
            }
        }
        None => {}
    }
    Ok(())
}
