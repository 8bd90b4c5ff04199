//! The window's commands: thin wrappers over the [`Core`](piko_connector_core::Core).
//!
//! Each change returns the new [`View`] (so the page redraws at once, before the event
//! arrives) or a [`CommandError`]: the core's one-line message and, for a bad form value, the
//! field it is about, so the page shows it next to that field.

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use piko_connector_core::config::{EndpointConfig, Protocol, Target};
use piko_connector_core::inspector::{Exchange, ExchangeId, ExchangeSummary, ReplayEdit};
use piko_connector_core::logs::LogLine;
use piko_connector_core::settings::{EndpointForm, ServerSettings};
use piko_connector_core::{CoreError, Secret, TlsConfig};
use piko_protocol::EndpointId;
use serde::Serialize;
use tauri::{AppHandle, Manager, Runtime, State};

use crate::state::{preferences_of, AppState};
use crate::view::{host_of, PreferencesView, View};

/// A failed command as the page gets it: `{"message": "...", "field": "target" | null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    /// One line saying what is wrong and what to do.
    pub message: String,
    /// The form field at fault, if the error is about one.
    pub field: Option<String>,
}

impl CommandError {
    /// An error about no particular field.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: None,
        }
    }

    /// An error about `field`.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: Some(field.to_string()),
        }
    }
}

impl From<CoreError> for CommandError {
    fn from(e: CoreError) -> Self {
        Self {
            message: e.to_string(),
            field: e.field().map(str::to_string),
        }
    }
}

type Result<T> = std::result::Result<T, CommandError>;

fn endpoint_id(id: &str) -> Result<EndpointId> {
    EndpointId::new(id).map_err(|e| CommandError::field("id", e.to_string()))
}

/// The whole view now.
#[tauri::command]
pub fn snapshot(state: State<'_, AppState>) -> View {
    state.view()
}

/// Add an endpoint from the form.
#[tauri::command]
pub async fn add_endpoint(state: State<'_, AppState>, endpoint: EndpointForm) -> Result<View> {
    let settings = endpoint.validate().map_err(CoreError::from)?;
    state.core.add_endpoint(settings).await?;
    Ok(state.view())
}

/// Replace endpoint `id` with the form's values (which may rename it).
#[tauri::command]
pub async fn update_endpoint(
    state: State<'_, AppState>,
    id: String,
    endpoint: EndpointForm,
) -> Result<View> {
    let id = endpoint_id(&id)?;
    let settings = endpoint.validate().map_err(CoreError::from)?;
    state.core.update_endpoint(&id, settings).await?;
    Ok(state.view())
}

/// Remove endpoint `id`.
#[tauri::command]
pub async fn remove_endpoint(state: State<'_, AppState>, id: String) -> Result<View> {
    state.core.remove_endpoint(&endpoint_id(&id)?).await?;
    Ok(state.view())
}

/// Switch endpoint `id` on or off.
#[tauri::command]
pub async fn set_endpoint_enabled(
    state: State<'_, AppState>,
    id: String,
    enabled: bool,
) -> Result<View> {
    state.core.set_enabled(&endpoint_id(&id)?, enabled).await?;
    Ok(state.view())
}

