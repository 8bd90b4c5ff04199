//! The real binaries: the README's quick start, exit codes and one-line errors.

use std::time::Duration;

use piko_tests::{
    bin, client, refused_addr, spawn, wait_until, AgentProcess, EchoUpstream, NodeProcess,
};
use tokio::process::Command;

#[tokio::test]
async fn quick_start_with_the_real_binaries() {
    let mut server = NodeProcess::start(&[]).await;
    let echo = EchoUpstream::start().await;
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "http",
        "demo",
        &echo.addr.port().to_string(),
        "--connect.url",
        &server.upstream(),
        "--inspect.addr",
        "127.0.0.1:0",
    ]);
    let url = format!("{}/name", server.proxy());
    wait_until("the demo endpoint answers through the proxy", Duration::from_secs(10), || async {
        matches!(client().get(&url).header("x-piko-endpoint", "demo").send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let r = client()
        .get(&url)
        .header("x-piko-endpoint", "demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "echo");

    // `piko-server status endpoints` shows the registration.
    let out = Command::new(bin("piko-server"))
        .args(["status", "endpoints", "--server.url", &server.admin()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"demo\": 1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // SIGTERM: both exit 0.
    let status = agent.terminate().await;
    assert!(status.success(), "graceful exit is 0: {status:?}");
    let status = server.terminate().await;
    assert!(status.success(), "graceful exit is 0: {status:?}");
}

async fn run(cmd: &mut Command) -> (i32, String) {
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("exits")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn server_rejects_bad_configuration_with_exit_2() {
    let dir = std::env::temp_dir().join(format!("piko-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_key = dir.join("bad-key.yaml");
    std::fs::write(&bad_key, "proxy:\n  bind_adr: 127.0.0.1:0\n").unwrap();
    let bad_value = dir.join("bad-value.yaml");
    std::fs::write(&bad_value, "proxy:\n  timeout: soon\n").unwrap();
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    // Rows whose value an older build accepted: on loopback port 0, so such a build runs
    // (and the row fails on its exit timeout) without taking the default ports.
    let loopback = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        for port in ["proxy", "upstream", "admin", "cluster"] {
            v.push(format!("--{port}.bind-addr"));
            v.push("127.0.0.1:0".into());
        }
        v
    };
    let cases: Vec<Case> = vec![
        (
            vec!["--config.path".into(), bad_key.display().to_string()],
            vec![],
            "proxy.bind_adr: unknown field `bind_adr`",
        ),
        (
            vec!["--config.path".into(), bad_value.display().to_string()],
            vec![],
            "proxy.timeout: invalid duration \"soon\"",
        ),
        (
            vec!["--config.path".into(), "/nonexistent/piko.yaml".into()],
            vec![],
            "config.path: cannot read /nonexistent/piko.yaml",
        ),
        (
            vec!["--proxy.bind-addr".into(), "nowhere".into()],
            vec![],
            "proxy.bind_addr: invalid address \"nowhere\"",
        ),
        (
            vec![],
            vec![("PIKO_LOG_LEVEL", "loud")],
            "log.level: invalid level \"loud\"",
        ),
        (
            vec!["--no-such-flag".into()],
            vec![],
            "unexpected argument '--no-such-flag'",
        ),
        (
            // Once accepted, then every proxy and admin connection panicked.
            loopback(&["--proxy.http.read-header-timeout", "10000000000000000000s"]),
            vec![],
            "proxy.http.read_header_timeout: duration \"10000000000000000000s\" is too long; the limit is 1year",
        ),
        (
            loopback(&["--proxy.trusted-proxies", "10.0.0.0/8,10.0.0.0/40"]),
            vec![],
            "proxy.trusted_proxies: invalid CIDR \"10.0.0.0/40\"",
        ),
    ];
    for (args, env, want) in cases {
        let (code, stderr) = run(Command::new(bin("piko-server")).args(&args).envs(env)).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{args:?}: stderr {stderr:?} should contain {want:?}"
        );
    }
}

#[tokio::test]
async fn a_busy_port_is_a_clear_runtime_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let (code, stderr) = run(Command::new(bin("piko-server"))
        .arg("--proxy.bind-addr")
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "--upstream.bind-addr",
            "127.0.0.1:0",
            "--admin.bind-addr",
            "127.0.0.1:0",
        ]))
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("proxy.bind_addr: cannot listen on"),
        "{stderr}"
    );
}

#[tokio::test]
async fn agent_usage_errors_exit_2() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["agent", "http"], "required"),
        (vec!["agent", "http", "bad id", "3000"], "invalid character"),
        (
            vec!["agent", "http", "demo", "not-an-addr:"],
            "invalid address \"not-an-addr:\"",
        ),
        (
            vec!["agent", "start", "--config.path", "/nonexistent/agent.yaml"],
            "/nonexistent/agent.yaml",
        ),
        (
            vec![
                "agent",
                "http",
                "demo",
                "3000",
                "--access-log.level",
                "loud",
            ],
            "--access-log.level: invalid level \"loud\"",
        ),
        (
            vec![
                "agent",
                "http",
                "demo",
                "3000",
                "--access-log.request-headers.allow-list",
                "accept",
                "--access-log.request-headers.block-list",
                "cookie",
            ],
            "--access-log.request-headers.allow-list and --access-log.request-headers.block-list: give one of the two, not both",
        ),
    ];
    for (args, want) in cases {
        let (code, stderr) = run(Command::new(bin("piko")).args(&args)).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{args:?}: {stderr:?} should contain {want:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn agent_against_an_absent_server_keeps_retrying_with_status_lines() {
    let (_refusing, addr) = refused_addr();
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "http",
        "demo",
        "3000",
        "--inspect.addr",
        "",
        "--connect.url",
        &format!("http://{addr}"),
    ]);
    // Backs off and retries: a second "reconnecting in" line.
    wait_until(
        "the agent says twice that it reconnects",
        Duration::from_secs(10),
        || {
            let n = agent
                .output()
                .lines()
                .filter(|l| l.contains("reconnecting in"))
                .count();
            async move { n >= 2 }
        },
    )
    .await;
    assert!(
        agent.is_running(),
        "the agent keeps running: {}",
        agent.output()
    );
}

