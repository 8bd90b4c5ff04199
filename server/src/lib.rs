//! A Piko server node.
//!
//! Layout:
//! - [`config`]: defaults, YAML file, `PIKO_*` environment and dotted flags → [`Config`].
//! - [`proxy`]: the proxy port (client HTTP, WebSocket, TCP over WebSocket → upstreams).
//! - [`upstream`]: the upstream port (registration, yamux sessions) and the endpoint [`Registry`].
//! - [`admin`]: health, readiness and status routes.
//! - [`http`]: serving a listener with limits and graceful drain.
//!
//! [`run`] takes bound listeners (the caller owns sockets) and a shutdown token.

pub mod admin;
pub mod config;
pub mod http;
pub mod proxy;
pub mod upstream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use config::Config;
pub use upstream::Registry;

/// The listeners a node serves on.
pub struct Listeners {
    /// Proxy port.
    pub proxy: TcpListener,
    /// Upstream port.
    pub upstream: TcpListener,
    /// Admin port.
    pub admin: TcpListener,
}

impl Listeners {
    /// Bind every port of `config`.
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        let bind = |key: &'static str, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { key, addr, source })
        };
        Ok(Self {
            proxy: bind("proxy.bind_addr", config.proxy_addr).await?,
            upstream: bind("upstream.bind_addr", config.upstream_addr).await?,
            admin: bind("admin.bind_addr", config.admin_addr).await?,
        })
    }
}

/// A port could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The configuration key of the port.
    pub key: &'static str,
    /// The address.
    pub addr: std::net::SocketAddr,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Run a node until `shutdown` is cancelled, then drain: `/ready` turns 503, upstreams are
/// told to go away, open requests get `config.grace_period` to finish.
pub async fn run(listeners: Listeners, config: Config, shutdown: CancellationToken) {
    let registry = Arc::new(Registry::new(Arc::new(upstream::Standalone)));
    let ready = Arc::new(AtomicBool::new(true));
    let tasks = TaskTracker::new();
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let node = admin::NodeInfo {
        id: config.node_id.clone(),
        proxy_addr: config
            .advertise
            .proxy
            .clone()
            .unwrap_or_else(|| addr(&listeners.proxy)),
        upstream_addr: config
            .advertise
            .upstream
            .clone()
            .unwrap_or_else(|| addr(&listeners.upstream)),
        admin_addr: config
            .advertise
            .admin
            .clone()
            .unwrap_or_else(|| addr(&listeners.admin)),
        cluster_addr: config
            .advertise
            .cluster
            .clone()
            .unwrap_or_else(|| config.cluster_addr.to_string()),
    };
    info!(node_id = %config.node_id, "starting node");

    let limits = http::HttpLimits {
        read_header_timeout: config.read_header_timeout,
        max_header_bytes: config.max_header_bytes,
    };
    let grace = config.grace_period;
    // Admin stays up until the data ports have drained, so probes see /ready = 503 meanwhile.
    let admin_shutdown = CancellationToken::new();

    let proxy = Arc::new(proxy::Proxy::new(registry.clone(), config.proxy_timeout));
    tasks.spawn(http::serve(
        "proxy",
        listeners.proxy,
        limits.clone(),
        shutdown.clone(),
        grace,
        move |req, remote| proxy.clone().handle(req, remote),
    ));
    let upstreams = Arc::new(upstream::UpstreamServer::new(
        registry.clone(),
        shutdown.clone(),
        tasks.clone(),
        grace,
    ));
    tasks.spawn(http::serve(
        "upstream",
        listeners.upstream,
        limits.clone(),
        shutdown.clone(),
        grace,
        move |req, remote| upstreams.clone().handle(req, remote),
    ));
    let admin = Arc::new(admin::Admin::new(registry.clone(), ready.clone(), node));
    let admin_task = tokio::spawn(http::serve(
        "admin",
        listeners.admin,
        limits,
        admin_shutdown.clone(),
        grace,
        move |req, remote| admin.clone().handle(req, remote),
    ));

    shutdown.cancelled().await;
    ready.store(false, Ordering::SeqCst);
    info!(grace = ?grace, "shutting down: draining upstreams and requests");
    tasks.close();
    tasks.wait().await;
    admin_shutdown.cancel();
    let _ = admin_task.await;
    info!("shutdown complete");
}
