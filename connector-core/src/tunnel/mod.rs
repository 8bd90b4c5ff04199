//! Tunnels: one supervised task per endpoint keeps a registration with the server open,
//! reconnecting with [`Backoff`] after any loss, and forwards each stream the server opens to
//! the endpoint's local target.
//!
//! Layout: this file ([`Agent`], the per-endpoint supervisor and one session's life),
//! `backoff` (the reconnect policy), `http` (serving a stream's HTTP requests), `tcp`.

mod backoff;
pub mod http;
mod tcp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use piko_protocol::mux::{self, Mode, Session};
use piko_protocol::paths::{upstream_url, KEEP_ALIVE_HEADER, UPSTREAM_PATH_PREFIX};
use piko_protocol::EndpointId;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{tungstenite, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

pub use self::backoff::{Backoff, HEALTHY_AFTER, MAX_DELAY, MIN_DELAY};
pub use self::http::HttpForwarder;
use crate::config::{AgentConfig, ConfigError, EndpointConfig, Target, TransportConfig};
use crate::credentials::Secret;
use crate::inspector::Inspector;
use crate::metrics::AgentMetrics;
use crate::status::{StatusEvent, TunnelState};
use crate::transport::{io_error, Connector, DialError, ServerStream};

/// The header naming an upstream's tenant at registration.
const TENANT_HEADER: &str = "x-piko-tenant-id";

/// Capacity of the status channel; a subscriber that falls further behind skips events.
const STATUS_CAPACITY: usize = 256;

/// How often the connector pings the server. Together with [`KEEPALIVE_TIMEOUT`] this bounds
/// how long a dead network (sleep/wake, a Wi-Fi change, a NAT that forgot the connection)
/// goes unnoticed: the server's own pings come only every 15 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// A session that receives nothing at all for this long is torn down and redialled: two
/// unanswered pings and then some, so one slow answer is not taken for a dead link.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(12);

/// The connector's keepalive policy: ping every `interval`, give up after `timeout` of
/// silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between pings.
    pub interval: Duration,
    /// Silence after which the session counts as dead.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: KEEPALIVE_INTERVAL,
            timeout: KEEPALIVE_TIMEOUT,
        }
    }
}

impl Keepalive {
    fn session_config(self) -> mux::Config {
        mux::Config {
            keepalive_interval: Some(self.interval),
            keepalive_timeout: Some(self.timeout),
            ..mux::Config::default()
        }
    }
}

/// How long a stopping tunnel waits for its stream tasks to end after closing the session.
const STREAM_TASKS_END: Duration = Duration::from_secs(1);
/// Least and most time a draining session waits, after its GoAway, before closing idle
/// keep-alive streams (twice the measured round trip in between).
const DRAIN_SETTLE_MIN: Duration = Duration::from_millis(50);
const DRAIN_SETTLE_MAX: Duration = Duration::from_millis(500);

/// Where a tunnel reports its state changes: the agent's broadcast channel, or the live
/// core's state table. Called synchronously, so the receiver sees every change in order.
pub(crate) type Reporter = Arc<dyn Fn(StatusEvent) + Send + Sync>;

/// Why an [`Agent`] stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The server refused an endpoint's registration (401, 403 or another 4xx): retrying
    /// cannot help.
    #[error("{reason}")]
    Rejected {
        /// The refused endpoint.
        endpoint: EndpointId,
        /// The HTTP status the server answered.
        status: u16,
        /// One line: what was refused, the status and the server's error message.
        reason: String,
    },
    /// An endpoint cannot be connected as configured (bad server URL, unsupported scheme).
    #[error("cannot connect endpoint {endpoint}: {reason}")]
    Unusable {
        /// The endpoint.
        endpoint: EndpointId,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The token cannot be sent in an HTTP header.
    #[error("the token contains characters not allowed in an HTTP header; check --connect.token or PIKO_TOKEN")]
    InvalidToken,
    /// There is nothing to run.
    #[error("no endpoints configured; add listeners to the config file or use `piko agent http <endpoint> <addr>`")]
    NoEndpoints,
    /// The connection to the server failed in a way retrying cannot fix: the server's
    /// certificate is not trusted or not for this host, the client certificate was refused,
    /// the proxy refused the tunnel.
    #[error("{reason}")]
    Connection {
        /// The endpoint.
        endpoint: EndpointId,
        /// What failed and what to do.
        reason: String,
    },
    /// The transport settings (TLS files, proxy URL) are not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The first registration did not succeed within `connect.timeout`.
    #[error("cannot register endpoint {endpoint} within connect.timeout ({}): {reason}; check --connect.url and that the server is up", humantime::format_duration(*timeout))]
    FirstConnect {
        /// The endpoint.
        endpoint: EndpointId,
        /// The `connect.timeout` that passed.
        timeout: Duration,
        /// The last failure.
        reason: String,
    },
    /// The tenant id cannot be sent in an HTTP header.
    #[error(
        "connect.tenant_id: {0:?} is not a valid header value; use letters, digits, '-' or '_'"
    )]
    InvalidTenant(String),
}

