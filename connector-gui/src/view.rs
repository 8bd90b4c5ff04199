//! The view model: what the window and the tray show, computed from the core's snapshot.
//!
//! One pure function of the core's state feeds both the page (serialized as the
//! `piko://view` event) and the tray (icon, tooltip, menu), so the two never disagree, and the
//! wording is tested here without a window.

use std::time::SystemTime;

use piko_connector_core::core::epoch_millis;
use piko_connector_core::status::{DisplayDuration, TunnelState};
use serde::Serialize;

/// How an endpoint (or the whole app) is doing, in three looks that differ in shape as well
/// as colour: ● ok, ▲ failing, ○ off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tone {
    /// Connected and serving.
    Ok,
    /// Meant to be on but not serving (connecting, reconnecting, rejected).
    Warn,
    /// Switched off or signed out.
    Off,
}

impl Tone {
    /// The glyph shown next to the endpoint (in the tray menu and the page).
    pub fn glyph(self) -> &'static str {
        match self {
            Tone::Ok => "●",
            Tone::Warn => "▲",
            Tone::Off => "○",
        }
    }
}

/// One server as the page shows it: the core's view, unchanged.
pub use piko_connector_core::core::ServerView;

/// One endpoint as the page and the tray show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointView {
    /// Endpoint id.
    pub id: String,
    /// Name of the server it registers with.
    pub server: String,
    /// The local target as the user wrote it.
    pub target: String,
    /// `http` or `tcp`.
    pub protocol: String,
    /// Whether the user switched it on.
    pub enabled: bool,
    /// Overall look.
    pub tone: Tone,
    /// Machine-readable state for tests and styling: connected, connecting, reconnecting,
    /// stopped, off, signed-out.
    pub state_kind: &'static str,
    /// The state in plain words ("connected", "reconnecting in 4s"), as of this view.
    pub state: String,
    /// While reconnecting: when the next attempt is due, in milliseconds since the Unix
    /// epoch, so the page counts down to it by itself.
    pub retry_at_ms: Option<u64>,
    /// The last error in plain words, when there is one.
    pub error: Option<String>,
    /// The URL clients use, when known.
    pub url: Option<String>,
}

/// User preferences as the page edits them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PreferencesView {
    /// Launch the app when the user logs in.
    pub start_at_login: bool,
    /// Connect enabled endpoints when the app starts (else they wait for a toggle).
    pub start_tunnels_on_launch: bool,
    /// Show a desktop notification when a connected endpoint loses its tunnel.
    pub notify_on_disconnect: bool,
    /// `system`, `light` or `dark`.
    pub theme: String,
}

/// Everything the page draws, pushed as one event on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    /// Increases with every view the app computes, so the page can drop a reply that
    /// arrives after a newer event.
    pub seq: u64,
    /// Known servers.
    pub servers: Vec<ServerView>,
    /// Endpoints in the order of the settings file.
    pub endpoints: Vec<EndpointView>,
    /// Preferences.
    pub preferences: PreferencesView,
    /// A problem the user must see (a settings file that failed to load), or none.
    pub banner: Option<String>,
    /// Where a new token would be stored, in words.
    pub token_store: String,
    /// The tray tooltip, also shown in the sidebar.
    pub summary: String,
    /// The glyph of the overall state.
    pub summary_dot: &'static str,
}

/// What the core says about one endpoint, gathered by the caller.
#[derive(Debug, Clone)]
pub struct EndpointFacts {
    /// Endpoint id.
    pub id: String,
    /// Name of its server.
    pub server: String,
    /// Target as written.
    pub target: String,
    /// `http` or `tcp`.
    pub protocol: String,
    /// Switched on by the user.
    pub enabled: bool,
    /// Whether its server has a token.
    pub signed_in: bool,
    /// The tunnel's state, when it runs.
    pub state: Option<TunnelState>,
    /// The URL clients use, when known.
    pub url: Option<String>,
    /// When the next connection attempt is due, while reconnecting.
    pub retry_at: Option<SystemTime>,
}

