//! The real `piko` binary: login/logout/status with the file store, the order in which the
//! agent picks its token, and transport config errors. Every run gets its own config dir
//! (`PIKO_CONFIG_DIR`) and the file store (`PIKO_CREDENTIALS_STORE=file`), so no keychain of
//! the machine running the tests is touched.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `{"alg":"HS256","typ":"JWT"}.{"sub":"x"}.signature`: JWT-shaped, not signed.
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

fn piko(config_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_piko"));
    c.env("PIKO_CONFIG_DIR", config_dir)
        .env("PIKO_CREDENTIALS_STORE", "file")
        .env_remove("PIKO_TOKEN")
        .env_remove("PIKO_LOG_LEVEL")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy");
    c
}

/// Run with `stdin` piped in.
fn run(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit before reading its input (a usage error): a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn login_status_logout_with_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.json");

    let mut login = piko(dir.path());
    login.args(["login", "--server", "https://piko.example.com:8001/"]);
    let out = run(login, &format!("{JWT}\n"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!(
            "token for https://piko.example.com:8001 stored in {} (mode 0600)",
            file.display()
        )
    );
    assert!(!stdout.contains(JWT) && !text(&out.stderr).contains(JWT));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(std::fs::read_to_string(&file).unwrap().contains(JWT));

    let mut status = piko(dir.path());
    status.arg("status");
    let out = run(status, "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("https://piko.example.com:8001: token stored"),
        "{stdout}"
    );
    assert!(stdout.contains("PIKO_TOKEN: not set"), "{stdout}");
    assert!(!stdout.contains(JWT), "{stdout}");

    let mut logout = piko(dir.path());
    logout.args(["logout", "--server", "wss://piko.example.com:8001"]);
    let out = run(logout, "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("token for https://piko.example.com:8001 removed from "),
        "{}",
        text(&out.stdout)
    );
    assert!(!file.exists());

    let mut status = piko(dir.path());
    status.arg("status");
    let out = run(status, "");
    assert!(
        text(&out.stdout).contains("no stored tokens"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn login_refuses_what_is_not_a_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "hunter2\n",
            "the token does not look like a JWT (1 part instead of 3)",
        ),
        (
            "a.b\n",
            "the token does not look like a JWT (2 parts instead of 3)",
        ),
        ("\n", "no token given"),
    ];
    for (input, want) in cases {
        let mut login = piko(dir.path());
        login.args(["login", "--server", "http://x"]);
        let out = run(login, input);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{input:?}: {stderr}");
        assert!(stderr.starts_with(&format!("error: {want}")), "{stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "never echo the input: {stderr}"
        );
    }
    let mut bad_url = piko(dir.path());
    bad_url.args(["login", "--server", "piko.example.com"]);
    let out = run(bad_url, JWT);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("error: --server: invalid server URL"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("credentials.json").exists());
}

/// A fake upstream port that records each request's `Authorization` header and refuses
/// with 401, so the agent stops.
fn refusing_server() -> (u16, std::thread::JoinHandle<Vec<Option<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let (mut tcp, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = text(&head);
        seen.push(head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.trim().to_string())
        }));
        let body = r#"{"error":"invalid token"}"#;
        let _ = write!(
            tcp,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        seen
    });
    (port, handle)
}

#[test]
fn the_agent_uses_the_stored_token_unless_one_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let (port, server) = refusing_server();
    let url = format!("http://127.0.0.1:{port}");

    let mut login = piko(dir.path());
    login.args(["login", "--server", &url]);
    let out = run(login, JWT);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // No flag, no PIKO_TOKEN: the stored token is sent, and the log says where it came from.
    // Even at trace level the token is in no log line.
    let mut agent = piko(dir.path());
    agent.args([
        "--log.level",
        "trace",
        "agent",
        "http",
        "demo",
        "3000",
        "--connect.url",
        &url,
    ]);
    let out = run(agent, "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(server.join().unwrap(), vec![Some(format!("Bearer {JWT}"))]);
    assert!(
        stderr.contains(&format!(
            "using the token from {} (mode 0600)",
            dir.path().join("credentials.json").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("server rejected the token for endpoint demo: 401 invalid token"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(JWT) && !text(&out.stdout).contains(JWT),
        "{stderr}"
    );

    // PIKO_TOKEN wins over the stored token; --connect.token over both.
    for (env, flag, want, source) in [
        (
            Some("env-token"),
            None,
            "env-token",
            "using the token from PIKO_TOKEN",
        ),
        (
            Some("env-token"),
            Some("flag-token"),
            "flag-token",
            "using the token from --connect.token",
        ),
    ] {
        let (port, server) = refusing_server();
        let url = format!("http://127.0.0.1:{port}");
        // The stored token is for this server too.
        let mut login = piko(dir.path());
        login.args(["login", "--server", &url]);
        assert_eq!(run(login, JWT).status.code(), Some(0));
        let mut agent = piko(dir.path());
        agent.args(["agent", "http", "demo", "3000", "--connect.url", &url]);
        if let Some(e) = env {
            agent.env("PIKO_TOKEN", e);
        }
        if let Some(f) = flag {
            agent.args(["--connect.token", f]);
        }
        let out = run(agent, "");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(server.join().unwrap(), vec![Some(format!("Bearer {want}"))]);
        assert!(stderr.contains(source), "{stderr}");
        assert!(!stderr.contains(want), "{stderr}");
    }
}

#[test]
fn transport_settings_errors_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not pem").unwrap();
    let junk = junk.to_str().unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--connect.tls.root-cas", "/nonexistent/ca.pem"],
            "error: connect.tls.root_cas (--connect.tls.root-cas): cannot read /nonexistent/ca.pem"
                .into(),
        ),
        (
            vec!["--connect.tls.cert", junk],
            "error: connect.tls.key (--connect.tls.key): missing".into(),
        ),
        (
            vec!["--connect.tls.cert", junk, "--connect.tls.key", junk],
            "error: connect.tls.cert (--connect.tls.cert): ".into(),
        ),
        (
            vec!["--connect.proxy-url", "socks5://proxy:1080"],
            "error: connect.proxy_url (--connect.proxy-url): unsupported proxy scheme \"socks5\""
                .into(),
        ),
    ];
    for (flags, want) in cases {
        let mut agent = piko(dir.path());
        agent
            .args([
                "agent",
                "http",
                "demo",
                "3000",
                "--connect.url",
                "https://127.0.0.1:1",
            ])
            .args(&flags);
        let out = run(agent, "");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(&want), "{flags:?}: {stderr}");
    }
    // The same keys from the YAML file.
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        "connect:\n  url: https://127.0.0.1:1\n  tls:\n    root_cas: /nonexistent/ca.pem\nlisteners:\n  - endpoint_id: demo\n    addr: '3000'\n",
    )
    .unwrap();
    let mut agent = piko(dir.path());
    agent.args(["agent", "start", "--config.path", cfg.to_str().unwrap()]);
    let out = run(agent, "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("connect.tls.root_cas (--connect.tls.root-cas): cannot read"),
        "{}",
        text(&out.stderr)
    );
}