/// Runs every endpoint's tunnel and reports their [`StatusEvent`]s.
pub struct Agent {
    config: AgentConfig,
    connector: Option<Connector>,
    events: broadcast::Sender<StatusEvent>,
    updates: Option<mpsc::Receiver<AgentUpdate>>,
    inspector: Option<Inspector>,
    exit_if_first_connect_fails: bool,
    metrics: Option<AgentMetrics>,
}

/// A new config for a running [`Agent`] (its config file changed).
pub struct AgentUpdate {
    /// The new config, token included.
    pub config: AgentConfig,
    /// A new connector when the TLS or proxy settings changed; every tunnel then restarts.
    pub connector: Option<Connector>,
}

/// A tunnel task of the agent and what it runs.
struct AgentTunnel {
    config: EndpointConfig,
    generation: u64,
    stop: CancellationToken,
}

/// What every tunnel of the agent shares; a change restarts them all.
#[derive(PartialEq)]
struct ConnectKey {
    url: String,
    token: Option<Secret>,
    tenant_id: Option<String>,
    timeout: Duration,
    grace_period: Duration,
}

impl ConnectKey {
    fn of(config: &AgentConfig) -> Self {
        Self {
            url: config.connect.url.clone(),
            token: config.connect.token.clone(),
            tenant_id: config.connect.tenant_id.clone(),
            timeout: config.connect.timeout,
            grace_period: config.grace_period,
        }
    }
}

type AgentTasks = JoinSet<(EndpointId, u64, Result<(), AgentError>)>;

impl Agent {
    /// An agent for `config`; nothing runs until [`Agent::run`].
    pub fn new(config: AgentConfig) -> Self {
        let (events, _) = broadcast::channel(STATUS_CAPACITY);
        Self {
            config,
            connector: None,
            events,
            updates: None,
            inspector: None,
            exit_if_first_connect_fails: false,
            metrics: None,
        }
    }