/// How long "Test local target" waits for the target to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Try the local target the form names and say what was found.
#[tauri::command]
pub async fn test_target(target: String, protocol: Protocol) -> Result<String> {
    // The CLI's parsing rules; the id is irrelevant here.
    let config = EndpointConfig::parse("probe", target.trim(), protocol, PROBE_TIMEOUT)
        .map_err(|e| CommandError::field("target", e.to_string()))?;
    let addr = match &config.target {
        Target::Http(url) => format!(
            "{}:{}",
            url.host_str().unwrap_or("localhost"),
            url.port_or_known_default().unwrap_or(80)
        ),
        Target::Tcp(addr) => addr.clone(),
    };
    let started = Instant::now();
    let shown = addr.clone();
    let resolved = tokio::task::spawn_blocking(move || addr.to_socket_addrs())
        .await
        .map_err(|e| CommandError::new(e.to_string()))?
        .map_err(|e| CommandError::field("target", format!("cannot resolve {shown}: {e}")))?
        .collect::<Vec<_>>();
    let Some(first) = resolved.first().copied() else {
        return Err(CommandError::field(
            "target",
            format!("{shown} resolves to no address"),
        ));
    };
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(first)).await {
        Ok(Ok(_)) => Ok(format!(
            "{shown} accepts connections ({} ms)",
            started.elapsed().as_millis()
        )),
        Ok(Err(e)) => Err(CommandError::field(
            "target",
            format!("nothing answers at {shown}: {e}; is the service running?"),
        )),
        Err(_) => Err(CommandError::field(
            "target",
            format!(
                "{shown} did not answer within {} s (a firewall?)",
                PROBE_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Sign in to the server at `url`: add it (or update its client URL) and store `token` in the
/// credential store. A new server whose token is refused is not kept.
#[tauri::command]
pub async fn sign_in(
    state: State<'_, AppState>,
    url: String,
    public_url: Option<String>,
    token: String,
) -> Result<View> {
    let url = url.trim().to_string();
    if url.is_empty() {
        return Err(CommandError::field(
            "url",
            "enter the server's URL, such as https://piko.example.com:8001",
        ));
    }
    let settings = state.core.settings();
    let existing = settings.servers.iter().find(|s| s.url == url).cloned();
    let server = ServerSettings {
        name: existing
            .as_ref()
            .map_or_else(|| host_of(&url), |s| s.name.clone()),
        url: url.clone(),
        public_url: public_url
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .or_else(|| existing.as_ref().and_then(|s| s.public_url.clone())),
        tls: existing
            .as_ref()
            .map_or_else(TlsConfig::default, |s| s.tls.clone()),
        proxy_url: existing.as_ref().and_then(|s| s.proxy_url.clone()),
    };
    let name = server.name.clone();
    state.core.upsert_server(server).await?;
    if let Err(e) = state.core.sign_in(&name, Secret::new(token)).await {
        if existing.is_none() {
            // Best effort: the error the user needs is the sign-in's, not this one's.
            let _ = state.core.remove_server(&name).await;
        }
        return Err(e.into());
    }
    Ok(state.view())
}

/// Remove the token of server `server` (its name).
#[tauri::command]
pub async fn sign_out(state: State<'_, AppState>, server: String) -> Result<View> {
    state.core.sign_out(&server).await?;
    Ok(state.view())
}

/// Save the preferences; apply start-at-login to the OS.
#[tauri::command]
pub async fn set_preferences<R: Runtime>(
    app: AppHandle<R>,
    state: State<'_, AppState>,
    preferences: PreferencesView,
) -> Result<View> {
    let prefs = preferences_of(&preferences)?;
    apply_autostart(&app, prefs.start_at_login)?;
    state.core.set_preferences(prefs).await?;
    Ok(state.view())
}

/// Register or unregister the app with the OS's login items (when the plugin runs).
pub fn apply_autostart<R: Runtime>(app: &AppHandle<R>, on: bool) -> Result<()> {
    let Some(launcher) = app.try_state::<tauri_plugin_autostart::AutoLaunchManager>() else {
        return Ok(());
    };
    let now = launcher.is_enabled().unwrap_or(!on);
    if now == on {
        return Ok(());
    }
    let done = if on {
        launcher.enable()
    } else {
        launcher.disable()
    };
    done.map_err(|e| {
        CommandError::field(
            "start_at_login",
            format!("could not change start at login: {e}"),
        )
    })
}

/// Put `text` on the clipboard.
#[tauri::command]
pub fn copy_text<R: Runtime>(app: AppHandle<R>, text: String) -> Result<()> {
    copy(&app, text)
}

/// Put `text` on the clipboard (the page's copy buttons and the tray's "Copy URL").
pub fn copy<R: Runtime>(app: &AppHandle<R>, text: String) -> Result<()> {
    let clipboard = app
        .try_state::<tauri_plugin_clipboard_manager::Clipboard<R>>()
        .ok_or_else(|| CommandError::new("no clipboard in this session"))?;
    clipboard
        .write_text(text)
        .map_err(|e| CommandError::new(format!("could not copy: {e}")))
}

/// The recent log lines and where the files are.
#[derive(Debug, Serialize)]
pub struct LogTailView {
    /// Oldest first.
    pub lines: Vec<LogLine>,
    /// The log files' folder.
    pub folder: String,
}

/// The last `limit` log lines (the live ones follow as `piko://log` events).
#[tauri::command]
pub fn logs_tail(state: State<'_, AppState>, limit: Option<usize>) -> Result<LogTailView> {
    let logs = state
        .logs
        .as_ref()
        .ok_or_else(|| CommandError::new("logging could not be set up; see the terminal"))?;
    let mut lines = logs.tail().recent();
    let keep = limit.unwrap_or(500);
    if lines.len() > keep {
        lines.drain(..lines.len() - keep);
    }
    Ok(LogTailView {
        lines,
        folder: logs.dir().display().to_string(),
    })
}

/// Open the log folder in the file manager.
#[tauri::command]
pub fn open_log_folder<R: Runtime>(app: AppHandle<R>, state: State<'_, AppState>) -> Result<()> {
    use tauri_plugin_opener::OpenerExt as _;
    let logs = state
        .logs
        .as_ref()
        .ok_or_else(|| CommandError::new("logging could not be set up; see the terminal"))?;
    let dir = logs.dir().display().to_string();
    app.opener()
        .open_path(&dir, None::<&str>)
        .map_err(|e| CommandError::new(format!("could not open {dir}: {e}")))
}

/// Support information (versions, OS, settings without secrets, endpoint states, the last
/// 200 log lines), copied to the clipboard and returned.
#[tauri::command]
pub fn copy_diagnostics<R: Runtime>(
    app: AppHandle<R>,
    state: State<'_, AppState>,
) -> Result<String> {
    let text = crate::diagnostics::report(&state, tauri::webview_version().ok());
    copy(&app, text.clone())?;
    Ok(text)
}

/// Most requests listed at once (the page keeps this many rows).
const LIST_LIMIT: usize = 500;

/// The recent requests, newest first (new ones follow as `piko://exchange` events).
#[tauri::command]
pub fn inspector_list(
    state: State<'_, AppState>,
    endpoint: Option<String>,
) -> Result<Vec<ExchangeSummary>> {
    let endpoint = endpoint.as_deref().map(endpoint_id).transpose()?;
    Ok(state.inspector.list_limited(endpoint.as_ref(), LIST_LIMIT))
}

/// One exchange in full: headers (credentials masked) and the captured bodies.
#[tauri::command]
pub fn inspector_get(state: State<'_, AppState>, id: ExchangeId) -> Result<Exchange> {
    state.inspector.get(id).ok_or_else(|| {
        CommandError::new(format!(
            "request {id} is no longer in the inspector (older requests make room for new ones)"
        ))
    })
}

/// Send a recorded request again to its local target, changed by `edit` if given; the new
/// exchange is linked to the original.
#[tauri::command]
pub async fn inspector_replay(
    state: State<'_, AppState>,
    id: ExchangeId,
    edit: Option<ReplayEdit>,
) -> Result<Exchange> {
    let inspector = state.inspector.clone();
    inspector
        .replay(id, edit)
        .await
        .map_err(|e| CommandError::new(e.to_string()))
}
