//! Connections to the Piko server: TCP, through an HTTP proxy when one applies, then TLS for
//! `https://`/`wss://` URLs, then the WebSocket handshake. Both the agent (upstream port) and
//! `piko forward` (proxy port) dial through a [`Connector`].
//!
//! Layout: this file ([`Connector`], [`ServerStream`], [`DialError`]), `tls` (the rustls
//! client configuration), `proxy` (proxy selection and the `CONNECT` handshake).

pub mod proxy;
mod tls;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::{tungstenite, WebSocketStream};
use tracing::debug;

pub use self::proxy::{NoProxy, ProxyError, ProxyPolicy, ProxyUrl};
pub(crate) use self::tls::client_config_for;
use crate::config::{ConfigError, TransportConfig};

/// Opens connections to the server as configured: proxy, TLS, WebSocket. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    proxy: Arc<ProxyPolicy>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Read the TLS files and the OS trust store and settle the proxy policy. Errors name
    /// the key at fault (`connect.tls.root_cas: cannot read ...`). Warns when certificate
    /// verification is off.
    pub fn new(config: &TransportConfig) -> Result<Self, ConfigError> {
        let tls = tls::client_config(&config.tls)?;
        let proxy = ProxyPolicy::new(config.proxy_url.as_deref())?;
        Ok(Self {
            tls: TlsConnector::from(Arc::new(tls)),
            proxy: Arc::new(proxy),
        })
    }

    /// The same connector with another proxy policy.
    pub fn with_proxy(mut self, proxy: ProxyPolicy) -> Self {
        self.proxy = Arc::new(proxy);
        self
    }

    /// Open a WebSocket for `request` (a `ws://` or `wss://` URI), all within `timeout`.
    pub async fn websocket(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<WebSocketStream<ServerStream>, DialError> {
        Ok(self.websocket_with_response(request, timeout).await?.0)
    }

    /// [`Connector::websocket`], also returning the server's `101` answer (its headers say
    /// which options the server agreed to).
    pub async fn websocket_with_response(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<(WebSocketStream<ServerStream>, Response), DialError> {
        match tokio::time::timeout(timeout, self.websocket_inner(request, timeout)).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout(timeout)),
        }
    }

    async fn websocket_inner(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<(WebSocketStream<ServerStream>, Response), DialError> {
        let uri = request.uri();
        let invalid = |reason: &str| DialError::InvalidUrl {
            url: uri.to_string(),
            reason: reason.to_string(),
        };
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => {
                return Err(invalid(
                    "expected an http://, https://, ws:// or wss:// URL",
                ))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("the URL has no host"))?
            .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let target = format!("{host}:{port}");

        let proxy = self
            .proxy
            .proxy_for(secure, &host, port)
            .map_err(DialError::ProxySetting)?;
        let dial_addr = proxy.map_or_else(|| target.clone(), ProxyUrl::addr);
        debug!(%target, proxy = ?proxy, "dialing the server");
        let mut tcp =
            TcpStream::connect(&dial_addr)
                .await
                .map_err(|source| DialError::Connect {
                    proxy: proxy.map(ProxyUrl::addr),
                    source,
                })?;
        let _ = tcp.set_nodelay(true);
        if let Some(proxy) = proxy {
            proxy::connect_tunnel(&mut tcp, proxy, &target, timeout).await?;
        }

        let stream = if secure {
            let name = tls::server_name(&host)
                .ok_or_else(|| invalid("the host is not a valid TLS server name"))?;
            match self.tls.connect(name, tcp).await {
                Ok(s) => ServerStream::Tls(Box::new(s)),
                Err(e) => {
                    return Err(match tls::fatal_tls_error(&e, &host) {
                        Some(reason) => DialError::Tls(reason),
                        None => DialError::TlsHandshake {
                            host,
                            reason: io_error(&e),
                        },
                    })
                }
            }
        } else {
            ServerStream::Plain(tcp)
        };

        match tokio_tungstenite::client_async_with_config(
            request,
            stream,
            Some(piko_protocol::ws::ws_config()),
        )
        .await
        {
            Ok(pair) => Ok(pair),
            // With TLS 1.3 a refused client certificate shows after the handshake, on the
            // first read: still a TLS verdict.
            Err(tungstenite::Error::Io(e)) => Err(match tls::fatal_tls_error(&e, &host) {
                Some(reason) => DialError::Tls(reason),
                None => DialError::WebSocket(tungstenite::Error::Io(e)),
            }),
            Err(e) => Err(DialError::WebSocket(e)),
        }
    }
}

/// Why a connection to the server could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The URL cannot be dialed.
    #[error("invalid server URL {url:?}: {reason}; check --connect.url")]
    InvalidUrl {
        /// The WebSocket URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TCP connection (to the server, or to the proxy) failed.
    #[error("{}{}", proxy.as_ref().map(|p| format!("cannot reach proxy {p}: ")).unwrap_or_default(), io_error(source))]
    Connect {
        /// The proxy dialed instead of the server, if any.
        proxy: Option<String>,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The proxy did not open the tunnel.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The environment names a proxy for this connection that cannot be used.
    #[error("{0}")]
    ProxySetting(String),
    /// The TLS handshake failed in a way retrying cannot fix (an untrusted or wrong
    /// certificate, a refused client certificate); the message says what to do.
    #[error("{0}")]
    Tls(String),
    /// The TLS handshake failed on the network (reset, closed): worth retrying.
    #[error("tls handshake with {host}: {reason}")]
    TlsHandshake {
        /// The server host.
        host: String,
        /// What happened.
        reason: String,
    },
    /// The WebSocket handshake failed (the server's HTTP answer, or the network).
    #[error("{}", match .0 { tungstenite::Error::Io(e) => io_error(e), e => e.to_string() })]
    WebSocket(tungstenite::Error),
    /// Nothing completed within the connect timeout.
    #[error("no answer from the server within {}", crate::status::DisplayDuration(*.0))]
    Timeout(Duration),
}

impl DialError {
    /// Whether a later attempt may succeed. The server's HTTP answers are judged by the
    /// caller (the WebSocket variant says "retry").
    pub fn is_retryable(&self) -> bool {
        match self {
            DialError::InvalidUrl { .. } | DialError::Tls(_) | DialError::ProxySetting(_) => false,
            DialError::Proxy(p) => p.is_retryable(),
            _ => true,
        }
    }
}

/// A one-line description of an I/O error; the kind alone for the common network failures
/// ("connection refused" rather than "Connection refused (os error 111)").
pub(crate) fn io_error(e: &io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | NotConnected
        | BrokenPipe | UnexpectedEof | AddrNotAvailable | NetworkUnreachable | HostUnreachable
        | NetworkDown => e.kind().to_string(),
        _ => e.to_string(),
    }
}

/// A connection to the server: plain TCP or TLS over TCP (either possibly through a proxy
/// tunnel, which is the same TCP stream after `CONNECT`).
#[allow(clippy::large_enum_variant)] // boxed already; the enum is one per connection
pub enum ServerStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Plain(s) => s.is_write_vectored(),
            ServerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests;