    /// Record every HTTP request in `metrics` (the agent's `/metrics`).
    pub fn with_metrics(mut self, metrics: AgentMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Stop with [`AgentError::FirstConnect`] when an endpoint the agent starts with is not
    /// registered within `connect.timeout` (as the original Go agent, for units that restart
    /// on failure). After a first success, and for endpoints added later, it keeps retrying.
    pub fn exit_if_first_connect_fails(mut self) -> Self {
        self.exit_if_first_connect_fails = true;
        self
    }

    /// Record every HTTP exchange of every endpoint in `inspector`.
    pub fn with_inspector(mut self, inspector: Inspector) -> Self {
        self.inspector = Some(inspector);
        self
    }

    /// Dial the server through `connector` (TLS settings, proxy) instead of the default one
    /// (OS trust store, proxy from the environment).
    pub fn with_connector(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Apply each [`AgentUpdate`] received while running: only the tunnels of endpoints that
    /// were added, changed or removed start or stop (all of them when the server, token or
    /// transport changed). The agent then also runs with no endpoints, waiting for some.
    pub fn with_updates(mut self, updates: mpsc::Receiver<AgentUpdate>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Receive every status event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StatusEvent> {
        self.events.subscribe()
    }

    /// Runs every endpoint until `shutdown` is cancelled (returns `Ok`) or an endpoint is
    /// rejected (`Err(AgentError::Rejected{..})` after stopping the others).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let Agent {
            config,
            connector,
            events,
            mut updates,
            inspector,
            exit_if_first_connect_fails,
            metrics,
        } = self;
        if config.endpoints.is_empty() && updates.is_none() {
            return Err(AgentError::NoEndpoints);
        }
        let mut connector = match connector {
            Some(c) => c,
            None => Connector::new(&TransportConfig::default())?,
        };
        let mut connect = connect_of(&config, &connector)?;
        let mut key = ConnectKey::of(&config);
        let report: Reporter = Arc::new(move |ev| {
            // No subscriber is fine: events are for whoever listens.
            let _ = events.send(ev);
        });

        // Endpoints stop together: a rejection cancels `stop`, so do the caller's shutdown.
        let stop = shutdown.child_token();
        // A JoinSet rather than a TaskTracker: the supervisor needs each task's result.
        let mut tasks: AgentTasks = JoinSet::new();
        let mut running: HashMap<EndpointId, AgentTunnel> = HashMap::new();
        let mut generation = 0u64;
        let first_connect = exit_if_first_connect_fails.then_some(config.connect.timeout);
        let mut start = |ep: EndpointConfig,
                         connect: &Arc<ConnectSettings>,
                         tasks: &mut AgentTasks,
                         give_up: Option<Duration>|
         -> Result<AgentTunnel, AgentError> {
            generation += 1;
            let g = generation;
            let mut tunnel = Tunnel::new(
                ep.clone(),
                connect.clone(),
                report.clone(),
                inspector.as_ref(),
            )?;
            tunnel.first_connect_within = give_up;
            if let Some(m) = &metrics {
                tunnel.handler = match tunnel.handler {
                    Handler::Http(f) => Handler::Http(f.with_metrics(m.clone(), ep.id.as_str())),
                    tcp => tcp,
                };
            }
            let span = info_span!("tunnel", endpoint = %tunnel.endpoint.id);
            let own = stop.child_token();
            let (id, token) = (ep.id.clone(), own.clone());
            tasks.spawn(async move { (id, g, tunnel.supervise(token).await) }.instrument(span));
            Ok(AgentTunnel {
                config: ep,
                generation: g,
                stop: own,
            })
        };
        for ep in config.endpoints {
            let t = start(ep, &connect, &mut tasks, first_connect)?;
            running.insert(t.config.id.clone(), t);
        }
        let mut result = Ok(());
        loop {
            let watching = updates.is_some() && !stop.is_cancelled();
            if tasks.is_empty() && !watching {
                break;
            }
            tokio::select! {
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let (id, g, r) = match joined {
                        Ok(v) => v,
                        Err(e) => {
                            warn!(error = %e, "tunnel task failed");
                            continue;
                        }
                    };
                    let current = running.get(&id).is_some_and(|t| t.generation == g);
                    if let Err(e) = r {
                        if current && result.is_ok() {
                            result = Err(e);
                            stop.cancel();
                        }
                    }
                }
                update = recv_update(&mut updates), if watching => {
                    let Some(update) = update else {
                        updates = None;
                        continue;
                    };
                    let new_key = ConnectKey::of(&update.config);
                    let restart_all = update.connector.is_some() || new_key != key;
                    if restart_all {
                        let c = update.connector.unwrap_or_else(|| connector.clone());
                        match connect_of(&update.config, &c) {
                            Ok(n) => {
                                connect = n;
                                connector = c;
                                key = new_key;
                            }
                            Err(e) => {
                                warn!(error = %e, "new config not applied");
                                continue;
                            }
                        }
                    }
                    let mut wanted: Vec<EndpointConfig> = update.config.endpoints;
                    running.retain(|id, t| {
                        let keep = !restart_all && wanted.iter().any(|w| w.id == *id && *w == t.config);
                        if !keep {
                            t.stop.cancel();
                        }
                        keep
                    });
                    let kept = running.len();
                    wanted.retain(|w| !running.contains_key(&w.id));
                    let started = wanted.len();
                    for ep in wanted {
                        let id = ep.id.clone();
                        match start(ep, &connect, &mut tasks, None) {
                            Ok(t) => {
                                running.insert(id, t);
                            }
                            Err(e) => warn!(endpoint = %id, error = %e, "endpoint not started"),
                        }
                    }
                    info!(kept, started, "config applied");
                }
                _ = stop.cancelled(), if watching => {}
            }
        }
        result
    }
}

fn connect_of(
    config: &AgentConfig,
    connector: &Connector,
) -> Result<Arc<ConnectSettings>, AgentError> {
    ConnectSettings::new(
        connector.clone(),
        &config.connect.url,
        config.connect.token.as_ref(),
        config.connect.timeout,
        config.grace_period,
        Keepalive::default(),
    )
    .and_then(|c| c.with_tenant(config.connect.tenant_id.as_deref()))
    .map(Arc::new)
}

