//! The live connector core against real servers: endpoints and servers changed under
//! traffic without touching the others, a black-holed link noticed and redialled within
//! seconds, and tokens that never reach the settings file or the log files.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use piko_connector_core::core::CoreEvent;
use piko_connector_core::logs::{self, LogOptions};
use piko_connector_core::status::TunnelState;
use piko_connector_core::tunnel::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use piko_connector_core::Secret;
use piko_protocol::EndpointId;
use piko_server::auth::{PortAuth, Verifier, VerifierSettings};
use piko_tests::live::{endpoint_settings, server_settings, Relay, TestCore};
use piko_tests::{
    client, get_endpoint, hs256_token, now_secs, wait_until, EchoUpstream, TestServer,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;

const T: Duration = Duration::from_secs(20);

fn connected(v: &piko_connector_core::EndpointView) -> bool {
    matches!(v.state, TunnelState::Connected { .. })
}

fn id(s: &str) -> EndpointId {
    EndpointId::new(s).unwrap()
}

/// Wait until `GET /name` for `endpoint` through `proxy` answers `want` (status, body).
async fn wait_for_answer(proxy: &str, endpoint: &str, want: (u16, &str), what: &str) {
    wait_until(what, T, || async {
        get_endpoint(proxy, endpoint, "/name")
            .await
            .is_some_and(|(status, body)| status == want.0 && (want.1.is_empty() || body == want.1))
    })
    .await;
}

/// The untouched endpoint serves every request (no failure at all) and its tunnel never
/// leaves `Connected` while another endpoint is added, retargeted, disabled, enabled and
/// removed on the same server, and another server is edited (which restarts only its own
/// tunnel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_endpoint_serves_every_request_while_others_change() {
    let one = TestServer::start().await;
    let two = TestServer::start().await;
    let steady = EchoUpstream::named("steady").await;
    let a = EchoUpstream::named("a").await;
    let b = EchoUpstream::named("b").await;
    let mut t = TestCore::start().await;
    let core = t.core.clone();
    core.upsert_server(server_settings("one", &one.upstream_url()))
        .await
        .unwrap();
    core.upsert_server(server_settings("two", &two.upstream_url()))
        .await
        .unwrap();
    core.add_endpoint(endpoint_settings("steady", "one", &steady.target()))
        .await
        .unwrap();
    core.add_endpoint(endpoint_settings("far", "two", &a.target()))
        .await
        .unwrap();
    t.wait_for("steady", "steady is connected", T, connected)
        .await;
    t.wait_for("far", "far is connected", T, connected).await;
    one.wait_for_upstreams("steady", 1).await;
    two.wait_for_upstreams("far", 1).await;

    // From here on, every change of steady's state is a failure of the test.
    let stop = CancellationToken::new();
    let mut events = core.subscribe();
    let watch = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut changes = Vec::new();
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = events.recv() => ev,
                };
                match ev {
                    Ok(CoreEvent::Endpoint(v)) if v.id.as_str() == "steady" => {
                        changes.push(format!("{:?}", v.state))
                    }
                    Ok(CoreEvent::Snapshot(s)) => match s.endpoint("steady") {
                        Some(v) if connected(v) => {}
                        other => changes.push(format!("snapshot: {other:?}")),
                    },
                    Ok(_) => {}
                    Err(e) => changes.push(format!("events: {e}")),
                }
            }
            changes
        }
    });
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut traffic = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let url = format!("{}/name", one.proxy_url());
        traffic.push(tokio::spawn(async move {
            let http = client();
            while !stop.is_cancelled() {
                let r = http
                    .get(&url)
                    .header("x-piko-endpoint", "steady")
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(body) if body == "steady" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    },
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
            }
        }));
    }
    let proxy = one.proxy_url();

    core.add_endpoint(endpoint_settings("moving", "one", &a.target()))
        .await
        .unwrap();
    wait_for_answer(&proxy, "moving", (200, "a"), "the added endpoint serves a").await;
    // The edited endpoint itself never stops answering either: its old tunnel serves until
    // the new one is connected.
    let edit_stop = CancellationToken::new();
    let edit_traffic = tokio::spawn({
        let (stop, url) = (edit_stop.clone(), format!("{proxy}/name"));
        async move {
            let (http, mut answers) = (client(), Vec::new());
            while !stop.is_cancelled() {
                let r = http
                    .get(&url)
                    .header("x-piko-endpoint", "moving")
                    .send()
                    .await;
                answers.push(match r {
                    Ok(r) => format!(
                        "{} {}",
                        r.status().as_u16(),
                        r.text().await.unwrap_or_default()
                    ),
                    Err(e) => e.to_string(),
                });
            }
            answers
        }
    });
    core.update_endpoint(
        &id("moving"),
        endpoint_settings("moving", "one", &b.target()),
    )
    .await
    .unwrap();
    wait_for_answer(&proxy, "moving", (200, "b"), "the edited endpoint serves b").await;
    one.wait_for_upstreams("moving", 1).await;
    edit_stop.cancel();
    let answers = edit_traffic.await.unwrap();
    let first_b = answers
        .iter()
        .position(|a| a == "200 b")
        .expect("b answered");
    assert!(
        answers[..first_b].iter().all(|a| a == "200 a")
            && answers[first_b..].iter().all(|a| a == "200 b"),
        "a then b and nothing else across the edit: {answers:?}"
    );
    core.set_enabled(&id("moving"), false).await.unwrap();
    wait_for_answer(
        &proxy,
        "moving",
        (502, ""),
        "the disabled endpoint gets 502",
    )
    .await;
    core.set_enabled(&id("moving"), true).await.unwrap();
    wait_for_answer(
        &proxy,
        "moving",
        (200, "b"),
        "the enabled endpoint serves b again",
    )
    .await;

    // A server edit restarts that server's tunnels only.
    t.forget_events();
    let mut edited = server_settings("two", &two.upstream_url());
    edited.public_url = Some("http://{endpoint}.two.example.com".into());
    core.upsert_server(edited).await.unwrap();
    t.wait_for("far", "far restarts after its server's edit", T, |v| {
        matches!(v.state, TunnelState::Connecting)
    })
    .await;
    let far = t
        .wait_for("far", "far is connected again", T, connected)
        .await;
    assert_eq!(
        far.public_url.as_deref(),
        Some("http://far.two.example.com")
    );
    wait_for_answer(&two.proxy_url(), "far", (200, "a"), "far serves again").await;

    core.remove_endpoint(&id("moving")).await.unwrap();
    wait_for_answer(&proxy, "moving", (502, ""), "the removed endpoint gets 502").await;
    assert!(core.snapshot().endpoint("moving").is_none());

    stop.cancel();
    for task in traffic {
        task.await.unwrap();
    }
    let changes = watch.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        ok + failures.len() as u64
    );
    assert!(ok >= 30, "traffic flowed all along: {ok} requests");
    assert!(
        changes.is_empty(),
        "the untouched tunnel changed state: {changes:?}"
    );
    assert_eq!(
        one.endpoints().await["steady"],
        1,
        "one registration, never a second"
    );
    t.stop().await;
}

