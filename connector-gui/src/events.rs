//! Push, never poll: the core's changes, log lines and inspector entries become Tauri
//! events for the page, and tray updates.
//!
//! Events (all to every window):
//! - `piko://view`: the whole [`View`] after any change of the core;
//! - `piko://log`: one [`LogLine`](piko_connector_core::logs::LogLine);
//! - `piko://exchange`: one inspector summary.
//!
//! Each forwarding loop is a task tracked by [`AppState`] and stops when the app quits.

use std::collections::HashMap;

use tauri::{AppHandle, Emitter, Manager, Runtime};
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, warn};

use crate::state::AppState;
use crate::tray::{self, TrayAction};
use crate::view::{Tone, View};

/// Event carrying the whole view.
pub const VIEW_EVENT: &str = "piko://view";
/// Event carrying one log line.
pub const LOG_EVENT: &str = "piko://log";
/// Event carrying one inspector summary.
pub const EXCHANGE_EVENT: &str = "piko://exchange";

/// Create the tray and start the forwarding tasks (called once, from setup).
pub fn start<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<()> {
    let view = app.state::<AppState>().view();
    tray::create(app, &view, on_tray_action)?;
    forward(app);
    Ok(())
}

/// Start the tasks that push the core's changes and log lines to the page (and the tray,
/// when there is one).
pub fn forward<R: Runtime>(app: &AppHandle<R>) {
    let state = app.state::<AppState>();
    spawn_view_loop(app, &state);
    spawn_log_loop(app, &state);
    spawn_exchange_loop(app, &state);
}

