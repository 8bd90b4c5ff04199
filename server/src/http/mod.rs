//! Serving HTTP on a listener: HTTP/1.1 and h2c, upgrades, limits and graceful drain.
//!
//! [`timeouts`] holds the header and idle timers of client connections; [`deadline`] the
//! whole-request and whole-response limits of the proxy's requests; [`body`] the body type
//! every port writes.

pub mod body;
pub mod deadline;
pub mod timeouts;

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
use tokio::net::TcpListener;
use tokio_util::either::Either as EitherIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

pub use body::{Body, BodyMeter, PoolReturn, PooledBody};
pub use deadline::{BoxError, Deadline, DeadlineExceeded, RequestBody};

use crate::tls::ReloadingTls;

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

/// Time without a frame from an HTTP/2 client after which hyper pings it.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Time an HTTP/2 client has to answer a keepalive ping before its connection is closed.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Limits applied to client connections.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time to receive a request head (and the first one of a new connection), and an
    /// HTTP/2 connection's preface and first SETTINGS frame.
    pub read_header_timeout: Duration,
    /// Time a keep-alive connection (or an HTTP/2 one with no request in flight) may wait
    /// for its next request.
    pub idle_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time a proxied request, body included, has to arrive (`proxy.http.read_timeout`;
    /// `None`: no limit). Applied by the proxy, as the original applies it to its proxy
    /// port only.
    pub read_timeout: Option<Duration>,
    /// Time a proxied response has to be sent, counted from the request head
    /// (`proxy.http.write_timeout`; `None`: no limit). Applied by the proxy.
    pub write_timeout: Option<Duration>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            read_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_header_bytes: 1 << 20,
            read_timeout: None,
            write_timeout: None,
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

/// The certificate chain a TLS client presented and the port verified (mutual TLS), added to
/// each request's extensions: the cluster port checks which node a peer speaks for.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<[rustls::pki_types::CertificateDer<'static>]>);

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
        // Header and idle timers are ClientIo's: hyper's would also close idle connections.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
        // A peer that vanished (no FIN) during a long request is found out; an idle one is
        // closed by `idle_timeout` below.
        .keep_alive_interval(Some(H2_KEEPALIVE_INTERVAL))
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    // Open connections, for the drain on shutdown (each one watches `shutdown` itself).
    let conns = TaskTracker::new();
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
        let activity = timeouts::Activity::new();
        // Set once the TLS handshake is done, before the first request is read.
        let peer_certs = Arc::new(std::sync::OnceLock::<PeerCertificates>::new());
        let svc_certs = peer_certs.clone();
        let svc = {
            let activity = activity.clone();
            service_fn(move |mut req: Request<Incoming>| {
                let handler = handler.clone();
                let activity = activity.clone();
                if let Some(certs) = svc_certs.get() {
                    req.extensions_mut().insert(certs.clone());
                }
                async move {
                    activity.request_started();
                    let resp = handler(req, info).await;
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        activity.upgraded();
                    }
                    Ok::<_, Infallible>(resp.map(|b| activity.track(b)))
                }
            })
        };
        let builder = builder.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        conns.spawn(
            async move {
                let io = match acceptor {
                    None => EitherIo::Left(stream),
                    Some(acceptor) => {
                        match tokio::time::timeout(
                            limits.read_header_timeout,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(io)) => {
                                if let Some(certs) = io.get_ref().1.peer_certificates() {
                                    let _ = peer_certs.set(PeerCertificates(certs.into()));
                                }
                                EitherIo::Right(io)
                            }
                            Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                            Err(_) => return debug!("TLS handshake timed out"),
                        }
                    }
                };
                let io = timeouts::ClientIo::new(
                    io,
                    activity.clone(),
                    limits.read_header_timeout,
                    limits.idle_timeout,
                );
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = activity.http2_idle(limits.idle_timeout) => {
                        debug!("idle HTTP/2 connection: going away");
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            r = conn.as_mut() => r,
                            // A request that raced the GOAWAY gets the drain's time.
                            () = shutdown.cancelled() => conn.as_mut().await,
                        }
                    }
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.as_mut().await
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
    conns.close();
    tokio::select! {
        _ = conns.wait() => debug!(port = name, "connections drained"),
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
