//! The live connector: a long-lived [`Core`] that the tray app (and `piko agent start`) run,
//! and that changes while it runs.
//!
//! The core owns the settings file ([`SettingsStore`]), the servers' tokens (through the
//! [`CredentialStore`]) and one supervised tunnel per enabled endpoint. Every change (add,
//! edit, remove, enable, disable an endpoint; add, edit, remove a server; sign in or out) is
//! validated, saved atomically, then applied by starting and stopping only the tunnels whose
//! endpoint or server changed: the others keep their connections. Subscribers get a
//! [`CoreEvent`] for each change; [`Core::snapshot`] gives the whole state at any time.
//!
//! Layout: this file ([`Core`], [`CoreOptions`], the operations), `live` (the state table and
//! the reconciliation of tunnels with settings), `view` ([`Snapshot`]), `event`
//! ([`CoreEvent`]), `error` ([`CoreError`]).

mod error;
mod event;
mod live;
#[cfg(test)]
mod tests;
mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use piko_protocol::EndpointId;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use self::error::CoreError;
pub use self::event::CoreEvent;
use self::live::{ServerLive, Table};
pub use self::view::{epoch_millis, EndpointView, ServerView, Snapshot};
use crate::config::{ConfigError, TransportConfig, DEFAULT_TIMEOUT};
use crate::credentials::{check_jwt_shape, BoundedStore, CredentialStore, Secret, ServerKey};
use crate::inspector::Inspector;
use crate::settings::{
    EndpointSettings, FieldError, Preferences, ServerSettings, Settings, SettingsStore,
};
use crate::transport::Connector;
use crate::tunnel::{ConnectSettings, Keepalive};

/// Capacity of the event channel; a subscriber that falls further behind gets `Lagged` and
/// should take a fresh [`Core::snapshot`].
pub const EVENT_CAPACITY: usize = 256;
/// Default time allowed to open the connection to a server.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a stopped tunnel lets its open requests finish.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);

/// What a [`Core`] starts from.
pub struct CoreOptions {
    /// The settings file ([`SettingsStore::default_path`] for the app).
    pub settings_path: PathBuf,
    /// Where tokens are kept.
    pub credentials: Arc<dyn CredentialStore>,
    /// Time each call to the credential store may take before it fails (a locked keychain
    /// waits on an unlock prompt, possibly for ever).
    pub credential_timeout: Duration,
    /// Time allowed to open the connection to a server.
    pub connect_timeout: Duration,
    /// Per-request timeout to the local target.
    pub request_timeout: Duration,
    /// Time a stopped or replaced tunnel lets its open requests finish.
    pub grace_period: Duration,
    /// How quickly a dead network is noticed.
    pub keepalive: Keepalive,
    /// Where HTTP exchanges are recorded (the request inspector); none: not recorded.
    pub inspector: Option<Inspector>,
}

impl CoreOptions {
    /// Options with the defaults for everything but the settings file and the token store.
    pub fn new(settings_path: PathBuf, credentials: Arc<dyn CredentialStore>) -> Self {
        Self {
            settings_path,
            credentials,
            credential_timeout: crate::credentials::DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_TIMEOUT,
            grace_period: DEFAULT_GRACE_PERIOD,
            keepalive: Keepalive::default(),
            inspector: None,
        }
    }
}

/// The timings tunnels are started with.
struct Tuning {
    connect_timeout: Duration,
    request_timeout: Duration,
    grace_period: Duration,
    keepalive: Keepalive,
}

/// The live connector. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    tuning: Tuning,
    /// Records the HTTP exchanges of every tunnel started, when set.
    inspector: Option<Inspector>,
    store: SettingsStore,
    credentials: Arc<dyn CredentialStore>,
    token_store: String,
    events: broadcast::Sender<CoreEvent>,
    table: Mutex<Table>,
    /// Serializes changes: validate, save, apply, one at a time and in order.
    ops: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table is left consistent between statements; a panic elsewhere does not
        // make it less so.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, ev: CoreEvent) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(ev);
    }
}

