//! Graceful shutdown: readiness turns 503, in-flight requests finish, upstreams are released.

use std::time::Duration;

use piko_tests::{client, wait_until, EchoUpstream, TestConnector, TestServer};

#[tokio::test]
async fn in_flight_requests_finish_and_ready_turns_503() {
    let server = TestServer::start().await;
    let echo = EchoUpstream::start().await;
    let _conn = TestConnector::http(&server, "drain", &echo.target());
    server.wait_for_upstreams("drain", 1).await;
    let url = format!("{}/slow/800", server.proxy_url());
    let inflight = tokio::spawn(async move {
        client()
            .get(url)
            .header("x-piko-endpoint", "drain")
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.begin_shutdown();
    let admin = server.admin_url();
    wait_until("/ready answers 503", Duration::from_secs(2), || async {
        matches!(client().get(format!("{admin}/ready")).send().await, Ok(r) if r.status() == 503)
    })
    .await;
    let health = client()
        .get(format!("{admin}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health stays up while draining");
    let resp = inflight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("the node stops after draining");
}
