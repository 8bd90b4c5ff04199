//! `?forward=NODE` on the admin API: to admin ports that use TLS (with `admin.tls.client`'s
//! CA, client certificate, `server_name` and `insecure_skip_verify`), to a node unknown here,
//! and to nodes that do not answer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use piko_server::config::{load, Sources};
use piko_tests::tls::{client_config, https_get, temp_dir, TestCa};
use piko_tests::{client, refused_addr, wait_until, TestCluster};

/// The name every admin certificate of the TLS test carries (and no address).
const ADMIN_NAME: &str = "admin.piko.test";

/// The `admin.*` settings `flags` give, through the configuration's own keys.
fn admin_settings(flags: &[(&str, String)]) -> piko_server::admin::Settings {
    let flags: BTreeMap<String, Vec<String>> = flags
        .iter()
        .map(|(k, v)| (k.to_string(), vec![v.clone()]))
        .collect();
    let config = load(&Sources {
        flags,
        ..Sources::default()
    })
    .expect("valid admin settings");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    config.admin
}

#[tokio::test]
async fn forward_reaches_tls_admin_ports_with_the_admin_tls_client_settings() {
    let dir = temp_dir("admin-forward-tls");
    let ca = TestCa::new("piko admin ca");
    let ca_file = ca.write(&dir, "ca.pem").display().to_string();
    let admin = ca.issue(&dir, "admin", &[ADMIN_NAME]);
    let peer = ca.issue(&dir, "peer", &["peer.piko.test"]);
    let (cert, key) = (
        admin.cert.display().to_string(),
        admin.key.display().to_string(),
    );
    let (peer_cert, peer_key) = (
        peer.cert.display().to_string(),
        peer.key.display().to_string(),
    );
    // node-0: the CA, the certificates' name and a client certificate: reaches every node.
    // node-1: its admin port asks for a client certificate of the CA; it verifies nothing.
    // node-2: the CA only: other nodes' certificates do not carry their address.
    // node-3: the CA and the name, no client certificate: node-1 turns it away.
    let per_node: Vec<Vec<(&str, String)>> = vec![
        vec![
            ("admin.tls.client.root_cas", ca_file.clone()),
            ("admin.tls.client.server_name", ADMIN_NAME.into()),
            ("admin.tls.client.cert", peer_cert.clone()),
            ("admin.tls.client.key", peer_key.clone()),
        ],
        vec![
            ("admin.tls.client_cas", ca_file.clone()),
            ("admin.tls.client.insecure_skip_verify", "true".into()),
        ],
        vec![("admin.tls.client.root_cas", ca_file.clone())],
        vec![
            ("admin.tls.client.root_cas", ca_file.clone()),
            ("admin.tls.client.server_name", ADMIN_NAME.into()),
        ],
    ];
    let settings: Vec<_> = per_node
        .iter()
        .map(|flags| {
            let mut all = vec![
                ("admin.tls.cert", cert.clone()),
                ("admin.tls.key", key.clone()),
            ];
            all.extend(flags.iter().cloned());
            admin_settings(&all)
        })
        .collect();
    let cluster = TestCluster::spawn_with(4, |i, c| {
        c.admin.tls = settings[i].tls.clone();
        c.admin.forward = settings[i].forward.clone();
    })
    .await;

    // This test's own client presents a certificate (node-1 asks for one).
    let tls = client_config(&ca.pem, Some(&peer));
    let ask = |i: usize, path: String| {
        let (addr, tls) = (cluster.nodes[i].admin_addr, tls.clone());
        async move {
            https_get(addr, ADMIN_NAME, tls, &path, &[])
                .await
                .unwrap_or_else(|e| panic!("node-{i} {path}: {e}"))
        }
    };
    for i in 0..4 {
        wait_until(
            &format!("node-{i} sees 4 members"),
            Duration::from_secs(30),
            || async {
                let (status, body) = ask(i, "/status/cluster/nodes".into()).await;
                status == 200
                    && serde_json::from_str::<Vec<serde_json::Value>>(&body)
                        .is_ok_and(|n| n.len() == 4)
            },
        )
        .await;
    }

    let local_of = |from: usize, to: usize| {
        ask(
            from,
            format!("/status/cluster/nodes/local?forward=node-{to}"),
        )
    };
    for (from, to) in [(0, 1), (0, 2), (1, 0), (3, 0)] {
        let (status, body) = local_of(from, to).await;
        assert_eq!(status, 200, "node-{from} → node-{to}: {body}");
        let node: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(node["id"], format!("node-{to}"), "{body}");
    }
    // Refused, each with a JSON error that says why.
    for (from, to, why) in [(2, 0, "certificate"), (3, 1, "certificate")] {
        let (status, body) = local_of(from, to).await;
        assert_eq!(status, 502, "node-{from} → node-{to}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("node \"node-{to}\" at 127.0.0.1:"))
                && error.to_lowercase().contains(why),
            "node-{from} → node-{to}: {error}"
        );
    }
    // A node this one does not know: 404 with a JSON error, over TLS as well.
    let (status, body) = ask(0, "/status/upstream/endpoints?forward=nosuch".into()).await;
    assert_eq!(status, 404, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "node \"nosuch\" not found");
    cluster.stop().await;
}

#[tokio::test]
async fn a_node_that_does_not_answer_gives_a_json_504_within_the_timeout_and_a_refusing_one_502() {
    // A port that takes connections and never answers, and one that refuses them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let (_refusing, refused) = refused_addr();
    let timeout = Duration::from_secs(1);
    let cluster = TestCluster::start_with(3, |i, c| {
        c.admin.forward.timeout = timeout;
        match i {
            1 => c.admin.advertise_addr = Some(silent_addr.to_string()),
            2 => c.admin.advertise_addr = Some(refused.to_string()),
            _ => {}
        }
    })
    .await;
    let node0 = &cluster.nodes[0];
    for (to, status, says) in [
        (1, 504, "did not answer within 1s"),
        (2, 502, "cannot connect"),
    ] {
        let start = Instant::now();
        let r = client()
            .get(format!(
                "{}/status/cluster/nodes/local?forward=node-{to}",
                node0.admin_url()
            ))
            .send()
            .await
            .unwrap();
        let after = start.elapsed();
        assert_eq!(r.status(), status, "node-{to}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: serde_json::Value = r.json().await.unwrap();
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("node \"node-{to}\" at ")) && error.contains(says),
            "{error}"
        );
        assert!(
            after < timeout + Duration::from_secs(2),
            "answered after {after:?}"
        );
        if status == 504 {
            assert!(
                after >= timeout,
                "answered after {after:?}, before the timeout"
            );
        }
    }
    cluster.stop().await;
}