/// A link that stops carrying bytes without closing (sleep, a Wi-Fi change) is noticed by
/// the keepalive within [`KEEPALIVE_TIMEOUT`] and some slack, torn down and redialled, and
/// the endpoint serves again once the network is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_link_is_noticed_within_seconds_and_redialled() {
    let server = TestServer::start().await;
    let relay = Relay::start(server.upstream_addr).await;
    let svc = EchoUpstream::named("svc").await;
    let mut t = TestCore::start().await;
    t.core
        .upsert_server(server_settings("far", &relay.url()))
        .await
        .unwrap();
    t.core
        .add_endpoint(endpoint_settings("roam", "far", &svc.target()))
        .await
        .unwrap();
    t.wait_for("roam", "roam is connected", T, connected).await;
    wait_for_answer(&server.proxy_url(), "roam", (200, "svc"), "roam serves").await;

    t.forget_events();
    relay.black_hole(true);
    let cut = Instant::now();
    let v = t
        .wait_for(
            "roam",
            "the dead link is noticed",
            Duration::from_secs(40),
            |v| matches!(v.state, TunnelState::Reconnecting { .. }),
        )
        .await;
    let noticed = cut.elapsed();
    eprintln!("dead link noticed {noticed:?} after the black hole (keepalive every {KEEPALIVE_INTERVAL:?}, timeout {KEEPALIVE_TIMEOUT:?})");
    assert_eq!(
        v.last_error.as_deref(),
        Some("keepalive timeout: peer stopped answering pings")
    );
    assert!(
        noticed <= KEEPALIVE_TIMEOUT + Duration::from_secs(2),
        "noticed after {noticed:?}"
    );
    // The server drops its side of the dead session on its own keepalive, so requests stop
    // going to it (before, up to 30 s later).
    let server_timeout = piko_server::upstream::KEEPALIVE_TIMEOUT;
    wait_until(
        "the server drops the dead session",
        server_timeout + Duration::from_secs(3) - cut.elapsed().min(server_timeout),
        || async {
            server
                .endpoints()
                .await
                .get("roam")
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
                == 0
        },
    )
    .await;
    eprintln!(
        "the server dropped the dead session {:?} after the black hole",
        cut.elapsed()
    );

    relay.black_hole(false);
    let back = Instant::now();
    t.wait_for(
        "roam",
        "roam is redialled",
        Duration::from_secs(40),
        connected,
    )
    .await;
    eprintln!("redialled {:?} after the network came back", back.elapsed());
    wait_until(
        "a request reaches the service again",
        Duration::from_secs(20),
        || async {
            get_endpoint(&server.proxy_url(), "roam", "/name").await == Some((200, "svc".into()))
        },
    )
    .await;
    t.stop().await;
}

