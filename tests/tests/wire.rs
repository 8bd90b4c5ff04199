//! Wire compatibility: an upstream written here from the yamux and WebSocket specifications
//! alone (no project protocol code) registers and serves requests, as the original Go agent does.

use std::time::Duration;

use piko_tests::rawmux::{frame, Frame, RawMux, ACK, DATA, FIN, PING, RST, SYN, WINDOW_UPDATE};
use piko_tests::{client, EchoUpstream, TestConnector, TestServer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>;

/// A registered upstream, seen frame by frame.
struct RawUpstream {
    mux: RawMux<Ws>,
}

impl RawUpstream {
    async fn connect(server: &TestServer, endpoint: &str) -> Self {
        Self::connect_with(server, endpoint, &[]).await.0
    }

    /// Register with extra request headers; also returns the `101` answer's headers.
    async fn connect_with(
        server: &TestServer,
        endpoint: &str,
        headers: &[(&'static str, &'static str)],
    ) -> (Self, http::HeaderMap) {
        let url = format!("ws://{}/piko/v1/upstream/{endpoint}", server.upstream_addr);
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut()
                .insert(*k, http::HeaderValue::from_static(v));
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("register");
        assert_eq!(resp.status(), 101);
        let headers = resp.headers().clone();
        (
            Self {
                mux: RawMux::new(ws),
            },
            headers,
        )
    }

    async fn next_frame(&mut self) -> (u8, u16, u32, u32, Vec<u8>) {
        let Frame {
            ty,
            flags,
            id,
            len,
            body,
        } = self.mux.next_frame().await;
        (ty, flags, id, len, body)
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        self.mux.send(bytes).await;
    }

    /// Wait for the server to open a stream; acknowledge it and read the request head.
    async fn accept_request(&mut self) -> (u32, String) {
        let mut id = None;
        let mut req = Vec::new();
        loop {
            let (ty, flags, sid, len, body) = self.next_frame().await;
            if ty == PING && flags & SYN != 0 {
                self.send(frame(PING, ACK, 0, len, &[])).await;
                continue;
            }
            if flags & SYN != 0 {
                assert_eq!(sid % 2, 0, "the server opens even stream ids");
                id = Some(sid);
                self.send(frame(WINDOW_UPDATE, ACK, sid, 0, &[])).await;
            }
            if ty == DATA && Some(sid) == id {
                req.extend_from_slice(&body);
                if req.windows(4).any(|w| w == b"\r\n\r\n") {
                    return (sid, String::from_utf8_lossy(&req).to_string());
                }
            }
        }
    }
}

#[tokio::test]
async fn a_hand_written_yamux_upstream_serves_requests() {
    let server = TestServer::start().await;
    let mut up = RawUpstream::connect(&server, "raw").await;
    server.wait_for_upstreams("raw", 1).await;

    let proxy = server.proxy_url();
    let request = tokio::spawn(async move {
        client()
            .get(format!("{proxy}/hello?q=1"))
            .header("x-piko-endpoint", "raw")
            .send()
            .await
            .unwrap()
    });
    let (id, head) = up.accept_request().await;
    assert!(head.starts_with("GET /hello?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-piko-endpoint: raw"),
        "{head}"
    );
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello";
    up.send(frame(DATA, 0, id, answer.len() as u32, answer))
        .await;
    up.send(frame(WINDOW_UPDATE, FIN, id, 0, &[])).await;
    let resp = request.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello");

    // A second request opens a new stream with a higher even id.
    let proxy = server.proxy_url();
    let request = tokio::spawn(async move {
        client()
            .post(format!("{proxy}/second"))
            .header("x-piko-endpoint", "raw")
            .body("abc")
            .send()
            .await
            .unwrap()
    });
    let (id2, head) = up.accept_request().await;
    assert!(id2 > id && id2 % 2 == 0);
    assert!(head.starts_with("POST /second HTTP/1.1\r\n"));
    let answer = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
    up.send(frame(DATA, FIN, id2, answer.len() as u32, answer))
        .await;
    assert_eq!(request.await.unwrap().status(), 201);
}

#[tokio::test]
async fn an_upstream_reset_mid_request_gives_502() {
    let server = TestServer::start().await;
    let mut up = RawUpstream::connect(&server, "rst").await;
    server.wait_for_upstreams("rst", 1).await;
    let proxy = server.proxy_url();
    let request = tokio::spawn(async move {
        client()
            .get(format!("{proxy}/"))
            .header("x-piko-endpoint", "rst")
            .send()
            .await
            .unwrap()
    });
    let (id, _) = up.accept_request().await;
    up.send(frame(WINDOW_UPDATE, RST, id, 0, &[])).await;
    let resp = request.await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "upstream unreachable");
}

#[tokio::test]
async fn a_malformed_frame_disconnects_only_that_upstream() {
    let server = TestServer::start().await;
    let mut bad = RawUpstream::connect(&server, "mixed").await;
    let mut good = RawUpstream::connect(&server, "mixed").await;
    server.wait_for_upstreams("mixed", 2).await;
    let mut f = frame(PING, SYN, 0, 1, &[]);
    f[0] = 7; // bad version
    bad.send(f).await;
    server.wait_for_upstreams("mixed", 1).await;
    // The remaining upstream still serves.
    let proxy = server.proxy_url();
    let request = tokio::spawn(async move {
        client()
            .get(format!("{proxy}/"))
            .header("x-piko-endpoint", "mixed")
            .send()
            .await
            .unwrap()
    });
    let (id, _) = good.accept_request().await;
    let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
    good.send(frame(DATA, FIN, id, answer.len() as u32, answer))
        .await;
    assert_eq!(request.await.unwrap().status(), 204);
}

