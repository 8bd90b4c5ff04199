//! Status events: what each tunnel is doing, for the CLI to print and the GUI to show.

use std::fmt;
use std::time::Duration;

use piko_protocol::EndpointId;
use serde::Serialize;

/// The state of one endpoint's tunnel.
///
/// Serialized as `{"state": "connecting" | "connected" | "reconnecting" | "stopped", ...}`,
/// the delay as `delay_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TunnelState {
    /// Dialling the server for the first time.
    Connecting,
    /// Registered: the server routes the endpoint's traffic through this tunnel.
    Connected {
        /// The server's base WebSocket URL (`ws://127.0.0.1:8001`).
        server: String,
    },
    /// The tunnel was lost or could not be opened; the next attempt is in `delay`.
    Reconnecting {
        /// Time until the next attempt.
        #[serde(rename = "delay_ms", serialize_with = "millis")]
        delay: Duration,
        /// The last error, one line.
        error: String,
    },
    /// The tunnel stopped for good: on shutdown (`reason: None`) or after a rejection.
    Stopped {
        /// Why it stopped, if not a requested shutdown.
        reason: Option<String>,
    },
}

/// A duration as whole milliseconds, for JSON readers.
pub(crate) fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A change of state of one endpoint's tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusEvent {
    /// The endpoint.
    pub endpoint: EndpointId,
    /// Its local target, as displayed (`http://127.0.0.1:3000`, `db.local:5432`).
    pub target: String,
    /// The new state.
    pub state: TunnelState,
}

impl fmt::Display for StatusEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ep = &self.endpoint;
        match &self.state {
            TunnelState::Connecting => write!(f, "connecting… {ep}"),
            TunnelState::Connected { server } => {
                write!(f, "connected: {ep} → {} (server {server})", self.target)
            }
            TunnelState::Reconnecting { delay, error } => {
                write!(
                    f,
                    "reconnecting in {}: {ep}: {error}",
                    DisplayDuration(*delay)
                )
            }
            TunnelState::Stopped { reason: None } => write!(f, "stopped: {ep}"),
            TunnelState::Stopped { reason: Some(r) } => write!(f, "stopped: {ep}: {r}"),
        }
    }
}

/// A duration printed for people: `200ms`, `1.6s`, `15s`.
#[derive(Debug, Clone, Copy)]
pub struct DisplayDuration(pub Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms < 1000 {
            return write!(f, "{ms}ms");
        }
        // One decimal, rounded to the nearest tenth; "2.0s" reads as "2s".
        let tenths = (ms + 50) / 100;
        let (whole, tenth) = (tenths / 10, tenths % 10);
        if tenth == 0 {
            write!(f, "{whole}s")
        } else {
            write!(f, "{whole}.{tenth}s")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(state: TunnelState) -> String {
        StatusEvent {
            endpoint: EndpointId::new("shop").unwrap(),
            target: "http://127.0.0.1:3000".into(),
            state,
        }
        .to_string()
    }

    #[test]
    fn status_lines() {
        let cases = [
            (TunnelState::Connecting, "connecting… shop"),
            (
                TunnelState::Connected {
                    server: "ws://127.0.0.1:8001".into(),
                },
                "connected: shop → http://127.0.0.1:3000 (server ws://127.0.0.1:8001)",
            ),
            (
                TunnelState::Reconnecting {
                    delay: Duration::from_millis(1600),
                    error: "connection refused".into(),
                },
                "reconnecting in 1.6s: shop: connection refused",
            ),
            (
                TunnelState::Reconnecting {
                    delay: Duration::from_millis(200),
                    error: "x".into(),
                },
                "reconnecting in 200ms: shop: x",
            ),
            (TunnelState::Stopped { reason: None }, "stopped: shop"),
            (
                TunnelState::Stopped {
                    reason: Some(
                        "server rejected the token for endpoint shop: 401 invalid token".into(),
                    ),
                },
                "stopped: shop: server rejected the token for endpoint shop: 401 invalid token",
            ),
        ];
        for (state, want) in cases {
            assert_eq!(ev(state), want);
        }
    }

    #[test]
    fn durations() {
        let cases = [
            (0, "0ms"),
            (100, "100ms"),
            (999, "999ms"),
            (1000, "1s"),
            (1049, "1s"),
            (1650, "1.7s"),
            (15_000, "15s"),
            (12_340, "12.3s"),
        ];
        for (ms, want) in cases {
            assert_eq!(
                DisplayDuration(Duration::from_millis(ms)).to_string(),
                want,
                "{ms}ms"
            );
        }
    }
}
