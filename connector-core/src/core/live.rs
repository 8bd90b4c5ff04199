//! The live table: the settings in force, each server's connection settings and each
//! endpoint's running tunnel and state, and [`reconcile`](Inner::reconcile), which starts and
//! stops tunnels until they match the settings, touching nothing that did not change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use piko_protocol::EndpointId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn, Instrument};

use super::view::{EndpointView, ServerView, Snapshot};
use super::Inner;
use crate::settings::{EndpointSettings, FieldError, ServerSettings, Settings};
use crate::status::{StatusEvent, TunnelState};
use crate::tunnel::{ConnectSettings, Reporter, Tunnel};

/// Everything the core knows, behind one lock that is never held across an `.await`.
pub(super) struct Table {
    /// The settings in force (what was last loaded or saved).
    pub settings: Settings,
    /// Why the settings file on disk was not used, until the next save.
    pub settings_error: Option<String>,
    /// Each server's connection settings, by name.
    pub servers: HashMap<String, ServerLive>,
    /// Each endpoint's live state, by id.
    pub endpoints: HashMap<EndpointId, EndpointLive>,
    /// Numbers tunnel instances and server builds, so reports of a replaced tunnel are
    /// ignored and a server change is seen by its tunnels.
    pub next_generation: u64,
}

/// How the tunnels of one server connect.
pub(super) struct ServerLive {
    /// The settings this was built from.
    pub settings: ServerSettings,
    /// Whether a token is stored for the server.
    pub signed_in: bool,
    /// The shared connection settings, or why there are none (a TLS file that cannot be
    /// read, a credential store that failed).
    pub connect: Result<Arc<ConnectSettings>, FieldError>,
    /// Bumped on every rebuild: tunnels started from an older build restart.
    pub generation: u64,
}

/// One endpoint's tunnel and state.
pub(super) struct EndpointLive {
    state: TunnelState,
    last_error: Option<String>,
    /// When the next attempt is due, while reconnecting: on the monotonic clock (for
    /// `retry_in`) and on the wall clock (for a page that counts down to it).
    retry_at: Option<(Instant, SystemTime)>,
    running: Option<Running>,
    /// The previous tunnel of an edited endpoint, still serving until its successor is
    /// connected (then it drains), so an edit leaves no moment without an upstream.
    retiring: Option<CancellationToken>,
}

impl Default for EndpointLive {
    fn default() -> Self {
        Self {
            state: TunnelState::Stopped { reason: None },
            last_error: None,
            retry_at: None,
            running: None,
            retiring: None,
        }
    }
}

/// A tunnel task and what it was started from.
struct Running {
    generation: u64,
    spec: EndpointSettings,
    server_generation: u64,
    stop: CancellationToken,
}

impl EndpointLive {
    /// Stop the tunnel now, and any predecessor.
    fn stop_now(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop.cancel();
        }
        self.retire();
    }

    fn retire(&mut self) {
        if let Some(old) = self.retiring.take() {
            old.cancel();
        }
    }

    fn stopped(&mut self, reason: Option<String>) {
        self.retire();
        self.last_error.clone_from(&reason);
        self.state = TunnelState::Stopped { reason };
        self.retry_at = None;
    }

    fn apply(&mut self, state: TunnelState) {
        if !matches!(state, TunnelState::Connecting) {
            // The successor is connected, or failed: either way the old one goes now.
            self.retire();
        }
        match &state {
            TunnelState::Connecting => self.retry_at = None,
            TunnelState::Connected { .. } => {
                self.last_error = None;
                self.retry_at = None;
            }
            TunnelState::Reconnecting { delay, error } => {
                self.last_error = Some(error.clone());
                self.retry_at = Some((Instant::now() + *delay, SystemTime::now() + *delay));
            }
            TunnelState::Stopped { reason } => {
                if reason.is_some() {
                    self.last_error.clone_from(reason);
                }
                self.retry_at = None;
            }
        }
        self.state = state;
    }

    /// Forget the tunnel if it has ended on its own (a refused token), so that reconcile
    /// starts it again.
    pub fn restart_if_stopped(&mut self) {
        if matches!(self.state, TunnelState::Stopped { .. }) {
            self.running = None;
        }
    }
}

impl Table {
    /// Install a server build, replacing any older one.
    pub fn install_server(&mut self, mut server: ServerLive) {
        self.next_generation += 1;
        server.generation = self.next_generation;
        self.servers.insert(server.settings.name.clone(), server);
    }

    /// The whole state, now.
    pub fn snapshot(&self, token_store: &str) -> Snapshot {
        Snapshot {
            servers: self
                .settings
                .servers
                .iter()
                .map(|s| {
                    let live = self.servers.get(&s.name);
                    ServerView {
                        name: s.name.clone(),
                        url: s.url.clone(),
                        public_url: s.public_url.clone(),
                        signed_in: live.is_some_and(|l| l.signed_in),
                        token_store: token_store.to_string(),
                        error: live
                            .and_then(|l| l.connect.as_ref().err().map(|e| e.message.clone())),
                    }
                })
                .collect(),
            endpoints: self
                .settings
                .endpoints
                .iter()
                .map(|e| self.view(e))
                .collect(),
            preferences: self.settings.preferences.clone(),
            settings_error: self.settings_error.clone(),
        }
    }

