//! The upstream port: upstreams register endpoints over WebSocket and serve yamux streams.
//!
//! [`pool`] keeps each upstream's idle keep-alive HTTP connections for the proxy.

pub mod pool;
mod registry;
mod settings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use piko_protocol::mux::{self, Mode, Session};
use piko_protocol::paths::{KEEP_ALIVE_HEADER, UPSTREAM_PATH_PREFIX};
use piko_protocol::ws::ws_config;
use piko_protocol::EndpointId;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

pub use registry::{Refusal, Registry, RegistryObserver, Standalone, Upstream};
pub use settings::Settings;

use crate::auth::PortAuth;
use crate::http::{is_websocket_upgrade, json_error, websocket_accept, Body, ConnInfo};

/// How often the server pings each upstream session.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long an upstream session may send nothing before the server drops it. A connector whose
/// link died without closing (laptop sleep, a Wi-Fi change) is dropped within seconds, so
/// requests stop going to it; with the mux's default (a ping unanswered at the next one, every
/// 15 s) that took up to 30 s. Any byte counts, so a busy session is never dropped for queued
/// answers. The same figure as the connector's, which redials after it.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(12);

/// Accepts upstream registrations.
pub struct UpstreamServer {
    registry: Arc<Registry>,
    auth: PortAuth,
    limits: UpstreamLimits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
}

/// Bounds on what upstreams may hold.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLimits {
    /// Streams open at once per upstream connection.
    pub max_streams: usize,
    /// Upstreams per endpoint on this node (`None`: no limit).
    pub max_per_endpoint: Option<usize>,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        Self {
            max_streams: mux::Config::default().max_streams,
            max_per_endpoint: None,
        }
    }
}

impl UpstreamServer {
    /// A server registering upstreams in `registry`; on `shutdown` each session is told to go
    /// away and given `grace` for its open streams.
    pub fn new(
        registry: Arc<Registry>,
        auth: PortAuth,
        limits: UpstreamLimits,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        grace: Duration,
    ) -> Self {
        Self {
            registry,
            auth,
            limits,
            shutdown,
            tasks,
            grace,
        }
    }

