//! The proxy data path on one node (and one forward between two): routing, errors, bodies,
//! upgrades, streaming, HTTP/2, and what a client may claim in `X-Forwarded-*`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use piko_connector_core::config::Protocol;
use piko_tests::echo::{fnv1a, pattern, timed_chunks, FNV_INIT};
use piko_tests::{client, EchoUpstream, TestConnector, TestServer};
use tokio_tungstenite::tungstenite::Message;

async fn setup(endpoint: &str) -> (TestServer, EchoUpstream, TestConnector) {
    let server = TestServer::start().await;
    let echo = EchoUpstream::start().await;
    let conn = TestConnector::http(&server, endpoint, &echo.target());
    server.wait_for_upstreams(endpoint, 1).await;
    (server, echo, conn)
}

async fn json(resp: reqwest::Response) -> (u16, String, serde_json::Value) {
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, ctype, body)
}

#[tokio::test]
async fn routes_by_header_and_by_host() {
    let (server, _echo, _conn) = setup("shop").await;
    let c = client();
    let r = c
        .get(format!("{}/name", server.proxy_url()))
        .header("x-piko-endpoint", "shop")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "echo");

    // Host: first label of a dotted name, port ignored.
    let r = c
        .get(format!("{}/name", server.proxy_url()))
        .header("host", "shop.piko.example.com:8000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "echo".to_string())
    );

    // The header wins over Host.
    let r = c
        .get(format!("{}/name", server.proxy_url()))
        .header("host", "other.example.com")
        .header("x-piko-endpoint", "shop")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn every_proxy_error_is_json() {
    let (server, _echo, _conn) = setup("shop").await;
    let c = client();
    let url = format!("{}/name", server.proxy_url());
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (c.get(&url), 400, "missing endpoint id"),
        (
            c.get(&url).header("host", "localhost:8000"),
            400,
            "missing endpoint id",
        ),
        (
            c.get(&url).header("x-piko-endpoint", "bad id!"),
            400,
            "endpoint id has invalid character ' ' at byte 3; use letters, digits, '-', '_' or '.'",
        ),
        (
            c.get(&url).header("x-piko-endpoint", "x".repeat(200)),
            400,
            "endpoint id is 200 bytes long; the limit is 128",
        ),
        (
            c.get(&url).header("x-piko-endpoint", "nobody"),
            502,
            "no available upstreams",
        ),
        (
            c.get(&url).header("host", "nobody.example.com"),
            502,
            "no available upstreams",
        ),
    ];
    for (req, status, msg) in cases {
        let (s, ctype, body) = json(req.send().await.unwrap()).await;
        assert_eq!(
            (s, ctype.as_str(), body["error"].as_str()),
            (status, "application/json", Some(msg))
        );
    }
}

