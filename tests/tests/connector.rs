//! The connector: reconnecting, several endpoints from a config file, TCP forwarding.

use std::process::Stdio;
use std::time::Duration;

use piko_connector_core::config::Protocol;
use piko_connector_core::status::TunnelState;
use piko_server::{Config, Listeners};
use piko_tests::original::{original_request, OriginalServer};
use piko_tests::{bin, EchoUpstream, TestConnector, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn reconnects_after_the_server_restarts() {
    let server = TestServer::start().await;
    let (proxy, upstream, admin) = (server.proxy_addr, server.upstream_addr, server.admin_addr);
    let echo = EchoUpstream::start().await;
    let mut conn = TestConnector::http(&server, "phoenix", &echo.target());
    conn.wait_for_state("connected", |s| matches!(s, TunnelState::Connected { .. }))
        .await;
    server.wait_for_upstreams("phoenix", 1).await;
    server.stop().await;
    conn.wait_for_state("reconnecting", |s| {
        matches!(s, TunnelState::Reconnecting { .. })
    })
    .await;

    let mut config = Config::loopback_ephemeral();
    (
        config.proxy.bind_addr,
        config.upstream.bind_addr,
        config.admin.bind_addr,
    ) = (proxy, upstream, admin);
    let listeners = Listeners::bind(&config)
        .await
        .expect("rebind the same ports");
    let server = TestServer::start_on(listeners, config);
    conn.wait_for_state("connected again", |s| {
        matches!(s, TunnelState::Connected { .. })
    })
    .await;
    server.wait_for_upstreams("phoenix", 1).await;
    let r = server.get("phoenix", "/name").await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "echo".to_string())
    );
}

#[tokio::test]
async fn forward_carries_20_parallel_tcp_connections() {
    let server = TestServer::start().await;
    let echo = piko_tests::tcp_echo().await;
    let _conn = TestConnector::start(
        &server.upstream_url(),
        &[("db", &echo.to_string(), Protocol::Tcp)],
    );
    server.wait_for_upstreams("db", 1).await;

    let listener = piko_tests::loopback_listener().await;
    let local = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let fwd = tokio::spawn(piko_connector_core::forward::forward_tcp(
        listener,
        server.proxy_url(),
        "db".parse().unwrap(),
        None,
        shutdown.clone(),
    ));
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
            let payload: Vec<u8> = (0..100_000u32).map(|j| (j as u8).wrapping_add(i)).collect();
            let (mut r, mut w) = s.split();
            let send = async {
                w.write_all(&payload).await.unwrap();
            };
            let mut back = vec![0u8; payload.len()];
            let recv = r.read_exact(&mut back);
            let (_, n) = tokio::join!(send, recv);
            n.unwrap();
            assert_eq!(back, payload, "connection {i} echoed intact");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("connection finishes")
            .unwrap();
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), fwd).await;
}