/// The next update, or `None` once the sender is gone.
async fn recv_update(updates: &mut Option<mpsc::Receiver<AgentUpdate>>) -> Option<AgentUpdate> {
    match updates {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The server part of the status line: the base WebSocket URL (`ws://127.0.0.1:8001`).
fn server_display(url: &str) -> String {
    let full = upstream_url(url, "");
    full.strip_suffix(UPSTREAM_PATH_PREFIX)
        .unwrap_or(&full)
        .to_string()
}

/// How a tunnel reaches its server; shared by the tunnels of one server.
pub(crate) struct ConnectSettings {
    connector: Connector,
    url: String,
    server: String,
    auth: Option<HeaderValue>,
    /// `x-piko-tenant-id`, if the endpoints belong to a tenant.
    tenant: Option<HeaderValue>,
    timeout: Duration,
    grace_period: Duration,
    session: mux::Config,
}

impl ConnectSettings {
    /// Settings for the server at `url` (its upstream port), sending `token` if any.
    pub(crate) fn new(
        connector: Connector,
        url: &str,
        token: Option<&Secret>,
        timeout: Duration,
        grace_period: Duration,
        keepalive: Keepalive,
    ) -> Result<Self, AgentError> {
        let auth = match token {
            Some(t) => Some(
                HeaderValue::try_from(format!("Bearer {}", t.expose()))
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                    .map_err(|_| AgentError::InvalidToken)?,
            ),
            None => None,
        };
        Ok(Self {
            connector,
            url: url.to_string(),
            server: server_display(url),
            auth,
            tenant: None,
            timeout,
            grace_period,
            session: keepalive.session_config(),
        })
    }

    /// Register as `tenant` (sent as `x-piko-tenant-id`, as the original Go agent does).
    pub(crate) fn with_tenant(mut self, tenant: Option<&str>) -> Result<Self, AgentError> {
        self.tenant = match tenant.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => Some(
                HeaderValue::try_from(t).map_err(|_| AgentError::InvalidTenant(t.to_string()))?,
            ),
            None => None,
        };
        Ok(self)
    }
}

/// How to serve the streams of one endpoint.
#[derive(Clone)]
enum Handler {
    Http(HttpForwarder),
    Tcp {
        addr: Arc<str>,
        timeout: Duration,
        /// Access-log level of connection records (`None`: debug only).
        access: Option<tracing::Level>,
    },
}

impl Handler {
    async fn serve(self, stream: mux::Stream, draining: CancellationToken) {
        match self {
            Handler::Http(fwd) => fwd.serve(stream, draining).await,
            Handler::Tcp {
                addr,
                timeout,
                access,
            } => tcp::serve(stream, &addr, timeout, access).await,
        }
    }
}

/// Why a connection attempt failed.
enum ConnectFailure {
    /// Worth retrying: network errors, 408/429/5xx, timeouts.
    Retry(String),
    /// Retrying cannot help.
    Fatal(AgentError),
}

/// How one session ended.
enum SessionEnd {
    /// Shutdown was requested and the session was drained.
    Shutdown,
    /// The session was lost (or the server is draining it); reconnect.
    Lost(String),
}

/// One endpoint's tunnel: dials, serves, reconnects, reports.
pub(crate) struct Tunnel {
    endpoint: EndpointConfig,
    target: String,
    connect: Arc<ConnectSettings>,
    report: Reporter,
    handler: Handler,
    /// Give up with [`AgentError::FirstConnect`] if not registered within this long.
    first_connect_within: Option<Duration>,
}

impl Tunnel {
    /// A tunnel for `endpoint` through `connect`; nothing runs until [`Tunnel::supervise`].
    pub(crate) fn new(
        endpoint: EndpointConfig,
        connect: Arc<ConnectSettings>,
        report: Reporter,
        inspector: Option<&Inspector>,
    ) -> Result<Self, AgentError> {
        let handler = match &endpoint.target {
            Target::Http(url) => Handler::Http(
                HttpForwarder::for_endpoint(
                    &format!("endpoint {}", endpoint.id),
                    &endpoint,
                    url,
                    inspector.map(|i| i.recorder(&endpoint.id, url, endpoint.timeout)),
                )
                .map_err(|e| AgentError::Unusable {
                    endpoint: endpoint.id.clone(),
                    reason: e.to_string(),
                })?,
            ),
            Target::Tcp(addr) => Handler::Tcp {
                addr: Arc::from(addr.as_str()),
                timeout: endpoint.timeout,
                access: endpoint.access_log.level(),
            },
        };
        Ok(Self {
            target: endpoint.target.to_string(),
            endpoint,
            connect,
            report,
            handler,
            first_connect_within: None,
        })
    }

    fn emit(&self, state: TunnelState) {
        (self.report)(StatusEvent {
            endpoint: self.endpoint.id.clone(),
            target: self.target.clone(),
            state,
        });
    }

    /// Keep the endpoint registered until `stop`, reconnecting after every loss.
    pub(crate) async fn supervise(self, stop: CancellationToken) -> Result<(), AgentError> {
        let mut backoff = Backoff::default();
        self.emit(TunnelState::Connecting);
        let mut give_up_at = self.first_connect_within.map(|d| Instant::now() + d);
        loop {
            let attempt = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.dial() => r,
            };
            let error = match attempt {
                Ok(ws) => {
                    give_up_at = None;
                    let started = Instant::now();
                    match self.run_session(ws, &stop).await {
                        SessionEnd::Shutdown => break,
                        SessionEnd::Lost(e) => {
                            if started.elapsed() >= HEALTHY_AFTER {
                                backoff.reset();
                            }
                            e
                        }
                    }
                }
                Err(ConnectFailure::Retry(e)) => e,
                Err(ConnectFailure::Fatal(e)) => {
                    debug!(error = %e, "endpoint stopped");
                    self.emit(TunnelState::Stopped {
                        reason: Some(e.to_string()),
                    });
                    return Err(e);
                }
            };
            let mut delay = backoff.next_delay();
            if let Some(at) = give_up_at {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let e = AgentError::FirstConnect {
                        endpoint: self.endpoint.id.clone(),
                        timeout: self.first_connect_within.unwrap_or_default(),
                        reason: error,
                    };
                    self.emit(TunnelState::Stopped {
                        reason: Some(e.to_string()),
                    });
                    return Err(e);
                }
                delay = delay.min(left);
            }
            debug!(error = %error, delay = ?delay, "tunnel lost; reconnecting");
            self.emit(TunnelState::Reconnecting { delay, error });
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.emit(TunnelState::Stopped { reason: None });
        Ok(())
    }

    fn request(&self) -> Result<Request, ConnectFailure> {
        let url = upstream_url(&self.connect.url, self.endpoint.id.as_str());
        let mut req = url.as_str().into_client_request().map_err(|e| {
            ConnectFailure::Fatal(AgentError::Unusable {
                endpoint: self.endpoint.id.clone(),
                reason: format!("invalid server URL {url:?}: {e}; check --connect.url"),
            })
        })?;
        if let Some(auth) = &self.connect.auth {
            req.headers_mut()
                .insert(tungstenite::http::header::AUTHORIZATION, auth.clone());
        }
        if let Some(tenant) = &self.connect.tenant {
            req.headers_mut().insert(TENANT_HEADER, tenant.clone());
        }
        // This connector serves any number of requests per stream: a server that knows the
        // header reuses streams (and says so in its answer); the original ignores it.
        req.headers_mut().insert(
            KEEP_ALIVE_HEADER,
            tungstenite::http::HeaderValue::from_static("1"),
        );
        Ok(req)
    }

    async fn dial(&self) -> Result<WebSocketStream<ServerStream>, ConnectFailure> {
        let req = self.request()?;
        debug!(url = %req.uri(), "connecting");
        match self
            .connect
            .connector
            .websocket(req, self.connect.timeout)
            .await
        {
            Ok(ws) => Ok(ws),
            Err(DialError::WebSocket(e)) => Err(classify(&self.endpoint.id, e)),
            Err(e) if e.is_retryable() => Err(ConnectFailure::Retry(e.to_string())),
            Err(e @ DialError::InvalidUrl { .. }) => {
                Err(ConnectFailure::Fatal(AgentError::Unusable {
                    endpoint: self.endpoint.id.clone(),
                    reason: e.to_string(),
                }))
            }
            Err(e) => Err(ConnectFailure::Fatal(AgentError::Connection {
                endpoint: self.endpoint.id.clone(),
                reason: e.to_string(),
            })),
        }
    }

    async fn run_session(
        &self,
        ws: WebSocketStream<ServerStream>,
        stop: &CancellationToken,
    ) -> SessionEnd {
        let (session, driver) =
            Session::over_websocket(ws, Mode::Client, self.connect.session.clone());
        let mut driver = tokio::spawn(driver);
        debug!(server = %self.connect.server, "connected");
        self.emit(TunnelState::Connected {
            server: self.connect.server.clone(),
        });
        let streams = TaskTracker::new();
        // Cancelled when this session drains: idle keep-alive HTTP streams then close.
        let draining = CancellationToken::new();
        let end = loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    self.drain(&session, &streams, &draining).await;
                    // Let the driver flush the close; it ends when the connection does.
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut driver).await;
                    driver.abort();
                    return SessionEnd::Shutdown;
                }
                _ = session.gone_away() => {
                    if session.is_closed() {
                        break None;
                    }
                    // The server is draining this connection: register again (through the load
                    // balancer, likely on another node) while in-flight streams finish here.
                    draining.cancel();
                    let (session, grace) = (session.clone(), self.connect.grace_period);
                    let streams = streams.clone();
                    tokio::spawn(async move {
                        streams.close();
                        let _ = tokio::time::timeout(grace, session.idle()).await;
                        session.close();
                    });
                    break Some("server is going away".to_string());
                }
                s = session.accept() => match s {
                    Some(stream) => {
                        let span = info_span!("stream", id = stream.id());
                        streams.spawn(self.handler.clone().serve(stream, draining.clone()).instrument(span));
                    }
                    None => break None,
                },
            }
        };
        if let Some(reason) = end {
            return SessionEnd::Lost(reason);
        }
        let reason = match (&mut driver).await {
            Ok(Ok(())) => "server closed the connection".to_string(),
            Ok(Err(e)) => mux_error(&e),
            Err(e) => format!("session task failed: {e}"),
        };
        SessionEnd::Lost(reason)
    }

    /// Graceful leave: GoAway (the server opens no new stream), let open streams finish within
    /// the grace period, then close.
    async fn drain(&self, session: &Session, streams: &TaskTracker, draining: &CancellationToken) {
        session.go_away();
        // Requests the server sent on idle keep-alive streams before our GoAway reached it
        // are still on their way: closing those streams at once would fail them (a 502 for
        // the client). Give the GoAway a round trip to arrive first.
        let settle = session
            .rtt()
            .map_or(DRAIN_SETTLE_MIN, |rtt| rtt * 2)
            .clamp(DRAIN_SETTLE_MIN, DRAIN_SETTLE_MAX)
            .min(self.connect.grace_period);
        tokio::time::sleep(settle).await;
        draining.cancel();
        streams.close();
        let open = session.num_streams();
        if open > 0 {
            info!(open, grace = ?self.connect.grace_period, "waiting for open streams");
        }
        if tokio::time::timeout(self.connect.grace_period, session.idle())
            .await
            .is_err()
        {
            warn!(
                open = session.num_streams(),
                "grace period over; closing open streams"
            );
        }
        session.close();
        // Each stream's task (and an upgraded connection relayed in it) ends once its stream
        // is closed; waiting for them means the inspector's records are final when the
        // tunnel stops. Bounded: a task cannot hold the shutdown past this.
        let _ = tokio::time::timeout(STREAM_TASKS_END, streams.wait()).await;
    }
}