impl EndpointView {
    /// Describe one endpoint for people.
    pub fn from_facts(f: EndpointFacts) -> Self {
        let (tone, state_kind, state, error) = match (&f.state, f.enabled, f.signed_in) {
            (_, false, _) => (Tone::Off, "off", "off".to_string(), None),
            (_, true, false) => (
                Tone::Off,
                "signed-out",
                "signed out".to_string(),
                Some(format!("sign in to {} to connect", f.server)),
            ),
            (None, true, true) => (Tone::Warn, "connecting", "starting…".to_string(), None),
            (Some(TunnelState::Connecting), true, true) => {
                (Tone::Warn, "connecting", "connecting…".to_string(), None)
            }
            (Some(TunnelState::Connected { .. }), true, true) => {
                (Tone::Ok, "connected", "connected".to_string(), None)
            }
            (Some(TunnelState::Reconnecting { delay, error }), true, true) => (
                Tone::Warn,
                "reconnecting",
                format!("reconnecting in {}", DisplayDuration(*delay)),
                Some(error.clone()),
            ),
            (Some(TunnelState::Stopped { reason }), true, true) => {
                (Tone::Warn, "stopped", "stopped".to_string(), reason.clone())
            }
        };
        let retry_at_ms = match state_kind {
            "reconnecting" => f.retry_at.map(epoch_millis),
            _ => None,
        };
        Self {
            id: f.id,
            server: f.server,
            target: f.target,
            protocol: f.protocol,
            enabled: f.enabled,
            tone,
            state_kind,
            state,
            retry_at_ms,
            error,
            url: f.url,
        }
    }
}

/// The tray icon to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayLook {
    /// Every switched-on endpoint is connected (filled icon).
    Connected,
    /// At least one switched-on endpoint is not serving (filled icon with a warning mark).
    Warning,
    /// Nothing is switched on, or nothing is signed in (outline icon).
    Off,
}

/// The tray look for a set of endpoints.
pub fn tray_look(endpoints: &[EndpointView]) -> TrayLook {
    let on: Vec<&EndpointView> = endpoints.iter().filter(|e| e.tone != Tone::Off).collect();
    if on.is_empty() {
        TrayLook::Off
    } else if on.iter().all(|e| e.tone == Tone::Ok) {
        TrayLook::Connected
    } else {
        TrayLook::Warning
    }
}

/// The tooltip: `Piko — 3 of 4 endpoints connected (shop: connection refused)`.
pub fn summary(endpoints: &[EndpointView], any_signed_in: bool) -> String {
    if !any_signed_in {
        return "Piko — signed out".to_string();
    }
    if endpoints.is_empty() {
        return "Piko — no endpoints yet".to_string();
    }
    let connected = endpoints.iter().filter(|e| e.tone == Tone::Ok).count();
    let total = endpoints.len();
    let noun = if total == 1 { "endpoint" } else { "endpoints" };
    let mut text = format!("Piko — {connected} of {total} {noun} connected");
    // The first failing endpoint says why; more would not fit a tooltip.
    if let Some(bad) = endpoints.iter().find(|e| e.tone == Tone::Warn) {
        let why = bad.error.as_deref().unwrap_or(&bad.state);
        text.push_str(&format!(" ({}: {})", bad.id, one_line(why, 80)));
    }
    text
}

/// The glyph of the overall look.
pub fn summary_dot(look: TrayLook) -> &'static str {
    match look {
        TrayLook::Connected => Tone::Ok.glyph(),
        TrayLook::Warning => Tone::Warn.glyph(),
        TrayLook::Off => Tone::Off.glyph(),
    }
}

/// The host (and port) of a URL, or the text itself when it is not one.
pub fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(match u.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_else(|| url.to_string())
}