/// Run blocking work (file and keychain I/O) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl Core {
    /// Load the settings and start every enabled endpoint (all start off when
    /// `preferences.start_tunnels_on_launch` is false). Never fails: a bad settings file
    /// runs the last good settings and says so in [`Snapshot::settings_error`]. Tunnels run
    /// until `shutdown` is cancelled; [`Core::closed`] waits for them to finish.
    pub async fn start(options: CoreOptions, shutdown: CancellationToken) -> Core {
        let path = options.settings_path.clone();
        let (store, loaded) = blocking(move || SettingsStore::open(path)).await;
        let mut settings = loaded.settings;
        if !settings.preferences.start_tunnels_on_launch {
            // In memory only: the file keeps the user's choices until the next change.
            for e in &mut settings.endpoints {
                e.enabled = false;
            }
        }
        let settings_error = loaded
            .error
            .map(|e| format!("{e}; running with the last good settings until you save"));
        let token_store = options.credentials.describe();
        // Every token read and write, including the ones at start, is bounded. A call that
        // timed out may still land (the user unlocked the keychain after all): the core is told,
        // and re-reads that server's token so what it shows is what is stored.
        let (late_tx, late_rx) = tokio::sync::mpsc::unbounded_channel();
        let credentials: Arc<dyn CredentialStore> = Arc::new(
            BoundedStore::new(options.credentials, options.credential_timeout).on_late_answer(
                move |answer| {
                    // Gone only after shutdown, when nothing needs it.
                    let _ = late_tx.send(answer);
                },
            ),
        );
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let inner = Arc::new(Inner {
            tuning: Tuning {
                connect_timeout: options.connect_timeout,
                request_timeout: options.request_timeout,
                grace_period: options.grace_period,
                keepalive: options.keepalive,
            },
            inspector: options.inspector,
            store,
            credentials,
            token_store,
            events,
            table: Mutex::new(Table {
                settings: Settings::default(),
                settings_error,
                servers: HashMap::new(),
                endpoints: HashMap::new(),
                next_generation: 0,
            }),
            ops: tokio::sync::Mutex::new(()),
            shutdown,
            tasks: TaskTracker::new(),
        });
        let core = Core { inner };
        {
            let _op = core.inner.ops.lock().await;
            let built = core.build_servers(&settings, &[]).await;
            core.install(settings, built, false);
        }
        // On shutdown the tunnels stop on their own (child tokens); record it in the table so
        // the last snapshot says so.
        let weak = Arc::downgrade(&core.inner);
        let shutdown = core.inner.shutdown.clone();
        core.inner.tasks.spawn(async move {
            shutdown.cancelled().await;
            if let Some(inner) = weak.upgrade() {
                inner.lock().stop_all();
            }
        });
        core.inner.tasks.spawn(late_answers(
            Arc::downgrade(&core.inner),
            core.inner.shutdown.clone(),
            late_rx,
        ));
        core.inner.tasks.close();
        info!(
            path = %core.inner.store.path().display(),
            "connector core started"
        );
        core
    }

    /// Wait until every tunnel has stopped after shutdown.
    pub async fn closed(&self) {
        self.inner.tasks.wait().await;
    }

    /// Every server and endpoint with its live state.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().snapshot(&self.inner.token_store)
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.inner.lock().settings.clone()
    }

    /// The request inspector the tunnels record into, if one was given.
    pub fn inspector(&self) -> Option<&Inspector> {
        self.inner.inspector.as_ref()
    }

    /// The settings file.
    pub fn settings_path(&self) -> PathBuf {
        self.inner.store.path().to_path_buf()
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CoreEvent> {
        self.inner.events.subscribe()
    }

    /// Check an endpoint against the CLI's rules and the current settings (its server
    /// exists), without changing anything: for a form, as the user types.
    pub fn check_endpoint(&self, e: &EndpointSettings) -> Result<(), CoreError> {
        e.validate()?;
        if self.inner.lock().settings.server(&e.server).is_none() {
            return Err(no_server_field(&e.server));
        }
        Ok(())
    }

    /// Add an endpoint (started at once if enabled).
    pub async fn add_endpoint(&self, e: EndpointSettings) -> Result<(), CoreError> {
        e.validate()?;
        self.change(move |s| {
            if s.endpoint(&e.id).is_some() {
                return Err(CoreError::Duplicate(format!(
                    "endpoint {} exists already; choose another id or edit it",
                    e.id
                )));
            }
            if s.server(&e.server).is_none() {
                return Err(no_server_field(&e.server));
            }
            s.endpoints.push(e);
            Ok(())
        })
        .await
    }

    /// Replace endpoint `id` with `e` (which may rename it). Only its tunnel restarts.
    pub async fn update_endpoint(
        &self,
        id: &EndpointId,
        e: EndpointSettings,
    ) -> Result<(), CoreError> {
        e.validate()?;
        let id = id.clone();
        self.change(move |s| {
            let i = endpoint_index(s, &id)?;
            if e.id != id && s.endpoint(&e.id).is_some() {
                return Err(CoreError::Duplicate(format!(
                    "endpoint {} exists already; choose another id",
                    e.id
                )));
            }
            if s.server(&e.server).is_none() {
                return Err(no_server_field(&e.server));
            }
            s.endpoints[i] = e;
            Ok(())
        })
        .await
    }

    /// Remove endpoint `id`; its tunnel drains and stops.
    pub async fn remove_endpoint(&self, id: &EndpointId) -> Result<(), CoreError> {
        let id = id.clone();
        self.change(move |s| {
            let i = endpoint_index(s, &id)?;
            s.endpoints.remove(i);
            Ok(())
        })
        .await
    }

    /// Start (`true`) or stop (`false`) endpoint `id`. Enabling an endpoint whose tunnel
    /// stopped on its own (a refused token) tries again.
    pub async fn set_enabled(&self, id: &EndpointId, enabled: bool) -> Result<(), CoreError> {
        let id = id.clone();
        let already = {
            let t = self.inner.lock();
            let e = t.settings.endpoint(&id).ok_or_else(|| no_endpoint(&id))?;
            e.enabled == enabled
        };
        if already {
            let _op = self.inner.ops.lock().await;
            self.ensure_running()?;
            if enabled {
                let snapshot = {
                    let mut t = self.inner.lock();
                    if let Some(live) = t.endpoints.get_mut(&id) {
                        live.restart_if_stopped();
                    }
                    self.inner.reconcile(&mut t);
                    t.snapshot(&self.inner.token_store)
                };
                self.inner.publish(CoreEvent::Snapshot(snapshot));
            }
            return Ok(());
        }
        self.change(move |s| {
            let i = endpoint_index(s, &id)?;
            s.endpoints[i].enabled = enabled;
            Ok(())
        })
        .await
    }

    /// Add a server, or replace the one of the same name. Only that server's tunnels
    /// restart, and only if something changed.
    pub async fn upsert_server(&self, server: ServerSettings) -> Result<(), CoreError> {
        server.validate()?;
        let _op = self.inner.ops.lock().await;
        self.ensure_running()?;
        let mut next = self.inner.lock().settings.clone();
        match next.servers.iter_mut().find(|s| s.name == server.name) {
            Some(s) if *s == server => return Ok(()),
            Some(s) => *s = server.clone(),
            None => next.servers.push(server.clone()),
        }
        let built = self.build_servers(&next, &[]).await;
        // Unusable TLS files or proxy: say so at the form rather than save a broken server.
        if let Some(Err(e)) = built
            .iter()
            .find(|b| b.settings.name == server.name)
            .map(|b| &b.connect)
        {
            if e.field != "token" {
                return Err(e.clone().into());
            }
        }
        self.save(&next).await?;
        self.install(next, built, true);
        Ok(())
    }

    /// Remove a server that no endpoint uses. Its stored token stays (the CLI may share it);
    /// [`Core::sign_out`] first to remove it.
    pub async fn remove_server(&self, name: &str) -> Result<(), CoreError> {
        let name = name.to_string();
        self.change(move |s| {
            let i = s
                .servers
                .iter()
                .position(|x| x.name == name)
                .ok_or_else(|| no_server(&name))?;
            let users: Vec<String> = s
                .endpoints
                .iter()
                .filter(|e| e.server == name)
                .map(|e| e.id.to_string())
                .collect();
            if !users.is_empty() {
                return Err(CoreError::InUse(format!(
                    "server {name} still has endpoints {}; remove them or move them to another server first",
                    users.join(", ")
                )));
            }
            s.servers.remove(i);
            Ok(())
        })
        .await
    }

    /// Store `token` for `server` in the credential store (never the settings file) and
    /// reconnect that server's tunnels with it.
    pub async fn sign_in(&self, server: &str, token: Secret) -> Result<(), CoreError> {
        let token = Secret::new(token.expose().trim().to_string());
        if token.expose().is_empty() {
            return Err(CoreError::Invalid {
                field: "token",
                message: "paste the token your Piko operator gave you".into(),
            });
        }
        check_jwt_shape(token.expose()).map_err(|e| CoreError::Invalid {
            field: "token",
            message: e.to_string(),
        })?;
        if token.expose().bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(CoreError::Invalid {
                field: "token",
                message: "the token contains control characters; paste it again".into(),
            });
        }
        self.with_token(server, move |store, key| store.set(key, &token).map(|_| ()))
            .await
    }

    /// Remove `server`'s token from the credential store and reconnect its tunnels without.
    pub async fn sign_out(&self, server: &str) -> Result<(), CoreError> {
        self.with_token(server, |store, key| store.delete(key).map(|_| ()))
            .await
    }

    /// Save new preferences (no tunnel restarts).
    pub async fn set_preferences(&self, p: Preferences) -> Result<(), CoreError> {
        self.change(move |s| {
            s.preferences = p;
            Ok(())
        })
        .await
    }

    /// Read the settings file again (after a hand edit) and apply the difference. A bad
    /// file changes nothing and is reported in [`Snapshot::settings_error`] (and returned).
    pub async fn reload(&self) -> Result<(), CoreError> {
        let _op = self.inner.ops.lock().await;
        self.ensure_running()?;
        let store = self.inner.store.clone();
        let loaded = blocking(move || store.load()).await;
        if let Some(e) = loaded.error {
            let snapshot = {
                let mut t = self.inner.lock();
                t.settings_error = Some(format!(
                    "{e}; running with the last good settings until you save"
                ));
                t.snapshot(&self.inner.token_store)
            };
            self.inner.publish(CoreEvent::Snapshot(snapshot));
            return Err(e.into());
        }
        let built = self.build_servers(&loaded.settings, &[]).await;
        self.install(loaded.settings, built, true);
        Ok(())
    }

    fn ensure_running(&self) -> Result<(), CoreError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(CoreError::ShuttingDown);
        }
        Ok(())
    }

    /// Apply `f` to a copy of the settings, check the result, save it, then apply it.
    async fn change(
        &self,
        f: impl FnOnce(&mut Settings) -> Result<(), CoreError>,
    ) -> Result<(), CoreError> {
        let _op = self.inner.ops.lock().await;
        self.ensure_running()?;
        let mut next = self.inner.lock().settings.clone();
        f(&mut next)?;
        let built = self.build_servers(&next, &[]).await;
        self.save(&next).await?;
        self.install(next, built, true);
        Ok(())
    }

    async fn with_token(
        &self,
        server: &str,
        f: impl FnOnce(
                &dyn CredentialStore,
                &ServerKey,
            ) -> Result<(), crate::credentials::CredentialError>
            + Send
            + 'static,
    ) -> Result<(), CoreError> {
        let _op = self.inner.ops.lock().await;
        self.ensure_running()?;
        let settings = self.inner.lock().settings.clone();
        let s = settings.server(server).ok_or_else(|| no_server(server))?;
        let key = ServerKey::parse(&s.url)?;
        let store = self.inner.credentials.clone();
        blocking(move || f(store.as_ref(), &key)).await?;
        let built = self.build_servers(&settings, &[server.to_string()]).await;
        self.install(settings, built, true);
        Ok(())
    }

    /// Read again the tokens of the servers whose key is `key` (all servers when `None`),
    /// reconnecting them: a keychain call that timed out has landed since.
    async fn reread_tokens(&self, key: Option<&ServerKey>) {
        let _op = self.inner.ops.lock().await;
        if self.ensure_running().is_err() {
            return;
        }
        let settings = self.inner.lock().settings.clone();
        let names: Vec<String> = settings
            .servers
            .iter()
            .filter(|s| key.is_none_or(|k| ServerKey::parse(&s.url).is_ok_and(|sk| &sk == k)))
            .map(|s| s.name.clone())
            .collect();
        if names.is_empty() {
            return;
        }
        let built = self.build_servers(&settings, &names).await;
        self.install(settings, built, false);
    }

    async fn save(&self, next: &Settings) -> Result<(), CoreError> {
        let store = self.inner.store.clone();
        let next = next.clone();
        blocking(move || store.save(&next)).await?;
        Ok(())
    }

    /// Connection settings for every server of `settings` that is new or changed (and for
    /// those named in `force`, whose token changed). Reads tokens and TLS files: blocking work.
    async fn build_servers(&self, settings: &Settings, force: &[String]) -> Vec<ServerLive> {
        let todo: Vec<ServerSettings> = {
            let t = self.inner.lock();
            settings
                .servers
                .iter()
                .filter(|s| {
                    force.contains(&s.name)
                        || t.servers.get(&s.name).is_none_or(|l| l.settings != **s)
                })
                .cloned()
                .collect()
        };
        if todo.is_empty() {
            return Vec::new();
        }
        let credentials = self.inner.credentials.clone();
        let tuning = (
            self.inner.tuning.connect_timeout,
            self.inner.tuning.grace_period,
            self.inner.tuning.keepalive,
        );
        blocking(move || {
            todo.into_iter()
                .map(|s| build_server(s, credentials.as_ref(), tuning))
                .collect()
        })
        .await
    }

    /// Make `settings` the settings in force with the `built` servers, reconcile the
    /// tunnels and tell subscribers.
    fn install(&self, settings: Settings, built: Vec<ServerLive>, saved: bool) {
        let snapshot = {
            let mut t = self.inner.lock();
            for b in built {
                t.install_server(b);
            }
            t.servers
                .retain(|name, _| settings.servers.iter().any(|s| &s.name == name));
            t.settings = settings;
            if saved {
                t.settings_error = None;
            }
            self.inner.reconcile(&mut t);
            t.snapshot(&self.inner.token_store)
        };
        self.inner.publish(CoreEvent::Snapshot(snapshot));
    }
}