    fn view(&self, e: &EndpointSettings) -> EndpointView {
        let live = self.endpoints.get(&e.id);
        let now = Instant::now();
        EndpointView {
            id: e.id.clone(),
            server: e.server.clone(),
            target: e.target.clone(),
            protocol: e.protocol,
            enabled: e.enabled,
            state: live.map_or(TunnelState::Stopped { reason: None }, |l| l.state.clone()),
            last_error: live.and_then(|l| l.last_error.clone()),
            retry_in: live
                .and_then(|l| l.retry_at)
                .map(|(at, _)| at.saturating_duration_since(now)),
            retry_at: live.and_then(|l| l.retry_at).map(|(_, wall)| wall),
            public_url: self
                .settings
                .server(&e.server)
                .and_then(|s| s.public_url_of(&e.id)),
        }
    }

    /// Record a tunnel's report if it comes from the tunnel now running for `id`; the view
    /// to publish, if so.
    pub fn report(
        &mut self,
        id: &EndpointId,
        generation: u64,
        ev: StatusEvent,
    ) -> Option<EndpointView> {
        let live = self.endpoints.get_mut(id)?;
        if live.running.as_ref().map(|r| r.generation) != Some(generation) {
            // A replaced tunnel draining its last streams: its news is old.
            return None;
        }
        live.apply(ev.state);
        let settings = self.settings.endpoint(id)?.clone();
        Some(self.view(&settings))
    }

    /// Stop every tunnel (shutdown): they drain on their own.
    pub fn stop_all(&mut self) {
        for live in self.endpoints.values_mut() {
            live.stop_now();
        }
    }
}

impl Inner {
    /// Start and stop tunnels until they match the settings: a tunnel keeps running while
    /// its endpoint's settings and its server's build are what it started from.
    pub(super) fn reconcile(self: &Arc<Self>, t: &mut Table) {
        let Table {
            settings,
            servers,
            endpoints,
            next_generation,
            ..
        } = t;
        endpoints.retain(|id, live| {
            let keep = settings.endpoint(id).is_some();
            if !keep {
                live.stop_now();
            }
            keep
        });
        let closing = self.shutdown.is_cancelled();
        for ep in &settings.endpoints {
            let live = endpoints.entry(ep.id.clone()).or_default();
            let server = servers.get(&ep.server);
            if let Some(r) = &live.running {
                let current =
                    r.spec == *ep && Some(r.server_generation) == server.map(|s| s.generation);
                if current && !closing {
                    continue;
                }
                let serving = matches!(live.state, TunnelState::Connected { .. });
                if let Some(r) = live.running.take() {
                    if serving && ep.enabled && !closing {
                        // Replaced: it serves on until the new tunnel is connected.
                        live.retire();
                        live.retiring = Some(r.stop);
                    } else {
                        r.stop.cancel();
                    }
                }
            }
            if !ep.enabled || closing {
                live.stop_now();
                live.stopped(None);
                continue;
            }
            let Some(server) = server else {
                live.stopped(Some(format!(
                    "no server is named {:?}; add it or choose another server",
                    ep.server
                )));
                continue;
            };
            let connect = match &server.connect {
                Ok(c) => c.clone(),
                Err(e) => {
                    live.stopped(Some(format!("server {}: {}", ep.server, e.message)));
                    continue;
                }
            };
            let config = match ep.to_config(self.tuning.request_timeout) {
                Ok(c) => c,
                Err(e) => {
                    live.stopped(Some(e.to_string()));
                    continue;
                }
            };
            *next_generation += 1;
            let generation = *next_generation;
            let tunnel = match Tunnel::new(
                config,
                connect,
                self.reporter(&ep.id, generation),
                self.inspector.as_ref(),
            ) {
                Ok(t) => t,
                Err(e) => {
                    live.stopped(Some(e.to_string()));
                    continue;
                }
            };
            let stop = self.shutdown.child_token();
            let span = info_span!("tunnel", endpoint = %ep.id, server = %ep.server);
            let endpoint = ep.id.clone();
            self.tasks.spawn(
                {
                    let stop = stop.clone();
                    async move {
                        if let Err(e) = tunnel.supervise(stop).await {
                            warn!(%endpoint, error = %e, "endpoint stopped");
                        }
                    }
                }
                .instrument(span),
            );
            live.running = Some(Running {
                generation,
                spec: ep.clone(),
                server_generation: server.generation,
                stop,
            });
            live.state = TunnelState::Connecting;
            live.retry_at = None;
        }
    }

    /// Where the tunnel `generation` of `id` reports: the table, then subscribers.
    fn reporter(self: &Arc<Self>, id: &EndpointId, generation: u64) -> Reporter {
        let inner = Arc::downgrade(self);
        let id = id.clone();
        Arc::new(move |ev: StatusEvent| {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let view = inner.lock().report(&id, generation, ev);
            if let Some(view) = view {
                inner.publish(super::CoreEvent::Endpoint(view));
            }
        })
    }
}
