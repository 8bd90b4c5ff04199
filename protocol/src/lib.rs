//! The Piko wire protocol, shared by `piko-server` and `piko-connector-core`.
//!
//! Layout:
//! - [`endpoint`]: the validated [`EndpointId`] type and where a request names one.
//! - [`ws`]: a WebSocket connection read and written as one byte stream ([`WsStream`]).
//! - [`mux`]: the yamux session carried over that byte stream (server opens streams,
//!   upstream accepts them), with the window and keepalive settings both sides use.
//! - [`paths`]: the HTTP paths and headers of the protocol.
//! - [`http`]: hop-by-hop headers and upgrades, as both sides of the tunnel proxy HTTP.
//! - [`access_log`]: the per-request access log both sides write, credentials masked.
//! - [`expand`]: environment variables in a config file's text (`--config.expand-env`).
//! - [`process`]: the runtime both binaries build and what their stop signals do.
//!
//! This crate holds no policy (no routing, no reconnects): only the format on the wire and the
//! record format of the access log.

#![warn(missing_docs)]

pub mod access_log;
pub mod endpoint;
pub mod expand;
pub mod http;
pub mod mux;
pub mod paths;
pub mod process;
pub mod ws;

pub use endpoint::{EndpointId, EndpointIdError};
pub use ws::WsStream;

/// Bytes a TCP relay moves per read. tokio's default (8 KiB) turns a bulk transfer into many
/// small yamux frames and WebSocket messages; 64 KiB keeps them large (measured: TCP through
/// `forward` +35%). It costs 128 KiB per relayed connection while it runs.
pub const RELAY_BUFFER: usize = 64 * 1024;

/// Copy bytes both ways between `a` and `b` until both directions end; returns the byte
/// counts (a→b, b→a). Used for TCP endpoints and TCP over WebSocket.
///
/// Each direction ends on its own: at its reader's end of stream the writer is shut down (a
/// half-close: FIN on a yamux stream or TCP socket, the agreed empty message or a Close on a
/// [`WsStream`]) and the other direction carries on. An error in either direction ends both
/// and is returned; the caller then drops both sides.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, RELAY_BUFFER, RELAY_BUFFER).await
}
