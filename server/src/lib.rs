//! A Piko server node.
//!
//! Layout, in reading order: each module uses only the ones above it in this list
//! (`tests/layers.sh` checks every `use crate::` against it, in CI):
//! - [`secret`]: strings that never print (the cluster token, HMAC keys).
//! - [`tls`]: certificates and keys for the ports, reloaded when their files change.
//! - [`http`]: serving a listener with limits and graceful drain; the body type every port
//!   writes.
//! - [`auth`]: JWT verification for the ports (keys, JWKS, tenants).
//! - [`upstream`]: the upstream port (registration, yamux sessions), the endpoint
//!   [`Registry`] and each upstream's pool of keep-alive connections.
//! - [`cluster`]: the Raft group (openraft) replicating membership and endpoints, and the
//!   cluster port; forwarded requests are handed to the proxy by [`run`].
//! - [`metrics`]: the Prometheus figures.
//! - [`proxy`]: the proxy port (client HTTP, WebSocket, TCP over WebSocket → upstreams, or
//!   forwarded to another node).
//! - [`admin`]: health, readiness, metrics and status routes.
//! - [`config`]: defaults, YAML file, `PIKO_*` environment and dotted flags → [`Config`].
//! - [`cli`]: the command line of `piko-server` and `piko server` (flags, logging, `status`).
//! - this root: [`run`], which wires them together, and [`run_command`], the process around
//!   it that both binaries call.
//!
//! [`run`] takes bound listeners (the caller owns sockets) and a shutdown token.

#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod tls;
pub mod upstream;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
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
            proxy: bind("proxy.bind_addr", config.proxy.bind_addr).await?,
            upstream: bind("upstream.bind_addr", config.upstream.bind_addr).await?,
            admin: bind("admin.bind_addr", config.admin.bind_addr).await?,
            cluster: bind("cluster.bind_addr", config.cluster.bind_addr).await?,
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
    /// The node was not a cluster member within `cluster.join_timeout`.
    #[error("cluster.join_timeout: not a member of the cluster after {after:?} (cluster.join: {join:?}); check that those nodes run and that this node reaches their cluster port, or set cluster.abort_if_join_fails: false to keep trying")]
    JoinTimeout {
        /// The timeout.
        after: Duration,
        /// The join entries.
        join: Vec<String>,
    },
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
///
/// The steps, each a function below: find out who this node is (`this_member`), open its
/// part of the cluster (`open_cluster`), serve the four ports (`start_ports`), join the
/// cluster (`join_cluster`), turn ready, wait for `shutdown`, then
/// `drain_then_leave`.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // Every task of the node but the two ports that outlive the drain (see `LastPort`).
    let tasks = TaskTracker::new();
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let member = this_member(&config, &listeners)?;
    info!(node_id = %member.name, "starting node");
    let peers = peer_policy(&config.cluster, &listeners, &member);
    let cluster = open_cluster(&config.cluster, member.clone(), peers, &tasks, &shutdown).await?;
    let ports = start_ports(listeners, &config, member, &cluster, &tasks, &shutdown).await?;
    join_cluster(
        &config.cluster,
        &cluster,
        &ports.registry,
        &tasks,
        &shutdown,
    )
    .await?;
    // Not ready until the node is in a cluster, nor when it is already stopping.
    if !shutdown.is_cancelled() {
        ports.ready.store(true, Ordering::SeqCst);
        info!("node is ready");
    }
    shutdown.cancelled().await;
    drain_then_leave(ports, &cluster, tasks, config.grace_period).await;
    Ok(())
}

/// This node as the cluster sees it: its stable id and the advertised addresses of its
/// ports (the bound ones where none is configured).
fn this_member(config: &Config, listeners: &Listeners) -> Result<cluster::Member, RunError> {
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let advertised = |set: &Option<String>, l: &TcpListener| set.clone().unwrap_or_else(|| addr(l));
    let name = cluster::stable_node_id(
        config.cluster.data_dir.as_deref(),
        &config.cluster.node_id,
        config.cluster.node_id_generated,
    )?;
    Ok(cluster::Member {
        name,
        proxy_addr: advertised(&config.proxy.advertise_addr, &listeners.proxy),
        upstream_addr: advertised(&config.upstream.advertise_addr, &listeners.upstream),
        admin_addr: advertised(&config.admin.advertise_addr, &listeners.admin),
        cluster_addr: advertised(&config.cluster.advertise_addr, &listeners.cluster),
    })
}

/// Which peers the cluster port admits, with a warning when the choice exposes the node or
/// leaves it unreachable for the nodes it is meant to meet.
fn peer_policy(
    config: &cluster::Settings,
    listeners: &Listeners,
    member: &cluster::Member,
) -> cluster::PeerPolicy {
    let unspecified = member
        .cluster_addr
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified());
    let open_port = listeners
        .cluster
        .local_addr()
        .is_ok_and(|a| !a.ip().is_loopback());
    let peers = cluster::PeerPolicy {
        token: config.token.is_some(),
        mutual_tls: config.tls.as_ref().is_some_and(|t| t.client_cas.is_some()),
        allow_unauthenticated: config.allow_unauthenticated_peers,
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
            cluster_addr = %member.cluster_addr,
            "other nodes cannot reach this node at its bind address; set cluster.advertise_addr"
        );
    }
    peers
}

