//! What the core shows: a [`Snapshot`] of every server and endpoint with its live state.

use std::time::{Duration, SystemTime};

use piko_protocol::EndpointId;
use serde::Serialize;

use crate::config::Protocol;
use crate::settings::Preferences;
use crate::status::TunnelState;

/// Everything the GUI shows, at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// The servers, in settings order.
    pub servers: Vec<ServerView>,
    /// The endpoints, in settings order, with their live state.
    pub endpoints: Vec<EndpointView>,
    /// The user's preferences.
    pub preferences: Preferences,
    /// Set when the settings file could not be used (a bad hand edit): the error naming the
    /// key and line, and that the last good settings are shown. For a banner.
    pub settings_error: Option<String>,
}

/// One server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerView {
    /// Its unique name.
    pub name: String,
    /// Its upstream URL.
    pub url: String,
    /// How clients reach its endpoints (may hold `{endpoint}`).
    pub public_url: Option<String>,
    /// Whether a token is stored for it.
    pub signed_in: bool,
    /// Where its token is (or would be) kept: `the OS keychain (Secret Service)`,
    /// `/home/me/.config/piko/credentials.json (mode 0600)`.
    pub token_store: String,
    /// Why its tunnels cannot run as configured (an unreadable TLS file), if so.
    pub error: Option<String>,
}

/// One endpoint with its live state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointView {
    /// The endpoint id.
    pub id: EndpointId,
    /// Its server's name.
    pub server: String,
    /// The local target as the user gave it.
    pub target: String,
    /// HTTP or TCP.
    pub protocol: Protocol,
    /// Whether the user wants it running.
    pub enabled: bool,
    /// What its tunnel is doing (`Stopped` when disabled).
    pub state: TunnelState,
    /// The last error, until the tunnel connects again.
    pub last_error: Option<String>,
    /// Time until the next connection attempt, while reconnecting; serialized as
    /// `retry_in_ms`.
    #[serde(rename = "retry_in_ms", serialize_with = "opt_millis")]
    pub retry_in: Option<Duration>,
    /// When the next connection attempt is due, while reconnecting: a fixed moment (unlike
    /// `retry_in`), so a view shown later can count down to it. Serialized as `retry_at_ms`,
    /// milliseconds since the Unix epoch.
    #[serde(rename = "retry_at_ms", serialize_with = "opt_epoch_millis")]
    pub retry_at: Option<SystemTime>,
    /// The URL clients use to reach it, when its server says.
    pub public_url: Option<String>,
}

fn opt_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => crate::status::millis(d, s),
        None => s.serialize_none(),
    }
}

fn opt_epoch_millis<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_u64(epoch_millis(*t)),
        None => s.serialize_none(),
    }
}

/// Milliseconds since the Unix epoch (0 before it), as JavaScript's `Date.now()` counts.
pub fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Snapshot {
    /// The endpoint `id`.
    pub fn endpoint(&self, id: &str) -> Option<&EndpointView> {
        self.endpoints.iter().find(|e| e.id.as_str() == id)
    }

    /// The server named `name`.
    pub fn server(&self, name: &str) -> Option<&ServerView> {
        self.servers.iter().find(|s| s.name == name)
    }
}
