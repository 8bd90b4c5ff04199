//! A v0.9 server configuration of the original Go Piko runs unchanged: every key of its
//! file, its bare bool flags, its `$VAR` expansion, and its join settings.

use std::time::Duration;

use piko_tests::node::NodeProcess;
use piko_tests::{bin, refused_addr};
use tokio::process::Command;

/// The original's file with every key at its default value.
const V09_ALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/server-v09-all.yaml");

#[tokio::test]
async fn a_v09_server_yaml_with_every_key_starts_the_server() {
    let node = NodeProcess::start(&["--config.path", V09_ALL, "--config.expand-env"]).await;
    let log = node.log();
    // Settings without a meaning here are named once, not silently dropped.
    assert!(
        log.contains("cluster.gossip.interval, cluster.gossip.max_packet_size: gossip tuning has no meaning here"),
        "{log}"
    );
    // Its read and write timeouts (10 s) and its empty `*.tls.client` sections are applied
    // here, so nothing names them.
    for key in [
        "proxy.http.read_timeout",
        "proxy.http.write_timeout",
        "proxy.tls.client",
        "upstream.tls.client",
        "admin.tls.client",
    ] {
        assert!(!log.contains(key), "{key}: {log}");
    }
}

#[tokio::test]
async fn bool_flags_take_no_value_or_an_attached_one() {
    // Bare (`true`), `=false`, and `--config.expand-env=true` as the original accepts them.
    // `start` waits until `/ready` answers 200.
    let _node = NodeProcess::start(&[
        "--proxy.access-log.disable",
        "--upstream.auth.disable-disconnect-on-expiry=false",
        "--cluster.abort-if-join-fails",
        "--config.expand-env=true",
    ])
    .await;
}

async fn run_server(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(bin("piko-server"))
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("piko-server exits")
        .expect("run piko-server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dollar_var_is_expanded_with_expand_env_true() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, "grace_period: $GRACE\n").unwrap();
    let path = path.to_str().unwrap();
    // The expanded value reaches the key: the error quotes it.
    let (code, stderr) = run_server(
        &["--config.path", path, "--config.expand-env=true"],
        &[("GRACE", "soon")],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("grace_period: invalid duration \"soon\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_node_that_cannot_join_within_join_timeout_stops_with_a_clear_error() {
    let (_held, nobody) = refused_addr();
    let (code, stderr) = run_server(
        &[
            "--proxy.bind-addr=127.0.0.1:0",
            "--upstream.bind-addr=127.0.0.1:0",
            "--admin.bind-addr=127.0.0.1:0",
            "--cluster.bind-addr=127.0.0.1:0",
            "--cluster.join",
            &nobody.to_string(),
            "--cluster.join-timeout=1s",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cluster.join_timeout: not a member of the cluster after 1s"),
        "{stderr}"
    );
}

#[tokio::test]
async fn without_abort_if_join_fails_the_node_keeps_trying() {
    let (_held, nobody) = refused_addr();
    let mut node = NodeProcess::alone().with_args(&[
        "--cluster.join-timeout=1s",
        "--cluster.abort-if-join-fails=false",
    ]);
    node.join = vec![nobody.to_string()];
    node.spawn().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = node.log();
    assert!(
        log.contains("not a cluster member yet; still trying"),
        "{log}"
    );
    // Still running: a SIGTERM ends it cleanly.
    let status = node.terminate().await;
    assert!(status.success(), "{status:?}\n{log}");
}