#[tokio::test]
async fn agent_start_runs_every_endpoint_of_the_config() {
    let server = TestServer::start().await;
    let (a, b) = (
        EchoUpstream::named("alpha").await,
        EchoUpstream::named("beta").await,
    );
    let tcp = piko_tests::tcp_echo().await;
    let dir = std::env::temp_dir().join(format!("piko-agent-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.yaml");
    let yaml = format!(
        "connect:\n  url: {}\n  timeout: 10s\nlisteners:\n  - endpoint_id: alpha\n    addr: {}\n    protocol: http\n  - endpoint_id: beta\n    addr: http://{}\n    access_log: false\n  - endpoint_id: gamma\n    addr: {}\n    protocol: tcp\n",
        server.upstream_url(),
        a.target(),
        b.target(),
        tcp
    );
    std::fs::write(&path, yaml).unwrap();
    let mut child = tokio::process::Command::new(bin("piko"))
        .args(["agent", "start", "--config.path"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    server.wait_for_upstreams("alpha", 1).await;
    server.wait_for_upstreams("beta", 1).await;
    server.wait_for_upstreams("gamma", 1).await;
    // The agent's log, read as it is written.
    let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let log_has = |needle: &'static str| {
        let logs = logs.clone();
        async move { logs.lock().unwrap().contains(needle) }
    };
    for (ep, name) in [("alpha", "alpha"), ("beta", "beta")] {
        let r = server.get(ep, &format!("/name?from={name}")).await;
        assert_eq!(r.text().await.unwrap(), name);
    }
    // One TCP connection to gamma: opened and closed are access-log records too.
    let listener = piko_tests::loopback_listener().await;
    let local = listener.local_addr().unwrap();
    let stop_forward = tokio_util::sync::CancellationToken::new();
    tokio::spawn(piko_connector_core::forward::forward_tcp(
        listener,
        server.proxy_url(),
        "gamma".parse().unwrap(),
        None,
        stop_forward.clone(),
    ));
    let mut tcp = tokio::net::TcpStream::connect(local).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tcp.read_exact(&mut back).await.unwrap();
    drop(tcp);
    piko_tests::wait_until(
        "the access log records the HTTP request and the TCP connection",
        Duration::from_secs(10),
        || {
            let (a, b) = (
                log_has("piko_connector_core::tunnel::access: request"),
                log_has("connection closed"),
            );
            async move { a.await && b.await }
        },
    )
    .await;
    stop_forward.cancel();
    {
        let logs = logs.lock().unwrap();
        let alpha = logs
            .lines()
            .find(|l| {
                l.contains("piko_connector_core::tunnel::access") && l.contains("path=\"/name\"")
            })
            .unwrap_or_else(|| panic!("no access record for alpha: {logs}"));
        assert!(
            alpha.contains("status=200") && alpha.contains("alpha"),
            "{alpha}"
        );
        assert!(
            !logs
                .lines()
                .any(|l| l.contains("tunnel::access") && l.contains("beta")),
            "beta has access_log: false: {logs}"
        );
        assert!(
            logs.lines()
                .any(|l| l.contains("connection opened") && l.contains("gamma")),
            "{logs}"
        );
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(
        out.contains("connected: alpha"),
        "status lines are printed: {out}"
    );
}

#[tokio::test]
async fn stopping_an_agent_with_idle_keepalive_streams_does_not_wait_for_the_grace_period() {
    let server = TestServer::start().await;
    let echo = EchoUpstream::start().await;
    let conn = TestConnector::http(&server, "idle-ka", &echo.target());
    server.wait_for_upstreams("idle-ka", 1).await;
    // Leave keep-alive streams idle in the server's pool.
    for _ in 0..5 {
        let r = server.get("idle-ka", "/name").await;
        assert_eq!(r.status(), 200);
    }
    let started = std::time::Instant::now();
    conn.stop().await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "idle keep-alive streams closed at once, not after the 2 s grace: {:?}",
        started.elapsed()
    );
    server.wait_for_upstreams("idle-ka", 0).await;
}

/// Split an HTTP/1.1 response into (status code, lower-cased head, body).
fn parse_response(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head}"));
    (status, head, raw[end + 4..].to_vec())
}

/// The original Go server opens one stream per request, sends it with `Connection: close`,
/// reads the response and closes: an RST from the connector before that close makes its
/// yamux fail the read (`connection reset`, then 502). Every answer must end with FIN only.
#[tokio::test]
async fn http_endpoint_answers_the_original_servers_one_request_streams_and_ends_them_with_fin() {
    let server = OriginalServer::start().await;
    let echo = EchoUpstream::start().await;
    let _conn = TestConnector::start(
        &server.upstream_url(),
        &[("legacy", &echo.target(), Protocol::Http)],
    );
    let (mut session, endpoint) = server.accept().await;
    assert_eq!(endpoint, "legacy");
    let cases: [(&str, &[u8]); 2] = [("/name", b"echo"), ("/bytes/600000", &[])];
    let mut served = 0;
    for round in 0..10 {
        for (path, want) in cases {
            let req = original_request("GET", path, "legacy.example.com");
            let out = session.round_trip(req.as_bytes()).await;
            assert!(
                !out.reset_before_close,
                "round {round} {path}: the connector reset the stream before the server read it"
            );
            assert!(out.fin, "round {round} {path}: the answer ends with FIN");
            let (status, head, body) = parse_response(&out.response);
            assert_eq!(status, 200, "round {round} {path}: {head}");
            if path == "/name" {
                assert_eq!(body, want, "round {round}");
            } else {
                assert_eq!(body, piko_tests::echo::pattern(600_000), "round {round}");
            }
            served += 1;
        }
    }
    assert_eq!(served, 20);
}
