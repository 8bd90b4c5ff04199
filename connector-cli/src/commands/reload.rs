//! `piko agent start` follows its config file: when the file changes, it is read again
//! (with the same flag overrides) and the running agent applies the difference
//! ([`Agent::with_updates`](piko_connector_core::Agent::with_updates)): only endpoints that
//! were added, changed or removed start or stop. A file that does not parse is reported and
//! the running config stays.

use std::path::PathBuf;
use std::time::Duration;

use notify::Watcher;
use piko_connector_core::config::{ConfigFile, InspectAddr, MetricsServerConfig, TransportConfig};
use piko_connector_core::tunnel::AgentUpdate;
use piko_connector_core::Connector;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::agent::{setting_error, token_for};
use crate::cli::{AgentFlags, TransportArgs};

/// Editors write a file in several steps (truncate, write, rename): wait this long after
/// the last event before reading it.
const SETTLE: Duration = Duration::from_millis(200);

/// How to read the config again: the file and the flags that override it.
pub(crate) struct Spec {
    pub path: PathBuf,
    pub expand_env: bool,
    pub url: Option<String>,
    pub agent: AgentFlags,
    pub transport: TransportArgs,
    pub token: Option<String>,
    /// `inspect.addr` of the file in force: a change takes effect on restart only.
    pub inspect: Option<InspectAddr>,
    /// `server.*` of the file in force: likewise.
    pub server: MetricsServerConfig,
}

/// Watch the config file until `shutdown`; each change that parses becomes an update.
/// `transport` is the transport in force, so a changed one brings a new connector.
pub(crate) fn watch(
    mut spec: Spec,
    mut transport: TransportConfig,
    shutdown: CancellationToken,
) -> mpsc::Receiver<AgentUpdate> {
    let (updates, rx) = mpsc::channel(4);
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let file_name = spec.path.file_name().map(|n| n.to_os_string());
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let ours = event.is_ok_and(|e| {
            e.paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
        });
        if ours {
            // Full means a reload is pending already: it will read the latest file.
            let _ = changed.try_send(());
        }
    });
    // Watch the directory: an editor's save replaces the file (a new inode).
    let dir = match spec.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let watcher = watcher.and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    let watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            warn!(
                "cannot watch {}: {e}; restart the agent to apply config changes",
                spec.path.display()
            );
            return rx;
        }
    };
    info!(path = %spec.path.display(), "following the config file");
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                c = changes.recv() => if c.is_none() { return },
            }
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
            let Some(update) = read(&mut spec, &mut transport).await else {
                continue;
            };
            if updates.send(update).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The config as the file now says, or `None` (reported) when it is not usable.
async fn read(spec: &mut Spec, transport: &mut TransportConfig) -> Option<AgentUpdate> {
    let path = &spec.path;
    let file = match ConfigFile::load(path, spec.expand_env) {
        Ok(f) => f,
        Err(e) => {
            warn!(
                "config file {} not applied: {e}; the running config stays",
                path.display()
            );
            return None;
        }
    };
    for w in &file.warnings {
        warn!("{w}");
    }
    // Served since the start: they move only when the agent restarts. Say so, by key.
    if file.inspect != spec.inspect {
        warn!(
            "inspect.addr changed in {}; it takes effect when the agent restarts",
            path.display()
        );
        spec.inspect = file.inspect;
    }
    if file.server != spec.server {
        warn!(
            "server.enabled/server.bind_addr changed in {}; it takes effect when the agent restarts",
            path.display()
        );
        spec.server = file.server.clone();
    }
    let mut config = file.agent;
    if let Some(url) = &spec.url {
        config.connect.url.clone_from(url);
    }
    if let Some(g) = spec.agent.grace_period {
        config.grace_period = g;
    }
    if let Some(t) = spec.agent.connect_timeout {
        config.connect.timeout = t;
    }
    if let Some(t) = &spec.agent.tenant_id {
        config.connect.tenant_id = Some(t.clone()).filter(|t| !t.trim().is_empty());
    }
    let new_transport = spec.transport.clone().over(file.transport);
    let connector = if new_transport == *transport {
        None
    } else {
        match Connector::new(&new_transport) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(
                    "config file {} not applied: {}; the running config stays",
                    path.display(),
                    setting_error(e)
                );
                return None;
            }
        }
    };
    // The keychain answers synchronously.
    let (flag, url) = (spec.token.clone(), config.connect.url.clone());
    if flag.is_some() || config.connect.token.is_none() {
        config.connect.token = tokio::task::spawn_blocking(move || token_for(flag, &url))
            .await
            .ok()
            .flatten();
    }
    *transport = new_transport;
    info!(path = %path.display(), endpoints = config.endpoints.len(), "config file changed");
    Some(AgentUpdate { config, connector })
}