/// Apply each late keychain answer (see [`BoundedStore::on_late_answer`]) until shutdown.
/// Any late answer may have changed what the store holds or made it readable again (a read
/// that timed out at launch finishing means the keychain was unlocked), so the servers it
/// names read their tokens again, successful or not.
async fn late_answers(
    inner: std::sync::Weak<Inner>,
    shutdown: CancellationToken,
    mut answers: tokio::sync::mpsc::UnboundedReceiver<crate::credentials::LateAnswer>,
) {
    use crate::credentials::LateCall;
    loop {
        // The sender lives as long as the core: only shutdown ends this loop.
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            answer = answers.recv() => match answer {
                Some(answer) => answer,
                None => return,
            },
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let key = match &answer.call {
            LateCall::Get(k) | LateCall::Set(k) | LateCall::Delete(k) => Some(k.clone()),
            LateCall::Servers => None,
        };
        info!(call = ?answer.call, ok = answer.ok, "the keychain answered late; reading the token again");
        Core { inner }.reread_tokens(key.as_ref()).await;
    }
}

/// Build one server's connection settings: its token from the store, its TLS and proxy
/// settings read. Blocking.
fn build_server(
    settings: ServerSettings,
    credentials: &dyn CredentialStore,
    (connect_timeout, grace_period, keepalive): (Duration, Duration, Keepalive),
) -> ServerLive {
    let token = ServerKey::parse(&settings.url)
        .map_err(|e| FieldError::new("url", e.to_string()))
        .and_then(|key| {
            credentials
                .get(&key)
                .map_err(|e| FieldError::new("token", format!("cannot read the token: {e}")))
        });
    let (signed_in, connect) = match token {
        Err(e) => (false, Err(e)),
        Ok(token) => {
            let transport = TransportConfig {
                tls: settings.tls.clone(),
                proxy_url: settings.proxy_url.clone().filter(|p| !p.trim().is_empty()),
            };
            let connect = Connector::new(&transport)
                .map_err(transport_field)
                .and_then(|connector| {
                    ConnectSettings::new(
                        connector,
                        &settings.url,
                        token.as_ref(),
                        connect_timeout,
                        grace_period,
                        keepalive,
                    )
                    .map_err(|e| FieldError::new("token", e.to_string()))
                })
                .map(Arc::new);
            if let Err(e) = &connect {
                warn!(server = %settings.name, error = %e, "server cannot be connected");
            }
            (token.is_some(), connect)
        }
    };
    ServerLive {
        settings,
        signed_in,
        connect,
        generation: 0,
    }
}

/// A transport error (`connect.tls.key: ...`) as the form field it belongs to.
fn transport_field(e: ConfigError) -> FieldError {
    let text = e.to_string();
    if let Some(rest) = text.strip_prefix("connect.tls.") {
        FieldError::new("tls", format!("tls.{rest}"))
    } else if let Some(rest) = text.strip_prefix("connect.proxy_url: ") {
        FieldError::new("proxy_url", rest.to_string())
    } else {
        FieldError::new("tls", text)
    }
}

fn endpoint_index(s: &Settings, id: &EndpointId) -> Result<usize, CoreError> {
    s.endpoints
        .iter()
        .position(|e| &e.id == id)
        .ok_or_else(|| no_endpoint(id))
}

fn no_endpoint(id: &EndpointId) -> CoreError {
    CoreError::NotFound(format!("no endpoint {id}"))
}

fn no_server(name: &str) -> CoreError {
    CoreError::NotFound(format!("no server named {name:?}"))
}

fn no_server_field(name: &str) -> CoreError {
    CoreError::Invalid {
        field: "server",
        message: format!("no server is named {name:?}; add the server (sign in) first"),
    }
}
