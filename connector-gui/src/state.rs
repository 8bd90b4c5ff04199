//! The app's managed state (provisional until the live core lands).

use crate::view::{PreferencesView, View};

/// Managed state.
pub struct AppState;

impl AppState {
    /// Start.
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self)
    }
    /// Stop.
    pub async fn shutdown(&self) {}
    /// View.
    pub fn view(&self) -> View {
        View {
            servers: vec![],
            endpoints: vec![],
            preferences: PreferencesView {
                start_at_login: false,
                start_tunnels_on_launch: true,
                notify_on_disconnect: true,
                theme: "system".into(),
            },
            banner: None,
            token_store: "the OS keychain".into(),
            summary: "Piko — signed out".into(),
            summary_dot: "○",
        }
    }
}
