//! The original Go agent's files and flags on this connector, through the real `piko`
//! binary (issue 12): tenants, a token from the environment, giving up when the first
//! registration fails, the agent's own metrics port, reload warnings and `forward start`.

use std::sync::Arc;
use std::time::Duration;

use piko_server::auth::{PortAuth, Verifier, VerifierSettings};
use piko_tests::agent::AgentProcess;
use piko_tests::{hs256_token, refused_addr, tcp_echo, EchoUpstream, TestServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn verifier(key: &str) -> Arc<Verifier> {
    Arc::new(
        Verifier::new(VerifierSettings {
            hmac_secret: Some(key.as_bytes().to_vec()),
            ..Default::default()
        })
        .unwrap(),
    )
}

/// A server whose upstreams need a token signed with `default-key`, or with `acme-key` for
/// the tenant `acme`.
async fn server_with_tenant() -> TestServer {
    TestServer::start_with(|c| {
        c.upstream.auth = PortAuth {
            default: Some(verifier("default-key")),
            tenants: [("acme".to_string(), verifier("acme-key"))]
                .into_iter()
                .collect(),
        }
    })
    .await
}

fn write(dir: &tempfile::TempDir, name: &str, body: &str, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.display().to_string()
}

#[tokio::test]
async fn the_agent_registers_as_a_tenant_with_connect_tenant_id() {
    let server = server_with_tenant().await;
    let echo = EchoUpstream::start().await;
    let token = hs256_token("acme-key", json!({}));
    let port = echo.addr.port().to_string();
    let url = server.upstream_url();
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "http",
        "shop",
        &port,
        "--connect.url",
        &url,
        "--connect.token",
        &token,
        "--connect.tenant-id",
        "acme",
        "--inspect.addr",
        "",
    ]);
    agent.wait_for_line("connected: shop").await;
    server.wait_for_upstreams("shop", 1).await;
    assert_eq!(server.get("shop", "/echo").await.status(), 200);
    agent.terminate().await;

    // Without the tenant the same token is refused: the header is what made it work.
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "http",
        "shop",
        &port,
        "--connect.url",
        &url,
        "--connect.token",
        &token,
        "--inspect.addr",
        "",
    ]);
    let status = agent.wait().await;
    assert_eq!(status.code(), Some(1), "{}", agent.output());
    assert!(agent.output().contains("401"), "{}", agent.output());
}

#[tokio::test]
async fn a_token_from_the_environment_in_the_agent_file_registers_and_never_reaches_the_log() {
    let server = TestServer::start_with(|c| {
        c.upstream.auth = PortAuth {
            default: Some(verifier("default-key")),
            tenants: Default::default(),
        }
    })
    .await;
    let echo = EchoUpstream::start().await;
    let token = hs256_token("default-key", json!({}));
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "connect:\n  url: {}\n  token: ${{PIKO_COMPAT_TOKEN}}\nlisteners:\n  - endpoint_id: shop\n    addr: {}\n    timeout: 10s\ninspect:\n  addr: ''\n",
        server.upstream_url(),
        echo.addr
    );
    let path = write(&dir, "agent.yaml", &yaml, 0o644);
    // SAFETY of the test: each nextest test is its own process.
    std::env::set_var("PIKO_COMPAT_TOKEN", &token);
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "start",
        "--config.path",
        &path,
        "--config.expand-env",
        "--log.level",
        "trace",
    ]);
    agent.wait_for_line("connected: shop").await;
    server.wait_for_upstreams("shop", 1).await;
    assert_eq!(server.get("shop", "/echo").await.status(), 200);
    agent.terminate().await;
    let out = agent.output();
    assert!(
        out.contains("using the token from the config file"),
        "{out}"
    );
    assert!(!out.contains(&token), "the token is in the log:\n{out}");
    assert!(
        !out.contains("can be read by other users"),
        "a token from the environment is not a token in the file: {out}"
    );

    // Written literally in a file others can read: it works, with a warning naming the fix.
    let literal = yaml.replace("${PIKO_COMPAT_TOKEN}", &token);
    let path = write(&dir, "literal.yaml", &literal, 0o644);
    let mut agent = AgentProcess::spawn(&["agent", "start", "--config.path", &path]);
    agent.wait_for_line("connected: shop").await;
    agent.terminate().await;
    let out = agent.output();
    assert!(
        out.contains("can be read by other users (mode 644)"),
        "{out}"
    );
    assert!(out.contains("chmod 600"), "{out}");
    assert!(!out.contains(&token), "the token is in the log:\n{out}");

    // Without --config.expand-env the reference would be sent as the token: a usage error.
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "start",
        "--config.path",
        &dir.path().join("agent.yaml").display().to_string(),
    ]);
    assert_eq!(agent.wait().await.code(), Some(2));
    assert!(
        agent.output().contains(
            "connect.token: the value refers to an environment variable; pass --config.expand-env"
        ),
        "{}",
        agent.output()
    );
}

