//! TCP half-close carried end to end: client → `piko forward` (or a raw WebSocket) → server →
//! yamux stream → connector → local service, and back. A side that shuts down its write side
//! can still read everything the other side sends (docs/protocol.md, "Half-close").

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use piko_connector_core::config::Protocol;
use piko_protocol::paths::HALF_CLOSE_HEADER;
use piko_tests::echo::pattern;
use piko_tests::{TestConnector, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const KB: usize = 1024;
const MB: usize = 1024 * 1024;
const CONNECTIONS: usize = 20;
const DEADLINE: Duration = Duration::from_secs(60);

/// The payload of connection `i`: distinct per connection so crossed streams show.
fn payload(n: usize, i: usize) -> Vec<u8> {
    let mut p = pattern(n + i);
    p.drain(..i);
    p
}

/// A server, a connector serving TCP endpoint `endpoint` from `target`, and `piko forward`
/// listening locally; returns the forward's address and what keeps them running.
async fn through_forward(
    endpoint: &str,
    target: SocketAddr,
) -> (SocketAddr, TestServer, TestConnector, CancellationToken) {
    let server = TestServer::start().await;
    let conn = TestConnector::start(
        &server.upstream_url(),
        &[(endpoint, &target.to_string(), Protocol::Tcp)],
    );
    server.wait_for_upstreams(endpoint, 1).await;
    let listener = piko_tests::loopback_listener().await;
    let local = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(piko_connector_core::forward::forward_tcp(
        listener,
        server.proxy_url(),
        endpoint.parse().unwrap(),
        None,
        shutdown.clone(),
    ));
    (local, server, conn, shutdown)
}

/// Write `n` bytes, shut down the write side, read to EOF: returns what came back.
async fn send_then_read_to_eof(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    back
}

async fn all_answers_arrive_through_forward(size: usize) {
    let service = piko_tests::tcp_answer_after_eof().await;
    let (local, _server, _conn, shutdown) = through_forward("answer", service).await;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            tokio::spawn(async move {
                let data = payload(size, i);
                let back = send_then_read_to_eof(local, data.clone()).await;
                assert_eq!(
                    back.len(),
                    data.len(),
                    "connection {i}: bytes answered after half-close"
                );
                assert!(back == data, "connection {i}: the answer is intact");
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(DEADLINE, t)
            .await
            .expect("every connection ends in time")
            .unwrap();
    }
    shutdown.cancel();
}

#[tokio::test]
async fn forward_delivers_every_answer_to_20_clients_that_half_close_after_1_kb() {
    all_answers_arrive_through_forward(KB).await;
}

#[tokio::test]
async fn forward_delivers_every_answer_to_20_clients_that_half_close_after_1_mb() {
    all_answers_arrive_through_forward(MB).await;
}

/// A WebSocket to the proxy port's TCP route, asking for the half-close convention.
async fn raw_ws(
    server: &TestServer,
    endpoint: &str,
    half_close: bool,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let url = format!("ws://{}/_piko/v1/tcp/{endpoint}", server.proxy_addr);
    let mut req = url.into_client_request().unwrap();
    if half_close {
        req.headers_mut()
            .insert(HALF_CLOSE_HEADER, "1".parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get(HALF_CLOSE_HEADER)
            .map(|v| v.as_bytes().to_vec()),
        half_close.then(|| b"1".to_vec()),
        "the server agrees to the convention exactly when asked"
    );
    ws
}

/// A raw WebSocket client (tokio-tungstenite only) speaking the convention: binary messages,
/// an empty binary message for "my write side is done", then read until the server's empty
/// message, then the close handshake.
#[tokio::test]
async fn a_raw_websocket_client_half_closes_with_an_empty_message_and_gets_every_answer() {
    let service = piko_tests::tcp_answer_after_eof().await;
    let server = TestServer::start().await;
    let _conn = TestConnector::start(
        &server.upstream_url(),
        &[("raw-answer", &service.to_string(), Protocol::Tcp)],
    );
    server.wait_for_upstreams("raw-answer", 1).await;
    for (i, size) in [KB, MB]
        .into_iter()
        .cycle()
        .take(2 * CONNECTIONS)
        .enumerate()
    {
        let exchange = async {
            let mut ws = raw_ws(&server, "raw-answer", true).await;
            let data = payload(size, i);
            for chunk in data.chunks(64 * KB) {
                ws.send(Message::Binary(Bytes::copy_from_slice(chunk)))
                    .await
                    .unwrap();
            }
            ws.send(Message::Binary(Bytes::new())).await.unwrap();
            let mut back = Vec::new();
            loop {
                match ws.next().await.expect("open").expect("message") {
                    Message::Binary(b) if b.is_empty() => break,
                    Message::Binary(b) => back.extend_from_slice(&b),
                    Message::Ping(_) | Message::Pong(_) => {}
                    other => panic!("connection {i}: unexpected {other:?}"),
                }
            }
            assert_eq!(back.len(), data.len(), "connection {i} of {size} bytes");
            assert!(back == data, "connection {i}: the answer is intact");
            // The close handshake ends the connection cleanly.
            ws.close(None).await.unwrap();
            let mut saw_close = false;
            while let Some(msg) = ws.next().await {
                match msg {
                    Ok(Message::Close(_)) => saw_close = true,
                    Ok(_) => {}
                    Err(e) => panic!("connection {i}: close handshake failed: {e}"),
                }
            }
            assert!(saw_close, "connection {i}: the server answered the close");
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .expect("the exchange ends in time");
    }
}

/// Without the convention (the original Go forwarder and generic clients), a client's Close or
/// a connection dropped after its data still ends the stream with FIN: the service reads every
/// byte and a clean end of stream.
#[tokio::test]
async fn a_client_without_the_convention_that_closes_still_delivers_every_byte_and_eof() {
    let (service, mut received) = piko_tests::tcp_half_closing_first(b"").await;
    let server = TestServer::start().await;
    let _conn = TestConnector::start(
        &server.upstream_url(),
        &[("legacy-close", &service.to_string(), Protocol::Tcp)],
    );
    server.wait_for_upstreams("legacy-close", 1).await;
    for (i, with_close_frame) in [true, false, true, false].into_iter().enumerate() {
        let mut ws = raw_ws(&server, "legacy-close", false).await;
        let data = payload(256 * KB, i);
        for chunk in data.chunks(64 * KB) {
            ws.send(Message::Binary(Bytes::copy_from_slice(chunk)))
                .await
                .unwrap();
        }
        if with_close_frame {
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
        } else {
            // The original forwarder closes the TCP connection without a Close frame.
            ws.flush().await.unwrap();
            drop(ws);
        }
        let got = tokio::time::timeout(DEADLINE, received.recv())
            .await
            .expect("the service finishes reading in time")
            .expect("service report");
        let got = got.unwrap_or_else(|e| panic!("connection {i}: the service read failed: {e}"));
        assert_eq!(got.len(), data.len(), "connection {i}");
        assert!(got == data, "connection {i}: intact");
    }
}

/// The local service half-closes first (sends a greeting and shuts down its write side): the
/// client sees EOF after the greeting and can still send, and the service reads it all.
#[tokio::test]
async fn a_local_service_that_half_closes_first_still_receives_everything_the_client_sends() {
    const GREETING: &[u8] = b"hello, send me your data\n";
    let (service, mut received) = piko_tests::tcp_half_closing_first(GREETING).await;
    let (local, _server, _conn, shutdown) = through_forward("greeter", service).await;
    for (i, size) in [KB, MB].into_iter().cycle().take(10).enumerate() {
        let exchange = async {
            let mut s = TcpStream::connect(local).await.unwrap();
            let mut greeting = Vec::new();
            s.read_to_end(&mut greeting).await.unwrap();
            assert_eq!(greeting, GREETING, "connection {i}: the greeting, then EOF");
            let data = payload(size, i);
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            let got = received
                .recv()
                .await
                .expect("service report")
                .unwrap_or_else(|e| panic!("connection {i}: the service read failed: {e}"));
            assert_eq!(got.len(), data.len(), "connection {i} of {size} bytes");
            assert!(got == data, "connection {i}: intact");
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .expect("the exchange ends in time");
    }
    shutdown.cancel();
}

/// The agreement and the empty messages pass a forward to the node holding the upstream.
#[tokio::test]
async fn half_close_survives_the_hop_to_the_node_holding_the_upstream() {
    let cluster = piko_tests::TestCluster::start(2).await;
    let service = piko_tests::tcp_answer_after_eof().await;
    let _conn = TestConnector::start(
        &cluster.nodes[1].upstream_url(),
        &[("far-answer", &service.to_string(), Protocol::Tcp)],
    );
    cluster.wait_for_replicated("far-answer", 1).await;
    let listener = piko_tests::loopback_listener().await;
    let local = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(piko_connector_core::forward::forward_tcp(
        listener,
        cluster.nodes[0].proxy_url(),
        "far-answer".parse().unwrap(),
        None,
        shutdown.clone(),
    ));
    for (i, size) in [KB, MB, KB, MB].into_iter().enumerate() {
        let data = payload(size, i);
        let back = tokio::time::timeout(DEADLINE, send_then_read_to_eof(local, data.clone()))
            .await
            .expect("the exchange ends in time");
        assert_eq!(back.len(), data.len(), "connection {i} through node 0");
        assert!(back == data, "connection {i}: intact");
    }
    shutdown.cancel();
    cluster.stop().await;
}
