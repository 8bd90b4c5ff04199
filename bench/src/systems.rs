//! The systems under test and the child processes they run.
//!
//! Every child is spawned with `kill_on_drop`, owned by a [`Running`] system (or the service
//! handle), so an error, a panic or ctrl-c that drops them ends them too.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::load::ENDPOINT_HEADER;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Client → local service.
    Direct,
    /// Client → piko-server → tunnel → piko agent → local service.
    Piko,
    /// Client → rathole server → rathole client → local service (TCP tunnel).
    Rathole,
    /// Client → nginx (L7 reverse proxy, keep-alive upstream) → local service.
    Nginx,
    /// Piko with the agent's request inspector off (`--inspect.addr ""`), to measure the
    /// inspector's cost against `piko` (inspector on, the default). Only on request.
    #[serde(rename = "piko-noinspect")]
    PikoNoInspect,
}

impl System {
    /// All systems, in the order each round runs them.
    pub const ALL: [System; 5] = [
        System::Direct,
        System::Piko,
        System::PikoNoInspect,
        System::Rathole,
        System::Nginx,
    ];

    /// The systems a run measures unless `--systems` says otherwise.
    pub const DEFAULT: [System; 4] = [System::Direct, System::Piko, System::Rathole, System::Nginx];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Piko => "piko",
            System::Rathole => "rathole",
            System::Nginx => "nginx",
            System::PikoNoInspect => "piko-noinspect",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A child process with a name for reports; killed when dropped.
pub struct Proc {
    /// Name in reports (`piko-server`, `rathole client`, ...).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Spawn `cmd` with output to `dir/<file>.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join(format!("{}.log", name.replace(' ', "-")));
        let out =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name} ({:?})", cmd.as_std().get_program()))?;
        let pid = child.id().context("child has no pid")?;
        Ok(Self {
            name: name.to_string(),
            pid,
            log,
            child,
        })
    }

    /// Fail if the process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}): {}", self.name, tail.join(" | "));
        }
        Ok(())
    }
}

/// The local service, a `piko-bench serve` child.
pub struct Service {
    /// HTTP address.
    pub http: SocketAddr,
    /// TCP source/sink address.
    pub tcp: SocketAddr,
    /// The process.
    pub proc: Proc,
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `piko-server`.
    pub server: PathBuf,
    /// `piko`.
    pub piko: PathBuf,
    /// `piko-bench` itself (for `serve`).
    pub bench: PathBuf,
}

impl Bins {
    /// The binaries in `dir`, checked to exist.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let b = Self {
            server: dir.join("piko-server"),
            piko: dir.join("piko"),
            bench: dir.join("piko-bench"),
        };
        for p in [&b.server, &b.piko, &b.bench] {
            if !p.is_file() {
                bail!(
                    "{} not found; build with `cargo build --release -p piko-server -p piko-cli -p piko-bench` \
                     or pass --bin-dir",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

/// A free loopback port (bound then released; the window for a race is small on loopback).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Start the local service and read its addresses.
pub async fn start_service(bins: &Bins, dir: &Path) -> anyhow::Result<Service> {
    let mut cmd = Command::new(&bins.bench);
    cmd.args(["serve", "--http", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("start piko-bench serve")?;
    let pid = child.id().context("service has no pid")?;
    let stdout = child.stdout.take().context("service stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("service did not start within 10 s")??
        .context("service exited before it was ready")?;
    // "ready http=ADDR tcp=ADDR"
    let mut http = None;
    let mut tcp = None;
    for word in line.split_whitespace() {
        if let Some(a) = word.strip_prefix("http=") {
            http = Some(a.parse()?);
        } else if let Some(a) = word.strip_prefix("tcp=") {
            tcp = Some(a.parse()?);
        }
    }
    Ok(Service {
        http: http.context("service did not print its HTTP address")?,
        tcp: tcp.context("service did not print its TCP address")?,
        proc: Proc {
            name: "service".into(),
            pid,
            log: dir.join("service.log"),
            child,
        },
    })
}

/// A started system under test.
pub struct Running {
    /// Which system.
    pub system: System,
    /// Address HTTP clients use.
    pub http: SocketAddr,
    /// Address TCP clients use, if this system carries raw TCP.
    pub tcp: Option<SocketAddr>,
    /// Its processes (none for direct).
    pub procs: Vec<Proc>,
    /// For piko: the admin and upstream ports.
    pub piko_ports: Option<PikoPorts>,
}

impl Running {
    /// (name, pid) of each process, for RSS sampling.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs.iter().map(|p| (p.name.clone(), p.pid)).collect()
    }

    /// The pid of the process called `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.iter().find(|p| p.name == name).map(|p| p.pid)
    }

    /// Fail if any process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            p.check_alive()?;
        }
        Ok(())
    }
}

/// Piko's ports besides the proxy.
#[derive(Debug, Clone, Copy)]
pub struct PikoPorts {
    /// Upstream port.
    pub upstream: SocketAddr,
    /// Admin port.
    pub admin: SocketAddr,
}

/// `GET http://addr{path}` with optional endpoint header; status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(ENDPOINT_HEADER, "bench")
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Poll `check` every 50 ms until it is true, at most `timeout`; the error says `what`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

async fn http_ok(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), http_get(addr, "/")).await,
        Ok(Ok((200, _)))
    )
}

