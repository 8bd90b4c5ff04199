//! The Piko test harness: servers, connectors and local services on loopback port 0.
//!
//! - [`TestServer`]: a `piko-server` node running in-process on ephemeral ports.
//! - [`TestConnector`]: a connector agent (connector-core) for one or more endpoints.
//! - [`live::TestCore`]: the live connector core on a temporary settings file;
//!   [`live::Relay`] black-holes its link to the server.
//! - [`EchoUpstream`]: the local service behind the tunnel, with routes for every test.
//! - [`original::OriginalServer`]: a double of the original Go server's upstream port.
//! - [`rawmux`]: yamux frames by hand over a WebSocket, for wire-format tests.
//! - [`wait_until`]: poll a condition instead of sleeping.
//! - [`NodeProcess`] and [`AgentProcess`]: the real `piko-server` and `piko` binaries (found
//!   by [`bin`]), on port 0, their addresses read from their logs ([`process`]).

#![warn(missing_docs)]

pub mod agent;
pub mod echo;
pub mod live;
pub mod node;
pub mod original;
pub mod process;
pub mod rawmux;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use piko_connector_core::config::{AgentConfig, ConnectConfig, EndpointConfig, Protocol};
use piko_connector_core::status::{StatusEvent, TunnelState};
use piko_connector_core::tunnel::Agent;
use piko_server::{Config, Listeners};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use agent::AgentProcess;
pub use echo::EchoUpstream;
pub use node::NodeProcess;

/// Install a test log subscriber once (RUST_LOG controls it).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Poll `cond` every 20 ms until it is true; panic with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server node running in this process.
pub struct TestServer {
    /// Proxy port address.
    pub proxy_addr: SocketAddr,
    /// Upstream port address.
    pub upstream_addr: SocketAddr,
    /// Admin port address.
    pub admin_addr: SocketAddr,
    /// Cluster port address.
    pub cluster_addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), piko_server::RunError>>>,
}