#[tokio::test]
async fn registration_errors_are_json_before_the_upgrade() {
    let server = TestServer::start().await;
    let c = client();
    let cases = [
        (
            "/piko/v1/upstream/bad%20id",
            400,
            "endpoint id has invalid character '%' at byte 3; use letters, digits, '-', '_' or '.'",
        ),
        ("/piko/v1/upstream/", 400, "endpoint id is empty"),
        ("/piko/v1/upstream/ok", 400, "expected a websocket upgrade"),
        ("/elsewhere", 404, "not found"),
    ];
    for (path, status, msg) in cases {
        let r = c
            .get(format!("{}{path}", server.upstream_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], msg, "{path}");
    }
}

#[tokio::test]
async fn an_endpoint_at_its_upstream_limit_refuses_more_with_429() {
    let server = TestServer::start_with(|c| c.upstream.limits.max_per_endpoint = Some(1)).await;
    let _first = RawUpstream::connect(&server, "capped").await;
    server.wait_for_upstreams("capped", 1).await;
    let url = format!("ws://{}/piko/v1/upstream/capped", server.upstream_addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(
                body["error"],
                "endpoint capped has its limit of 1 upstreams on this node"
            );
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // Other endpoints are not affected.
    let _other = RawUpstream::connect(&server, "uncapped").await;
    server.wait_for_upstreams("uncapped", 1).await;
}

#[tokio::test]
async fn streams_past_the_per_upstream_limit_get_502() {
    let server = TestServer::start_with(|c| c.upstream.limits.max_streams = 1).await;
    let mut up = RawUpstream::connect(&server, "narrow").await;
    server.wait_for_upstreams("narrow", 1).await;
    let proxy = server.proxy_url();
    // The first request holds the only stream (this upstream never answers it).
    let first = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            client()
                .get(format!("{proxy}/a"))
                .header("x-piko-endpoint", "narrow")
                .send()
                .await
        }
    });
    let _ = up.accept_request().await;
    let r = client()
        .get(format!("{proxy}/b"))
        .header("x-piko-endpoint", "narrow")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream unreachable");
    first.abort();
}

/// An upstream written for the original server's contract: it reads one request from each
/// stream it accepts, answers, and never reads that stream again (nor closes it).
#[tokio::test]
async fn an_upstream_reading_one_request_per_stream_gets_every_request_of_a_keep_alive_client() {
    let server = TestServer::start().await;
    let (mut up, answer) = RawUpstream::connect_with(&server, "oneshot", &[]).await;
    assert!(
        !answer.contains_key("x-piko-keep-alive"),
        "not asked, not granted: {answer:?}"
    );
    server.wait_for_upstreams("oneshot", 1).await;

    // One client connection (reqwest keeps it alive) for every request.
    let c = client();
    let proxy = server.proxy_url();
    let mut ids = Vec::new();
    for i in 0..4 {
        let request = tokio::spawn({
            let (c, proxy) = (c.clone(), proxy.clone());
            async move {
                c.post(format!("{proxy}/n/{i}"))
                    .header("x-piko-endpoint", "oneshot")
                    .header("content-type", "text/plain")
                    .header("x-custom-lower", "v")
                    .body("abc")
                    .send()
                    .await
                    .unwrap()
            }
        });
        let (id, head) = tokio::time::timeout(Duration::from_secs(10), up.accept_request())
            .await
            .unwrap_or_else(|_| panic!("request {i} never came on a new stream"));
        assert!(
            head.starts_with(&format!("POST /n/{i} HTTP/1.1\r\n")),
            "{head}"
        );
        // What the original server writes: `Connection: close`, names in canonical case.
        for line in [
            "\r\nConnection: close\r\n",
            "\r\nContent-Type: text/plain\r\n",
            "\r\nX-Custom-Lower: v\r\n",
            "\r\nHost: ",
            "\r\nX-Forwarded-For: 127.0.0.1\r\n",
        ] {
            assert!(head.contains(line), "{line:?} missing from {head}");
        }
        ids.push(id);
        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{i}");
        up.send(frame(DATA, 0, id, answer.len() as u32, answer.as_bytes()))
            .await;
        let resp = request.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), i.to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 4, "one stream per request: {ids:?}");
}

/// This project's connector asks for stream reuse and gets it: a keep-alive client's
/// requests share streams (counted by the server's metrics).
#[tokio::test]
async fn the_connector_negotiates_keep_alive_and_its_streams_are_reused() {
    let server = TestServer::start().await;
    let (_up, answer) =
        RawUpstream::connect_with(&server, "asks", &[("x-piko-keep-alive", "1")]).await;
    assert_eq!(answer["x-piko-keep-alive"], "1", "granted in the answer");

    let echo = EchoUpstream::start().await;
    let connector = TestConnector::http(&server, "ka", &echo.target());
    server.wait_for_upstreams("ka", 1).await;
    let c = client();
    for _ in 0..10 {
        let r = c
            .get(format!("{}/echo", server.proxy_url()))
            .header("x-piko-endpoint", "ka")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let metrics = client()
        .get(format!("{}/metrics", server.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert_eq!(value("piko_upstreams_upstream_requests_total"), 10);
    let opened = value("piko_upstreams_streams_opened_total");
    assert!(
        (1..=2).contains(&opened),
        "10 sequential requests reuse streams, {opened} opened"
    );
    connector.stop().await;
}