const SECRET: &str = "live-secret";

fn hmac_auth() -> PortAuth {
    let v = Verifier::new(VerifierSettings {
        hmac_secret: Some(SECRET.as_bytes().to_vec()),
        ..Default::default()
    })
    .unwrap();
    PortAuth {
        default: Some(Arc::new(v)),
        tenants: Default::default(),
    }
}

/// Tokens go to the credential store only: with every log at trace level, a refused token
/// and an accepted one appear in neither the settings file (nor its copies) nor the log
/// files, which do hold the tunnel's story.
#[tokio::test] // one thread: the test's log subscriber sees every task
async fn a_token_never_reaches_the_settings_file_or_the_log_files() {
    let log_dir = tempfile::tempdir().unwrap();
    let (layer, logs) = logs::layers(&LogOptions {
        filter: "trace".into(),
        ..LogOptions::new(log_dir.path().to_path_buf())
    })
    .unwrap();
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));

    let server = TestServer::start_with(|c| c.upstream.auth = hmac_auth()).await;
    let svc = EchoUpstream::named("svc").await;
    let good = hs256_token(SECRET, json!({"exp": now_secs() + 3600}));
    let bad = hs256_token("not-the-secret", json!({"exp": now_secs() + 3600}));
    let mut t = TestCore::start().await;
    t.core
        .upsert_server(server_settings("piko", &server.upstream_url()))
        .await
        .unwrap();
    t.core
        .add_endpoint(endpoint_settings("shop", "piko", &svc.target()))
        .await
        .unwrap();
    t.core
        .sign_in("piko", Secret::new(bad.clone()))
        .await
        .unwrap();
    let v = t
        .wait_for("shop", "the bad token is refused", T, |v| {
            matches!(v.state, TunnelState::Stopped { reason: Some(_) })
        })
        .await;
    let reason = v.last_error.unwrap();
    assert!(reason.contains("401"), "{reason}");
    t.core
        .sign_in("piko", Secret::new(good.clone()))
        .await
        .unwrap();
    t.wait_for("shop", "the good token connects", T, connected)
        .await;
    wait_for_answer(&server.proxy_url(), "shop", (200, "svc"), "shop serves").await;
    assert!(t.core.snapshot().servers[0].signed_in);

    t.core.remove_endpoint(&id("shop")).await.unwrap();
    // Keep the settings directory past the core's end to read it.
    let dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
    let settings_dir = dir.path().to_path_buf();
    t.stop().await;
    server.stop().await;
    drop(guard);
    drop(logs); // flushes the log files

    let files = |d: &std::path::Path| -> Vec<(String, String)> {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned(),
                )
            })
            .collect()
    };
    let settings = files(&settings_dir);
    let log_files = files(log_dir.path());
    assert!(
        settings.iter().any(|(n, _)| n == "settings.yaml"),
        "{settings:?}"
    );
    assert!(
        settings.iter().any(|(n, _)| n == "settings.yaml.good"),
        "{settings:?}"
    );
    assert_eq!(
        log_files.len(),
        1,
        "{:?}",
        log_files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let log_text = &log_files[0].1;
    assert!(
        log_text.contains("shop"),
        "the log holds the tunnel's story"
    );
    assert!(log_text.contains("TRACE"), "the log is at trace level");
    for token in [&good, &bad] {
        let signature = token.rsplit('.').next().unwrap();
        for (name, text) in settings.iter().chain(&log_files) {
            assert!(
                !text.contains(signature),
                "a token's signature is in {name}"
            );
        }
    }
    drop(dir);
}

