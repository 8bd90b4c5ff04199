//! `piko inspect` against a real `piko-server`, a real `piko agent` and a local service:
//! list, follow, show and replay, and what a user sees when something is wrong.

use std::time::Duration;

use piko_tests::{
    bin, client, refused_addr, spawn, wait_until, AgentProcess, EchoUpstream, NodeProcess,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// A server, an agent exposing an echo service as `demo`, and the agent's inspector address.
struct Setup {
    _server: NodeProcess,
    _agent: AgentProcess,
    _echo: EchoUpstream,
    proxy: String,
    inspect: String,
}

impl Setup {
    async fn start() -> Self {
        let server = NodeProcess::start(&[]).await;
        let echo = EchoUpstream::start().await;
        let agent = AgentProcess::spawn(&[
            "agent",
            "http",
            "demo",
            &echo.addr.port().to_string(),
            "--connect.url",
            &server.upstream(),
            "--inspect.addr",
            "127.0.0.1:0",
        ]);
        let inspect = agent.inspector_addr().await.to_string();
        let proxy = server.proxy();
        let url = format!("{proxy}/name");
        wait_until(
            "the demo endpoint answers through the proxy",
            Duration::from_secs(20),
            || async {
                matches!(client().get(&url).header("x-piko-endpoint", "demo").send().await, Ok(r) if r.status() == 200)
            },
        )
        .await;
        let setup = Self {
            _server: server,
            _agent: agent,
            _echo: echo,
            proxy,
            inspect,
        };
        // The probes above are recorded too; wait until the inspector answers.
        wait_until(
            "the agent's inspector answers",
            Duration::from_secs(10),
            || async { setup.inspect(&[]).await.0 == 0 },
        )
        .await;
        setup
    }

    /// `piko inspect ARGS --inspect.addr ...`: exit code, stdout, stderr.
    async fn inspect(&self, args: &[&str]) -> (i32, String, String) {
        run(Command::new(bin("piko"))
            .arg("inspect")
            .args(args)
            .arg("--inspect.addr")
            .arg(&self.inspect))
        .await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = client()
            .get(format!("{}{path}", self.proxy))
            .header("x-piko-endpoint", "demo");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// The id of the newest listed request whose row contains `needle` (recorded when its
    /// response ended, a moment after the client saw it).
    async fn id_of(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, out, _) = self.inspect(&[]).await;
            let id = out
                .lines()
                .find(|l| l.contains(needle))
                .and_then(|l| l.split_whitespace().next());
            if let Some(id) = id {
                return id.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until `piko inspect` lists {needle}: {out}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("piko inspect exits")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn piko_inspect_lists_shows_and_replays_requests_of_a_real_agent() {
    let s = Setup::start().await;
    let r = s
        .get(
            "/name?from=test",
            &[("authorization", "Bearer very-secret")],
        )
        .await;
    assert_eq!(r.text().await.unwrap(), "echo");

    // List: a table with an id per row.
    let id = s.id_of("/name?from=test").await;
    let (code, out, err) = s.inspect(&[]).await;
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap();
    for col in [
        "ID", "TIME", "ENDPOINT", "METHOD", "PATH", "STATUS", "DURATION",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let row = out.lines().find(|l| l.contains("/name?from=test")).unwrap();
    assert!(row.starts_with(&id), "{row}");
    assert!(
        row.contains(" demo ") && row.contains(" GET ") && row.contains(" 200 "),
        "{row}"
    );
    // Filtered by endpoint.
    let (_, other, _) = s.inspect(&["nothing-here"]).await;
    assert!(!other.contains("/name"), "{other}");

    // Show: headers with the token masked, the body.
    let (code, shown, err) = s.inspect(&["show", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains("GET /name?from=test → 200 OK"), "{shown}");
    assert!(shown.contains("authorization: ***"), "{shown}");
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(shown.contains("Response body (4 B):\necho"), "{shown}");

    // Replay: the new exchange's row, linked to the original, and the service saw it.
    let (code, replayed, err) = s.inspect(&["replay", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(replayed.contains(&format!("replay of {id}")), "{replayed}");
    assert!(replayed.contains(" 200 "), "{replayed}");
    let new_id = replayed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_ne!(new_id, id);
    let (_, list, _) = s.inspect(&["demo"]).await;
    assert!(
        list.lines().nth(1).unwrap().starts_with(new_id),
        "newest first: {list}"
    );

    // Edit and replay: another path.
    let (code, edited, err) = s
        .inspect(&["replay", &id, "--path", "/headers", "-H", "x-edited: yes"])
        .await;
    assert_eq!(code, 0, "{err}");
    let edited_id = edited
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (_, shown, _) = s.inspect(&["show", edited_id]).await;
    assert!(shown.contains("GET /headers → 200 OK"), "{shown}");
    assert!(shown.contains(r#""x-edited":"yes""#), "{shown}");
}

#[tokio::test]
async fn piko_inspect_shows_truncation_and_refuses_to_replay_a_truncated_body() {
    let s = Setup::start().await;
    let r = client()
        .post(format!("{}/upload", s.proxy))
        .header("x-piko-endpoint", "demo")
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = s.id_of("/upload").await;
    let (code, shown, _) = s.inspect(&["show", &id]).await;
    assert_eq!(code, 0);
    assert!(
        shown.contains("… truncated at 64 KiB (97.7 KiB in all)"),
        "{shown}"
    );
    let (code, _, err) = s.inspect(&["replay", &id]).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim(),
        format!("error: request {id} had its body truncated at 65536 bytes; replay it with an edited body")
    );
    // With a body given, it goes.
    let (code, out, err) = s.inspect(&["replay", &id, "--body", "small"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("replay of {id}")), "{out}");
}

#[tokio::test]
async fn piko_inspect_follow_prints_new_requests_as_they_arrive() {
    let s = Setup::start().await;
    let mut follow = spawn(
        Command::new(bin("piko"))
            .args(["inspect", "--follow", "--limit", "1", "--inspect.addr"])
            .arg(&s.inspect),
    );
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the table header")
        .unwrap()
        .unwrap();
    assert!(first.starts_with("ID "), "{first}");
    // The backlog line (one of the probes) may come first; then the new request.
    s.get("/name?followed=1", &[]).await;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("/name?followed=1") {
                return l;
            }
        }
        panic!("the stream ended before the new request")
    })
    .await
    .expect("the new request within 10 s");
    assert!(found.contains(" 200 "), "{found}");
}

#[tokio::test]
async fn piko_inspect_without_an_agent_says_to_start_one() {
    let (_refusing, addr) = refused_addr();
    let addr = addr.to_string();
    for args in [vec![], vec!["show", "1"], vec!["replay", "1"]] {
        let (code, out, err) = run(Command::new(bin("piko"))
            .arg("inspect")
            .args(&args)
            .arg("--inspect.addr")
            .arg(&addr))
        .await;
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("start `piko agent`"), "{err}");
    }
    let (code, _, err) = run(Command::new(bin("piko")).args(["inspect", "show", "abc"])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid request id \"abc\""), "{err}");
}

#[tokio::test]
async fn an_agent_whose_inspector_port_is_taken_warns_and_serves_anyway() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let server = NodeProcess::start(&[]).await;
    let echo = EchoUpstream::start().await;
    let mut agent = AgentProcess::spawn(&[
        "agent",
        "http",
        "demo",
        &echo.addr.port().to_string(),
        "--connect.url",
        &server.upstream(),
        "--inspect.addr",
        &taken_addr,
    ]);
    let url = format!("{}/name", server.proxy());
    wait_until("the demo endpoint answers", Duration::from_secs(20), || async {
        matches!(client().get(&url).header("x-piko-endpoint", "demo").send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let warning = agent.wait_for_line("inspector").await;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("cannot listen on {taken_addr}")),
        "{warning}"
    );
    assert!(agent.is_running(), "the agent keeps running");
    drop(taken);
}

/// `agent start` with a TCP endpoint only: the inspector is served all the same, so when
/// the file gains an HTTP endpoint its requests are recorded.
#[tokio::test]
async fn an_agent_started_with_tcp_only_inspects_http_endpoints_a_reload_adds() {
    let server = NodeProcess::start(&[]).await;
    let (echo, tcp) = (EchoUpstream::start().await, piko_tests::tcp_echo().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    let yaml = |extra: &str| {
        format!(
            "connect:\n  url: {}\ninspect:\n  addr: 127.0.0.1:0\nlisteners:\n  - endpoint_id: db\n    addr: {tcp}\n    protocol: tcp\n{extra}",
            server.upstream()
        )
    };
    // As an editor saves: a new file renamed over the old one.
    let save = |text: String| {
        let tmp = dir.path().join(".agent.yaml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    save(yaml(""));
    let agent = AgentProcess::spawn(&[
        "agent",
        "start",
        "--config.path",
        &path.display().to_string(),
    ]);
    // The file's `inspect.addr` (port 0) is where it serves, TCP endpoints only or not.
    let inspect = agent.inspector_addr().await.to_string();
    server.wait_for_upstreams("db", 1).await;
    agent.wait_for_line("following the config file").await;

    save(yaml(&format!(
        "  - endpoint_id: web\n    addr: {}\n    protocol: http\n",
        echo.target()
    )));
    server.wait_for_upstreams("web", 1).await;
    let r = client()
        .get(format!("{}/name?after=reload", server.proxy()))
        .header("x-piko-endpoint", "web")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "echo");
    wait_until(
        "piko inspect lists the request to the added endpoint",
        Duration::from_secs(10),
        || {
            let inspect = inspect.clone();
            async move {
                let (code, out, _) = run(Command::new(bin("piko"))
                    .args(["inspect", "web", "--inspect.addr"])
                    .arg(&inspect))
                .await;
                code == 0 && out.contains("/name?after=reload")
            }
        },
    )
    .await;
    let (_, out, _) = run(Command::new(bin("piko"))
        .args(["inspect", "web", "--inspect.addr"])
        .arg(&inspect))
    .await;
    let row = out
        .lines()
        .find(|l| l.contains("/name?after=reload"))
        .unwrap();
    assert!(row.contains(" web ") && row.contains(" 200 "), "{row}");
}
