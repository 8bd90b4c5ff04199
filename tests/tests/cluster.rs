//! Several nodes as one cluster: joining, the replicated endpoint registry, forwarding to the
//! node that holds an upstream (HTTP, WebSocket, TCP), TLS and mTLS between nodes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use piko_connector_core::config::Protocol;
use piko_tests::tls::{temp_dir, TestCa};
use piko_tests::{client, wait_until, EchoUpstream, NodeProcess, TestCluster, TestConnector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn three_nodes_elect_one_leader_and_promote_three_voters() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    wait_until("three voters", Duration::from_secs(20), || async {
        let raft = cluster.nodes[leader]
            .admin_json("/status/cluster/raft")
            .await;
        raft["voters"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    for node in &cluster.nodes {
        let raft = node.admin_json("/status/cluster/raft").await;
        assert_eq!(raft["leader"], format!("node-{leader}"), "{raft}");
        let names: Vec<String> = node
            .cluster_nodes()
            .await
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), 3);
        for i in 0..3 {
            assert!(names.contains(&format!("node-{i}")), "{names:?}");
        }
        let metrics = client()
            .get(format!("{}/metrics", node.admin_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("piko_cluster_nodes{status=\"active\"} 3\n"),
            "{metrics}"
        );
        assert!(metrics.contains("piko_raft_term "), "{metrics}");
    }
    cluster.stop().await;
}

#[tokio::test]
async fn any_node_serves_an_endpoint_registered_on_another() {
    let cluster = TestCluster::start(3).await;
    let echo = EchoUpstream::named("on-node-1").await;
    let tcp = piko_tests::tcp_echo().await;
    let _conn = TestConnector::start(
        &cluster.nodes[1].upstream_url(),
        &[
            ("shop", &echo.addr.to_string(), Protocol::Http),
            ("db", &tcp.to_string(), Protocol::Tcp),
        ],
    );
    cluster.nodes[1].wait_for_upstreams("shop", 1).await;
    cluster.wait_for_replicated("shop", 1).await;
    cluster.wait_for_replicated("db", 1).await;

    for node in &cluster.nodes {
        let r = node.get("shop", "/name").await;
        assert_eq!(r.status(), 200, "through node at {}", node.proxy_addr);
        assert_eq!(r.text().await.unwrap(), "on-node-1");
    }

    // Headers as the service sees them after one forward: one X-Forwarded-For entry (the
    // client's), the client's Host, and no Piko headers.
    let r = client()
        .post(format!("{}/headers", cluster.nodes[2].proxy_url()))
        .header("host", "shop.example.com")
        .header("authorization", "Bearer service-own")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(h["host"], "shop.example.com", "{seen}");
    assert_eq!(h["x-forwarded-host"], "shop.example.com", "{seen}");
    assert_eq!(h["authorization"], "Bearer service-own", "{seen}");
    assert!(h.get("x-piko-forward").is_none(), "{seen}");

    // A streamed body both ways.
    let body: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let r = client()
        .post(format!("{}/echo", cluster.nodes[0].proxy_url()))
        .header("x-piko-endpoint", "shop")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);

    // A WebSocket upgrade through node 0.
    let mut req = format!("ws://{}/ws", cluster.nodes[0].proxy_addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-piko-endpoint", "shop".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text("over two nodes".into()))
        .await
        .unwrap();
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "over two nodes");

    // TCP over WebSocket through node 2.
    let listener = piko_tests::loopback_listener().await;
    let local = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(piko_connector_core::forward::forward_tcp(
        listener,
        cluster.nodes[2].proxy_url(),
        "db".parse().unwrap(),
        None,
        shutdown.clone(),
    ));
    let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
    s.write_all(b"ping over the cluster").await.unwrap();
    let mut back = [0u8; 21];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping over the cluster");
    shutdown.cancel();

    // An endpoint nobody has is still a 502 with the usual error, on every node.
    let r = cluster.nodes[0].get("nobody", "/").await;
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "no available upstreams"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn an_upstream_that_leaves_is_removed_everywhere() {
    let cluster = TestCluster::start(3).await;
    let echo = EchoUpstream::named("short-lived").await;
    let conn = TestConnector::start(
        &cluster.nodes[2].upstream_url(),
        &[("brief", &echo.addr.to_string(), Protocol::Http)],
    );
    cluster.wait_for_replicated("brief", 1).await;
    conn.stop().await;
    cluster.wait_for_replicated("brief", 0).await;
    let r = cluster.nodes[0].get("brief", "/name").await;
    assert_eq!(r.status(), 502);
    cluster.stop().await;
}

#[tokio::test]
async fn a_node_that_shuts_down_leaves_the_cluster() {
    let mut cluster = TestCluster::start(3).await;
    let echo = EchoUpstream::named("leaving").await;
    let _conn = TestConnector::start(
        &cluster.nodes[2].upstream_url(),
        &[("gone", &echo.addr.to_string(), Protocol::Http)],
    );
    cluster.wait_for_replicated("gone", 1).await;
    let node = cluster.nodes.remove(2);
    node.stop().await;
    for node in &cluster.nodes {
        wait_until(
            "the node left the membership",
            Duration::from_secs(20),
            || async { node.cluster_nodes().await.len() == 2 },
        )
        .await;
    }
    cluster.wait_for_replicated("gone", 0).await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_draining_node_sends_no_502_to_clients_of_other_nodes() {
    let mut cluster = TestCluster::start(3).await;
    let (one, two) = (
        EchoUpstream::named("one").await,
        EchoUpstream::named("two").await,
    );
    let _c1 = TestConnector::start(
        &cluster.nodes[1].upstream_url(),
        &[("svc", &one.addr.to_string(), Protocol::Http)],
    );
    let _c2 = TestConnector::start(
        &cluster.nodes[2].upstream_url(),
        &[("svc", &two.addr.to_string(), Protocol::Http)],
    );
    cluster.wait_for_replicated("svc", 2).await;
    // A slow request keeps node-2 draining for a while after its shutdown begins.
    let slow_url = format!("{}/slow/1500", cluster.nodes[2].proxy_url());
    let slow = tokio::spawn(async move {
        let r = client()
            .get(slow_url)
            .header("x-piko-endpoint", "svc")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let draining = cluster.nodes.remove(2);
    draining.begin_shutdown();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let r = cluster.nodes[0].get("svc", "/name").await;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "while node-2 drains: {body}");
        *seen.entry(body).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen.contains_key("one"), "{seen:?}");
    let (status, body) = slow.await.unwrap();
    assert_eq!(
        status, 200,
        "the draining node finishes its request: {body}"
    );
    draining.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn nodes_talk_over_mutual_tls_and_refuse_a_stranger() {
    let dir = temp_dir("cluster-mtls");
    let ca = TestCa::new("piko cluster ca");
    let ca_file = ca.write(&dir, "ca.pem");
    let leaves: Vec<_> = (0..3)
        .map(|i| ca.issue(&dir, &format!("node-{i}"), &["localhost", "127.0.0.1"]))
        .collect();
    let cluster = TestCluster::start_with(3, |i, config| {
        let leaf = &leaves[i];
        config.cluster.tls = Some(piko_server::tls::TlsFiles {
            cert: leaf.cert.clone(),
            key: leaf.key.clone(),
            client_cas: Some(ca_file.clone()),
        });
        config.cluster.client_tls = Some(
            piko_server::tls::client_config_with(Some(&ca_file), Some((&leaf.cert, &leaf.key)))
                .unwrap(),
        );
    })
    .await;

    // Forwarding crosses the TLS cluster port.
    let echo = EchoUpstream::named("secure").await;
    let _conn = TestConnector::start(
        &cluster.nodes[0].upstream_url(),
        &[("vault", &echo.addr.to_string(), Protocol::Http)],
    );
    cluster.wait_for_replicated("vault", 1).await;
    let r = cluster.nodes[2].get("vault", "/name").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "secure");

    // The cluster port does not speak plain HTTP.
    let plain = client()
        .get(format!(
            "http://{}/piko/cluster/v1/info",
            cluster.nodes[1].cluster_addr
        ))
        .send()
        .await;
    assert!(
        !matches!(&plain, Ok(r) if r.status().is_success()),
        "plain HTTP must not reach the cluster port"
    );

    // A stranger that trusts the cluster's CA but holds a certificate from another CA is
    // refused by the node (it verifies client certificates).
    let other = TestCa::new("someone else");
    let stranger = other.issue(&dir, "stranger", &["localhost", "127.0.0.1"]);
    let tls =
        piko_server::tls::client_config_with(Some(&ca_file), Some((&stranger.cert, &stranger.key)))
            .unwrap();
    let peer = piko_server::cluster::PeerClient::new(Some(tls), None);
    let addr = cluster.nodes[1].cluster_addr.to_string();
    let err = peer
        .call::<(), serde_json::Value>(&addr, "/piko/cluster/v1/info", None, Duration::from_secs(5))
        .await
        .expect_err("a stranger's certificate chain is refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("cannot reach node"), "{msg}");

    // The right CA but no client certificate: refused by the node (mTLS).
    let no_cert = piko_tests::tls::client_config(&ca.pem, None);
    let peer = piko_server::cluster::PeerClient::new(Some(no_cert), None);
    assert!(peer
        .call::<(), serde_json::Value>(&addr, "/piko/cluster/v1/info", None, Duration::from_secs(5))
        .await
        .is_err());

    // With its own certificate a member gets an answer.
    let member = piko_server::tls::client_config_with(
        Some(&ca_file),
        Some((&leaves[0].cert, &leaves[0].key)),
    )
    .unwrap();
    let info: serde_json::Value = piko_server::cluster::PeerClient::new(Some(member), None)
        .call::<(), _>(&addr, "/piko/cluster/v1/info", None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(info["member"]["name"], "node-1");
    assert_eq!(info["initialized"], true);
    cluster.stop().await;
}

#[tokio::test]
async fn a_cluster_token_keeps_strangers_out() {
    const TOKEN: &str = "cluster-secret-0123456789";
    let cluster = TestCluster::start_with(2, |_, config| {
        config.cluster.token = Some(piko_server::config::SecretString(TOKEN.into()));
    })
    .await;
    let echo = EchoUpstream::named("guarded").await;
    let _conn = TestConnector::start(
        &cluster.nodes[0].upstream_url(),
        &[("guarded", &echo.addr.to_string(), Protocol::Http)],
    );
    cluster.wait_for_replicated("guarded", 1).await;
    let r = cluster.nodes[1].get("guarded", "/headers").await;
    assert_eq!(r.status(), 200, "forwarding carries the token");
    let seen: serde_json::Value = r.json().await.unwrap();
    assert!(
        seen["headers"].get("x-piko-cluster-token").is_none(),
        "the token never reaches the service: {seen}"
    );

    let addr = cluster.nodes[1].cluster_addr.to_string();
    let info = |token: Option<&'static str>| {
        let addr = addr.clone();
        async move {
            piko_server::cluster::PeerClient::new(None, token)
                .call::<(), serde_json::Value>(
                    &addr,
                    "/piko/cluster/v1/info",
                    None,
                    Duration::from_secs(5),
                )
                .await
        }
    };
    for (token, want) in [
        (None, "missing cluster token"),
        (Some("wrong-token-0123456789"), "invalid cluster token"),
    ] {
        let e = info(token).await.expect_err("refused").to_string();
        assert!(e.contains("401") && e.contains(want), "{e}");
    }
    assert_eq!(info(Some(TOKEN)).await.unwrap()["member"]["name"], "node-1");
    // A request sent straight to the cluster port, as if forwarded, needs the token too.
    let r = client()
        .get(format!("http://{addr}/name"))
        .header("x-piko-endpoint", "guarded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // With the token, a path that is not a cluster route is not served as a forwarded
    // request either: forwarded requests have a route of their own.
    let r = client()
        .get(format!("http://{addr}/name"))
        .header("x-piko-endpoint", "guarded")
        .header("x-piko-cluster-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not found", "{v}");

    // A node with the wrong token cannot join.
    let seed = cluster.nodes[0].cluster_addr.to_string();
    let outsider = piko_tests::TestServer::start_with(|config| {
        config.cluster.node_id = "outsider".into();
        config.cluster.node_id_generated = false;
        config.cluster.join = vec![seed];
        config.cluster.token = Some(piko_server::config::SecretString(
            "not-the-token-0123456789".into(),
        ));
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = client()
        .get(format!("{}/ready", outsider.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "the outsider never gets in");
    assert_eq!(cluster.nodes[0].cluster_nodes().await.len(), 2);
    outsider.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn bad_cluster_rpc_gets_a_json_error() {
    let cluster = TestCluster::start(1).await;
    let base = format!("http://{}", cluster.nodes[0].cluster_addr);
    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        ("POST", "/piko/cluster/v1/raft/append", b"{not json", 400, "invalid request body"),
        ("POST", "/piko/cluster/v1/raft/vote", b"[]", 400, "invalid request body"),
        ("GET", "/piko/cluster/v1/raft/vote", b"", 405, "method not allowed"),
        ("POST", "/piko/cluster/v1/nope", b"{}", 404, "not found"),
        (
            "POST",
            "/piko/cluster/v1/join",
            br#"{"member":{"name":"a b","proxy_addr":"x:1","upstream_addr":"x:2","admin_addr":"x:3","cluster_addr":"x:4"}}"#,
            400,
            "invalid node id",
        ),
    ];
    for (method, path, body, status, error) in cases {
        let r = client()
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), *status, "{method} {path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().unwrap_or("").contains(error),
            "{method} {path}: {v}"
        );
    }
    // The node still works.
    let raft = cluster.nodes[0].admin_json("/status/cluster/raft").await;
    assert_eq!(raft["state"], "leader", "{raft}");
    cluster.stop().await;
}

async fn process_cluster(tag: &str) -> Vec<NodeProcess> {
    process_cluster_of(tag, 3).await
}

/// `n` node processes: the first starts the cluster, the others join through it.
async fn process_cluster_of(tag: &str, n: usize) -> Vec<NodeProcess> {
    let dir = temp_dir(tag);
    let mut nodes: Vec<NodeProcess> = (0..n)
        .map(|i| {
            NodeProcess::new(&format!("node-{i}"), dir.join(format!("node-{i}"))).with_args(&[
                "--cluster.node-lease",
                "2s",
                "--grace-period",
                "2s",
            ])
        })
        .collect();
    nodes[0].spawn().await;
    let seed = vec![nodes[0].cluster_addr()];
    for node in &mut nodes[1..] {
        node.join = seed.clone();
        node.spawn().await;
    }
    for node in &nodes {
        wait_until(
            &format!("{} sees 3 voters", node.name),
            Duration::from_secs(30),
            || async {
                let raft = node.json("/status/cluster/raft").await;
                let len = |k: &str| raft[k].as_array().map_or(0, Vec::len);
                len("voters") == 3 && len("voters") + len("learners") == nodes.len()
            },
        )
        .await;
    }
    nodes
}

#[tokio::test]
async fn a_killed_node_loses_its_endpoints_and_rejoins_from_its_data_dir() {
    let mut nodes = process_cluster("cluster-kill").await;
    let echo = EchoUpstream::named("on-node-2").await;
    let _conn = TestConnector::start(
        &nodes[2].upstream(),
        &[("svc", &echo.addr.to_string(), Protocol::Http)],
    );
    wait_until("node-0 routes svc", Duration::from_secs(20), || async {
        nodes[0].get("svc", "/name").await == Some((200, "on-node-2".into()))
    })
    .await;

    // A live node keeps its entries well past the lease (2 s): heartbeats renew it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for n in &nodes {
        assert_eq!(n.replicated("svc").await, 1, "{} still routes svc", n.name);
    }

    nodes[2].kill().await;
    // The leader's lease on node-2 (2 s) runs out and its entries go, everywhere.
    for n in &nodes[..2] {
        wait_until(
            &format!("{} drops svc", n.name),
            Duration::from_secs(20),
            || async { n.replicated("svc").await == 0 },
        )
        .await;
    }
    let (status, body) = nodes[0].get("svc", "/name").await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("no available upstreams"), "{body}");

    // Same name, same data dir: it rejoins by itself, and its upstream reconnects to it.
    nodes[2].spawn().await;
    wait_until(
        "node-2 is back with its upstream",
        Duration::from_secs(30),
        || async { nodes[1].get("svc", "/name").await == Some((200, "on-node-2".into())) },
    )
    .await;
    let raft = nodes[2].json("/status/cluster/raft").await;
    assert_eq!(raft["voters"].as_array().map(Vec::len), Some(3), "{raft}");
    assert!(raft["leader"].is_string(), "{raft}");
}

#[tokio::test]
async fn losing_the_leader_elects_another_and_registration_resumes() {
    let mut nodes = process_cluster("cluster-leader").await;
    let leader = nodes[0].leader().await.expect("a leader");
    let li: usize = leader.trim_start_matches("node-").parse().unwrap();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != li).collect();

    // An upstream on a survivor before the failure keeps being served during it.
    let before = EchoUpstream::named("before").await;
    let _c1 = TestConnector::start(
        &nodes[survivors[0]].upstream(),
        &[("early", &before.addr.to_string(), Protocol::Http)],
    );
    wait_until("early is routed", Duration::from_secs(20), || async {
        nodes[survivors[1]].get("early", "/name").await == Some((200, "before".into()))
    })
    .await;

    nodes[li].kill().await;
    wait_until("a new leader", Duration::from_secs(30), || async {
        let a = nodes[survivors[0]].leader().await;
        a.is_some() && a != Some(leader.clone()) && a == nodes[survivors[1]].leader().await
    })
    .await;
    assert_eq!(
        nodes[survivors[1]].get("early", "/name").await,
        Some((200, "before".into())),
        "routing never stopped"
    );

    // A registration after the election reaches the other survivor.
    let after = EchoUpstream::named("after").await;
    let _c2 = TestConnector::start(
        &nodes[survivors[1]].upstream(),
        &[("late", &after.addr.to_string(), Protocol::Http)],
    );
    wait_until(
        "late is routed from the other survivor",
        Duration::from_secs(20),
        || async { nodes[survivors[0]].get("late", "/name").await == Some((200, "after".into())) },
    )
    .await;
}

#[tokio::test]
async fn a_dead_voter_hands_its_seat_to_a_learner() {
    let mut nodes = process_cluster_of("cluster-seat", 4).await;
    let raft = nodes[0].json("/status/cluster/raft").await;
    let learner = raft["learners"][0]
        .as_str()
        .expect("one learner")
        .to_string();
    // Kill a voter that is not the leader, so the test also holds when the leader is node-0.
    let leader = raft["leader"].as_str().unwrap().to_string();
    let victim = raft["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .find(|v| *v != leader)
        .unwrap();
    let vi: usize = victim.trim_start_matches("node-").parse().unwrap();
    nodes[vi].kill().await;
    let watcher = &nodes[(vi + 1) % 4];
    wait_until(
        "the learner takes the dead voter's seat",
        Duration::from_secs(30),
        || async {
            let raft = watcher.json("/status/cluster/raft").await;
            let voters: Vec<&str> = raft["voters"]
                .as_array()
                .map(|v| v.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            voters.len() == 3
                && voters.contains(&learner.as_str())
                && !voters.contains(&victim.as_str())
        },
    )
    .await;
}

#[tokio::test]
async fn the_membership_api_removes_a_node_that_will_not_come_back() {
    let mut nodes = process_cluster("cluster-remove").await;
    nodes[2].kill().await;
    let r = client()
        .delete(format!("{}/cluster/nodes/node-2", nodes[0].admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    for n in &nodes[..2] {
        wait_until("node-2 is gone", Duration::from_secs(20), || async {
            match n.json("/status/cluster/nodes").await {
                serde_json::Value::Array(v) => v.len() == 2,
                _ => false,
            }
        })
        .await;
    }
    let r = client()
        .delete(format!("{}/cluster/nodes/node-9", nodes[1].admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "node \"node-9\" not found"
    );
    // `piko-server status node ID` and `status raft` print the admin API's answers.
    let out = tokio::process::Command::new(piko_tests::bin("piko-server"))
        .args([
            "status",
            "node",
            "node-1",
            "--server.url",
            &nodes[0].admin(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "node-1");
    let out = tokio::process::Command::new(piko_tests::bin("piko-server"))
        .args(["status", "raft", "--server.url", &nodes[0].admin()])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["voters"].as_array().map(Vec::len), Some(2), "{v}");
    let out = tokio::process::Command::new(piko_tests::bin("piko-server"))
        .args(["status", "node", "--server.url", &nodes[0].admin()])
        .output()
        .await
        .unwrap();
    // A usage error: exit 2, as every usage error of the server's command line.
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give the node id"));
}

#[tokio::test]
async fn a_leader_without_quorum_changes_nothing_and_still_exits_on_sigterm() {
    let mut nodes = process_cluster_of("cluster-noquorum", 4).await;
    let raft = nodes[0].json("/status/cluster/raft").await;
    let leader = raft["leader"].as_str().unwrap().to_string();
    let li: usize = leader.trim_start_matches("node-").parse().unwrap();
    let victims: Vec<usize> = raft["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap()
                .trim_start_matches("node-")
                .parse()
                .unwrap()
        })
        .filter(|i| *i != li)
        .collect();
    assert_eq!(victims.len(), 2);
    for v in &victims {
        nodes[*v].kill().await;
    }
    // Two of three voters gone: no change can commit, so none is tried (a half-made one
    // would leave the group stuck in a joint configuration).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let raft = nodes[li].json("/status/cluster/raft").await;
    assert_eq!(raft["voters"].as_array().map(Vec::len), Some(3), "{raft}");
    // SIGTERM still ends the leader promptly, with exit code 0.
    let status = nodes[li].terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_voter_that_lost_its_data_rejoins_as_a_learner_first() {
    let mut nodes = process_cluster("cluster-fresh").await;
    let raft = nodes[0].json("/status/cluster/raft").await;
    let leader = raft["leader"].as_str().unwrap().to_string();
    let vi = (0..3)
        .find(|i| format!("node-{i}") != leader)
        .expect("a voter that does not lead");
    nodes[vi].kill().await;
    std::fs::remove_dir_all(nodes[vi].data_dir()).unwrap();
    nodes[vi].join = vec![nodes[(vi + 1) % 3].cluster_addr()];
    nodes[vi].spawn().await;
    let li: usize = leader.trim_start_matches("node-").parse().unwrap();
    wait_until(
        "the leader demotes the forgetful voter, then promotes it again",
        Duration::from_secs(30),
        || async {
            let log = nodes[li].log();
            let raft = nodes[vi].json("/status/cluster/raft").await;
            log.contains("without its raft state; it rejoins as a learner")
                && raft["voters"].as_array().map(Vec::len) == Some(3)
                && raft["voters"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|n| *n == format!("node-{vi}").as_str()))
        },
    )
    .await;
}

/// A local service that answers every request with what reached it: method, path and query,
/// and headers, as JSON.
async fn request_mirror() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use http_body_util::{BodyExt, Full};
    let listener = piko_tests::loopback_listener().await;
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let headers: serde_json::Map<String, serde_json::Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                        .collect();
                    let seen = serde_json::json!({
                        "method": req.method().as_str(),
                        "path": req.uri().path_and_query().map_or("", |p| p.as_str()),
                        "headers": headers,
                    });
                    let _ = req.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        bytes::Bytes::from(seen.to_string()),
                    )))
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

fn raft_id(name: &str) -> u64 {
    piko_server::cluster::types::raft_id(name)
}

fn member_json(name: &str, cluster_addr: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "proxy_addr": "127.0.0.1:1",
        "upstream_addr": "127.0.0.1:2",
        "admin_addr": "127.0.0.1:3",
        "cluster_addr": cluster_addr,
    })
}

/// A Raft vote request from `candidate` in `term`, as openraft encodes it.
fn vote_json(candidate: u64, term: u64) -> serde_json::Value {
    serde_json::json!({
        "vote": {"leader_id": {"term": term, "node_id": candidate}, "committed": false},
        "last_log_id": {"leader_id": {"term": term, "node_id": candidate}, "index": 1_000_000},
    })
}

/// A Raft heartbeat (AppendEntries without entries) from `leader` in `term`.
fn append_json(leader: u64, term: u64) -> serde_json::Value {
    serde_json::json!({
        "vote": {"leader_id": {"term": term, "node_id": leader}, "committed": true},
        "prev_log_id": null,
        "entries": [],
        "leader_commit": null,
    })
}

/// The first chunk of a Raft snapshot from `leader` in `term`.
fn snapshot_json(leader: u64, term: u64) -> serde_json::Value {
    serde_json::json!({
        "vote": {"leader_id": {"term": term, "node_id": leader}, "committed": true},
        "meta": {
            "last_log_id": {"leader_id": {"term": term, "node_id": leader}, "index": 1_000_000},
            "last_membership": {"log_id": null, "membership": {"configs": [], "nodes": {}}},
            "snapshot_id": "rogue",
        },
        "offset": 0,
        "data": [],
        "done": false,
    })
}

#[tokio::test]
async fn cluster_rpc_paths_sent_to_the_proxy_port_reach_the_service_never_raft() {
    let cluster = TestCluster::start(2).await;
    let (mirror, _mirror_task) = request_mirror().await;
    let _conn = TestConnector::start(
        &cluster.nodes[0].upstream_url(),
        &[("svc", &mirror.to_string(), Protocol::Http)],
    );
    cluster.wait_for_replicated("svc", 1).await;
    let term = cluster.nodes[0].admin_json("/status/cluster/raft").await["term"]
        .as_u64()
        .unwrap();
    let rogue = raft_id("rogue");
    let calls: Vec<(&str, &str, serde_json::Value)> = vec![
        (
            "GET",
            "/piko/cluster/v1/info?probe=1",
            serde_json::Value::Null,
        ),
        (
            "POST",
            "/piko/cluster/v1/write",
            serde_json::json!({"SetEndpoints": {"node": raft_id("node-1"), "counts": {"stolen": 1}}}),
        ),
        (
            "POST",
            "/piko/cluster/v1/join",
            serde_json::json!({"member": member_json("rogue", "127.0.0.1:9"), "fresh": true}),
        ),
        (
            "POST",
            "/piko/cluster/v1/raft/append",
            append_json(rogue, term + 1),
        ),
        (
            "POST",
            "/piko/cluster/v1/raft/snapshot",
            snapshot_json(rogue, term + 1),
        ),
        (
            "POST",
            "/piko/cluster/v1/leave",
            serde_json::json!({"member": member_json("node-1", "127.0.0.1:9")}),
        ),
        (
            "POST",
            "/piko/cluster/v1/raft/vote",
            vote_json(rogue, u64::MAX),
        ),
        // Whatever the client claims in the headers of the node-to-node hop.
        ("POST", "/piko/cluster/v1/forward", serde_json::json!({})),
    ];
    for (method, path, body) in &calls {
        let mut req = client()
            .request(
                method.parse().unwrap(),
                format!("{}{path}", cluster.nodes[1].proxy_url()),
            )
            .header("x-piko-endpoint", "svc")
            .header("x-piko-forward", "true")
            .header("x-piko-cluster-token", "made-up-token-0123456789")
            .header("x-piko-forward-target", "/piko/cluster/v1/join");
        if !body.is_null() {
            req = req.json(body);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "{method} {path}: {text}");
        let seen: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not the service's answer: {text}"));
        assert_eq!(
            seen["path"], *path,
            "the service sees the client's path: {seen}"
        );
        assert_eq!(seen["method"], *method, "{seen}");
        for h in [
            "x-piko-cluster-token",
            "x-piko-forward-target",
            "x-piko-forward",
        ] {
            assert!(
                seen["headers"].get(h).is_none(),
                "{h} reached the service: {seen}"
            );
        }
    }

    // Nothing ran as cluster RPC: same members, no stolen entry, no absurd term.
    for node in &cluster.nodes {
        let names: Vec<String> = node
            .cluster_nodes()
            .await
            .iter()
            .map(|n| n["id"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(names, ["node-0", "node-1"], "membership unchanged");
        assert_eq!(node.replicated_upstreams("stolen").await, 0);
        let raft = node.admin_json("/status/cluster/raft").await;
        assert!(raft["term"].as_u64().unwrap() < 1000, "{raft}");
        assert_eq!(raft["leader"], "node-0", "{raft}");
        let ready = client()
            .get(format!("{}/ready", node.admin_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
    cluster.stop().await;
}

/// POST `body` to `path` on the cluster port at `addr`: status and JSON answer.
async fn cluster_post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = client()
        .post(format!("http://{addr}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[tokio::test]
async fn raft_rpc_from_non_members_and_absurd_terms_are_refused() {
    let cluster = TestCluster::start(2).await;
    let term = cluster.nodes[1].admin_json("/status/cluster/raft").await["term"]
        .as_u64()
        .unwrap();
    let (rogue, leader) = (raft_id("rogue"), raft_id("node-0"));
    let addr = cluster.nodes[1].cluster_addr;
    let cases: Vec<(&str, serde_json::Value, u16, &str)> = vec![
        (
            "/piko/cluster/v1/raft/vote",
            vote_json(rogue, term + 1),
            403,
            "not a voter",
        ),
        (
            "/piko/cluster/v1/raft/append",
            append_json(rogue, term + 1),
            403,
            "not a member",
        ),
        (
            "/piko/cluster/v1/raft/snapshot",
            snapshot_json(rogue, term + 1),
            403,
            "not a member",
        ),
        (
            "/piko/cluster/v1/raft/vote",
            vote_json(leader, u64::MAX),
            400,
            "term",
        ),
        (
            "/piko/cluster/v1/raft/append",
            append_json(leader, 1 << 62),
            400,
            "term",
        ),
        (
            "/piko/cluster/v1/raft/append",
            append_json(leader, term + (1 << 33)),
            400,
            "term",
        ),
    ];
    for (path, body, status, error) in &cases {
        let (got, answer) = cluster_post(addr, path, body).await;
        assert_eq!(got, *status, "{path} {body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap_or("").contains(error),
            "{path}: {answer}"
        );
    }
    // The node never saw them: its term is unchanged and the cluster still works.
    for node in &cluster.nodes {
        let raft = node.admin_json("/status/cluster/raft").await;
        assert!(raft["term"].as_u64().unwrap() < term + 10, "{raft}");
        assert_eq!(raft["leader"], "node-0", "{raft}");
    }
    let echo = EchoUpstream::named("still-works").await;
    let _conn = TestConnector::start(
        &cluster.nodes[1].upstream_url(),
        &[("after", &echo.addr.to_string(), Protocol::Http)],
    );
    cluster.wait_for_replicated("after", 1).await;
    let r = cluster.nodes[0].get("after", "/name").await;
    assert_eq!(r.text().await.unwrap(), "still-works");
    cluster.stop().await;
}

#[tokio::test]
async fn a_node_whose_certificate_does_not_name_it_cannot_join() {
    let dir = temp_dir("cluster-identity");
    let ca = TestCa::new("piko cluster ca");
    let ca_file = ca.write(&dir, "ca.pem");
    let leaf = ca.issue(&dir, "node-0", &["localhost", "127.0.0.1"]);
    let cluster = TestCluster::start_with(1, |_, config| {
        config.cluster.tls = Some(piko_server::tls::TlsFiles {
            cert: leaf.cert.clone(),
            key: leaf.key.clone(),
            client_cas: Some(ca_file.clone()),
        });
        config.cluster.client_tls = Some(
            piko_server::tls::client_config_with(Some(&ca_file), Some((&leaf.cert, &leaf.key)))
                .unwrap(),
        );
    })
    .await;
    // A certificate of the cluster's CA, but for another host than the one it claims.
    let rogue = ca.issue(&dir, "rogue", &["rogue.test"]);
    let tls = piko_server::tls::client_config_with(Some(&ca_file), Some((&rogue.cert, &rogue.key)))
        .unwrap();
    let peer = piko_server::cluster::PeerClient::new(Some(tls), None);
    let addr = format!("localhost:{}", cluster.nodes[0].cluster_addr.port());
    let join = serde_json::json!({"member": member_json("rogue", "127.0.0.1:9"), "fresh": true});
    let err = peer
        .call::<_, serde_json::Value>(
            &addr,
            "/piko/cluster/v1/join",
            Some(&join),
            Duration::from_secs(20),
        )
        .await
        .expect_err("the join is refused");
    let msg = err.to_string();
    assert!(msg.contains("403") && msg.contains("certificate"), "{msg}");
    // Nor may it speak for a member.
    let write =
        serde_json::json!({"SetEndpoints": {"node": raft_id("node-0"), "counts": {"stolen": 1}}});
    let err = peer
        .call::<_, serde_json::Value>(
            &addr,
            "/piko/cluster/v1/write",
            Some(&write),
            Duration::from_secs(10),
        )
        .await
        .expect_err("the write is refused");
    assert!(err.to_string().contains("403"), "{err}");
    assert_eq!(cluster.nodes[0].cluster_nodes().await.len(), 1);
    assert_eq!(cluster.nodes[0].replicated_upstreams("stolen").await, 0);
    cluster.stop().await;
}
