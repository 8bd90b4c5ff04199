//! Serving HTTP on a listener: HTTP/1.1 and h2c, upgrades, limits and graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::proxy::pool::PooledBody;
use crate::tls::ReloadingTls;

/// The body of every response the server writes: a proxied body or a small one of its own.
pub type Body = Either<PooledBody, Full<Bytes>>;

/// A JSON error response: `{"error": message}` with `Content-Type: application/json`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-content-type-options", "nosniff")
        .body(Either::Right(Full::new(Bytes::from(body))))
        .unwrap_or_else(|_| Response::new(Either::Right(Full::new(Bytes::new()))))
}

/// Limits applied to client connections.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time to receive a request head.
    pub read_header_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            read_header_timeout: Duration::from_secs(10),
            max_header_bytes: 1 << 20,
        }
    }
}

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// How one port serves: its name for logs, limits, optional TLS, and its shutdown.
pub struct ServeOptions {
    /// Port name for logs.
    pub name: &'static str,
    /// Request head limits.
    pub limits: HttpLimits,
    /// TLS, if the port has it.
    pub tls: Option<Arc<ReloadingTls>>,
    /// Stop accepting when cancelled.
    pub shutdown: CancellationToken,
    /// Time open requests get after `shutdown`.
    pub grace: Duration,
}

/// Serve `handler` on `listener` until `shutdown`, then let open requests finish for up to
/// `grace` before returning.
pub async fn serve<F, Fut>(listener: TcpListener, opts: ServeOptions, handler: F)
where
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let ServeOptions {
        name,
        limits,
        tls,
        shutdown,
        grace,
    } = opts;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        info!(port = name, %addr, tls = tls.is_some(), "listening");
    }
    loop {
        let (stream, remote) = tokio::select! {
            res = listener.accept() => match res {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(port = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            remote,
            tls: tls.is_some(),
        };
        let handler = handler.clone();
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req, info).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let timeout = limits.read_header_timeout;
        tokio::spawn(
            async move {
                let result = match acceptor {
                    None => {
                        let io = HeadTimeoutIo::new(stream, timeout);
                        watcher
                            .watch(
                                builder
                                    .serve_connection_with_upgrades(TokioIo::new(io), svc)
                                    .into_owned(),
                            )
                            .await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(io)) => {
                                watcher
                                    .watch(
                                        builder
                                            .serve_connection_with_upgrades(TokioIo::new(io), svc)
                                            .into_owned(),
                                    )
                                    .await
                            }
                            Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                            Err(_) => return debug!("TLS handshake timed out"),
                        }
                    }
                };
                if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("conn", port = name, %remote)),
        );
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => debug!(port = name, "connections drained"),
        _ = tokio::time::sleep(grace) => warn!(port = name, "grace period over; closing open connections"),
    }
}

/// Whether a request asks to switch to the WebSocket protocol.
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    piko_protocol::http::has_token(h, header::CONNECTION, "upgrade")
        && piko_protocol::http::has_token(h, header::UPGRADE, "websocket")
        && h.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade request.
pub fn websocket_accept<B>(req: &Request<B>) -> Response<Body> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .unwrap_or_default();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}

/// A client connection that answers `408 Request Timeout` when hyper drops it while a request
/// head has been arriving for longer than the header timeout (hyper itself just closes).
/// HTTP/2 connections (which start with the `PRI` preface) are left alone.
pub struct HeadTimeoutIo {
    inner: tokio::net::TcpStream,
    head_started: Option<std::time::Instant>,
    timeout: Duration,
    http2: Option<bool>,
}

const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 35\r\n\r\n{\"error\":\"request header timeout\"}\n";

impl HeadTimeoutIo {
    /// Wrap `inner`; `timeout` is the header read timeout hyper enforces.
    pub fn new(inner: tokio::net::TcpStream, timeout: Duration) -> Self {
        Self {
            inner,
            head_started: None,
            timeout,
            http2: None,
        }
    }

    /// A response is being written: the next bytes read start a new request head.
    fn note_write(&mut self, res: &std::task::Poll<std::io::Result<usize>>) {
        if matches!(res, std::task::Poll::Ready(Ok(n)) if *n > 0) {
            self.head_started = None;
        }
    }
}

impl tokio::io::AsyncRead for HeadTimeoutIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = res {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                if self.http2.is_none() {
                    self.http2 = Some(new.starts_with(b"PRI "));
                }
                if self.head_started.is_none() {
                    self.head_started = Some(std::time::Instant::now());
                }
            }
        }
        res
    }
}

impl tokio::io::AsyncWrite for HeadTimeoutIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let res = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&res);
        res
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let res = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for HeadTimeoutIo {
    fn drop(&mut self) {
        if self.http2 == Some(true) {
            return;
        }
        if let Some(started) = self.head_started {
            if started.elapsed() >= self.timeout {
                // Best effort, never blocks: the connection is closing anyway.
                let _ = self.inner.try_write(REQUEST_TIMEOUT_RESPONSE);
            }
        }
    }
}
