//! [`NodeProcess`]: a real `piko-server` process whose ports are read from its log.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::process::{sigterm, ProcessLog};
use crate::{bin, get_endpoint, get_json, replicated_count, wait_until};

/// The four ports of a node, in the order of their `listening port="..."` log lines.
const PORTS: [&str; 4] = ["proxy", "upstream", "admin", "cluster"];

/// A `piko-server` process, for tests of the real binary and tests that kill nodes. It binds
/// port 0 the first time and reads its ports from its log, so no port is ever guessed; a
/// restart binds the same ports again. Its stdout and stderr go to `<data_dir>.log`.
///
/// The server must log at info level or finer (the default): the `listening` lines are info.
pub struct NodeProcess {
    /// The node id (`--cluster.node-id`).
    pub name: String,
    /// Cluster addresses to join (`--cluster.join`); empty starts a new cluster.
    pub join: Vec<String>,
    ports: Option<[SocketAddr; 4]>,
    data_dir: PathBuf,
    log: ProcessLog,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    /// Run as `piko server` rather than `piko-server`.
    via_piko: bool,
    child: Option<tokio::process::Child>,
    _temp: Option<tempfile::TempDir>,
}

impl NodeProcess {
    /// A node named `name` keeping its Raft data in `data_dir`; nothing runs until
    /// [`NodeProcess::spawn`].
    pub fn new(name: &str, data_dir: PathBuf) -> Self {
        let log = ProcessLog::new(data_dir.with_extension("log"));
        Self {
            name: name.to_string(),
            join: vec![],
            ports: None,
            data_dir,
            log,
            args: vec![],
            envs: vec![],
            via_piko: false,
            child: None,
            _temp: None,
        }
    }

    /// A single node in a temporary directory of its own (removed on drop).
    pub fn alone() -> Self {
        let temp = tempfile::tempdir().expect("node temp dir");
        let mut node = Self::new("node-0", temp.path().join("node-0"));
        node._temp = Some(temp);
        node
    }

    /// Start a single node ([`NodeProcess::alone`]) with `args` and wait until it is ready.
    pub async fn start(args: &[&str]) -> Self {
        let mut node = Self::alone().with_args(args);
        node.spawn().await;
        node.wait_ready().await;
        node
    }

    /// Pass `args` on every start, after the harness's own flags (a later flag wins).
    pub fn with_args<S: Into<OsString> + Clone>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().cloned().map(Into::into));
        self
    }

    /// Run the node as `piko server` (the `piko` binary) rather than `piko-server`.
    pub fn via_piko(mut self) -> Self {
        self.via_piko = true;
        self
    }

    /// Set the environment variable `key` on every start.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    fn ports(&self) -> [SocketAddr; 4] {
        self.ports.expect("node started")
    }

    /// The proxy port's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.ports()[0]
    }

    /// The upstream port's address.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.ports()[1]
    }

    /// The admin port's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.ports()[2]
    }

    /// The cluster port's address, as other nodes join it.
    pub fn cluster_addr(&self) -> String {
        self.ports()[3].to_string()
    }

    /// `http://` URL of the admin port.
    pub fn admin(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    /// `http://` URL of the proxy port.
    pub fn proxy(&self) -> String {
        format!("http://{}", self.proxy_addr())
    }

    /// `http://` URL of the upstream port (an agent's `--connect.url`).
    pub fn upstream(&self) -> String {
        format!("http://{}", self.upstream_addr())
    }

    /// Where it keeps its Raft data (`--cluster.data-dir`).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// Everything the process logged, over all its runs.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// The process id of the running process.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("node running")
    }

    /// Start the process and wait until it listens on its four ports.
    pub async fn spawn(&mut self) {
        let a = |i: usize| match self.ports {
            Some(p) => p[i].to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        let mut cmd = if self.via_piko {
            let mut cmd = tokio::process::Command::new(bin("piko"));
            cmd.arg("server");
            cmd
        } else {
            tokio::process::Command::new(bin("piko-server"))
        };
        cmd.arg("--cluster.node-id").arg(&self.name);
        for (i, port) in PORTS.iter().enumerate() {
            cmd.arg(format!("--{port}.bind-addr")).arg(a(i));
        }
        cmd.arg("--cluster.data-dir")
            .arg(&self.data_dir)
            .arg("--cluster.join")
            .arg(self.join.join(","))
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        let offset = self.log.attach(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawn piko-server"));
        let mut found = Vec::with_capacity(4);
        for port in PORTS {
            let what = format!("{} logs its {port} port", self.name);
            let tag = format!("listening port=\"{port}\" addr=");
            found.push(self.log.wait_for_addr(&what, offset, &tag).await);
        }
        self.ports = Some([found[0], found[1], found[2], found[3]]);
    }

    /// Wait until the admin port's `/ready` answers 200 (the node is in a cluster).
    pub async fn wait_ready(&self) {
        let url = format!("{}/ready", self.admin());
        wait_until(
            &format!("{} is ready", self.name),
            Duration::from_secs(20),
            || async {
                matches!(crate::client().get(&url).send().await, Ok(r) if r.status() == 200)
            },
        )
        .await;
    }

    /// SIGKILL: no goodbye to the cluster.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.expect("kill");
        }
    }

    /// SIGTERM, then wait (up to 30 s) for the graceful exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node running");
        sigterm(child.id().expect("node pid"));
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} exits within 30 s of SIGTERM", self.name))
            .expect("wait for piko-server")
    }

    /// `GET` an admin path as JSON (`Null` when the node does not answer).
    pub async fn json(&self, path: &str) -> serde_json::Value {
        get_json(format!("{}{path}", self.admin())).await
    }

    /// Upstreams of `endpoint` on every node, as this node's replica says (`u64::MAX` when
    /// the node does not answer).
    pub async fn replicated(&self, endpoint: &str) -> u64 {
        replicated_count(&self.json("/status/cluster/nodes").await, endpoint).unwrap_or(u64::MAX)
    }

    /// The leader's name, as this node knows it.
    pub async fn leader(&self) -> Option<String> {
        self.json("/status/cluster/raft").await["leader"]
            .as_str()
            .map(str::to_string)
    }

    /// `GET path` through this node's proxy for `endpoint`: status and body.
    pub async fn get(&self, endpoint: &str, path: &str) -> Option<(u16, String)> {
        get_endpoint(&self.proxy(), endpoint, path).await
    }

    /// Wait until `endpoint` has `count` upstreams registered on this node.
    pub async fn wait_for_upstreams(&self, endpoint: &str, count: u64) {
        wait_until(
            &format!("{endpoint} has {count} upstream(s) on {}", self.name),
            Duration::from_secs(20),
            || async {
                self.json("/status/upstream/endpoints").await[endpoint].as_u64() == Some(count)
            },
        )
        .await;
    }
}
