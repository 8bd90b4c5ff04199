//! The Piko wire protocol, shared by `piko-server` and `piko-connector-core`.
//!
//! Layout:
//! - [`endpoint`]: the validated [`EndpointId`] type and where a request names one.
//! - [`ws`]: a WebSocket connection read and written as one byte stream ([`WsStream`]).
//! - [`mux`]: the yamux session carried over that byte stream (server opens streams,
//!   upstream accepts them), with the window and keepalive settings both sides use.
//! - [`paths`]: the HTTP paths and headers of the protocol.
//! - [`http`]: hop-by-hop headers and upgrades, as both sides of the tunnel proxy HTTP.
//!
//! This crate holds no policy (no routing, no reconnects): only the format on the wire.

pub mod endpoint;
pub mod http;
pub mod mux;
pub mod paths;
pub mod ws;

pub use endpoint::{EndpointId, EndpointIdError};
pub use ws::WsStream;
