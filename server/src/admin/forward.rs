//! `?forward=NODE`: one admin request asked of another node's admin port and its whole
//! answer read back, bounded in time and size.
//!
//! The call speaks TLS when this node's admin port does (`admin.tls`): the nodes of a
//! cluster are configured alike, which is also how the original decides to dial other
//! nodes' proxy ports over TLS. Its client side is `admin.tls.client` (trusted CAs, a client
//! certificate for an admin port that asks for one, `insecure_skip_verify`, `server_name`).
//! One connection per call, driven next to the call itself: forwards are rare operator
//! requests, and a connection that outlived the deadline would have nobody to answer.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::tls::{PeerTls, TlsError};

/// Time another node's admin port has for its whole answer: the original's 15 s.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest answer relayed from another node's admin port (a `/metrics` page or an
/// endpoint list of a large node is a few MiB).
pub const MAX_FORWARDED_ANSWER: usize = 16 << 20;

/// How `?forward=` reaches other nodes' admin ports.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// TLS with `admin.tls.client`'s settings, set when this node's admin port uses TLS
    /// (`None`: plain HTTP).
    pub tls: Option<PeerTls>,
    /// Time the other node has for its whole answer ([`FORWARD_TIMEOUT`]; not a file key,
    /// as the original's is fixed).
    pub timeout: Duration,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        Self {
            tls: None,
            timeout: FORWARD_TIMEOUT,
        }
    }
}

/// Why a forwarded call failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No TCP connection.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The address has no name a certificate can be checked against.
    #[error("{0}")]
    Name(#[source] TlsError),
    /// The TLS handshake failed (its certificate, most often).
    #[error("TLS: {0}")]
    Tls(#[source] std::io::Error),
    /// The HTTP exchange failed (with TLS 1.3, also a client certificate the other node
    /// refused: its alert comes after the handshake).
    #[error("{}", with_causes(.0))]
    Http(#[source] hyper::Error),
    /// The answer's body broke off.
    #[error("reading the answer: {0}")]
    Body(#[source] crate::http::BoxError),
    /// The answer is larger than [`MAX_FORWARDED_ANSWER`].
    #[error("answer larger than {} MiB", MAX_FORWARDED_ANSWER >> 20)]
    TooLarge,
    /// The answer was not complete in time.
    #[error("did not answer within {0:?}")]
    Timeout(Duration),
}

/// `e` and its causes, `: `-separated (hyper's own message leaves out the cause, such as
/// the TLS alert that closed the connection).
fn with_causes(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cur = c.source();
    }
    text
}

/// Ask the admin port at `addr` (`host:port`) `req` (origin-form target), and return its
/// answer's head and body.
pub async fn ask(
    settings: &ForwardSettings,
    addr: &str,
    req: Request<Empty<Bytes>>,
) -> Result<Response<Bytes>, ForwardError> {
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(ForwardError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &settings.tls {
            None => send(tcp, req).await,
            Some(tls) => {
                let name = tls.name_for(addr).map_err(ForwardError::Name)?;
                let io = tokio_rustls::TlsConnector::from(tls.config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(ForwardError::Tls)?;
                send(io, req).await
            }
        }
    };
    tokio::time::timeout(settings.timeout, exchange)
        .await
        .unwrap_or(Err(ForwardError::Timeout(settings.timeout)))
}

/// One request on a new HTTP/1.1 connection over `io`, its answer read to the end.
async fn send<T>(io: T, req: Request<Empty<Bytes>>) -> Result<Response<Bytes>, ForwardError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ForwardError::Http)?;
    let call = async {
        let resp = sender.send_request(req).await.map_err(ForwardError::Http)?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_FORWARDED_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    ForwardError::TooLarge
                } else {
                    ForwardError::Body(e)
                }
            })?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    };
    tokio::pin!(conn);
    tokio::select! {
        r = call => r,
        Err(e) = &mut conn => Err(ForwardError::Http(e)),
    }
}