#[tokio::test]
async fn slow_upstream_gives_504() {
    let server = TestServer::start_with(|c| c.proxy.timeout = Duration::from_millis(300)).await;
    let echo = EchoUpstream::start().await;
    let _conn = TestConnector::http(&server, "slow", &echo.target());
    server.wait_for_upstreams("slow", 1).await;
    let started = std::time::Instant::now();
    let r = server.get("slow", "/slow/3000").await;
    let (s, _, body) = json(r).await;
    assert_eq!((s, body["error"].as_str()), (504, Some("upstream timeout")));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout fires on time: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn local_target_down_gives_502_quickly() {
    let server = TestServer::start().await;
    // A port with nothing listening.
    let dead = piko_tests::loopback_listener().await.local_addr().unwrap();
    let _conn = TestConnector::http(&server, "down", &dead.to_string());
    server.wait_for_upstreams("down", 1).await;
    let started = std::time::Instant::now();
    let r = server.get("down", "/").await;
    let (s, ctype, body) = json(r).await;
    assert_eq!((s, ctype.as_str()), (502, "application/json"));
    assert!(body["error"].is_string(), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn upload_20mb_and_download_64mb_intact() {
    let (server, _echo, _conn) = setup("big").await;
    let c = client();
    let up = pattern(20 << 20);
    let want = fnv1a(&up, FNV_INIT);
    let r = c
        .post(format!("{}/upload", server.proxy_url()))
        .header("x-piko-endpoint", "big")
        .body(up)
        .send()
        .await
        .unwrap();
    let (s, _, body) = json(r).await;
    assert_eq!(s, 200);
    assert_eq!(
        (body["len"].as_u64(), body["hash"].as_u64()),
        (Some(20 << 20), Some(want))
    );

    let n = 64usize << 20;
    let r = c
        .get(format!("{}/bytes/{n}", server.proxy_url()))
        .header("x-piko-endpoint", "big")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let (mut len, mut hash) = (0usize, FNV_INIT);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        len += chunk.len();
        hash = fnv1a(&chunk, hash);
    }
    assert_eq!(len, n);
    assert_eq!(hash, fnv1a(&pattern(n), FNV_INIT));
}

#[tokio::test]
async fn echo_streams_the_body_back() {
    let (server, _echo, _conn) = setup("echo").await;
    let body = pattern(3 << 20);
    let r = client()
        .put(format!("{}/echo", server.proxy_url()))
        .header("x-piko-endpoint", "echo")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test]
async fn forwarded_headers_are_set() {
    let (server, _echo, _conn) = setup("hdr").await;
    let r = client()
        .get(format!("{}/headers?x=1", server.proxy_url()))
        .header("host", "hdr.piko.test")
        .header("x-custom", "kept")
        .header("authorization", "Bearer for-the-service")
        .send()
        .await
        .unwrap();
    let (s, _, v) = json(r).await;
    assert_eq!(s, 200);
    let h = &v["headers"];
    assert_eq!(v["uri"], "/headers?x=1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "hdr.piko.test");
    assert_eq!(h["host"], "hdr.piko.test");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(
        h["authorization"], "Bearer for-the-service",
        "the service gets its own Authorization"
    );
}

#[tokio::test]
async fn websocket_echo_through_the_tunnel() {
    let (server, _echo, _conn) = setup("ws").await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", server.proxy_addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-piko-endpoint", "ws".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let msg = format!("hello {i}");
        ws.send(Message::Text(msg.clone().into())).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    ws.send(Message::Binary(pattern(100_000).into()))
        .await
        .unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_data().as_ref(), pattern(100_000).as_slice());
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    let (server, _echo, _conn) = setup("sse").await;
    let r = server.get("sse", "/sse").await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let chunks = timed_chunks(r).await;
    let text: String = chunks
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .collect();
    assert_eq!(text, "data: one\n\ndata: two\n\n");
    let first = chunks
        .iter()
        .find(|(_, b)| b.starts_with(b"data: one"))
        .expect("first event alone")
        .0;
    let last = chunks.last().unwrap().0;
    assert!(
        last - first >= Duration::from_millis(300),
        "first event arrived before the second was sent: {first:?} vs {last:?}"
    );
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let (server, _echo, _conn) = setup("h2").await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c
        .post(format!("{}/echo", server.proxy_url()))
        .header("x-piko-endpoint", "h2")
        .body(pattern(1 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        pattern(1 << 20).as_slice()
    );
    // Cookies split into several HTTP/2 fields reach the HTTP/1.1 service as one line.
    let r = c
        .get(format!("{}/headers", server.proxy_url()))
        .header("x-piko-endpoint", "h2")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["cookie"], "a=1; b=2", "{seen}");
    // Host-based routing works from the :authority of an HTTP/2 request too (name pinned to loopback).
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .resolve("h2.piko.test", server.proxy_addr)
        .build()
        .unwrap();
    let r = c
        .get(format!(
            "http://h2.piko.test:{}/name",
            server.proxy_addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "echo".to_string())
    );
}

#[tokio::test]
async fn two_upstreams_share_the_load() {
    let server = TestServer::start().await;
    let (a, b) = (
        EchoUpstream::named("a").await,
        EchoUpstream::named("b").await,
    );
    let _ca = TestConnector::http(&server, "lb", &a.target());
    let _cb = TestConnector::http(&server, "lb", &b.target());
    server.wait_for_upstreams("lb", 2).await;
    let c = client();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..20 {
        let r = c
            .get(format!("{}/name", server.proxy_url()))
            .header("x-piko-endpoint", "lb")
            .send()
            .await
            .unwrap();
        *seen.entry(r.text().await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both upstreams served: {seen:?}");
    assert!(seen.values().all(|n| *n >= 5), "load is shared: {seen:?}");
}

#[tokio::test]
async fn an_upstream_that_leaves_gives_502_within_a_second() {
    let (server, _echo, conn) = setup("bye").await;
    let url = format!("{}/name", server.proxy_url());
    assert_eq!(
        client()
            .get(&url)
            .header("x-piko-endpoint", "bye")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    conn.stop().await;
    let started = std::time::Instant::now();
    loop {
        let r = client()
            .get(&url)
            .header("x-piko-endpoint", "bye")
            .send()
            .await
            .unwrap();
        if r.status() == 502 {
            let (_, _, body) = json(r).await;
            assert_eq!(body["error"], "no available upstreams");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still routed {:?} after the upstream left",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tcp_endpoint_over_websocket_from_the_proxy_port() {
    let server = TestServer::start().await;
    let echo = piko_tests::tcp_echo().await;
    let _conn = TestConnector::start(
        &server.upstream_url(),
        &[("raw-tcp", &echo.to_string(), Protocol::Tcp)],
    );
    server.wait_for_upstreams("raw-tcp", 1).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/_piko/v1/tcp/raw-tcp",
        server.proxy_addr
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(b"ping over tcp".to_vec().into()))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 13 {
        got.extend_from_slice(&ws.next().await.unwrap().unwrap().into_data());
    }
    assert_eq!(got, b"ping over tcp");

    // A TCP request for an endpoint nobody serves is refused before the upgrade.
    let err =
        tokio_tungstenite::connect_async(format!("ws://{}/_piko/v1/tcp/none", server.proxy_addr))
            .await
            .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 502),
        other => panic!("expected an HTTP error, got {other}"),
    }
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    tokio::time::sleep(wait).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn oversized_and_slow_request_heads() {
    let server = TestServer::start_with(|c| {
        c.proxy.http.max_header_bytes = 16 * 1024;
        c.proxy.http.read_header_timeout = Duration::from_millis(300);
    })
    .await;
    let mut big = b"GET / HTTP/1.1\r\nhost: x.example.com\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let resp = raw_exchange(server.proxy_addr, &big, Duration::ZERO).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");

    let resp = raw_exchange(
        server.proxy_addr,
        b"GET / HTTP/1.1\r\nhost: x.exa",
        Duration::from_millis(600),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(
        resp.ends_with("{\"error\":\"request header timeout\"}\n"),
        "{resp:?}"
    );

    // A connection that sends nothing is closed without a response.
    let resp = raw_exchange(server.proxy_addr, b"", Duration::from_millis(600)).await;
    assert_eq!(resp, "");
}

/// Reads one whole HTTP/1.1 response with a `content-length` from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed mid-response: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_last_the_idle_timeout_not_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| {
        c.proxy.http.read_header_timeout = Duration::from_millis(300);
        c.proxy.http.idle_timeout = Duration::from_millis(1500);
    })
    .await;
    let echo = EchoUpstream::named("kept").await;
    let _conn = TestConnector::http(&server, "kept", &echo.target());
    server.wait_for_upstreams("kept", 1).await;

    let mut s = tokio::net::TcpStream::connect(server.proxy_addr)
        .await
        .unwrap();
    let request = b"GET /name HTTP/1.1\r\nhost: kept.example.com\r\n\r\n";
    s.write_all(request).await.unwrap();
    assert!(read_response(&mut s).await.ends_with("kept"));
    // Idle for longer than the header timeout: the connection is still there.
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(request).await.unwrap();
    assert!(read_response(&mut s).await.ends_with("kept"));
    // A request in flight longer than both timeouts is not cut.
    s.write_all(b"GET /slow/1800 HTTP/1.1\r\nhost: kept.example.com\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.ends_with("ok"));
    // Idle past the idle timeout: closed quietly, without a response.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed by the server")
        .unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "closed after {:?}, before the idle timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn metrics_count_requests_and_upstreams_with_the_original_names() {
    let (server, _echo, _conn) = setup("metered").await;
    for _ in 0..3 {
        assert_eq!(server.get("metered", "/name").await.status(), 200);
    }
    assert_eq!(server.get("nobody", "/").await.status(), 502);
    let resp = client()
        .get(format!("{}/metrics", server.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = resp.text().await.unwrap();
    for want in [
        "piko_proxy_requests_total{status=\"200\",method=\"GET\"} 3\n",
        "piko_proxy_requests_total{status=\"502\",method=\"GET\"} 1\n",
        "piko_proxy_request_latency_seconds_count{status=\"200\",method=\"GET\"} 3\n",
        "piko_proxy_requests_in_flight 0\n",
        "piko_upstreams_connected_upstreams 1\n",
        "piko_upstreams_registered_endpoints 1\n",
        "piko_cluster_nodes{status=\"active\"} 1\n",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
}

/// Send `request` on a new connection to `addr` and read one whole response.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let (server, _echo, _conn) = setup("spoof").await;
    let r = client()
        .get(format!("{}/headers", server.proxy_url()))
        .header("host", "spoof.piko.test")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "bank.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-real-ip", "203.0.113.7")
        .send()
        .await
        .unwrap();
    let (s, _, v) = json(r).await;
    assert_eq!(s, 200);
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-proto"], "http", "{v}");
    assert_eq!(h["x-forwarded-host"], "spoof.piko.test", "{v}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(h["x-real-ip"], "127.0.0.1", "{v}");
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_refused_with_501() {
    let (server, _echo, _conn) = setup("te").await;
    let resp = exchange(
        server.proxy_addr,
        b"POST /upload HTTP/1.1\r\nhost: te.example.com\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 501"), "{resp:?}");
    assert!(resp.contains("content-type: application/json"), "{resp:?}");
    assert!(
        resp.ends_with("{\"error\":\"unsupported transfer encoding; only chunked is accepted\"}\n"),
        "{resp:?}"
    );
    // Plain chunked still reaches the service.
    let resp = exchange(
        server.proxy_addr,
        b"POST /upload HTTP/1.1\r\nhost: te.example.com\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    assert!(resp.contains("\"len\":5"), "{resp:?}");
}

/// A local service whose responses carry a transfer coding besides `chunked`: the body bytes
/// below are "coded" (any bytes do: the proxy must not touch them), then chunked.
async fn transfer_coded_service() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = piko_tests::loopback_listener().await;
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let resp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n6\r\ncoded!\r\n0\r\n\r\n";
                let _ = s.write_all(resp).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_response_keeps_its_gzip_transfer_coding_through_the_tunnel() {
    let server = TestServer::start().await;
    let coded = transfer_coded_service().await;
    let _conn = TestConnector::http(&server, "coded", &coded.to_string());
    server.wait_for_upstreams("coded", 1).await;
    let resp = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(server.proxy_addr)
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: coded.example.com\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("the whole response within 5 s")
            .unwrap();
        String::from_utf8_lossy(&got).to_string()
    };
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    let head = resp.to_ascii_lowercase();
    assert!(
        head.contains("transfer-encoding: gzip, chunked\r\n"),
        "the client was not told the body is gzip-coded: {resp:?}"
    );
    assert!(resp.contains("\r\ncoded!\r\n"), "{resp:?}");
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_fault_400() {
    let (server, _echo, _conn) = setup("chunks").await;
    let resp = exchange(
        server.proxy_addr,
        b"POST /upload HTTP/1.1\r\nhost: chunks.example.com\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
    assert!(
        resp.ends_with("{\"error\":\"malformed or incomplete request body\"}\n"),
        "{resp:?}"
    );
    // The upstream is fine: the next request is served.
    assert_eq!(server.get("chunks", "/name").await.status(), 200);
}

/// Log lines written while the guard lives, for the current thread (a `#[tokio::test]`
/// runtime runs every task of the test on it).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn start(filter: &str) -> (Self, tracing::subscriber::DefaultGuard) {
        let out = Captured::default();
        let writer = out.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (out, tracing::subscriber::set_default(sub))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

/// A local service that answers `200 ok` to any request head (CONNECT included), as a
/// permissive web server would.
async fn always_ok() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = piko_tests::loopback_listener().await;
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn connect_is_refused_with_405_and_logged_as_sent() {
    let (logs, _guard) = Captured::start("piko_server::proxy::access=info");
    let server = TestServer::start().await;
    let ok = always_ok().await;
    let _conn = TestConnector::http(&server, "conn", &ok.to_string());
    server.wait_for_upstreams("conn", 1).await;
    let resp = exchange(
        server.proxy_addr,
        b"CONNECT conn.example.com:443 HTTP/1.1\r\nhost: conn.example.com:443\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp:?}");
    assert!(resp.contains("content-type: application/json"), "{resp:?}");
    assert!(resp.contains("allow: GET, HEAD, POST"), "{resp:?}");
    assert!(
        resp.ends_with("{\"error\":\"CONNECT is not supported\"}\n"),
        "{resp:?}"
    );
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("method=CONNECT"))
        .unwrap_or_else(|| panic!("no access record for CONNECT in {text:?}"));
    assert!(line.contains("status=405"), "{line}");
    assert!(line.contains("CONNECT is not supported"), "{line}");
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_kept_and_extended() {
    let server =
        TestServer::start_with(|c| c.proxy.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()])
            .await;
    let echo = EchoUpstream::start().await;
    let _conn = TestConnector::http(&server, "lb", &echo.target());
    server.wait_for_upstreams("lb", 1).await;
    let r = client()
        .get(format!("{}/headers", server.proxy_url()))
        .header("host", "lb.piko.test")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "www.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-real-ip", "203.0.113.7")
        .send()
        .await
        .unwrap();
    let (s, _, v) = json(r).await;
    assert_eq!(s, 200);
    let h = &v["headers"];
    assert_eq!(h["x-real-ip"], "203.0.113.7", "{v}");
    assert_eq!(h["x-forwarded-proto"], "https", "{v}");
    assert_eq!(h["x-forwarded-host"], "www.example.com", "{v}");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "{v}");
    // A trusted proxy that sets nothing still gets them set from the connection.
    let r = server.get("lb", "/headers").await;
    let (_, _, v) = json(r).await;
    assert_eq!(v["headers"]["x-forwarded-proto"], "http", "{v}");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(v["headers"]["x-real-ip"], "127.0.0.1", "{v}");
}

#[tokio::test]
async fn across_a_forward_the_first_node_decides_forwarded_headers_and_body_blame() {
    let cluster = piko_tests::TestCluster::start(2).await;
    let echo = EchoUpstream::start().await;
    let _conn = TestConnector::http(&cluster.nodes[0], "far", &echo.target());
    cluster.nodes[0].wait_for_upstreams("far", 1).await;
    cluster.wait_for_replicated("far", 1).await;
    // Node 1 has no upstream: it replaces the spoofed values and forwards; node 0 keeps them.
    let r = client()
        .get(format!("{}/headers", cluster.nodes[1].proxy_url()))
        .header("host", "far.piko.test")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "bank.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    let (s, _, v) = json(r).await;
    assert_eq!(s, 200, "{v}");
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-proto"], "http", "{v}");
    assert_eq!(h["x-forwarded-host"], "far.piko.test", "{v}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{v}");
    // A broken chunked body through the forwarding node is still the client's fault.
    let resp = exchange(
        cluster.nodes[1].proxy_addr,
        b"POST /upload HTTP/1.1\r\nhost: far.example.com\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
    assert!(
        resp.ends_with("{\"error\":\"malformed or incomplete request body\"}\n"),
        "{resp:?}"
    );
}