#[tokio::test]
async fn the_agent_exits_1_when_the_first_registration_fails_within_connect_timeout() {
    let (_socket, addr) = refused_addr();
    let url = format!("http://{addr}");
    let began = std::time::Instant::now();
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "http",
        "shop",
        "3000",
        "--connect.url",
        &url,
        "--connect.timeout",
        "1s",
        "--inspect.addr",
        "",
    ]);
    let status = agent.wait().await;
    let took = began.elapsed();
    assert_eq!(status.code(), Some(1), "{}", agent.output());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(
        agent
            .output()
            .contains("cannot register endpoint shop within connect.timeout (1s)"),
        "{}",
        agent.output()
    );
}

#[tokio::test]
async fn server_enabled_serves_the_original_agents_metrics() {
    let server = TestServer::start().await;
    let echo = EchoUpstream::start().await;
    let url = server.upstream_url();
    let target = echo.addr.to_string();
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "http",
        "shop",
        &target,
        "--connect.url",
        &url,
        "--server.enabled",
        "--server.bind-addr",
        "127.0.0.1:0",
        "--inspect.addr",
        "",
    ]);
    let addr = agent
        .logged_addr(
            "the agent logs its metrics address",
            "metrics server listening addr=",
        )
        .await;
    agent.wait_for_line("connected: shop").await;
    server.wait_for_upstreams("shop", 1).await;
    assert_eq!(server.get("shop", "/echo").await.status(), 200);
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        "piko_agent_requests_total{status=\"200\",method=\"GET\",endpoint=\"shop\"} 1",
        "piko_agent_requests_in_flight{endpoint=\"shop\"} 0",
        "piko_agent_request_latency_seconds_count{status=\"200\",method=\"GET\",endpoint=\"shop\"} 1",
        "piko_agent_request_size_bytes_count{endpoint=\"shop\"} 1",
        "piko_agent_response_size_bytes_count{endpoint=\"shop\"} 1",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let other = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(other.status(), 404, "only /metrics, as the original");
    agent.terminate().await;
}

#[tokio::test]
async fn a_reload_that_changes_inspect_addr_warns_that_it_takes_effect_on_restart() {
    let server = TestServer::start().await;
    let echo = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let body = |inspect: &str| {
        format!(
            "connect:\n  url: {}\nlisteners:\n  - endpoint_id: shop\n    addr: {}\ninspect:\n  addr: '{inspect}'\n",
            server.upstream_url(),
            echo.addr
        )
    };
    let path = write(&dir, "agent.yaml", &body("127.0.0.1:0"), 0o600);
    let mut agent = AgentProcess::spawn(&["agent", "start", "--config.path", &path]);
    agent.wait_for_line("connected: shop").await;
    agent.wait_for_line("following the config file").await;
    std::fs::write(&path, body("")).unwrap();
    let line = agent
        .wait_for_line("it takes effect when the agent restarts")
        .await;
    assert!(line.contains("inspect.addr changed in"), "{line}");
    agent.terminate().await;
}

#[tokio::test]
async fn forward_start_opens_every_port_of_the_file() {
    let server = TestServer::start().await;
    let echo = tcp_echo().await;
    let target = echo.to_string();
    let url = server.upstream_url();
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "tcp",
        "db",
        &target,
        "--connect.url",
        &url,
        "--inspect.addr",
        "",
    ]);
    agent.wait_for_line("connected: db").await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (p1, p2) = (free(), free());
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "connect:\n  url: {}\n  timeout: 5s\nports:\n  - addr: '{p1}'\n    endpoint_id: db\n  - addr: 127.0.0.1:{p2}\n    endpoint_id: db\n",
        server.proxy_url()
    );
    let path = write(&dir, "forward.yaml", &yaml, 0o600);
    let mut fwd = AgentProcess::spawn(&["forward", "start", "--config.path", &path]);
    for p in [p1, p2] {
        fwd.wait_for_line(&format!("forwarding 127.0.0.1:{p}"))
            .await;
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", p))
            .await
            .unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
    }
    fwd.terminate().await;
    agent.terminate().await;

    let empty = write(&dir, "empty.yaml", "ports: []\n", 0o600);
    let mut none = AgentProcess::spawn(&["forward", "start", "--config.path", &empty]);
    assert_eq!(none.wait().await.code(), Some(2));
    assert!(
        none.output().contains("lists no ports"),
        "{}",
        none.output()
    );
}
