//! Local forwarding for TCP endpoints: `piko forward tcp` listens locally and carries each
//! accepted connection over a WebSocket to the server's proxy port.

use std::time::Duration;

use piko_protocol::paths::{tcp_url, HALF_CLOSE_HEADER};
use piko_protocol::{EndpointId, WsStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::{ConfigError, TransportConfig};
use crate::credentials::Secret;
use crate::transport::{Connector, DialError};

/// Default proxy URL for `piko forward`.
pub const DEFAULT_PROXY_URL: &str = "http://localhost:8000";

/// Time allowed to open each connection's WebSocket to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Time the close handshake may take once both directions have ended.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why forwarding cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The proxy URL does not make a WebSocket URL.
    #[error("invalid proxy URL {url:?}: {reason}; check --connect.url")]
    InvalidUrl {
        /// The WebSocket URL built from the proxy URL.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The token cannot be sent in an HTTP header.
    #[error("the token contains characters not allowed in an HTTP header; check --connect.token or PIKO_TOKEN")]
    InvalidToken,
    /// The transport settings (TLS files, proxy URL) are not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Accepts TCP connections on `listener` and carries each one over WebSocket to
/// `tcp_url(proxy_url, endpoint)` (`GET /_piko/v1/tcp/{endpoint}` on the proxy port), relaying
/// bytes as binary messages, until `shutdown` is cancelled. The token, if any, is sent as
/// `Authorization: Bearer`. Open connections are closed on shutdown. Dials with the default
/// [`Connector`] (OS trust store, proxy from the environment); see [`forward_tcp_via`].
pub async fn forward_tcp(
    listener: TcpListener,
    proxy_url: String,
    endpoint: EndpointId,
    token: Option<Secret>,
    shutdown: CancellationToken,
) -> Result<(), ForwardError> {
    let connector = Connector::new(&TransportConfig::default())?;
    forward_tcp_via(listener, proxy_url, endpoint, token, connector, shutdown).await
}

/// [`forward_tcp`] dialing through `connector` (TLS settings, HTTP proxy).
pub async fn forward_tcp_via(
    listener: TcpListener,
    proxy_url: String,
    endpoint: EndpointId,
    token: Option<Secret>,
    connector: Connector,
    shutdown: CancellationToken,
) -> Result<(), ForwardError> {
    let timeout = CONNECT_TIMEOUT;
    forward_tcp_within(
        listener, proxy_url, endpoint, token, connector, timeout, shutdown,
    )
    .await
}

/// [`forward_tcp_via`] allowing `timeout` to open each connection to the proxy
/// (`--connect.timeout`).
pub async fn forward_tcp_within(
    listener: TcpListener,
    proxy_url: String,
    endpoint: EndpointId,
    token: Option<Secret>,
    connector: Connector,
    timeout: std::time::Duration,
    shutdown: CancellationToken,
) -> Result<(), ForwardError> {
    let url = tcp_url(&proxy_url, endpoint.as_str());
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ForwardError::InvalidUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    // Ask for half-close (docs/protocol.md); a server that answers without it (the original
    // Go server) gets a Close when the local client stops sending, as before.
    request
        .headers_mut()
        .insert(HALF_CLOSE_HEADER, HeaderValue::from_static("1"));
    if let Some(t) = token {
        let mut v = HeaderValue::try_from(format!("Bearer {}", t.expose()))
            .map_err(|_| ForwardError::InvalidToken)?;
        v.set_sensitive(true);
        request.headers_mut().insert(header::AUTHORIZATION, v);
    }
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, %url, "forwarding local connections to endpoint {endpoint}");
    }
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually out of file descriptors: wait a little rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let request = request.clone();
        let connector = connector.clone();
        let shutdown = shutdown.clone();
        let span = info_span!("forward", %peer);
        tracker.spawn(
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = relay(tcp, request, &connector, timeout) => {}
                }
            }
            .instrument(span),
        );
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn relay(
    mut tcp: TcpStream,
    request: Request,
    connector: &Connector,
    timeout: std::time::Duration,
) {
    let _ = tcp.set_nodelay(true);
    let (ws, resp) = match connector.websocket_with_response(request, timeout).await {
        Ok(pair) => pair,
        Err(DialError::WebSocket(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            warn!(status = resp.status().as_u16(), body = %body.trim(), "server refused the connection");
            return;
        }
        Err(e) => {
            warn!(error = %e, "cannot reach the server");
            return;
        }
    };
    let half_close = resp
        .headers()
        .get(HALF_CLOSE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let mut ws = if half_close {
        WsStream::with_half_close(ws)
    } else {
        WsStream::new(ws)
    };
    // Each direction ends on its own: the local client's shutdown(Write) reaches the service
    // as EOF while its answer still comes back, and the reverse.
    match piko_protocol::relay(&mut tcp, &mut ws).await {
        Ok((up, down)) => {
            debug!(bytes_up = up, bytes_down = down, "connection done");
            if let Ok(Err(e)) = tokio::time::timeout(CLOSE_TIMEOUT, ws.close()).await {
                debug!(error = %e, "close handshake failed");
            }
        }
        Err(e) => debug!(error = %e, "connection ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
    /// A fake proxy port: accepts the WebSocket at the TCP path, checks the token, and echoes.
    #[tokio::test]
    async fn carries_a_connection_over_websocket() {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = proxy.accept().await.unwrap();
            let check = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                         resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                assert_eq!(req.uri().path(), "/_piko/v1/tcp/db");
                assert_eq!(req.headers()["authorization"], "Bearer tok");
                Ok(resp)
            };
            let ws = tokio_tungstenite::accept_hdr_async(tcp, check)
                .await
                .unwrap();
            let (mut r, mut w) = tokio::io::split(WsStream::new(ws));
            tokio::io::copy(&mut r, &mut w).await.unwrap();
        });

        let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local_addr = local.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let fwd = tokio::spawn(forward_tcp(
            local,
            format!("http://{proxy_addr}"),
            EndpointId::new("db").unwrap(),
            Some(Secret::new("tok".into())),
            shutdown.clone(),
        ));
        let mut c = TcpStream::connect(local_addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(std::time::Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(2), fwd)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
