//! The app's managed state: the live [`Core`], its logs, and the app's own tracked tasks.
//!
//! The GUI keeps no copy of the connector's state: every view is computed from
//! [`Core::snapshot`] when asked, so the page, the tray and the core cannot drift apart.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use piko_connector_core::credentials::{self, CredentialStore};
use piko_connector_core::logs::{self, LogOptions, Logs};
use piko_connector_core::settings::{Preferences, Theme};
use piko_connector_core::{Core, CoreOptions, Inspector, InspectorConfig, SettingsStore, Snapshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::view::{
    summary, summary_dot, tray_look, EndpointFacts, EndpointView, PreferencesView, ServerView, View,
};

/// How long quitting waits for tunnels to drain before the process leaves anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(6);

/// What the app starts from (the real paths, or a test's temporary ones).
pub struct StartOptions {
    /// The settings file.
    pub settings_path: PathBuf,
    /// Where tokens are kept.
    pub credentials: Arc<dyn CredentialStore>,
    /// Why the token file stands in for the keychain, if it does.
    pub credentials_fallback: Option<String>,
    /// Time each token read or write may take (a locked keychain may never answer).
    pub credential_timeout: Duration,
    /// Running logs (file and tail), when set up.
    pub logs: Option<Logs>,
    /// What the request inspector keeps (the last 200 requests per endpoint, 64 KiB of each
    /// body, by default).
    pub inspector: InspectorConfig,
}

impl StartOptions {
    /// The app's defaults: settings in the OS config dir, tokens in the OS keychain (else the
    /// 0600 file), daily log files in the OS log dir.
    pub fn from_os() -> anyhow::Result<Self> {
        let logs = match logs::log_dir().map(LogOptions::new) {
            Ok(options) => match logs::init(&options) {
                Ok(logs) => Some(logs),
                Err(e) => {
                    eprintln!("piko-connector: logs: {e}");
                    None
                }
            },
            Err(e) => {
                eprintln!("piko-connector: logs: {e}");
                None
            }
        };
        let selected = credentials::default_store()?;
        Ok(Self {
            settings_path: SettingsStore::default_path()?,
            credentials: Arc::from(selected.store),
            credentials_fallback: selected.fallback,
            credential_timeout: credentials::DEFAULT_TIMEOUT,
            logs,
            inspector: InspectorConfig::default(),
        })
    }
}

/// The app's state, managed by Tauri.
pub struct AppState {
    /// The live connector.
    pub core: Core,
    /// The request inspector its tunnels record into.
    pub inspector: Inspector,
    /// Logs, when running (the tail for the log view, the folder).
    pub logs: Option<Logs>,
    /// Where a new token goes, in words.
    pub token_store: String,
    /// Why the token file stands in for the keychain, if it does.
    pub credentials_fallback: Option<String>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    seq: AtomicU64,
}

impl AppState {
    /// Start the core from `options`.
    pub async fn start(options: StartOptions) -> Self {
        let shutdown = CancellationToken::new();
        let token_store = options.credentials.describe();
        let inspector = Inspector::new(options.inspector);
        let mut core_options = CoreOptions::new(options.settings_path, options.credentials);
        core_options.inspector = Some(inspector.clone());
        core_options.credential_timeout = options.credential_timeout;
        let core = Core::start(core_options, shutdown.child_token()).await;
        Self {
            core,
            inspector,
            logs: options.logs,
            token_store,
            credentials_fallback: options.credentials_fallback,
            shutdown,
            tasks: TaskTracker::new(),
            seq: AtomicU64::new(0),
        }
    }

    /// Cancelled when the app quits; the app's own tasks select on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Run `task` on Tauri's runtime, tracked so that quitting waits for it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // Called from the main thread (setup) too, which is outside the runtime's context.
        let handle = tauri::async_runtime::handle();
        self.tasks.spawn_on(task, handle.inner());
    }

    /// Stop every tunnel and app task; wait (bounded) until they are done.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        let done = async {
            self.core.closed().await;
            self.tasks.wait().await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, done).await.is_err() {
            tracing::warn!("tunnels did not stop within {SHUTDOWN_GRACE:?}; quitting anyway");
        }
    }

    /// The view of the core's state now.
    pub fn view(&self) -> View {
        let snapshot = self.core.snapshot();
        // Numbered after the snapshot is taken: a higher number never shows an older state.
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        view_of(&snapshot, &self.token_store, seq)
    }
}

/// The page's and tray's view of a core snapshot.
pub fn view_of(snap: &Snapshot, token_store: &str, seq: u64) -> View {
    let servers: Vec<ServerView> = snap.servers.clone();
    let endpoints: Vec<EndpointView> = snap
        .endpoints
        .iter()
        .map(|e| {
            let server = snap.server(&e.server);
            let mut view = EndpointView::from_facts(EndpointFacts {
                id: e.id.to_string(),
                server: e.server.clone(),
                target: e.target.clone(),
                protocol: e.protocol.to_string(),
                enabled: e.enabled,
                signed_in: server.is_some_and(|s| s.signed_in),
                state: Some(e.state.clone()),
                url: e.public_url.clone(),
                retry_at: e.retry_at,
            });
            // A server that cannot be used (an unreadable TLS file) explains every endpoint on it.
            if view.enabled && view.error.is_none() && view.tone != crate::view::Tone::Ok {
                view.error = e
                    .last_error
                    .clone()
                    .or_else(|| server.and_then(|s| s.error.clone()));
            }
            view
        })
        .collect();
    let look = tray_look(&endpoints);
    let any_signed_in = servers.iter().any(|s| s.signed_in);
    View {
        seq,
        summary: summary(&endpoints, any_signed_in),
        summary_dot: summary_dot(look),
        servers,
        endpoints,
        preferences: preferences_view(&snap.preferences),
        banner: snap.settings_error.clone(),
        token_store: token_store.to_string(),
    }
}

/// Preferences as the page shows them.
pub fn preferences_view(p: &Preferences) -> PreferencesView {
    PreferencesView {
        start_at_login: p.start_at_login,
        start_tunnels_on_launch: p.start_tunnels_on_launch,
        notify_on_disconnect: p.notify_on_disconnect,
        theme: match p.theme {
            Theme::System => "system",
            Theme::Light => "light",
            Theme::Dark => "dark",
        }
        .to_string(),
    }
}

/// Preferences from the page; an unknown theme is an error naming the field.
pub fn preferences_of(p: &PreferencesView) -> Result<Preferences, crate::commands::CommandError> {
    let theme = match p.theme.as_str() {
        "system" => Theme::System,
        "light" => Theme::Light,
        "dark" => Theme::Dark,
        other => {
            return Err(crate::commands::CommandError::field(
                "theme",
                format!("unknown theme {other:?}; use system, light or dark"),
            ))
        }
    };
    Ok(Preferences {
        start_at_login: p.start_at_login,
        start_tunnels_on_launch: p.start_tunnels_on_launch,
        notify_on_disconnect: p.notify_on_disconnect,
        theme,
    })
}