fn spawn_exchange_loop<R: Runtime>(app: &AppHandle<R>, state: &AppState) {
    let mut exchanges = state.inspector.subscribe();
    let shutdown = state.shutdown_token();
    let app = app.clone();
    state.spawn(async move {
        loop {
            let got = tokio::select! {
                () = shutdown.cancelled() => return,
                got = exchanges.recv() => got,
            };
            match got {
                Ok(summary) => {
                    if let Err(e) = app.emit(EXCHANGE_EVENT, summary) {
                        debug!(error = %e, "exchange event not delivered");
                    }
                }
                // The page reloads the list when it opens the inspector; a skipped entry
                // shows up then.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        }
    });
}

fn spawn_view_loop<R: Runtime>(app: &AppHandle<R>, state: &AppState) {
    // Subscribe first, then look: a change in between is then seen twice, never missed.
    let mut events = state.core.subscribe();
    let first = state.view();
    publish(app, &first);
    let shutdown = state.shutdown_token();
    let app = app.clone();
    state.spawn(async move {
        let mut last = first;
        loop {
            let got = tokio::select! {
                () = shutdown.cancelled() => return,
                got = events.recv() => got,
            };
            match got {
                // Whatever changed, the view is recomputed from one snapshot: it cannot
                // miss a change, and a lagging receiver needs no special path.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            let view = app.state::<AppState>().view();
            // Unchanged but for its number: nothing to send.
            let same = View {
                seq: last.seq,
                ..view.clone()
            } == last;
            if same {
                continue;
            }
            notify_disconnects(&app, &last, &view);
            publish(&app, &view);
            last = view;
        }
    });
}

/// Send `view` to the page and the tray.
pub fn publish<R: Runtime>(app: &AppHandle<R>, view: &View) {
    if let Err(e) = app.emit(VIEW_EVENT, view) {
        debug!(error = %e, "view event not delivered");
    }
    if let Err(e) = tray::update(app, view) {
        warn!(error = %e, "tray update failed");
    }
}

/// A desktop notification for each endpoint that was connected and is not any more (when
/// the user asked for them).
fn notify_disconnects<R: Runtime>(app: &AppHandle<R>, before: &View, after: &View) {
    for (title, body) in disconnect_notices(before, after) {
        notify(app, &title, &body);
    }
}

/// The notifications (title, body) that going from `before` to `after` calls for: one per
/// endpoint that was connected and now is meant to be but is not, none when the user turned
/// them off. Switching an endpoint off is no disconnect.
pub fn disconnect_notices(before: &View, after: &View) -> Vec<(String, String)> {
    if !after.preferences.notify_on_disconnect {
        return Vec::new();
    }
    let was: HashMap<&str, Tone> = before
        .endpoints
        .iter()
        .map(|e| (e.id.as_str(), e.tone))
        .collect();
    after
        .endpoints
        .iter()
        .filter(|e| e.tone == Tone::Warn && was.get(e.id.as_str()) == Some(&Tone::Ok))
        .map(|e| {
            let body = e.error.clone().unwrap_or_else(|| e.state.clone());
            (format!("{} disconnected", e.id), body)
        })
        .collect()
}

/// Show a desktop notification (when the plugin runs).
#[cfg(feature = "notifications")]
fn notify<R: Runtime>(app: &AppHandle<R>, title: &str, body: &str) {
    let Some(n) = app.try_state::<tauri_plugin_notification::Notification<R>>() else {
        return;
    };
    if let Err(err) = n.builder().title(title).body(body).show() {
        debug!(error = %err, "notification not shown");
    }
}

/// Built without notifications: the log says what would have been shown.
#[cfg(not(feature = "notifications"))]
fn notify<R: Runtime>(_app: &AppHandle<R>, title: &str, body: &str) {
    debug!(%title, %body, "notification (built without notifications)");
}

fn spawn_log_loop<R: Runtime>(app: &AppHandle<R>, state: &AppState) {
    let Some(logs) = &state.logs else { return };
    let mut lines = logs.tail().subscribe();
    let shutdown = state.shutdown_token();
    let app = app.clone();
    state.spawn(async move {
        loop {
            let line = tokio::select! {
                () = shutdown.cancelled() => return,
                line = lines.recv() => line,
            };
            match line {
                Ok(line) => {
                    // No logging here: a failed emit that logged would feed itself.
                    let _ = app.emit(LOG_EVENT, line);
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Do what a tray menu click asks.
pub fn on_tray_action<R: Runtime>(app: &AppHandle<R>, action: TrayAction) {
    match action {
        TrayAction::Open => tray::show_window(app),
        TrayAction::Quit => app.exit(0),
        TrayAction::Copy { id } => {
            let view = app.state::<AppState>().view();
            let url = view
                .endpoints
                .iter()
                .find(|e| e.id == id)
                .and_then(|e| e.url.clone());
            if let Some(url) = url {
                if let Err(e) = crate::commands::copy(app, url) {
                    warn!(error = %e, "copy URL failed");
                }
            }
        }
        TrayAction::Toggle { id } => {
            let state = app.state::<AppState>();
            let core = state.core.clone();
            let app = app.clone();
            state.spawn(async move {
                let enabled = core
                    .snapshot()
                    .endpoint(&id)
                    .map(|e| !e.enabled)
                    .unwrap_or(false);
                let result = match piko_protocol::EndpointId::new(&id) {
                    Ok(ep) => core
                        .set_enabled(&ep, enabled)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = result {
                    warn!(endpoint = %id, error = %e, "tray toggle failed");
                }
                // The check item toggled itself; redraw from the truth even if nothing changed.
                publish(&app, &app.state::<AppState>().view());
            });
        }
        TrayAction::Autostart => {
            let state = app.state::<AppState>();
            let core = state.core.clone();
            let app = app.clone();
            state.spawn(async move {
                let mut prefs = core.settings().preferences;
                prefs.start_at_login = !prefs.start_at_login;
                let result = crate::commands::apply_autostart(&app, prefs.start_at_login)
                    .map_err(|e| e.message);
                let result = match result {
                    Ok(()) => core.set_preferences(prefs).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    warn!(error = %e, "start at login not changed");
                }
                publish(&app, &app.state::<AppState>().view());
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use piko_connector_core::status::TunnelState;

    use super::*;
    use crate::view::{EndpointFacts, EndpointView, PreferencesView};

    fn view(notify: bool, endpoints: &[(&str, bool, TunnelState)]) -> View {
        View {
            seq: 0,
            servers: Vec::new(),
            endpoints: endpoints
                .iter()
                .map(|(id, enabled, state)| {
                    EndpointView::from_facts(EndpointFacts {
                        id: (*id).into(),
                        server: "s".into(),
                        target: "3000".into(),
                        protocol: "http".into(),
                        enabled: *enabled,
                        signed_in: true,
                        state: Some(state.clone()),
                        url: None,
                        retry_at: None,
                    })
                })
                .collect(),
            preferences: PreferencesView {
                start_at_login: false,
                start_tunnels_on_launch: true,
                notify_on_disconnect: notify,
                theme: "system".into(),
            },
            banner: None,
            token_store: "memory".into(),
            summary: String::new(),
            summary_dot: "●",
        }
    }

    fn up() -> TunnelState {
        TunnelState::Connected {
            server: "ws://s".into(),
        }
    }

    fn lost() -> TunnelState {
        TunnelState::Reconnecting {
            delay: Duration::from_secs(1),
            error: "the server closed the tunnel".into(),
        }
    }

    #[test]
    fn a_lost_tunnel_is_notified_once_and_only_when_asked() {
        let before = view(true, &[("web", true, up()), ("db", true, lost())]);
        let after = view(true, &[("web", true, lost()), ("db", true, lost())]);
        assert_eq!(
            disconnect_notices(&before, &after),
            [(
                "web disconnected".to_string(),
                "the server closed the tunnel".to_string()
            )],
            "db was not connected before: no news"
        );
        // Still down on the next view: nothing new.
        assert!(disconnect_notices(&after, &after).is_empty());
        // Turned off by the user: no notification.
        let quiet = view(false, &[("web", true, lost()), ("db", true, lost())]);
        assert!(disconnect_notices(&before, &quiet).is_empty());
        // Switched off is not a disconnect.
        let off = view(true, &[("web", false, up()), ("db", true, lost())]);
        assert!(disconnect_notices(&before, &off).is_empty());
    }
}
