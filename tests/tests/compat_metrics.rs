//! `/metrics` against the original Go Piko's Grafana dashboards (`monitoring/dashboards/` of
//! its v0.9 repository): every series their panels query is there, with the labels they
//! group by. Its gossip dashboard is left out: this cluster has no gossip (docs/migrating.md).

use piko_tests::{client, get_endpoint, EchoUpstream, TestCluster, TestConnector, TestServer};

/// The series the original's `proxy.json` and `cluster.json` dashboards query.
const DASHBOARD_SERIES: [&str; 9] = [
    "piko_cluster_nodes{status=\"active\"}",
    "piko_proxy_requests_total{",
    "piko_proxy_request_latency_seconds_bucket{",
    "piko_proxy_request_size_bytes_bucket{",
    "piko_proxy_response_size_bytes_bucket{",
    "piko_upstreams_upstream_requests_total",
    "piko_upstreams_remote_requests_total{node_id=\"node-0\"}",
    "piko_upstreams_connected_upstreams",
    "piko_upstreams_registered_endpoints",
];

async fn scrape(node: &TestServer) -> String {
    client()
        .get(format!("{}/metrics", node.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first sample of `series` (a name with the start of its labels).
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn every_series_of_the_originals_dashboards_is_exported() {
    let cluster = TestCluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let echo = EchoUpstream::start().await;
    let connector = TestConnector::http(a, "e1", &echo.target());
    cluster.wait_for_replicated("e1", 1).await;
    // One request served by node-0's own upstream, two forwarded by node-1 to node-0.
    assert_eq!(
        get_endpoint(&a.proxy_url(), "e1", "/echo").await.unwrap().0,
        200
    );
    for _ in 0..2 {
        assert_eq!(
            get_endpoint(&b.proxy_url(), "e1", "/echo").await.unwrap().0,
            200
        );
    }
    let (ma, mb) = (scrape(a).await, scrape(b).await);
    let both = format!("{ma}{mb}");
    for series in DASHBOARD_SERIES {
        assert!(
            both.lines().any(|l| l.starts_with(series)),
            "{series} missing from\n{both}"
        );
    }
    assert_eq!(
        value(&ma, "piko_cluster_nodes{status=\"active\"}"),
        Some(2.0)
    );
    assert_eq!(
        value(
            &mb,
            "piko_upstreams_remote_requests_total{node_id=\"node-0\"}"
        ),
        Some(2.0)
    );
    // node-0 sent all three to its upstream; node-1 none.
    assert_eq!(
        value(&ma, "piko_upstreams_upstream_requests_total"),
        Some(3.0)
    );
    assert_eq!(
        value(&mb, "piko_upstreams_upstream_requests_total"),
        Some(0.0)
    );
    // Every proxied request is counted by size on the node that took it.
    assert_eq!(value(&mb, "piko_proxy_request_size_bytes_count"), Some(2.0));
    assert_eq!(
        value(&mb, "piko_proxy_response_size_bytes_count"),
        Some(2.0)
    );
    connector.stop().await;
    cluster.stop().await;
}
