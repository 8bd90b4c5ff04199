//! `proxy.http.read_timeout` and `proxy.http.write_timeout` through the real `piko-server`
//! binary: a request body that arrives too slowly, a response that is sent too slowly, and
//! upgrades, which outlive both (Go's server clears its deadlines when a connection is
//! hijacked).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use piko_connector_core::config::Protocol;
use piko_tests::{client, tcp_echo, EchoUpstream, NodeProcess, TestConnector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A node started with `args`, serving endpoint `t` from an [`EchoUpstream`] and `raw` from a
/// TCP echo.
async fn node_with(args: &[&str]) -> (NodeProcess, EchoUpstream, TestConnector) {
    let node = NodeProcess::start(args).await;
    let echo = EchoUpstream::start().await;
    let tcp = tcp_echo().await.to_string();
    let conn = TestConnector::start(
        &node.upstream(),
        &[
            ("t", &echo.target(), Protocol::Http),
            ("raw", &tcp, Protocol::Tcp),
        ],
    );
    node.wait_for_upstreams("t", 1).await;
    node.wait_for_upstreams("raw", 1).await;
    (node, echo, conn)
}

/// Write `request` on a new connection to `addr`, then read until the server closes it.
/// Returns what was read and when the connection closed; panics if it stays open for 10 s.
async fn until_closed(addr: SocketAddr, request: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Err(_) => panic!(
                "connection still open after 10 s; read: {}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

const READ_LINE: &str = "proxy.http.read_timeout: the request body did not arrive in time";

#[tokio::test]
async fn a_request_body_slower_than_read_timeout_gets_408_or_its_connection_closed() {
    let (node, _echo, _conn) = node_with(&["--proxy.http.read-timeout", "500ms"]).await;

    // The service reads the whole body before it answers, so nothing of the response has
    // started: a 408 with a JSON error, then the connection closes (its body is unread).
    let (answer, after) = until_closed(
        node.proxy_addr(),
        b"POST /upload HTTP/1.1\r\nhost: t\r\nx-piko-endpoint: t\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    assert!(
        answer.ends_with("{\"error\":\"request timeout\"}\n"),
        "{answer}"
    );
    assert!(
        after >= Duration::from_millis(400) && after < Duration::from_secs(5),
        "answered after {after:?}"
    );

    // The service echoes the body as it comes, so the response has started: the connection
    // is closed before the response's end (no last chunk).
    let (answer, after) = until_closed(
        node.proxy_addr(),
        b"POST /echo HTTP/1.1\r\nhost: t\r\nx-piko-endpoint: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("hello"), "{answer}");
    assert!(!answer.ends_with("0\r\n\r\n"), "cut, not ended: {answer}");
    assert!(after < Duration::from_secs(5), "closed after {after:?}");

    // A body that arrives in time passes whole.
    let body = vec![7u8; 256 * 1024];
    let r = client()
        .post(format!("{}/upload", node.proxy()))
        .header("x-piko-endpoint", "t")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["len"], 256 * 1024);

    let log = node.log();
    assert_eq!(
        log.matches(READ_LINE).count(),
        2,
        "one line per cut request: {log}"
    );
    assert!(!log.contains("not enforced"), "{log}");
}

#[tokio::test]
async fn a_response_slower_than_write_timeout_gets_504_or_its_connection_closed() {
    let (node, _echo, _conn) = node_with(&["--proxy.http.write-timeout", "500ms"]).await;
    let get = |path: &str| {
        client()
            .get(format!("{}{path}", node.proxy()))
            .header("x-piko-endpoint", "t")
            .send()
    };

    // No response head in time: 504 with a JSON error.
    let start = Instant::now();
    let r = get("/slow/3000").await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "response timeout");
    let after = start.elapsed();
    assert!(
        after >= Duration::from_millis(400) && after < Duration::from_secs(2),
        "answered after {after:?}"
    );

    // The head in time, then a body that never ends: the connection is closed at the limit.
    let start = Instant::now();
    let r = get("/drip/50").await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await;
    assert!(body.is_err(), "the response was cut: {body:?}");
    let after = start.elapsed();
    assert!(after < Duration::from_secs(3), "cut after {after:?}");

    // A response sent in time is whole.
    let r = get("/bytes/300000").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 300_000);

    let log = node.log();
    assert!(
        log.contains("proxy.http.write_timeout: no response could be started in time"),
        "{log}"
    );
    assert!(
        log.contains("proxy.http.write_timeout: the response was not sent in time"),
        "{log}"
    );
}

#[tokio::test]
async fn a_websocket_and_a_tcp_connection_outlive_both_timeouts() {
    let (node, _echo, _conn) = node_with(&[
        "--proxy.http.read-timeout",
        "300ms",
        "--proxy.http.write-timeout",
        "300ms",
    ])
    .await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", node.proxy_addr()),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-piko-endpoint", "t".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (mut tcp, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/_piko/v1/tcp/raw", node.proxy_addr()))
            .await
            .unwrap();

    // Well past both limits, each connection still carries data both ways.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let msg = format!("round {round}");
        ws.send(Message::Text(msg.clone().into())).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("websocket echo in time")
            .expect("websocket open")
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);

        tcp.send(Message::Binary(msg.clone().into_bytes().into()))
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < msg.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), tcp.next())
                .await
                .expect("tcp echo in time")
                .expect("tcp connection open")
                .unwrap();
            got.extend_from_slice(&frame.into_data());
        }
        assert_eq!(got, msg.as_bytes());
    }
    let log = node.log();
    assert!(!log.contains("proxy.http.read_timeout:"), "{log}");
    assert!(!log.contains("proxy.http.write_timeout:"), "{log}");
}

#[tokio::test]
async fn a_forwarded_request_has_the_deadlines_of_the_node_that_took_it() {
    // node-1 holds the upstream; node-0 takes the client's request and forwards it.
    let cluster = piko_tests::TestCluster::start_with(2, |i, c| {
        if i == 0 {
            c.proxy.http.read_timeout = Some(Duration::from_millis(500));
            c.proxy.http.write_timeout = Some(Duration::from_millis(1500));
        }
    })
    .await;
    let echo = EchoUpstream::start().await;
    let _conn = TestConnector::http(&cluster.nodes[1], "far", &echo.target());
    cluster.nodes[1].wait_for_upstreams("far", 1).await;
    cluster.wait_for_replicated("far", 1).await;
    let entry = cluster.nodes[0].proxy_addr;

    let (answer, after) = until_closed(
        entry,
        b"POST /upload HTTP/1.1\r\nhost: far.piko.test\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.ends_with("{\"error\":\"request timeout\"}\n"),
        "{answer}"
    );
    assert!(
        after < Duration::from_millis(1400),
        "answered after {after:?}"
    );

    let r = client()
        .get(format!("http://{entry}/slow/3000"))
        .header("host", "far.piko.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "response timeout");

    let r = client()
        .get(format!("http://{entry}/drip/50"))
        .header("host", "far.piko.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "the forwarded response was cut");
    cluster.stop().await;
}
