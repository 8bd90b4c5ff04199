//! Several nodes as one cluster: joining, the replicated endpoint registry, forwarding to the
//! node that holds an upstream (HTTP, WebSocket, TCP), TLS and mTLS between nodes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use piko_connector_core::config::Protocol;
use piko_tests::tls::{temp_dir, TestCa};
use piko_tests::{client, wait_until, EchoUpstream, TestCluster, TestConnector};
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
        assert!(metrics.contains("piko_cluster_nodes 3\n"), "{metrics}");
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
async fn nodes_talk_over_mutual_tls_and_refuse_a_stranger() {
    let dir = temp_dir("cluster-mtls");
    let ca = TestCa::new("piko cluster ca");
    let ca_file = ca.write(&dir, "ca.pem");
    let leaves: Vec<_> = (0..3)
        .map(|i| ca.issue(&dir, &format!("node-{i}"), &["localhost", "127.0.0.1"]))
        .collect();
    let cluster = TestCluster::start_with(3, |i, config| {
        let leaf = &leaves[i];
        config.cluster_tls = Some(piko_server::tls::TlsFiles {
            cert: leaf.cert.clone(),
            key: leaf.key.clone(),
            client_cas: Some(ca_file.clone()),
        });
        config.cluster_client_tls = Some(
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

    // A node with a certificate from another CA cannot join: the handshake fails and the
    // stranger says why.
    let other = TestCa::new("someone else");
    let stranger = other.issue(&dir, "stranger", &["localhost", "127.0.0.1"]);
    let stranger_ca = other.write(&dir, "other-ca.pem");
    let tls = piko_server::tls::client_config_with(
        Some(&stranger_ca),
        Some((&stranger.cert, &stranger.key)),
    )
    .unwrap();
    let peer = piko_server::cluster::PeerClient::new(Some(tls));
    let addr = cluster.nodes[1].cluster_addr.to_string();
    let err = peer
        .call::<(), serde_json::Value>(&addr, "/piko/cluster/v1/info", None, Duration::from_secs(5))
        .await
        .expect_err("a stranger's certificate chain is refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("cannot reach node"), "{msg}");

    // The right CA but no client certificate: refused by the node (mTLS).
    let no_cert = piko_tests::tls::client_config(&ca.pem, None);
    let peer = piko_server::cluster::PeerClient::new(Some(no_cert));
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
    let info: serde_json::Value = piko_server::cluster::PeerClient::new(Some(member))
        .call::<(), _>(&addr, "/piko/cluster/v1/info", None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(info["member"]["name"], "node-1");
    assert_eq!(info["initialized"], true);
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