/// `piko agent start` follows its config file: an added listener starts, a removed one
/// stops, the untouched one is never reconnected, and a bad edit is reported while the
/// running config stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_start_applies_config_file_changes_and_leaves_the_rest_alone() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::start().await;
    let (alpha, beta) = (
        EchoUpstream::named("alpha").await,
        EchoUpstream::named("beta").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    let yaml = |listeners: &[(&str, &str)]| {
        let mut y = format!("connect:\n  url: {}\nlisteners:\n", server.upstream_url());
        for (id, addr) in listeners {
            y.push_str(&format!("  - endpoint_id: {id}\n    addr: {addr}\n"));
        }
        y
    };
    // As an editor saves: a new file renamed over the old one.
    let save = |text: String| {
        let tmp = dir.path().join(".agent.yaml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    save(yaml(&[("alpha", &alpha.target())]));
    let mut child = tokio::process::Command::new(piko_tests::bin("piko"))
        .args(["agent", "start", "--config.path"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = Arc::new(std::sync::Mutex::new(String::new()));
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let sink = output.clone();
        tokio::spawn(async move {
            let (mut pipe, mut buf) = (pipe, [0u8; 4096]);
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let has = |needle: String| {
        let output = output.clone();
        async move { output.lock().unwrap().contains(&needle) }
    };
    server.wait_for_upstreams("alpha", 1).await;
    wait_until("the agent follows its file", T, || {
        has("following the config file".into())
    })
    .await;

    save(yaml(&[
        ("alpha", &alpha.target()),
        ("beta", &beta.target()),
    ]));
    server.wait_for_upstreams("beta", 1).await;
    wait_for_answer(
        &server.proxy_url(),
        "beta",
        (200, "beta"),
        "the added listener serves",
    )
    .await;

    save("listeners: [\n".into());
    wait_until("the bad edit is reported", T, || has("not applied".into())).await;
    wait_for_answer(
        &server.proxy_url(),
        "beta",
        (200, "beta"),
        "beta still serves",
    )
    .await;

    save(yaml(&[("alpha", &alpha.target())]));
    wait_until("the removed listener is gone", T, || async {
        server
            .endpoints()
            .await
            .get("beta")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            == 0
    })
    .await;
    wait_for_answer(&server.proxy_url(), "alpha", (200, "alpha"), "alpha serves").await;
    wait_until("beta's tunnel has stopped", T, || {
        has("stopped: beta".into())
    })
    .await;
    let text = output.lock().unwrap().clone();
    assert_eq!(
        text.matches("connecting… alpha").count(),
        1,
        "alpha was never reconnected:\n{text}"
    );
    assert_eq!(server.endpoints().await["alpha"], 1);
    child.kill().await.unwrap();
}
