//! The status API in the original Go Piko's shapes: its `piko server status` decodes these
//! answers into the structs below (the fields it reads, with its types), so a type that
//! differs (an object where it wants a count) fails here as it fails there.

use std::collections::HashMap;

use piko_tests::{client, EchoUpstream, TestCluster, TestConnector};
use serde::Deserialize;

/// A node in `/status/cluster/nodes` (the original's `NodeMetadata`).
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // decoded for its types, as the original's client does
struct NodeMetadata {
    id: String,
    status: String,
    proxy_addr: String,
    admin_addr: String,
    endpoints: i64,
    upstreams: i64,
}

/// One node in `/status/cluster/nodes/{id|local}` (the original's `Node`).
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Node {
    id: String,
    status: String,
    proxy_addr: String,
    admin_addr: String,
    endpoints: HashMap<String, i64>,
}

async fn get(url: String) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

#[tokio::test]
async fn cluster_status_answers_decode_into_the_originals_shapes_and_forward_asks_another_node() {
    let cluster = TestCluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let echo = EchoUpstream::start().await;
    let connector = TestConnector::http(a, "e1", &echo.target());
    cluster.wait_for_replicated("e1", 1).await;

    // The list, asked of the node without the upstream.
    let r = get(format!("{}/status/cluster/nodes", b.admin_url())).await;
    assert_eq!(r.status(), 200);
    let nodes: Vec<NodeMetadata> = r.json().await.expect("the original's NodeMetadata");
    assert_eq!(nodes.len(), 2);
    let n0 = nodes.iter().find(|n| n.id == "node-0").expect("node-0");
    assert_eq!(
        (n0.endpoints, n0.upstreams, n0.status.as_str()),
        (1, 1, "active")
    );
    assert_eq!(n0.admin_addr, a.admin_addr.to_string());
    let n1 = nodes.iter().find(|n| n.id == "node-1").expect("node-1");
    assert_eq!((n1.endpoints, n1.upstreams), (0, 0));
    // This project's detail stays, under its own name.
    let raw: serde_json::Value = get(format!("{}/status/cluster/nodes", b.admin_url()))
        .await
        .json()
        .await
        .unwrap();
    let raw0 = raw
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "node-0")
        .unwrap();
    assert_eq!(raw0["endpoint_upstreams"]["e1"], 1);

    // `local` and an id.
    for (node, path, id, endpoints) in [
        (a, "local", "node-0", 1),
        (b, "local", "node-1", 0),
        (b, "node-0", "node-0", 1),
    ] {
        let r = get(format!("{}/status/cluster/nodes/{path}", node.admin_url())).await;
        assert_eq!(r.status(), 200, "{path}");
        let n: Node = r.json().await.expect("the original's Node");
        assert_eq!(n.id, id);
        assert_eq!(n.endpoints.len(), endpoints, "{path}: {n:?}");
        if endpoints == 1 {
            assert_eq!(n.endpoints["e1"], 1);
        }
    }

    // `?forward=ID`: node-1 asks node-0 and relays its answer.
    let here: HashMap<String, i64> = get(format!("{}/status/upstream/endpoints", b.admin_url()))
        .await
        .json()
        .await
        .unwrap();
    assert!(here.is_empty(), "node-1 has no upstream: {here:?}");
    let there: HashMap<String, i64> = get(format!(
        "{}/status/upstream/endpoints?forward=node-0",
        b.admin_url()
    ))
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(there, HashMap::from([("e1".to_string(), 1)]));
    let local: Node = get(format!(
        "{}/status/cluster/nodes/local?forward=node-0",
        b.admin_url()
    ))
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(local.id, "node-0");
    // Its own id: answered here. An unknown node: 404, as the original.
    let own = get(format!(
        "{}/status/cluster/nodes/local?forward=node-1",
        b.admin_url()
    ))
    .await;
    assert_eq!(own.json::<Node>().await.unwrap().id, "node-1");
    let r = get(format!(
        "{}/status/upstream/endpoints?forward=nosuch",
        b.admin_url()
    ))
    .await;
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "node \"nosuch\" not found");

    connector.stop().await;
    cluster.stop().await;
}
