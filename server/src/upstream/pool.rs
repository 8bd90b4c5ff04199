//! HTTP/1.1 connections to an upstream, one yamux stream each, kept alive for upstreams that
//! negotiated it.
//!
//! Opening a stream and an HTTP connection per request costs frames, tasks and allocations
//! on both sides; reusing idle connections saves them. Only an upstream that asked for it at
//! registration ([`Upstream::keep_alive`](super::Upstream::keep_alive): this project's
//! connector) gets them: an SDK upstream written for the original server may read one
//! request per stream and never the next (measured: every other request then waited for the
//! proxy timeout and got 504). A connection goes back to the pool when its response body has
//! been read to the end ([`PooledBody`](crate::http::PooledBody), through
//! [`PoolReturn`](crate::http::PoolReturn)).

use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use piko_protocol::mux::Session;
use tracing::debug;

use crate::http::RequestBody;

/// Idle connections kept per upstream at most.
const MAX_IDLE: usize = 256;
/// Time an idle connection may take to report ready before it is dropped.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The idle connections of one upstream.
#[derive(Default)]
pub struct ConnPool {
    idle: Mutex<Vec<SendRequest<RequestBody>>>,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// The session refused a new stream (going away, closed, too many streams).
    #[error("{0}")]
    Open(#[from] piko_protocol::mux::MuxError),
    /// The HTTP handshake on a new stream failed.
    #[error("handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

impl ConnPool {
    /// Number of idle connections.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Drop every idle connection (their streams close).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn pop(&self) -> Option<SendRequest<RequestBody>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Put a connection back for the next request.
    pub fn put(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }

    /// An idle connection ready for a request, or a new one on a new stream of `session`
    /// (then `opened` is true).
    pub async fn checkout(
        &self,
        session: &Session,
    ) -> Result<(SendRequest<RequestBody>, Opened), CheckoutError> {
        while let Some(mut sender) = self.pop() {
            if sender.is_closed() {
                continue;
            }
            if sender.is_ready() {
                return Ok((sender, false));
            }
            match tokio::time::timeout(READY_TIMEOUT, sender.ready()).await {
                Ok(Ok(())) => return Ok((sender, false)),
                _ => continue,
            }
        }
        Ok((connect(session, Wire::KeepAlive).await?, true))
    }
}

/// Whether a connection was opened for the request (a new stream), not taken from the pool.
pub type Opened = bool;

/// How requests are written on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Several requests per stream, header names as they are kept (lower case): for
    /// upstreams that negotiated it.
    KeepAlive,
    /// One request per stream, header names in canonical case (`Content-Type`), as the
    /// original server's Go client writes them: services behind it may match names
    /// case-sensitively.
    OnePerStream,
}

/// A new HTTP/1.1 connection on a new stream of `session`.
pub async fn connect(
    session: &Session,
    wire: Wire,
) -> Result<SendRequest<RequestBody>, CheckoutError> {
    let stream = session.open().await?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(wire == Wire::OnePerStream)
        .handshake(TokioIo::new(stream))
        .await?;
    // Not tracked: the connection ends with its stream, which the session's drain (tracked
    // by the upstream port) closes; tracking each one would cost the hot path.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Send `req` on `sender`; a request the connection could not take (it closed before the
/// request was written) is sent again on a fresh stream of `session`, written as `wire` says.
pub async fn send(
    mut sender: SendRequest<RequestBody>,
    session: &Session,
    wire: Wire,
    req: Request<RequestBody>,
) -> Result<(Response<Incoming>, SendRequest<RequestBody>), SendError> {
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, sender)),
        Err(mut e) => match e.take_message() {
            Some(req) => {
                debug!(error = %e.error(), "idle connection closed before the request; retrying on a new stream");
                let mut sender = connect(session, wire).await.map_err(SendError::Checkout)?;
                let resp = sender.send_request(req).await.map_err(SendError::Request)?;
                Ok((resp, sender))
            }
            None => Err(SendError::Request(e.into_error())),
        },
    }
}

/// Why a request could not be sent to the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection.
    #[error("{0}")]
    Checkout(CheckoutError),
    /// The request failed on the connection.
    #[error("{0}")]
    Request(hyper::Error),
}