/// First line of `s`, cut to `max` characters with an ellipsis.
pub fn one_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() <= max {
        line.to_string()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn facts(id: &str, enabled: bool, state: Option<TunnelState>) -> EndpointFacts {
        EndpointFacts {
            id: id.into(),
            server: "piko.example.com".into(),
            target: "localhost:3000".into(),
            protocol: "http".into(),
            enabled,
            signed_in: true,
            state,
            url: None,
            retry_at: None,
        }
    }

    fn connected() -> Option<TunnelState> {
        Some(TunnelState::Connected {
            server: "ws://piko.example.com:8001".into(),
        })
    }

    fn refused() -> Option<TunnelState> {
        Some(TunnelState::Reconnecting {
            delay: Duration::from_secs(4),
            error: "connection refused".into(),
        })
    }

    #[test]
    fn each_state_reads_in_plain_words_with_its_tone() {
        let cases = [
            (facts("a", false, connected()), Tone::Off, "off", None),
            (
                facts("a", true, Some(TunnelState::Connecting)),
                Tone::Warn,
                "connecting…",
                None,
            ),
            (facts("a", true, connected()), Tone::Ok, "connected", None),
            (
                facts("a", true, refused()),
                Tone::Warn,
                "reconnecting in 4s",
                Some("connection refused"),
            ),
            (
                facts(
                    "a",
                    true,
                    Some(TunnelState::Stopped {
                        reason: Some("401 invalid token".into()),
                    }),
                ),
                Tone::Warn,
                "stopped",
                Some("401 invalid token"),
            ),
        ];
        for (f, tone, state, error) in cases {
            let v = EndpointView::from_facts(f);
            assert_eq!(
                (v.tone, v.state.as_str(), v.error.as_deref()),
                (tone, state, error)
            );
        }
    }

    #[test]
    fn only_a_reconnecting_endpoint_carries_the_moment_of_its_next_attempt() {
        let due = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut f = facts("a", true, refused());
        f.retry_at = Some(due);
        let v = EndpointView::from_facts(f);
        assert_eq!(v.retry_at_ms, Some(1_700_000_000_123));
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["retry_at_ms"], 1_700_000_000_123_u64);
        // Switched off meanwhile: nothing to count down to.
        let mut f = facts("a", false, refused());
        f.retry_at = Some(due);
        assert_eq!(EndpointView::from_facts(f).retry_at_ms, None);
    }

    #[test]
    fn a_signed_out_endpoint_says_where_to_sign_in() {
        let mut f = facts("a", true, None);
        f.signed_in = false;
        let v = EndpointView::from_facts(f);
        assert_eq!(v.tone, Tone::Off);
        assert_eq!(
            v.error.as_deref(),
            Some("sign in to piko.example.com to connect")
        );
    }

    #[test]
    fn the_tooltip_counts_connected_endpoints_and_names_the_first_failure() {
        let eps: Vec<EndpointView> = [
            facts("camera", true, connected()),
            facts("shop", true, refused()),
            facts("plc", true, connected()),
            facts("debug", true, connected()),
        ]
        .into_iter()
        .map(EndpointView::from_facts)
        .collect();
        assert_eq!(
            summary(&eps, true),
            "Piko — 3 of 4 endpoints connected (shop: connection refused)"
        );
        assert_eq!(tray_look(&eps), TrayLook::Warning);
    }

    #[test]
    fn the_tray_is_filled_only_when_every_switched_on_endpoint_is_connected() {
        let on = EndpointView::from_facts(facts("a", true, connected()));
        let off = EndpointView::from_facts(facts("b", false, None));
        let bad = EndpointView::from_facts(facts("c", true, refused()));
        assert_eq!(tray_look(&[on.clone(), off.clone()]), TrayLook::Connected);
        assert_eq!(tray_look(&[on, bad]), TrayLook::Warning);
        assert_eq!(tray_look(std::slice::from_ref(&off)), TrayLook::Off);
        assert_eq!(tray_look(&[]), TrayLook::Off);
        assert_eq!(summary(&[off], false), "Piko — signed out");
        assert_eq!(summary(&[], true), "Piko — no endpoints yet");
    }

    #[test]
    fn long_errors_are_cut_to_one_line() {
        assert_eq!(one_line("first\nsecond", 80), "first");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(host_of("https://piko.example.com"), "piko.example.com");
        assert_eq!(host_of("not a url"), "not a url");
    }
}
