//! A Piko server node.
//!
//! Layout:
//! - [`config`]: defaults, YAML file, `PIKO_*` environment and dotted flags → [`Config`].
//! - [`proxy`]: the proxy port (client HTTP, WebSocket, TCP over WebSocket → upstreams).
//! - [`upstream`]: the upstream port (registration, yamux sessions) and the endpoint [`Registry`].
//! - [`admin`]: health, readiness and status routes.
//! - [`cluster`]: the Raft group (openraft) replicating membership and endpoints, the cluster
//!   port and forwarding between nodes.
//! - [`http`]: serving a listener with limits and graceful drain.
//!
//! [`run`] takes bound listeners (the caller owns sockets) and a shutdown token.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod tls;
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
    /// Cluster port.
    pub cluster: TcpListener,
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
            cluster: bind("cluster.bind_addr", config.cluster_addr).await?,
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

/// The node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A TLS file could not be used.
    #[error("{key}: {source}")]
    Tls {
        /// The configuration key.
        key: &'static str,
        /// The cause.
        #[source]
        source: tls::TlsError,
    },
    /// The node could not start or join the cluster.
    #[error("{0}")]
    Cluster(#[from] cluster::ClusterError),
    /// A JWKS could not be loaded.
    #[error("{key}: {message}")]
    Jwks {
        /// The configuration key.
        key: &'static str,
        /// What went wrong.
        message: String,
    },
}

fn port_tls(
    key: &'static str,
    files: &Option<tls::TlsFiles>,
    alpn: &[&[u8]],
) -> Result<Option<Arc<tls::ReloadingTls>>, RunError> {
    files
        .clone()
        .map(|f| tls::ReloadingTls::new(f, alpn))
        .transpose()
        .map_err(|source| RunError::Tls { key, source })
}