async fn tcp_open(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// Direct: clients talk to the service.
pub fn direct(svc: &Service) -> Running {
    Running {
        system: System::Direct,
        http: svc.http,
        tcp: Some(svc.tcp),
        procs: Vec::new(),
        piko_ports: None,
    }
}

/// The registered endpoints (`{"bench": 1}`) from the admin port.
pub async fn piko_endpoints(admin: SocketAddr) -> Option<serde_json::Value> {
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        http_get(admin, "/status/upstream/endpoints"),
    )
    .await
    .ok()?
    .ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// A bare piko-server on loopback port 0, ready to serve (no upstream yet). Its ports are
/// read from its `listening port="…" addr=…` log lines (info level, which builds old and
/// new print the same way), so no port is guessed.
pub async fn piko_server(
    bins: &Bins,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(Proc, SocketAddr, PikoPorts)> {
    let any = loopback(0).to_string();
    let mut server = Command::new(&bins.server);
    server
        .arg("--proxy.bind-addr")
        .arg(&any)
        .arg("--upstream.bind-addr")
        .arg(&any)
        .arg("--admin.bind-addr")
        .arg(&any)
        // Info, for the `listening` lines; the per-request access log (also info) is off, so
        // requests log nothing, as at warn.
        .args(["--log.level", "info"]);
    // Newer servers have a cluster port: keep it on loopback and its data in the temp dir.
    let help = std::process::Command::new(&bins.server)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if help.contains("--proxy.access-log.disable") {
        server.args(["--proxy.access-log.disable", "true"]);
    }
    if help.contains("--cluster.bind-addr") {
        server.arg("--cluster.bind-addr").arg(&any);
    }
    if help.contains("--cluster.data-dir") {
        server
            .arg("--cluster.data-dir")
            .arg(dir.join(format!("{}-data", name.replace(' ', "-"))));
    }
    let mut proc = Proc::spawn(name, server, dir)?;
    let mut ports = [None; 3];
    let log = proc.log.clone();
    let found = wait_for(
        &format!("{name}'s listening lines in {}", log.display()),
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            for (slot, port) in ports.iter_mut().zip(["proxy", "upstream", "admin"]) {
                *slot = listening_addr(&text, port);
            }
            let done = ports.iter().all(Option::is_some);
            async move { done }
        },
    )
    .await;
    if let Err(e) = found {
        proc.check_alive()?;
        return Err(e);
    }
    let [Some(proxy), Some(upstream), Some(admin)] = ports else {
        anyhow::bail!("{name}: a listening line went missing");
    };
    let waited = wait_for(
        &format!("{name}'s admin port at {admin}"),
        Duration::from_secs(20),
        || async move { piko_endpoints(admin).await.is_some() },
    )
    .await;
    if let Err(e) = waited {
        proc.check_alive()?;
        return Err(e);
    }
    Ok((proc, proxy, PikoPorts { upstream, admin }))
}

/// The address in the first `listening port="PORT" addr=ADDR` line of a server's log.
fn listening_addr(log: &str, port: &str) -> Option<SocketAddr> {
    let tag = format!("listening port=\"{port}\" addr=");
    let at = log.find(&tag)? + tag.len();
    let rest = &log[at..];
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

/// Piko: server, an HTTP agent, and (with `tcp`) a TCP agent and `piko forward`. With
/// `inspect` the agent records every request in its inspector (the default, served on a
/// free loopback port); without, `--inspect.addr ""` turns it off.
pub async fn piko(
    bins: &Bins,
    svc: &Service,
    dir: &Path,
    tcp: bool,
    inspect: bool,
) -> anyhow::Result<Running> {
    // Distinct process names: each names its log file.
    let (system, suffix) = if inspect {
        (System::Piko, "")
    } else {
        (System::PikoNoInspect, " noinspect")
    };
    let (server, proxy, ports) = piko_server(bins, dir, &format!("piko-server{suffix}")).await?;
    let PikoPorts { upstream, admin } = ports;
    let mut running = Running {
        system,
        http: proxy,
        tcp: None,
        procs: vec![server],
        piko_ports: Some(ports),
    };
    let connect = format!("http://{upstream}");
    let mut agent = Command::new(&bins.piko);
    agent
        .args(["agent", "http", "bench"])
        .arg(svc.http.port().to_string())
        .args(["--connect.url", &connect, "--log.level", "warn"])
        .arg("--inspect.addr")
        .arg(if inspect { "127.0.0.1:0" } else { "" });
    running
        .procs
        .push(Proc::spawn(&format!("piko agent{suffix}"), agent, dir)?);
    if tcp {
        let mut agent = Command::new(&bins.piko);
        agent
            .args(["agent", "tcp", "benchtcp"])
            .arg(svc.tcp.to_string())
            .args(["--connect.url", &connect, "--log.level", "warn"])
            // Agents serve an inspector whatever their endpoints; this one needs none.
            .args(["--inspect.addr", ""]);
        running
            .procs
            .push(Proc::spawn("piko agent tcp", agent, dir)?);
    }
    let want = if tcp {
        serde_json::json!({"bench": 1, "benchtcp": 1})
    } else {
        serde_json::json!({"bench": 1})
    };
    let waited = wait_for(
        &format!("{want} at http://{admin}/status/upstream/endpoints"),
        Duration::from_secs(20),
        || {
            let want = want.clone();
            async move { piko_endpoints(admin).await == Some(want) }
        },
    )
    .await;
    if let Err(e) = waited {
        running.check_alive()?;
        return Err(e);
    }
    if tcp {
        let fwd_addr = loopback(free_port()?);
        let mut fwd = Command::new(&bins.piko);
        fwd.args(["forward", "tcp"])
            .arg(fwd_addr.to_string())
            .arg("benchtcp")
            .args([
                "--connect.url",
                &format!("http://{proxy}"),
                "--log.level",
                "warn",
            ]);
        running.procs.push(Proc::spawn("piko forward", fwd, dir)?);
        wait_for("piko forward to listen", Duration::from_secs(10), || {
            tcp_open(fwd_addr)
        })
        .await?;
        running.tcp = Some(fwd_addr);
    }
    wait_for(
        "a 200 through the piko proxy",
        Duration::from_secs(10),
        || http_ok(proxy),
    )
    .await?;
    running.check_alive()?;
    Ok(running)
}

/// Rathole: a server and a client tunnelling the service's HTTP and TCP ports.
pub async fn rathole(svc: &Service, dir: &Path) -> anyhow::Result<Running> {
    let control = loopback(free_port()?);
    let http = loopback(free_port()?);
    let tcp = loopback(free_port()?);
    let server_toml = format!(
        "[server]\nbind_addr = \"{control}\"\ndefault_token = \"piko-bench-token\"\n\n\
         [server.transport]\ntype = \"tcp\"\n\n[server.transport.tcp]\nnodelay = true\n\n\
         [server.services.bench]\nbind_addr = \"{http}\"\n\n\
         [server.services.benchtcp]\nbind_addr = \"{tcp}\"\n"
    );
    let client_toml = format!(
        "[client]\nremote_addr = \"{control}\"\ndefault_token = \"piko-bench-token\"\n\n\
         [client.transport]\ntype = \"tcp\"\n\n[client.transport.tcp]\nnodelay = true\n\n\
         [client.services.bench]\nlocal_addr = \"{}\"\n\n\
         [client.services.benchtcp]\nlocal_addr = \"{}\"\n",
        svc.http, svc.tcp
    );
    let server_path = dir.join("rathole-server.toml");
    let client_path = dir.join("rathole-client.toml");
    std::fs::write(&server_path, server_toml)?;
    std::fs::write(&client_path, client_toml)?;
    let mut server = Command::new("rathole");
    server
        .arg("--server")
        .arg(&server_path)
        .env("RUST_LOG", "warn");
    let mut client = Command::new("rathole");
    client
        .arg("--client")
        .arg(&client_path)
        .env("RUST_LOG", "warn");
    let mut running = Running {
        system: System::Rathole,
        http,
        tcp: Some(tcp),
        procs: vec![Proc::spawn("rathole server", server, dir)?],
        piko_ports: None,
    };
    wait_for("rathole's control port", Duration::from_secs(10), || {
        tcp_open(control)
    })
    .await?;
    running
        .procs
        .push(Proc::spawn("rathole client", client, dir)?);
    let waited = wait_for("a 200 through rathole", Duration::from_secs(20), || {
        http_ok(http)
    })
    .await;
    if let Err(e) = waited {
        running.check_alive()?;
        return Err(e);
    }
    running.check_alive()?;
    Ok(running)
}

/// nginx: one process (`master_process off`, so killing it leaves no worker behind) proxying to
/// the service with a keep-alive upstream pool and WebSocket upgrades.
pub async fn nginx(svc: &Service, dir: &Path) -> anyhow::Result<Running> {
    let listen = loopback(free_port()?);
    let d = dir.join("nginx");
    std::fs::create_dir_all(d.join("logs"))?;
    let p = d.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n\
         error_log {p}/logs/error.log warn;\n\
         events {{ worker_connections 8192; multi_accept on; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
         \x20 fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
         \x20 keepalive_requests 1000000;\n\
         \x20 upstream svc {{ server {svc}; keepalive 64; keepalive_requests 1000000; }}\n\
         \x20 map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
         \x20 server {{\n    listen {listen} backlog=4096;\n    client_max_body_size 0;\n\
         \x20   location / {{\n      proxy_pass http://svc;\n      proxy_http_version 1.1;\n\
         \x20     proxy_set_header Upgrade $http_upgrade;\n\
         \x20     proxy_set_header Connection $connection_upgrade;\n\
         \x20     proxy_buffering off;\n      proxy_request_buffering off;\n\
         \x20     proxy_read_timeout 300s;\n    }}\n  }}\n}}\n",
        svc = svc.http
    );
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-e")
        .arg(d.join("logs/error.log"))
        .arg("-p")
        .arg(&d)
        .arg("-c")
        .arg(&conf_path);
    let mut running = Running {
        system: System::Nginx,
        http: listen,
        tcp: None,
        procs: vec![Proc::spawn("nginx", cmd, dir)?],
        piko_ports: None,
    };
    let waited = wait_for("a 200 through nginx", Duration::from_secs(10), || {
        http_ok(listen)
    })
    .await;
    if let Err(e) = waited {
        running.check_alive()?;
        return Err(e);
    }
    Ok(running)
}

#[cfg(test)]
mod listening_tests {
    use super::listening_addr;

    #[test]
    fn ports_are_read_from_the_listening_lines() {
        let log = "2026-12-02T17:00:00Z  INFO piko_server::http: listening port=\"proxy\" addr=127.0.0.1:40001 tls=false\n\
                   2026-12-02T17:00:00Z  INFO piko_server::http: listening port=\"admin\" addr=[::1]:40003 tls=false\n";
        assert_eq!(
            listening_addr(log, "proxy"),
            Some("127.0.0.1:40001".parse().unwrap())
        );
        assert_eq!(
            listening_addr(log, "admin"),
            Some("[::1]:40003".parse().unwrap())
        );
        assert_eq!(listening_addr(log, "upstream"), None);
    }
}