/// Open this node's Raft log and state and start Raft, not yet in a cluster; its watcher
/// logs if Raft stops while the node runs.
async fn open_cluster(
    config: &cluster::Settings,
    member: cluster::Member,
    peers: cluster::PeerPolicy,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Arc<cluster::Cluster>, RunError> {
    let cluster = cluster::Cluster::new(config.for_node(member, peers)).await?;
    tasks.spawn(cluster.clone().watch_raft(shutdown.clone()));
    Ok(cluster)
}

/// The four ports, serving.
struct Ports {
    /// `/ready` answers 200 while set.
    ready: Arc<AtomicBool>,
    /// This node's upstreams.
    registry: Arc<Registry>,
    /// Serves Raft RPC until this node has left the cluster.
    cluster: LastPort,
    /// Answers probes (`/ready` 503) through the whole drain.
    admin: LastPort,
}

/// A port that outlives the drain of `tasks`, so it is not on that tracker (waiting for it
/// there would wait forever): it has its own stop token and is awaited by its handle.
struct LastPort {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl LastPort {
    /// Serve `handler` on `listener` until [`Self::stop`] cancels `opts.shutdown`.
    fn serve<F, Fut>(listener: TcpListener, opts: http::ServeOptions, handler: F) -> Self
    where
        F: Fn(hyper::Request<hyper::body::Incoming>, http::ConnInfo) -> Fut
            + Clone
            + Send
            + Sync
            + 'static,
        Fut: std::future::Future<Output = hyper::Response<http::Body>> + Send + 'static,
    {
        let stop = opts.shutdown.clone();
        let task = tokio::spawn(http::serve(listener, opts, handler));
        Self { stop, task }
    }

    /// Stop accepting, let open requests finish (up to the grace period), return then.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Load TLS and JWKS for the ports (any error stops the start), then serve the cluster,
/// proxy, upstream and admin ports. The proxy and upstream ports stop at `shutdown`; the
/// cluster and admin ports when [`drain_then_leave`] says.
async fn start_ports(
    listeners: Listeners,
    config: &Config,
    member: cluster::Member,
    cluster: &Arc<cluster::Cluster>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Ports, RunError> {
    let registry = Arc::new(Registry::new(cluster.clone()));
    let proxy_tls = port_tls("proxy.tls", &config.proxy.tls, &[b"h2", b"http/1.1"])?;
    let upstream_tls = port_tls("upstream.tls", &config.upstream.tls, &[b"http/1.1"])?;
    let admin_tls = port_tls("admin.tls", &config.admin.tls, &[b"http/1.1"])?;
    let cluster_tls = port_tls("cluster.tls", &config.cluster.tls, &[b"http/1.1"])?;
    for t in [&proxy_tls, &upstream_tls, &admin_tls, &cluster_tls]
        .into_iter()
        .flatten()
    {
        tasks.spawn(t.clone().watch(shutdown.clone()));
    }
    for (key, auth) in [
        ("proxy.auth.jwks", &config.proxy.auth),
        ("upstream.auth.jwks", &config.upstream.auth),
        ("admin.auth.jwks", &config.admin.auth),
    ] {
        auth.start(tasks, shutdown.clone())
            .await
            .map_err(|message| RunError::Jwks { key, message })?;
    }

    let limits = config.proxy.http.clone();
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

    let metrics = Arc::new(metrics::Metrics::new());
    let proxy = Arc::new(
        proxy::Proxy::with_settings(registry.clone(), &config.proxy, metrics.clone())
            .with_cluster(cluster.clone()),
    );
    let forwarded = proxy.clone();
    let cluster_port = Arc::new(cluster::ClusterPort::new(
        cluster.clone(),
        move |req, conn| forwarded.clone().handle_forwarded(req, conn),
    ));
    let cluster_port = LastPort::serve(
        listeners.cluster,
        opts("cluster", cluster_tls, &CancellationToken::new()),
        move |req, conn| cluster_port.clone().handle(req, conn),
    );
    tasks.spawn(http::serve(
        listeners.proxy,
        opts("proxy", proxy_tls, shutdown),
        move |req, conn| proxy.clone().handle(req, conn),
    ));
    let upstreams = Arc::new(upstream::UpstreamServer::with_settings(
        registry.clone(),
        &config.upstream,
        shutdown.clone(),
        tasks.clone(),
        grace,
    ));
    tasks.spawn(http::serve(
        listeners.upstream,
        opts("upstream", upstream_tls, shutdown),
        move |req, conn| upstreams.clone().handle(req, conn),
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Arc::new(
        admin::Admin::new(
            registry.clone(),
            ready.clone(),
            member,
            config.admin.auth.clone(),
            metrics,
        )
        .with_cluster(cluster.clone())
        .with_forwarding(config.admin.forward.clone()),
    );
    let admin_port = LastPort::serve(
        listeners.admin,
        opts("admin", admin_tls, &CancellationToken::new()),
        move |req, conn| admin.clone().handle(req, conn),
    );
    Ok(Ports {
        ready,
        registry,
        cluster: cluster_port,
        admin: admin_port,
    })
}

/// Bootstrap, rejoin or join the cluster (returns early at `shutdown`), catch up with its
/// endpoint table, then keep this node's endpoint entries in step with `registry` and, while
/// it leads, tend the group.
///
/// A node that is not a member within `cluster.join_timeout` (no node behind `cluster.join`
/// admitted it, nor did they start a cluster with it) stops with [`RunError::JoinTimeout`]
/// when `cluster.abort_if_join_fails` is on; otherwise it warns and keeps trying, not ready.
async fn join_cluster(
    settings: &cluster::Settings,
    cluster: &Arc<cluster::Cluster>,
    registry: &Arc<Registry>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let start = cluster.start(shutdown);
    tokio::pin!(start);
    match tokio::time::timeout(settings.join_timeout, &mut start).await {
        Ok(started) => started?,
        Err(_) if settings.abort_if_join_fails => {
            return Err(RunError::JoinTimeout {
                after: settings.join_timeout,
                join: settings.join.clone(),
            })
        }
        Err(_) => {
            tracing::warn!(
                after = ?settings.join_timeout,
                join = ?settings.join,
                "cluster.join_timeout: not a cluster member yet; still trying (not ready until then), since cluster.abort_if_join_fails is off"
            );
            start.await?;
        }
    }
    cluster.caught_up(Duration::from_secs(5)).await;
    tasks.spawn(
        cluster
            .clone()
            .sync_endpoints(registry.clone(), shutdown.clone()),
    );
    tasks.spawn(cluster.clone().lead(shutdown.clone()));
    Ok(())
}

/// The shutdown, in the order that loses no request and leaves the cluster clean.
async fn drain_then_leave(
    ports: Ports,
    cluster: &cluster::Cluster,
    tasks: TaskTracker,
    grace: Duration,
) {
    // 1. `/ready` answers 503: load balancers stop sending clients here.
    ports.ready.store(false, Ordering::SeqCst);
    // 2. Other nodes stop forwarding here: this node's endpoint entries are cleared (the
    //    cluster port still serves the Raft calls this takes).
    cluster.withdraw().await;
    info!(grace = ?grace, "shutting down: draining upstreams and requests");
    // 3. The proxy and upstream ports, which watch `shutdown`, stop accepting; open requests
    //    get `grace`, upstreams are told to go away and their sessions close; the cluster's
    //    background loops end. Wait for all of it.
    tasks.close();
    tasks.wait().await;
    // 4. Leave the Raft group: the leader removes this node (handing over leadership if this
    //    node leads), over the cluster port, which is still serving.
    cluster.leave().await;
    // 5. Stop Raft.
    cluster.shutdown().await;
    // 6. No Raft call is needed any more: the cluster port can go.
    ports.cluster.stop().await;
    // 7. The admin port last, so probes saw 503 through the whole drain.
    ports.admin.stop().await;
    info!("shutdown complete");
}

/// The whole process of `piko-server` and `piko server`, for the command line `matches` of
/// [`cli::command`]: print a node's status (`status`), or load the configuration, bind, and run
/// a node until SIGINT or SIGTERM. Exit 0 when done, 1 when the node cannot run, 2 for a bad
/// flag, key or value (`bin_name --help` is named then).
pub fn run_command(bin_name: &str, matches: &clap::ArgMatches) -> ExitCode {
    let runtime = match piko_protocol::process::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(("status", sub)) = matches.subcommand() {
        return runtime.block_on(cli::status::run(sub));
    }
    let config = match cli::load_config(matches) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("see `{bin_name} --help` for the options");
            return ExitCode::from(2);
        }
    };
    cli::init_logging(&config.log);
    runtime.block_on(run_until_signalled(config))
}

/// Bind the ports of `config` and [`run`] the node; the first SIGINT or SIGTERM starts the
/// graceful shutdown, a second one exits the process at once.
async fn run_until_signalled(config: Config) -> ExitCode {
    let listeners = match Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}; choose another address with the flag of that key");
            return ExitCode::from(1);
        }
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    // The process's own task: a second signal exits the process, whatever else runs.
    tokio::spawn(piko_protocol::process::stop_on_signals(move || {
        stop.cancel();
        info!("signal received; shutting down gracefully (send again to exit at once)");
    }));
    match run(listeners, config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}