    /// Handle one request on the upstream port.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let remote = conn.remote;
        let Some(rest) = req.uri().path().strip_prefix(UPSTREAM_PATH_PREFIX) else {
            return json_error(StatusCode::NOT_FOUND, "not found");
        };
        if req.method() != Method::GET {
            return json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let endpoint = match EndpointId::new(rest) {
            Ok(e) => e,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let token = match self.auth.authorize(req.headers(), endpoint.as_str()) {
            Ok(t) => t,
            Err(e) => {
                warn!(endpoint = %endpoint, %remote, error = %e, "upstream registration refused");
                return json_error(StatusCode::UNAUTHORIZED, &e.to_string());
            }
        };
        if !is_websocket_upgrade(&req) {
            return json_error(StatusCode::BAD_REQUEST, "expected a websocket upgrade");
        }
        let (expiry, tenant) = token.map_or((None, None), |t| (t.expiry, t.tenant));
        if let Err(refusal) =
            self.registry
                .check(&endpoint, tenant.as_deref(), self.limits.max_per_endpoint)
        {
            warn!(endpoint = %endpoint, %remote, tenant = ?tenant, "upstream refused: {refusal}");
            return json_error(refusal_status(&refusal), &refusal.to_string());
        }
        if self.shutdown.is_cancelled() {
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
        }
        // An upstream that asks (this project's connector) gets streams reused for several
        // requests; the answer says so. Any other gets one request per stream (the original).
        let keep_alive = req
            .headers()
            .get(KEEP_ALIVE_HEADER)
            .is_some_and(|v| v.as_bytes() == b"1");
        let mut resp = websocket_accept(&req);
        if keep_alive {
            resp.headers_mut().insert(
                KEEP_ALIVE_HEADER,
                http::header::HeaderValue::from_static("1"),
            );
        }
        let on_upgrade = hyper::upgrade::on(req);
        let span = tracing::info_span!("upstream", endpoint = %endpoint, %remote, tenant = ?tenant);
        let this = self.clone();
        self.tasks.spawn(
            async move {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        let peer = Peer {
                            endpoint,
                            tenant,
                            remote,
                            expiry,
                            keep_alive,
                        };
                        this.serve(TokioIo::new(upgraded), peer).await
                    }
                    Err(e) => debug!(error = %e, "upstream upgrade failed"),
                }
            }
            .instrument(span),
        );
        resp
    }

    async fn serve<T>(&self, io: T, peer: Peer)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Peer {
            endpoint,
            tenant,
            remote,
            expiry,
            keep_alive,
        } = peer;
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
        let (session, driver) = Session::over_websocket(
            ws,
            Mode::Server,
            mux::Config {
                max_streams: self.limits.max_streams,
                keepalive_interval: Some(KEEPALIVE_INTERVAL),
                keepalive_timeout: Some(KEEPALIVE_TIMEOUT),
                ..mux::Config::default()
            },
        );
        let upstream = Arc::new(Upstream {
            id: self.registry.next_id(),
            endpoint: endpoint.clone(),
            tenant,
            session: session.clone(),
            remote,
            keep_alive,
            pool: Default::default(),
        });
        if let Err(refusal) = self
            .registry
            .try_add(upstream.clone(), self.limits.max_per_endpoint)
        {
            // Another registration won the last place, or the endpoint for another tenant,
            // after this one was answered.
            warn!("upstream refused after the upgrade: {refusal}");
            session.close();
            let _ = driver.await;
            return;
        }
        info!("upstream connected");
        // Upstreams never open streams: refuse any by dropping them (which resets them).
        let refuse = {
            let session = session.clone();
            async move { while session.accept().await.is_some() {} }
        };
        // Not on `tasks`: it ends with the session, which this (tracked) task closes below.
        tokio::spawn(refuse);
        // The session runs in its own task so it keeps moving while this one waits to drain;
        // this task awaits it on every path, so it needs no tracker of its own.
        let mut driver = tokio::spawn(driver);
        let expired = async {
            match expiry {
                Some(at) => {
                    tokio::time::sleep(
                        at.duration_since(std::time::SystemTime::now())
                            .unwrap_or_default(),
                    )
                    .await
                }
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            r = &mut driver => Some(r),
            _ = expired => {
                info!("upstream token expired; disconnecting");
                session.close();
                Some((&mut driver).await)
            }
            _ = session.gone_away() => {
                info!("upstream going away; no new requests are sent to it");
                None
            }
            _ = self.shutdown.cancelled() => {
                session.go_away();
                None
            }
        };
        self.registry.remove(&endpoint, upstream.id);
        // Idle keep-alive connections would hold their streams open through the drain.
        upstream.pool.clear();
        let ended = match ended {
            Some(r) => r,
            None => {
                // Let open streams finish, then close.
                if tokio::time::timeout(self.grace, session.idle())
                    .await
                    .is_err()
                {
                    warn!(
                        open = session.num_streams(),
                        "open streams still running after the grace period; closing"
                    );
                }
                session.close();
                driver.await
            }
        };
        let result = ended.unwrap_or_else(|e| {
            Err(piko_protocol::mux::MuxError::Protocol(format!(
                "session task failed: {e}"
            )))
        });
        match result {
            Ok(()) => info!("upstream disconnected"),
            Err(e) => info!(error = %e, "upstream disconnected"),
        }
    }
}

/// What a registration told about its upstream.
struct Peer {
    endpoint: EndpointId,
    tenant: Option<String>,
    remote: SocketAddr,
    expiry: Option<std::time::SystemTime>,
    /// It asked for streams reused by several requests ([`KEEP_ALIVE_HEADER`]).
    keep_alive: bool,
}

/// The status a refused registration is answered with.
fn refusal_status(r: &Refusal) -> StatusCode {
    match r {
        // Not 401/403: the token is good, the id is taken; it frees up when the owner leaves.
        Refusal::OtherTenant => StatusCode::CONFLICT,
        Refusal::Full { .. } => StatusCode::TOO_MANY_REQUESTS,
    }
}