impl TestServer {
    /// Start a node with default settings on ephemeral loopback ports.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start a node after `tweak` adjusts its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::loopback_ephemeral();
        config.grace_period = Duration::from_secs(5);
        tweak(&mut config);
        let listeners = Listeners::bind(&config).await.expect("bind test server");
        Self::start_on(listeners, config)
    }

    /// Start a node on listeners the test bound itself (to restart on the same ports).
    pub fn start_on(listeners: Listeners, config: Config) -> Self {
        init_logs();
        let proxy_addr = listeners.proxy.local_addr().expect("proxy addr");
        let upstream_addr = listeners.upstream.local_addr().expect("upstream addr");
        let admin_addr = listeners.admin.local_addr().expect("admin addr");
        let cluster_addr = listeners.cluster.local_addr().expect("cluster addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(piko_server::run(listeners, config, shutdown.clone()));
        Self {
            proxy_addr,
            upstream_addr,
            admin_addr,
            cluster_addr,
            shutdown,
            task: Some(task),
        }
    }

    /// `http://` URL of the proxy port.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    /// `http://` URL of the upstream port.
    pub fn upstream_url(&self) -> String {
        format!("http://{}", self.upstream_addr)
    }

    /// `http://` URL of the admin port.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Endpoint → local upstream count, from the admin API.
    pub async fn endpoints(&self) -> serde_json::Value {
        let url = format!("{}/status/upstream/endpoints", self.admin_url());
        match reqwest::get(url).await {
            Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Wait until `endpoint` has `count` upstreams registered.
    pub async fn wait_for_upstreams(&self, endpoint: &str, count: u64) {
        wait_until(
            &format!("{endpoint} has {count} upstream(s)"),
            Duration::from_secs(10),
            || async {
                self.endpoints()
                    .await
                    .get(endpoint)
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
                    == count
            },
        )
        .await;
    }

    /// `GET path` through the proxy for `endpoint` (named by `x-piko-endpoint`).
    pub async fn get(&self, endpoint: &str, path: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", self.proxy_url()))
            .header("x-piko-endpoint", endpoint)
            .send()
            .await
            .expect("request through the proxy")
    }

    /// `GET` an admin path as JSON (`Null` when the node does not answer).
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        get_json(format!("{}{path}", self.admin_url())).await
    }

    /// The nodes this node knows, from `/status/cluster/nodes`.
    pub async fn cluster_nodes(&self) -> Vec<serde_json::Value> {
        match self.admin_json("/status/cluster/nodes").await {
            serde_json::Value::Array(nodes) => nodes,
            _ => vec![],
        }
    }

    /// Upstreams of `endpoint` on every node, as this node's replica says.
    pub async fn replicated_upstreams(&self, endpoint: &str) -> u64 {
        replicated_count(&self.admin_json("/status/cluster/nodes").await, endpoint).unwrap_or(0)
    }

    /// Begin a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shut down and wait until the node has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("server stops in time")
                .expect("server task")
                .expect("server ran");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `GET url` as JSON (`Null` when nothing answers or the body is not JSON).
pub async fn get_json(url: String) -> serde_json::Value {
    match client().get(url).send().await {
        Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
}

/// Upstreams of `endpoint` summed over the nodes of a `/status/cluster/nodes` answer
/// (`None` when the answer is not a list of nodes).
pub fn replicated_count(nodes: &serde_json::Value, endpoint: &str) -> Option<u64> {
    Some(
        nodes
            .as_array()?
            .iter()
            .filter_map(|n| n["endpoint_upstreams"][endpoint].as_u64())
            .sum(),
    )
}

/// `GET base+path` for `endpoint` (named by `x-piko-endpoint`): status and body, or `None`
/// when nothing answers.
pub async fn get_endpoint(base: &str, endpoint: &str, path: &str) -> Option<(u16, String)> {
    let r = client()
        .get(format!("{base}{path}"))
        .header("x-piko-endpoint", endpoint)
        .send()
        .await
        .ok()?;
    Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
}

/// Several nodes forming one cluster in this process.
pub struct TestCluster {
    /// The nodes, `node-0` first.
    pub nodes: Vec<TestServer>,
}

impl TestCluster {
    /// Start `n` nodes that find each other through `cluster.join`.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, |_, _| {}).await
    }

    /// Start `n` nodes named `node-0`…; `tweak` adjusts node `i`'s configuration (its
    /// `join` is then set to every node's cluster address unless `tweak` set one).
    pub async fn start_with(n: usize, tweak: impl Fn(usize, &mut Config)) -> Self {
        let cluster = Self::spawn_with(n, tweak).await;
        cluster.wait_for_members(n).await;
        cluster
    }

    /// [`TestCluster::start_with`] without waiting for the nodes to meet (which asks their
    /// admin ports over plain HTTP): for nodes whose admin port uses TLS.
    pub async fn spawn_with(n: usize, tweak: impl Fn(usize, &mut Config)) -> Self {
        let mut bound = Vec::new();
        for i in 0..n {
            let mut config = Config::loopback_ephemeral();
            config.grace_period = Duration::from_secs(5);
            config.cluster.node_id = format!("node-{i}");
            config.cluster.node_id_generated = false;
            tweak(i, &mut config);
            let listeners = Listeners::bind(&config).await.expect("bind test node");
            bound.push((config, listeners));
        }
        let join: Vec<String> = bound
            .iter()
            .map(|(c, l)| match &c.cluster.advertise_addr {
                Some(a) => a.clone(),
                None => l.cluster.local_addr().expect("cluster addr").to_string(),
            })
            .collect();
        let nodes = bound
            .into_iter()
            .map(|(mut config, listeners)| {
                if config.cluster.join.is_empty() {
                    config.cluster.join = join.clone();
                }
                TestServer::start_on(listeners, config)
            })
            .collect();
        Self { nodes }
    }

    /// Wait until every running node lists `n` members and one leader.
    pub async fn wait_for_members(&self, n: usize) {
        for node in &self.nodes {
            wait_until(
                &format!("node at {} sees {n} members", node.admin_addr),
                Duration::from_secs(30),
                || async {
                    let nodes = node.cluster_nodes().await;
                    nodes.len() == n && nodes.iter().filter(|m| m["role"] == "leader").count() == 1
                },
            )
            .await;
        }
    }

    /// Wait until every node's replica counts `count` upstreams for `endpoint`.
    pub async fn wait_for_replicated(&self, endpoint: &str, count: u64) {
        for node in &self.nodes {
            wait_until(
                &format!(
                    "node at {} sees {count} upstream(s) of {endpoint}",
                    node.admin_addr
                ),
                Duration::from_secs(20),
                || async { node.replicated_upstreams(endpoint).await == count },
            )
            .await;
        }
    }

    /// The index of the leader, as the first node that knows one says.
    pub async fn leader(&self) -> usize {
        for node in &self.nodes {
            let raft = node.admin_json("/status/cluster/raft").await;
            if let Some(name) = raft["leader"].as_str() {
                if let Some(i) = name.strip_prefix("node-").and_then(|i| i.parse().ok()) {
                    return i;
                }
            }
        }
        panic!("no node knows a leader");
    }

    /// Stop every node.
    pub async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}

/// A connector agent running in this process.
pub struct TestConnector {
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), piko_connector_core::tunnel::AgentError>>>,
    events: tokio::sync::broadcast::Receiver<StatusEvent>,
}

impl TestConnector {
    /// Connect `endpoints` (id, addr, protocol) to the server at `upstream_url`.
    pub fn start(upstream_url: &str, endpoints: &[(&str, &str, Protocol)]) -> Self {
        Self::start_with_token(upstream_url, endpoints, None)
    }

    /// Like [`TestConnector::start`], authenticating with `token`.
    pub fn start_with_token(
        upstream_url: &str,
        endpoints: &[(&str, &str, Protocol)],
        token: Option<&str>,
    ) -> Self {
        init_logs();
        let endpoints = endpoints
            .iter()
            .map(|(id, addr, proto)| {
                EndpointConfig::parse(id, addr, *proto, Duration::from_secs(30))
                    .expect("endpoint config")
            })
            .collect();
        let config = AgentConfig {
            #[allow(clippy::needless_update)] // TLS and proxy settings keep their defaults
            connect: ConnectConfig {
                url: upstream_url.to_string(),
                token: token.map(|t| piko_connector_core::Secret::new(t.to_string())),
                timeout: Duration::from_secs(10),
                ..ConnectConfig::default()
            },
            endpoints,
            grace_period: Duration::from_secs(2),
        };
        let agent = Agent::new(config);
        let events = agent.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(shutdown.clone()));
        Self {
            shutdown,
            task: Some(task),
            events,
        }
    }

    /// One HTTP endpoint to a local address.
    pub fn http(server: &TestServer, endpoint: &str, addr: &str) -> Self {
        Self::start(&server.upstream_url(), &[(endpoint, addr, Protocol::Http)])
    }

    /// Wait for the next status event matching `pred`.
    pub async fn wait_for_state(
        &mut self,
        what: &str,
        pred: impl Fn(&TunnelState) -> bool,
    ) -> StatusEvent {
        let fut = async {
            loop {
                match self.events.recv().await {
                    Ok(ev) if pred(&ev.state) => return ev,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(e) => panic!("status channel closed while waiting for {what}: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Wait for the agent to end on its own (it stops when the server rejects it).
    pub async fn result(mut self) -> Result<(), piko_connector_core::tunnel::AgentError> {
        let t = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("agent ends in time")
            .expect("agent task")
    }

    /// Stop the agent gracefully and wait for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("connector stops in time");
        }
    }
}

impl Drop for TestConnector {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Path of a binary built from this workspace (`piko-server`, `piko`), next to the test's
/// own executable. The test command builds them first (`cargo build --bins`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --bins`",
        path.display()
    );
    path
}

/// Bind a loopback listener on an ephemeral port.
pub async fn loopback_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback")
}

/// A reqwest client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// A TCP echo server on loopback; returns its address.
pub async fn tcp_echo() -> SocketAddr {
    let l = loopback_listener().await;
    let addr = l.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sign a test token with the HMAC secret `secret`.
pub fn hs256_token(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A TCP service on loopback that reads each connection to EOF, then writes back everything
/// it read and closes: a request/response protocol that needs the client's half-close.
pub async fn tcp_answer_after_eof() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = loopback_listener().await;
    let addr = l.local_addr().expect("service addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_ok() {
                    let _ = s.write_all(&got).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A TCP service on loopback that half-closes first: it sends `greeting`, shuts down its write
/// side, then reads the connection to EOF and reports what it read (or the read error).
pub async fn tcp_half_closing_first(
    greeting: &'static [u8],
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<std::io::Result<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = loopback_listener().await;
    let addr = l.local_addr().expect("service addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = async {
                    s.write_all(greeting).await?;
                    s.shutdown().await?;
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await?;
                    Ok(got)
                }
                .await;
                let _ = tx.send(result);
            });
        }
    });
    (addr, rx)
}

/// A loopback address that refuses connections while the returned socket lives: bound, never
/// listening, so no other process can take the port meanwhile (unlike a port picked and
/// released).
pub fn refused_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind a loopback port");
    let addr = socket.local_addr().expect("its address");
    (socket, addr)
}

/// Start `cmd` with its output piped, killed when the handle is dropped.
pub fn spawn(cmd: &mut tokio::process::Command) -> tokio::process::Child {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn")
}