#[tokio::test]
async fn no_arguments_runs_a_working_node_on_the_default_ports() {
    for port in [8000, 8001, 8002, 8003] {
        assert!(
            std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
            "port {port} is busy on this machine; this test needs the default ports free"
        );
    }
    let mut server = spawn(&mut Command::new(bin("piko-server")));
    wait_until("the default admin port answers", Duration::from_secs(10), || async {
        matches!(client().get("http://127.0.0.1:8002/health").send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let r = client().get("http://127.0.0.1:8000/").send().await.unwrap();
    assert_eq!(r.status(), 400, "the proxy port answers: no endpoint named");
    let (mut ws, _) =
        tokio_tungstenite::connect_async("ws://127.0.0.1:8001/piko/v1/upstream/default-ports")
            .await
            .expect("the upstream port accepts registrations");
    wait_until("the registration shows", Duration::from_secs(5), || async {
        let v: serde_json::Value = client()
            .get("http://127.0.0.1:8002/status/upstream/endpoints")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["default-ports"] == 1
    })
    .await;
    let _ = futures_util::SinkExt::close(&mut ws).await;
    let pid = server.id().unwrap();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn the_agent_prints_no_debug_lines_at_the_default_or_warn_level() {
    let server = piko_tests::TestServer::start().await;
    let echo = EchoUpstream::start().await;
    for level in [None, Some("warn")] {
        let mut cmd = Command::new(bin("piko"));
        cmd.args(["agent", "http", "quiet"])
            .arg(echo.addr.port().to_string())
            .arg("--connect.url")
            .arg(server.upstream_url());
        if let Some(level) = level {
            cmd.args(["--log.level", level]);
        }
        // Into a file, not a pipe: a chatty agent must not block on a full pipe here.
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut agent = cmd
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        wait_until(
            "the endpoint answers through the agent",
            Duration::from_secs(10),
            || async { server.get("quiet", "/name").await.status() == 200 },
        )
        .await;
        let pid = agent.id().unwrap().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        tokio::time::timeout(Duration::from_secs(20), agent.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(!text.is_empty(), "the agent printed nothing at all");
        for line in text.lines() {
            assert!(
                !line.contains("DEBUG") && !line.contains("TRACE") && !line.contains("tungstenite"),
                "level {level:?}: a debug line was printed: {line}"
            );
            if level == Some("warn") {
                assert!(!line.contains(" INFO "), "level warn printed: {line}");
            }
        }
    }
}

#[tokio::test]
async fn a_second_signal_while_the_agent_drains_exits_130_at_once() {
    let server = NodeProcess::start(&[]).await;
    // A local service that takes requests and never answers.
    let service = piko_tests::loopback_listener().await;
    let port = service.local_addr().unwrap().port();
    let (arrived, mut arrivals) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = service.accept().await {
            held.push(stream);
            let _ = arrived.send(()).await;
        }
    });
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "http",
        "slowpoke",
        &port.to_string(),
        "--connect.url",
        &server.upstream(),
        "--inspect.addr",
        "",
        "--grace-period",
        "30s",
    ]);
    server.wait_for_upstreams("slowpoke", 1).await;
    // A request in flight keeps the first signal's graceful stop waiting.
    let url = format!("{}/hang", server.proxy());
    let slow = tokio::spawn(async move {
        client()
            .get(url)
            .header("x-piko-endpoint", "slowpoke")
            .send()
            .await
    });
    tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .expect("the request reaches the service within 10 s");
    let pid = agent.pid();
    piko_tests::process::sigterm(pid);
    agent.wait_for_line("press Ctrl-C again to exit now").await;
    assert!(agent.is_running(), "draining: {}", agent.output());
    piko_tests::process::sigterm(pid);
    let started = std::time::Instant::now();
    let status = agent.wait().await;
    assert_eq!(status.code(), Some(130), "{}", agent.output());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "at once, not after the drain"
    );
    slow.abort();
}

