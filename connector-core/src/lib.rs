//! Piko connector core: everything the `piko` CLI and the tray app share.
//!
//! An upstream connector dials *out* to a Piko server, registers endpoints and serves the
//! connections the server routes to them from a local target.
//!
//! Layout:
//! - [`config`]: endpoint and agent configuration (CLI arguments and the original agent's YAML).
//! - [`credentials`]: the [`Secret`] type that keeps tokens out of logs, and the
//!   [`CredentialStore`] seam (OS keychain, 0600 file, memory) holding tokens per server.
//! - [`transport`]: the [`Connector`] that dials the server: HTTP `CONNECT` proxies, TLS
//!   (OS trust store, extra CAs, client certificates), the WebSocket handshake.
//! - [`status`]: the status events a tunnel reports ([`StatusEvent`], [`TunnelState`]).
//! - [`tunnel`]: the [`Agent`] that keeps one supervised, reconnecting tunnel per endpoint and
//!   forwards each proxied stream to the local HTTP or TCP target.
//! - [`forward`]: the client side of TCP endpoints (`piko forward tcp`).
//! - [`settings`]: the connector's own settings file (servers, endpoints, preferences),
//!   written atomically, with the last good copy kept.
//! - [`core`]: the live [`Core`] the tray app runs: endpoints and servers that change while
//!   it runs, a snapshot and a stream of events.
//! - [`logs`]: rolling log files in the OS log dir and an in-memory tail for the log view.
//! - [`metrics`]: the agent's Prometheus metrics (`piko_agent_*`).
//! - [`inspector`]: the request inspector (recent exchanges, redacted, replayable) and its
//!   JSON API.

// Tests unwrap freely: a panic there is a failed test with its message.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![warn(missing_docs)]

pub mod config;
pub mod core;
pub mod credentials;
pub mod forward;
pub mod inspector;
pub mod logs;
pub mod metrics;
pub mod settings;
pub mod status;
pub mod transport;
pub mod tunnel;

pub use crate::core::{
    Core, CoreError, CoreEvent, CoreOptions, EndpointView, ServerView, Snapshot,
};
pub use config::{
    AgentConfig, ConfigError, ConnectConfig, EndpointConfig, Protocol, Target, TlsConfig,
    TransportConfig,
};
pub use credentials::{CredentialStore, Secret};
pub use inspector::{Inspector, InspectorConfig};
pub use settings::{
    EndpointForm, EndpointSettings, Preferences, ServerSettings, Settings, SettingsStore, Theme,
};
pub use status::{StatusEvent, TunnelState};
pub use transport::Connector;
pub use tunnel::{Agent, AgentError};