/// Run a node until `shutdown` is cancelled, then drain: `/ready` turns 503, upstreams are
/// told to go away, open requests get `config.grace_period` to finish.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // Not ready until the node is in a cluster.
    let ready = Arc::new(AtomicBool::new(false));
    let tasks = TaskTracker::new();
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let node_id = cluster::stable_node_id(
        config.data_dir.as_deref(),
        &config.node_id,
        config.node_id_generated,
    )?;
    let node = admin::NodeInfo {
        id: node_id.clone(),
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
            .unwrap_or_else(|| addr(&listeners.cluster)),
    };
    info!(node_id = %node_id, "starting node");
    let unspecified = node
        .cluster_addr
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified());
    let open_port = listeners
        .cluster
        .local_addr()
        .is_ok_and(|a| !a.ip().is_loopback());
    let peers = cluster::PeerPolicy {
        token: config.cluster_token.is_some(),
        mutual_tls: config
            .cluster_tls
            .as_ref()
            .is_some_and(|t| t.client_cas.is_some()),
        allow_unauthenticated: config.cluster_allow_unauthenticated_peers,
    };
    if !peers.authenticated() {
        if peers.allow_unauthenticated {
            if open_port {
                tracing::warn!(
                    "cluster.allow_unauthenticated_peers is on: anyone who reaches the cluster port can join the cluster, take its traffic and stop it; keep the port on a private network, or set cluster.token or cluster.tls.client_cas (mutual TLS) instead"
                );
            }
        } else if open_port {
            // Said loudly when the node is meant to meet others; a node of its own is fine.
            let msg = "the cluster port answers peers on loopback only: for a cluster across hosts set cluster.token (the same secret on every node) or cluster.tls.client_cas (mutual TLS)";
            if config.join.is_empty() {
                info!("{msg}");
            } else {
                tracing::warn!("{msg}");
            }
        }
    }
    if unspecified && !config.join.is_empty() {
        tracing::warn!(
            cluster_addr = %node.cluster_addr,
            "other nodes cannot reach this node at its bind address; set cluster.advertise_addr"
        );
    }
    let cluster = cluster::Cluster::new(cluster::ClusterSettings {
        member: cluster::Member {
            name: node.id.clone(),
            proxy_addr: node.proxy_addr.clone(),
            upstream_addr: node.upstream_addr.clone(),
            admin_addr: node.admin_addr.clone(),
            cluster_addr: node.cluster_addr.clone(),
        },
        join: config.join.clone(),
        data_dir: config.data_dir.clone(),
        tls: config.cluster_client_tls.clone(),
        node_lease: config.node_lease,
        token: config.cluster_token.clone(),
        peers,
    })
    .await?;
    tasks.spawn(cluster.clone().watch_raft(shutdown.clone()));
    let registry = Arc::new(Registry::new(cluster.clone()));

    let proxy_tls = port_tls("proxy.tls", &config.proxy_tls, &[b"h2", b"http/1.1"])?;
    let upstream_tls = port_tls("upstream.tls", &config.upstream_tls, &[b"http/1.1"])?;
    let admin_tls = port_tls("admin.tls", &config.admin_tls, &[b"http/1.1"])?;
    let cluster_tls = port_tls("cluster.tls", &config.cluster_tls, &[b"http/1.1"])?;
    for t in [&proxy_tls, &upstream_tls, &admin_tls, &cluster_tls]
        .into_iter()
        .flatten()
    {
        tokio::spawn(t.clone().watch(shutdown.clone()));
    }
    for (key, auth) in [
        ("proxy.auth.jwks", &config.proxy_auth),
        ("upstream.auth.jwks", &config.upstream_auth),
        ("admin.auth.jwks", &config.admin_auth),
    ] {
        auth.start(shutdown.clone())
            .await
            .map_err(|message| RunError::Jwks { key, message })?;
    }

    let limits = http::HttpLimits {
        read_header_timeout: config.read_header_timeout,
        idle_timeout: config.idle_timeout,
        max_header_bytes: config.max_header_bytes,
    };
    let grace = config.grace_period;
    let opts = |name, tls: Option<Arc<tls::ReloadingTls>>, shutdown: &CancellationToken| {
        http::ServeOptions {
            name,
            limits: limits.clone(),
            tls,
            shutdown: shutdown.clone(),
            grace,
        }
    };
    // Admin stays up until the data ports have drained, so probes see /ready = 503 meanwhile.
    let admin_shutdown = CancellationToken::new();

    let metrics = Arc::new(metrics::Metrics::new());
    let proxy = Arc::new(
        proxy::Proxy::new(
            registry.clone(),
            config.proxy_timeout,
            config.proxy_auth.clone(),
            config.proxy_access_log.clone(),
            metrics.clone(),
        )
        .with_trusted_proxies(config.trusted_proxies.clone())
        .with_cluster(cluster.clone()),
    );
    // The cluster port serves Raft RPC until the very end, so this node can leave cleanly.
    let cluster_shutdown = CancellationToken::new();
    let cluster_port = Arc::new(cluster::ClusterPort::new(cluster.clone(), proxy.clone()));
    let cluster_task = tokio::spawn(http::serve(
        listeners.cluster,
        opts("cluster", cluster_tls, &cluster_shutdown),
        move |req, conn| cluster_port.clone().handle(req, conn),
    ));
    tasks.spawn(http::serve(
        listeners.proxy,
        opts("proxy", proxy_tls, &shutdown),
        move |req, conn| proxy.clone().handle(req, conn),
    ));
    let upstreams = Arc::new(upstream::UpstreamServer::new(
        registry.clone(),
        config.upstream_auth.clone(),
        upstream::UpstreamLimits {
            max_streams: config.max_streams_per_upstream,
            max_per_endpoint: config.max_upstreams_per_endpoint,
        },
        shutdown.clone(),
        tasks.clone(),
        grace,
    ));
    tasks.spawn(http::serve(
        listeners.upstream,
        opts("upstream", upstream_tls, &shutdown),
        move |req, conn| upstreams.clone().handle(req, conn),
    ));
    let admin = Arc::new(
        admin::Admin::new(
            registry.clone(),
            ready.clone(),
            node,
            config.admin_auth.clone(),
            metrics,
        )
        .with_cluster(cluster.clone()),
    );
    let admin_task = tokio::spawn(http::serve(
        listeners.admin,
        opts("admin", admin_tls, &admin_shutdown),
        move |req, conn| admin.clone().handle(req, conn),
    ));

    cluster.start(&shutdown).await?;
    cluster.caught_up(std::time::Duration::from_secs(5)).await;
    tasks.spawn(
        cluster
            .clone()
            .sync_endpoints(registry.clone(), shutdown.clone()),
    );
    tasks.spawn(cluster.clone().lead(shutdown.clone()));
    if !shutdown.is_cancelled() {
        ready.store(true, Ordering::SeqCst);
        info!("node is ready");
    }

    shutdown.cancelled().await;
    ready.store(false, Ordering::SeqCst);
    cluster.withdraw().await;
    info!(grace = ?grace, "shutting down: draining upstreams and requests");
    tasks.close();
    tasks.wait().await;
    cluster.leave().await;
    cluster.shutdown().await;
    cluster_shutdown.cancel();
    let _ = cluster_task.await;
    admin_shutdown.cancel();
    let _ = admin_task.await;
    info!("shutdown complete");
    Ok(())
}