/// `piko service install` writes a unit that runs this very binary's `agent start` with the
/// config given; systemd's own checker accepts it without a warning and rates its sandbox;
/// `uninstall` removes it; mistakes are exit 2 with what to do.
#[tokio::test]
async fn service_install_writes_a_unit_systemd_accepts_and_uninstall_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "connect:\n  url: http://127.0.0.1:8001\nlisteners:\n  - endpoint_id: web\n    addr: \"3000\"\n    protocol: http\n",
    )
    .unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let piko = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new(bin("piko"));
        c.args(args);
        c
    };
    let (c, u) = (config.as_os_str(), units.as_os_str());
    let out = piko(&[
        "service".as_ref(),
        "install".as_ref(),
        "--config.path".as_ref(),
        c,
        "--dir".as_ref(),
        u,
        "--no-start".as_ref(),
    ])
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("installed:"), "{stdout}");
    let path = units.join("piko.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let exe = std::path::Path::new(&bin("piko")).canonicalize().unwrap();
    let exec = format!(
        "ExecStart={} agent start --config.path {}",
        exe.display(),
        config.display()
    );
    assert!(unit.lines().any(|l| l == exec), "want {exec}:\n{unit}");
    for line in [
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "EnvironmentFile=-/etc/piko/agent.env",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}:\n{unit}");
    }

    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package; tests/run.sh installs it)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    // The sandbox's score: systemd rates 0 (locked down) to 10 (exposed); 1.5 when written.
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for piko.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");

    let out = piko(&[
        "service".as_ref(),
        "uninstall".as_ref(),
        "--dir".as_ref(),
        u,
        "--no-stop".as_ref(),
    ])
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!path.exists(), "the unit is gone");

    // Again: nothing to remove. A config that is not there: refused before writing a unit.
    let out = piko(&[
        "service".as_ref(),
        "uninstall".as_ref(),
        "--dir".as_ref(),
        u,
        "--no-stop".as_ref(),
    ])
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not installed"));
    let missing = dir.path().join("missing.yaml");
    let out = piko(&[
        "service".as_ref(),
        "install".as_ref(),
        "--config.path".as_ref(),
        missing.as_os_str(),
        "--dir".as_ref(),
        u,
        "--no-start".as_ref(),
    ])
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.yaml: no such file"), "{err}");
    assert!(!path.exists(), "no unit for a missing config");
}
