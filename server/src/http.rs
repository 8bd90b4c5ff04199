//! Serving HTTP on a listener: HTTP/1.1 and h2c, upgrades, limits and graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
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

/// The body of every response the server writes: a proxied body or a small one of its own.
pub type Body = Either<Incoming, Full<Bytes>>;

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
        Self { read_header_timeout: Duration::from_secs(10), max_header_bytes: 1 << 20 }
    }
}

/// Serve `handler` on `listener` until `shutdown`, then let open requests finish for up to
/// `grace` before returning.
pub async fn serve<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: HttpLimits,
    shutdown: CancellationToken,
    grace: Duration,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
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
    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        info!(port = name, %addr, "listening");
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
        let handler = handler.clone();
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req, remote).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
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
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && req.headers().contains_key(header::SEC_WEBSOCKET_KEY)
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade request.
pub fn websocket_accept<B>(req: &Request<B>) -> Response<Body> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes()).unwrap_or_default();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Either::Right(Full::new(Bytes::new())))
        .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}