fn mux_error(e: &mux::MuxError) -> String {
    match e {
        mux::MuxError::Io(io) => io_error(io),
        other => other.to_string(),
    }
}

/// The server's `{"error": "..."}` message, else the body as text if it is one short line.
fn server_message(body: Option<&[u8]>) -> Option<String> {
    let body = body?;
    // The body is what arrived with the headers; it may be chunked, so look for the object.
    let json = match (
        body.iter().position(|&b| b == b'{'),
        body.iter().rposition(|&b| b == b'}'),
    ) {
        (Some(start), Some(end)) if start < end => &body[start..=end],
        _ => body,
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) {
        if let Some(m) = v.get("error").and_then(|e| e.as_str()) {
            return Some(m.to_string());
        }
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    (!text.is_empty() && text.len() <= 200 && !text.contains('\n')).then(|| text.to_string())
}

fn classify(endpoint: &EndpointId, e: tungstenite::Error) -> ConnectFailure {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status();
            let message = server_message(resp.body().as_deref())
                .or_else(|| status.canonical_reason().map(str::to_string))
                .unwrap_or_default();
            let code = status.as_u16();
            let retry = !status.is_client_error() || code == 408 || code == 429;
            if retry {
                return ConnectFailure::Retry(
                    format!("server answered {code} {message}")
                        .trim_end()
                        .to_string(),
                );
            }
            let reason = match code {
                401 => {
                    format!("server rejected the token for endpoint {endpoint}: {code} {message}")
                }
                403 => format!(
                    "server does not allow endpoint {endpoint} for this token: {code} {message}"
                ),
                _ => format!("server refused endpoint {endpoint}: {code} {message}"),
            };
            ConnectFailure::Fatal(AgentError::Rejected {
                endpoint: endpoint.clone(),
                status: code,
                reason: reason.trim_end().to_string(),
            })
        }
        tungstenite::Error::Url(u) => ConnectFailure::Fatal(AgentError::Unusable {
            endpoint: endpoint.clone(),
            reason: format!("{u}; check --connect.url"),
        }),
        tungstenite::Error::Io(io) => ConnectFailure::Retry(io_error(&io)),
        other => ConnectFailure::Retry(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnectConfig;

    fn http_error(status: u16, body: Option<&str>) -> tungstenite::Error {
        let resp = tungstenite::http::Response::builder()
            .status(status)
            .body(body.map(|b| b.as_bytes().to_vec()))
            .unwrap();
        tungstenite::Error::Http(Box::new(resp))
    }

    #[test]
    fn classifies_upgrade_answers() {
        let ep = EndpointId::new("shop").unwrap();
        let fatal = [
            (
                401,
                Some(r#"{"error": "invalid token"}"#),
                "server rejected the token for endpoint shop: 401 invalid token",
            ),
            (
                403,
                Some(r#"{"error":"endpoint not permitted"}"#),
                "server does not allow endpoint shop for this token: 403 endpoint not permitted",
            ),
            (
                401,
                None,
                "server rejected the token for endpoint shop: 401 Unauthorized",
            ),
            (
                404,
                Some("no such route"),
                "server refused endpoint shop: 404 no such route",
            ),
            (
                401,
                Some("1a\r\n{\"error\":\"token expired\"}\r\n0\r\n\r\n"),
                "server rejected the token for endpoint shop: 401 token expired",
            ),
        ];
        for (status, body, want) in fatal {
            match classify(&ep, http_error(status, body)) {
                ConnectFailure::Fatal(e @ AgentError::Rejected { .. }) => {
                    assert_eq!(e.to_string(), want)
                }
                _ => panic!("{status} should stop the endpoint"),
            }
        }
        let retry = [
            (408, None, "server answered 408 Request Timeout"),
            (
                429,
                Some(r#"{"error":"slow down"}"#),
                "server answered 429 slow down",
            ),
            (
                503,
                Some(r#"{"error":"draining"}"#),
                "server answered 503 draining",
            ),
            (
                500,
                Some("<html>\n</html>"),
                "server answered 500 Internal Server Error",
            ),
            (200, None, "server answered 200 OK"),
        ];
        for (status, body, want) in retry {
            match classify(&ep, http_error(status, body)) {
                ConnectFailure::Retry(e) => assert_eq!(e, want),
                ConnectFailure::Fatal(e) => panic!("{status} should be retried, got {e}"),
            }
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        match classify(&ep, tungstenite::Error::Io(refused)) {
            ConnectFailure::Retry(e) => assert_eq!(e, "connection refused"),
            ConnectFailure::Fatal(e) => panic!("{e}"),
        }
    }

    #[test]
    fn server_display_is_the_base_ws_url() {
        assert_eq!(
            server_display("http://127.0.0.1:8001"),
            "ws://127.0.0.1:8001"
        );
        assert_eq!(
            server_display("https://piko.example.com/"),
            "wss://piko.example.com"
        );
    }

    /// The supervisor retries a server that refuses connections, reporting each delay, and
    /// stops cleanly on shutdown.
    #[tokio::test]
    async fn reconnects_then_stops_on_shutdown() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = AgentConfig {
            connect: ConnectConfig {
                url: format!("http://127.0.0.1:{port}"),
                token: None,
                timeout: Duration::from_secs(2),
                tenant_id: None,
            },
            endpoints: vec![EndpointConfig::parse(
                "shop",
                "3000",
                crate::config::Protocol::Http,
                Duration::from_secs(1),
            )
            .unwrap()],
            grace_period: Duration::from_millis(100),
        };
        let agent = Agent::new(config);
        let mut events = agent.subscribe();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(agent.run(shutdown.clone()));
        let first = events.recv().await.unwrap();
        assert_eq!(first.to_string(), "connecting… shop");
        let mut delays = Vec::new();
        while delays.len() < 2 {
            let ev = events.recv().await.unwrap();
            match ev.state {
                TunnelState::Reconnecting { delay, ref error } => {
                    assert_eq!(error, "connection refused", "{ev}");
                    delays.push(delay);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            delays[0] <= Duration::from_millis(200) && delays[1] >= Duration::from_millis(200),
            "{delays:?}"
        );
        shutdown.cancel();
        let res = tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .unwrap()
            .unwrap();
        assert!(res.is_ok());
        let last = events.recv().await.unwrap();
        assert_eq!(last.to_string(), "stopped: shop");
    }

    /// The next status line that is not the retry of a refused dial.
    async fn next(events: &mut broadcast::Receiver<StatusEvent>) -> String {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("an event")
                .unwrap();
            if !matches!(ev.state, TunnelState::Reconnecting { .. }) {
                return ev.to_string();
            }
        }
    }

    /// Updates start and stop only the endpoints that changed; a new server restarts all.
    #[tokio::test]
    async fn updates_touch_only_the_endpoints_that_changed() {
        let refused = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
        };
        let ep = |id: &str, target: &str| {
            EndpointConfig::parse(
                id,
                target,
                crate::config::Protocol::Http,
                Duration::from_secs(1),
            )
            .unwrap()
        };
        let config = |url: &str, eps: Vec<EndpointConfig>| AgentConfig {
            connect: ConnectConfig {
                url: url.to_string(),
                token: None,
                timeout: Duration::from_secs(2),
                tenant_id: None,
            },
            endpoints: eps,
            grace_period: Duration::from_millis(100),
        };
        let url = refused();
        let (tx, rx) = mpsc::channel(4);
        let agent = Agent::new(config(&url, vec![ep("shop", "3000")])).with_updates(rx);
        let mut events = agent.subscribe();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(agent.run(shutdown.clone()));
        assert_eq!(next(&mut events).await, "connecting… shop");
        let send = |c| {
            let tx = tx.clone();
            async move {
                tx.send(AgentUpdate {
                    config: c,
                    connector: None,
                })
                .await
                .unwrap()
            }
        };
        send(config(&url, vec![ep("shop", "3000"), ep("api", "4000")])).await;
        assert_eq!(
            next(&mut events).await,
            "connecting… api",
            "shop is left alone"
        );
        send(config(&url, vec![ep("api", "4000")])).await;
        assert_eq!(next(&mut events).await, "stopped: shop");
        send(config(&url, vec![ep("api", "4001")])).await;
        assert_eq!(next(&mut events).await, "stopped: api");
        assert_eq!(next(&mut events).await, "connecting… api");
        send(config(&refused(), vec![ep("api", "4001")])).await;
        assert_eq!(
            next(&mut events).await,
            "stopped: api",
            "a new server restarts every tunnel"
        );
        assert_eq!(next(&mut events).await, "connecting… api");
        send(config(&url, vec![])).await;
        assert_eq!(next(&mut events).await, "stopped: api");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(3), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    fn agent_config(url: String, target: &str, token: Option<&str>) -> AgentConfig {
        AgentConfig {
            connect: ConnectConfig {
                url,
                token: token.map(|t| Secret::new(t.into())),
                timeout: Duration::from_secs(2),
                tenant_id: None,
            },
            endpoints: vec![EndpointConfig::parse(
                "shop",
                target,
                crate::config::Protocol::Http,
                Duration::from_secs(5),
            )
            .unwrap()],
            grace_period: Duration::from_secs(1),
        }
    }

    #[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
    /// A fake Piko upstream port: checks the path and token, runs the yamux server side, sends
    /// one request through the tunnel, returns the response text.
    #[tokio::test]
    async fn serves_a_request_through_a_fake_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_tungstenite::tungstenite::handshake::server::{
            Request as SReq, Response as SResp,
        };

        // Local target: answers "ok" to everything.
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_port = target.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = target.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });

        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let (resp_tx, resp_rx) = tokio::sync::oneshot::channel();
        let fake = tokio::spawn(async move {
            let (tcp, _) = server.accept().await.unwrap();
            let check = |req: &SReq, resp: SResp| {
                assert_eq!(req.uri().path(), "/piko/v1/upstream/shop");
                assert_eq!(req.headers()["authorization"], "Bearer tok");
                Ok(resp)
            };
            let ws = tokio_tungstenite::accept_hdr_async(tcp, check)
                .await
                .unwrap();
            let (session, driver) =
                Session::over_websocket(ws, Mode::Server, mux::Config::default());
            let driver = tokio::spawn(driver);
            let mut s = session.open().await.unwrap();
            s.write_all(b"GET /x HTTP/1.1\r\nHost: shop\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 1024];
            let mut got = Vec::new();
            while !got.ends_with(b"ok") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(
                    n > 0,
                    "eof before response: {:?}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
            }
            drop(s);
            resp_tx.send(String::from_utf8(got).unwrap()).unwrap();
            // The connector leaves with GoAway on shutdown; the session then ends.
            session.gone_away().await;
            let _ = driver.await;
        });

        let agent = Agent::new(agent_config(
            format!("http://{server_addr}"),
            &target_port.to_string(),
            Some("tok"),
        ));
        let mut events = agent.subscribe();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(agent.run(shutdown.clone()));
        assert_eq!(events.recv().await.unwrap().to_string(), "connecting… shop");
        assert_eq!(
            events.recv().await.unwrap().to_string(),
            format!("connected: shop → http://localhost:{target_port} (server ws://{server_addr})")
        );
        let text = tokio::time::timeout(Duration::from_secs(5), resp_rx)
            .await
            .unwrap()
            .unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        shutdown.cancel();
        // The fake ends when it sees the connector's GoAway.
        tokio::time::timeout(Duration::from_secs(3), fake)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(3), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(events.recv().await.unwrap().to_string(), "stopped: shop");
    }

    /// A 401 before the upgrade stops the agent with the server's message.
    #[tokio::test]
    async fn rejected_token_stops_the_agent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = server.accept().await {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let body = r#"{"error":"invalid token"}"#;
                let resp = format!(
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
            }
        });
        let agent = Agent::new(agent_config(format!("http://{addr}"), "3000", Some("bad")));
        let mut events = agent.subscribe();
        let err = tokio::time::timeout(Duration::from_secs(5), agent.run(CancellationToken::new()))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "server rejected the token for endpoint shop: 401 invalid token"
        );
        assert!(matches!(err, AgentError::Rejected { status: 401, .. }));
        assert_eq!(events.recv().await.unwrap().to_string(), "connecting… shop");
        assert_eq!(
            events.recv().await.unwrap().to_string(),
            "stopped: shop: server rejected the token for endpoint shop: 401 invalid token"
        );
    }
}
