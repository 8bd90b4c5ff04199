//! The inspector against a real local service, through a real [`HttpForwarder`] on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use piko_protocol::access_log::AccessLog;
use piko_protocol::EndpointId;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::tunnel::HttpForwarder;

/// What the local service saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A local service: `/echo` answers the request body, `/bytes/N` N bytes of `a`, `/binary`
/// an octet stream, `/ws` a WebSocket echo; anything else `ok`. Records what it saw.
struct Service {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Service {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move { Ok::<_, Infallible>(serve(req, &log).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn serve(mut req: Request<Incoming>, log: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/ws" {
        let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let io = on.await.unwrap();
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(io),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
                if m.is_text() || m.is_binary() {
                    ws.send(m).await.unwrap();
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let method = req.method().to_string();
    let full_path = req.uri().path_and_query().unwrap().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    log.lock().unwrap().push(Seen {
        method,
        path: full_path,
        headers,
        body: body.to_vec(),
    });
    if path == "/echo" {
        return Response::new(Full::new(body));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return Response::new(Full::new(Bytes::from(vec![b'a'; n.parse().unwrap()])));
    }
    if path == "/binary" {
        return Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from_static(&[0, 1, 2, 255, 254])))
            .unwrap();
    }
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

/// The tunnel's end in the test: connections to `addr` are served by a forwarder of
/// endpoint `endpoint` to `target`, recording into `inspector`.
async fn front(inspector: &Inspector, endpoint: &str, target: SocketAddr) -> SocketAddr {
    let url = url::Url::parse(&format!("http://{target}")).unwrap();
    let id = EndpointId::new(endpoint).unwrap();
    let fwd = HttpForwarder::inspected(
        &url,
        Duration::from_secs(5),
        AccessLog::disabled(),
        Some(inspector.recorder(&id, &url, Duration::from_secs(5))),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let fwd = fwd.clone();
            tokio::spawn(async move { fwd.serve(tcp, CancellationToken::new()).await });
        }
    });
    addr
}

/// Send one request to `addr`; the status and body.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (u16, Bytes) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.example.com");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// Poll until `inspector` holds `n` exchanges (they are stored when the response ends,
/// which the client may see a moment before the forwarder has dropped its handles).
async fn wait_for(inspector: &Inspector, n: usize) -> Vec<ExchangeSummary> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list = inspector.list(None);
        if list.len() >= n {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {n} recorded exchanges; have {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn records_method_path_status_sizes_bodies_and_duration() {
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    let (status, body) = send(addr, "POST", "/echo?x=1", &[], "hello inspector").await;
    assert_eq!((status, &body[..]), (200, &b"hello inspector"[..]));
    let list = wait_for(&inspector, 1).await;
    let s = &list[0];
    assert_eq!(s.endpoint.as_str(), "shop");
    assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/echo?x=1"));
    assert_eq!(s.status, Some(200));
    assert_eq!((s.request_size, s.response_size), (15, 15));
    assert_eq!(s.kind, ExchangeKind::Http);
    assert!(s.duration_ms.is_some_and(|d| d > 0.0), "{s:?}");
    assert!(s.started_at.ends_with('Z'), "{}", s.started_at);
    assert_eq!(s.error, None);

    let x = inspector.get(s.id).unwrap();
    assert_eq!(x.request.body.data, "hello inspector");
    assert!(!x.request.body.truncated && !x.request.body.binary);
    assert_eq!(header(&x.request.headers, "host"), Some("shop.example.com"));
    let resp = x.response.unwrap();
    assert_eq!(resp.body.data, "hello inspector");
    assert_eq!(header(&resp.headers, "content-length"), Some("15"));
}

#[tokio::test]
async fn credentials_are_masked_when_read_but_replayed_as_sent() {
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    let secrets = [
        ("authorization", "Bearer secret-1"),
        ("cookie", "sid=secret-2"),
        ("x-api-key", "secret-3"),
    ];
    send(
        addr,
        "GET",
        "/",
        &[secrets[0], secrets[1], secrets[2], ("accept", "text/plain")],
        "",
    )
    .await;
    let id = wait_for(&inspector, 1).await[0].id;
    let x = inspector.get(id).unwrap();
    let json = serde_json::to_string(&x).unwrap();
    assert!(!json.contains("secret-"), "{json}");
    for (name, _) in secrets {
        assert_eq!(header(&x.request.headers, name), Some("***"), "{name}");
    }
    assert_eq!(header(&x.request.headers, "accept"), Some("text/plain"));

    let replayed = inspector.replay(id, None).await.unwrap();
    assert_eq!(replayed.summary.replay_of, Some(id));
    let seen = svc.last();
    for (name, value) in secrets {
        assert_eq!(
            header(&seen.headers, name),
            Some(value),
            "{name} reaches the target"
        );
    }
    // An edit that sends back the masked list keeps the recorded credential.
    let edit = ReplayEdit {
        headers: Some(vec![
            ("authorization".into(), MASK.into()),
            ("x-extra".into(), "1".into()),
        ]),
        ..ReplayEdit::default()
    };
    inspector.replay(id, Some(edit)).await.unwrap();
    let seen = svc.last();
    assert_eq!(
        header(&seen.headers, "authorization"),
        Some("Bearer secret-1")
    );
    assert_eq!(header(&seen.headers, "x-extra"), Some("1"));
    assert_eq!(
        header(&seen.headers, "cookie"),
        None,
        "the edit's list replaces the headers"
    );
}

#[tokio::test]
async fn bodies_past_the_limit_are_truncated_and_their_replay_refused() {
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    let big = vec![b'b'; 100 * 1024];
    let (status, body) = send(addr, "POST", "/bytes/200000", &[], big).await;
    assert_eq!((status, body.len()), (200, 200_000));
    let id = wait_for(&inspector, 1).await[0].id;
    let x = inspector.get(id).unwrap();
    assert_eq!(x.summary.request_size, 100 * 1024);
    assert_eq!(x.summary.response_size, 200_000);
    assert!(x.request.body.truncated);
    assert_eq!(x.request.body.captured, 64 * 1024);
    let resp = x.response.unwrap();
    assert!(resp.body.truncated);
    assert_eq!((resp.body.captured, resp.body.data.len()), (65_536, 65_536));

    let err = inspector.replay(id, None).await.unwrap_err();
    assert_eq!(err, ReplayError::Truncated(id, 64 * 1024));
    assert_eq!(
        err.to_string(),
        format!(
            "request {id} had its body truncated at 65536 bytes; replay it with an edited body"
        )
    );
    let before = svc.count();
    let edit = ReplayEdit {
        body: Some("short".into()),
        ..ReplayEdit::default()
    };
    let replayed = inspector.replay(id, Some(edit)).await.unwrap();
    assert_eq!(svc.count(), before + 1);
    assert_eq!(svc.last().body, b"short");
    assert_eq!(replayed.summary.request_size, 5);
}

#[tokio::test]
async fn binary_bodies_are_marked_and_kept_as_base64() {
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    send(addr, "PUT", "/echo", &[], vec![0u8, 159, 146, 150]).await;
    send(addr, "GET", "/binary", &[], "").await;
    let list = wait_for(&inspector, 2).await;
    let echo = inspector.get(list[1].id).unwrap();
    assert!(echo.request.body.binary);
    assert_eq!(echo.request.body.encoding, BodyEncoding::Base64);
    assert_eq!(echo.request.body.data, "AJ+Slg==");
    let bin = inspector.get(list[0].id).unwrap().response.unwrap();
    assert!(bin.body.binary);
    assert_eq!(bin.body.data, "AAEC//4=");
    // A binary body replays byte for byte.
    inspector.replay(list[1].id, None).await.unwrap();
    assert_eq!(svc.last().body, vec![0u8, 159, 146, 150]);
}

#[tokio::test]
async fn edit_and_replay_sends_the_changed_request_and_links_it() {
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    send(addr, "GET", "/orders?id=1", &[("x-a", "1")], "").await;
    let id = wait_for(&inspector, 1).await[0].id;

    let plain = inspector.replay(id, None).await.unwrap();
    let seen = svc.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("GET", "/orders?id=1")
    );
    assert_eq!(header(&seen.headers, "x-a"), Some("1"));
    assert_eq!(plain.summary.replay_of, Some(id));
    assert_eq!(plain.summary.status, Some(200));
    assert!(plain.summary.id > id);

    let edit = ReplayEdit {
        method: Some("POST".into()),
        path: Some("/echo?edited=1".into()),
        headers: Some(vec![("content-type".into(), "text/plain".into())]),
        body: Some("changed".into()),
        body_base64: None,
    };
    let edited = inspector.replay(id, Some(edit)).await.unwrap();
    let seen = svc.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/echo?edited=1")
    );
    assert_eq!(seen.body, b"changed");
    assert_eq!(header(&seen.headers, "content-type"), Some("text/plain"));
    assert_eq!(header(&seen.headers, "x-a"), None);
    assert_eq!(edited.summary.replay_of, Some(id));
    assert_eq!(edited.response.unwrap().body.data, "changed");
    // Both replays are in the list, newest first.
    let list = inspector.list(None);
    assert_eq!(list[0].id, edited.summary.id);
    assert_eq!(list[1].id, plain.summary.id);

    for (edit, want) in [
        (
            ReplayEdit {
                method: Some("GE T".into()),
                ..Default::default()
            },
            "invalid edit: \"GE T\" is not an HTTP method",
        ),
        (
            ReplayEdit {
                path: Some("orders".into()),
                ..Default::default()
            },
            "invalid edit: path \"orders\" must start with '/'",
        ),
        (
            ReplayEdit {
                headers: Some(vec![("bad header".into(), "v".into())]),
                ..Default::default()
            },
            "invalid edit: \"bad header\" is not a header name",
        ),
        (
            ReplayEdit {
                body_base64: Some("%%%".into()),
                ..Default::default()
            },
            "invalid edit: body_base64: ",
        ),
    ] {
        let e = inspector.replay(id, Some(edit)).await.unwrap_err();
        assert!(e.to_string().starts_with(want), "{e}");
    }
    let e = inspector
        .replay(ExchangeId(999_999), None)
        .await
        .unwrap_err();
    assert_eq!(e, ReplayError::NotFound(ExchangeId(999_999)));
}

#[tokio::test]
async fn a_failing_target_is_recorded_with_502_and_the_error() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", closed).await;
    let (status, _) = send(addr, "GET", "/down", &[], "").await;
    assert_eq!(status, 502);
    let s = &wait_for(&inspector, 1).await[0];
    assert_eq!(s.status, Some(502));
    assert_eq!(s.error.as_deref(), Some("upstream unreachable"));
    let x = inspector.get(s.id).unwrap();
    assert_eq!(
        x.response.unwrap().body.data,
        r#"{"error":"upstream unreachable"}"#
    );
    // A replay to the dead target is recorded the same way.
    let r = inspector.replay(s.id, None).await.unwrap();
    assert_eq!(r.summary.status, Some(502));
    assert_eq!(r.summary.error.as_deref(), Some("upstream unreachable"));
}

#[tokio::test]
async fn the_ring_keeps_the_newest_n_per_endpoint() {
    let svc = Service::start().await;
    let inspector = Inspector::new(InspectorConfig {
        capacity: 3,
        ..InspectorConfig::default()
    });
    let shop = front(&inspector, "shop", svc.addr).await;
    let blog = front(&inspector, "blog", svc.addr).await;
    for i in 0..5 {
        send(shop, "GET", &format!("/shop/{i}"), &[], "").await;
        wait_for(&inspector, (i + 1).min(3)).await;
    }
    send(blog, "GET", "/blog/0", &[], "").await;
    wait_for(&inspector, 4).await;
    let shop_id = EndpointId::new("shop").unwrap();
    let paths: Vec<String> = inspector
        .list(Some(&shop_id))
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(paths, ["/shop/4", "/shop/3", "/shop/2"]);
    let all = inspector.list(None);
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].path, "/blog/0", "newest first over all endpoints");
    assert!(
        inspector.get(ExchangeId(1)).is_none(),
        "the oldest was dropped"
    );
}

#[tokio::test]
async fn memory_stays_under_the_hard_limit_with_large_bodies() {
    let svc = Service::start().await;
    let limit = 1024 * 1024;
    let inspector = Inspector::new(InspectorConfig {
        capacity: 200,
        body_limit: 64 * 1024,
        memory_limit: limit,
    });
    let addr = front(&inspector, "shop", svc.addr).await;
    let mut peak = 0;
    let total = 40;
    for i in 0..total {
        let (status, body) = send(addr, "POST", "/bytes/300000", &[], vec![b'u'; 300_000]).await;
        assert_eq!((status, body.len()), (200, 300_000), "request {i}");
        peak = peak.max(inspector.memory_used());
    }
    let stored = wait_for(&inspector, 1).await;
    peak = peak.max(inspector.memory_used());
    // Each exchange captures 2 × 64 KiB: about 7 fit in 1 MiB, far fewer than the 40 sent.
    assert!(peak <= limit, "{peak} bytes used of {limit}");
    assert!(
        (4..=8).contains(&stored.len()),
        "{} exchanges kept",
        stored.len()
    );
    assert_eq!(
        stored[0].path, "/bytes/300000",
        "the newest exchange is kept"
    );
    assert_eq!(inspector.shared.store.len(), stored.len());
    let newest = inspector.get(stored[0].id).unwrap();
    assert_eq!(newest.response.unwrap().body.captured, 64 * 1024);
}

#[tokio::test]
async fn a_websocket_session_is_one_entry_with_frames_and_bytes_each_way() {
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    let mut events = inspector.subscribe();
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    use tokio_tungstenite::tungstenite::Message;
    for m in ["one", "two", "three"] {
        ws.send(Message::text(m)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(m));
    }
    let opened = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(opened.kind, ExchangeKind::WebSocket);
    assert_eq!(opened.status, Some(101));
    let live = inspector.get(opened.id).unwrap().websocket.unwrap();
    assert_eq!((live.frames_in, live.frames_out), (3, 3), "{live:?}");
    assert!(!live.closed);
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    // The entry is published again when the session ends.
    let closed = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.id, opened.id);
    assert!(closed.duration_ms.is_some());
    let stats = inspector.get(opened.id).unwrap().websocket.unwrap();
    assert!(stats.closed);
    // Three texts and the client's close; the service may leave without answering it.
    // Client frames are masked: 2 + 4 header bytes, so "one" is 9 bytes in, 5 out.
    assert_eq!(stats.frames_in, 4, "{stats:?}");
    assert_eq!(stats.bytes_in, 9 + 9 + 11 + 6, "{stats:?}");
    assert!(
        (stats.frames_out, stats.bytes_out) == (3, 17)
            || (stats.frames_out, stats.bytes_out) == (4, 19),
        "{stats:?}"
    );
    assert_eq!(inspector.list(None).len(), 1);
    let e = inspector.replay(opened.id, None).await.unwrap_err();
    assert_eq!(e, ReplayError::WebSocket(opened.id));
}

/// The relay of an upgraded connection runs in the task that serves the connection (which the
/// tunnel tracks and drains), not in a detached task: `serve` returns only when the upgraded
/// session ends, inspected or not, and an inspected session's entry is final by then.
#[tokio::test]
async fn an_upgraded_connection_is_relayed_in_the_task_that_serves_it() {
    let svc = Service::start().await;
    for inspected in [true, false] {
        let inspector = Inspector::default();
        let url = url::Url::parse(&format!("http://{}", svc.addr)).unwrap();
        let id = EndpointId::new("shop").unwrap();
        let recorder = inspected.then(|| inspector.recorder(&id, &url, Duration::from_secs(5)));
        let fwd = HttpForwarder::inspected(
            &url,
            Duration::from_secs(5),
            AccessLog::disabled(),
            recorder,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            fwd.serve(tcp, CancellationToken::new()).await
        });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::text("one")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("one"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !served.is_finished(),
            "serve returned while the upgraded session was open (inspected: {inspected})"
        );
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
        drop(ws);
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("serve ends with the upgraded session")
            .unwrap();
        if inspected {
            let entry = inspector.list(None);
            assert_eq!(entry.len(), 1, "{entry:?}");
            let stats = inspector.get(entry[0].id).unwrap().websocket.unwrap();
            assert!(
                stats.closed,
                "the entry is final when serve returns: {stats:?}"
            );
        }
    }
}

#[tokio::test]
async fn subscribers_see_each_new_exchange() {
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    let mut events = inspector.subscribe();
    send(addr, "GET", "/first", &[], "").await;
    send(addr, "GET", "/second", &[], "").await;
    for want in ["/first", "/second"] {
        let s = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.path, want);
    }
}

/// The JSON API of `inspector` on a loopback port.
async fn api(inspector: &Inspector) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(api::serve(listener, inspector.clone(), stop.clone()));
    (addr, stop)
}

/// One API call; the status and the JSON answer.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| *k == "host") {
        req = req.header("host", addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn the_api_lists_shows_and_replays_exchanges() {
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    send(
        addr,
        "POST",
        "/echo",
        &[("authorization", "Bearer secret")],
        "hi",
    )
    .await;
    let id = wait_for(&inspector, 1).await[0].id;
    let (api, stop) = api(&inspector).await;

    let (status, list) = call(api, "GET", "/api/requests", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(list["requests"][0]["id"], id.0);
    assert_eq!(list["requests"][0]["path"], "/echo");
    let (_, other) = call(api, "GET", "/api/requests?endpoint=blog", &[], "").await;
    assert_eq!(other["requests"], serde_json::json!([]));

    let (status, x) = call(api, "GET", &format!("/api/requests/{id}"), &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(x["request"]["body"]["data"], "hi");
    assert!(!x.to_string().contains("secret"), "{x}");

    let (status, r) = call(api, "POST", &format!("/api/requests/{id}/replay"), &[], "").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["replay_of"], id.0);
    assert_eq!(
        header(&svc.last().headers, "authorization"),
        Some("Bearer secret")
    );
    let (status, r) = call(
        api,
        "POST",
        &format!("/api/requests/{id}/replay"),
        &[("content-type", "application/json")],
        r#"{"body": "edited", "path": "/echo?e=1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["response"]["body"]["data"], "edited");
    assert_eq!(svc.last().path, "/echo?e=1");
    stop.cancel();
}

#[tokio::test]
async fn bad_api_calls_get_json_errors() {
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    send(addr, "GET", "/", &[], "").await;
    let id = wait_for(&inspector, 1).await[0].id;
    let (api, _stop) = api(&inspector).await;
    let replay = format!("/api/requests/{id}/replay");
    // (method, path, headers, body, status, error)
    type Case<'a> = (
        &'a str,
        String,
        Vec<(&'a str, &'a str)>,
        &'a str,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/api/requests/abc".into(),
            vec![],
            "",
            400,
            "invalid request id \"abc\"",
        ),
        (
            "GET",
            "/api/requests/424242".into(),
            vec![],
            "",
            404,
            "no request 424242 in the inspector",
        ),
        (
            "POST",
            "/api/requests/x/replay".into(),
            vec![],
            "",
            400,
            "invalid request id \"x\"",
        ),
        (
            "POST",
            "/api/requests/424242/replay".into(),
            vec![],
            "",
            404,
            "no request 424242",
        ),
        (
            "POST",
            replay.clone(),
            vec![],
            "{not json",
            400,
            "invalid replay edit: ",
        ),
        (
            "POST",
            replay.clone(),
            vec![],
            r#"{"methd":"GET"}"#,
            400,
            "invalid replay edit: unknown field `methd`",
        ),
        (
            "POST",
            replay.clone(),
            vec![],
            r#"{"path":"nope"}"#,
            400,
            "invalid edit: path \"nope\" must start with '/'",
        ),
        (
            "GET",
            "/api/requests?endpoint=bad%20id".into(),
            vec![],
            "",
            400,
            "invalid endpoint \"bad id\"",
        ),
        (
            "GET",
            "/api/requests?limit=0".into(),
            vec![],
            "",
            400,
            "invalid limit \"0\"",
        ),
        ("GET", "/nowhere".into(), vec![], "", 404, "no such route"),
        (
            "DELETE",
            format!("/api/requests/{id}"),
            vec![],
            "",
            405,
            "method not allowed",
        ),
        (
            "GET",
            "/api/requests".into(),
            vec![("host", "evil.example.com:4040")],
            "",
            403,
            "the inspector answers only requests to localhost",
        ),
        (
            "POST",
            replay.clone(),
            vec![("origin", "https://evil.example.com")],
            "",
            403,
            "replays are not accepted from web pages of other origins",
        ),
    ];
    assert!(!cases.is_empty());
    for (method, path, headers, body, want_status, want) in cases {
        let (status, v) = call(api, method, &path, &headers, body).await;
        assert_eq!(status, want_status, "{method} {path}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.starts_with(want), "{method} {path}: {e}");
    }
    // A page of this machine may replay.
    let (status, _) = call(
        api,
        "POST",
        &replay,
        &[("origin", "http://localhost:4040")],
        "",
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_api_streams_new_exchanges_as_ndjson() {
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    let (api, stop) = api(&inspector).await;
    let tcp = tokio::net::TcpStream::connect(api).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/api/requests/stream?endpoint=shop")
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body();
    send(addr, "GET", "/streamed", &[], "").await;
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a line within 5 s")
        .unwrap()
        .unwrap();
    let line = frame.into_data().unwrap();
    assert!(line.ends_with(b"\n"));
    let s: ExchangeSummary = serde_json::from_slice(&line).unwrap();
    assert_eq!(s.path, "/streamed");
    // The stream ends when the agent stops.
    stop.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the stream ends on shutdown");
    assert!(end.is_none_or(|f| f.is_err()));
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_is_recorded_with_what_was_seen() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let svc = Service::start().await;
    let inspector = Inspector::default();
    let addr = front(&inspector, "shop", svc.addr).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /bytes/50000000 HTTP/1.1\r\nHost: shop\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(n > 0);
    drop(tcp);
    let s = &wait_for(&inspector, 1).await[0];
    assert_eq!(s.status, Some(200));
    assert_eq!(
        s.error.as_deref(),
        Some("client went away before the response ended")
    );
    assert!(s.response_size < 50_000_000, "{s:?}");
    assert!(s.duration_ms.is_some());
}

/// The recording cost of one small GET, without the network: `cargo test --release -p
/// piko-connector-core recording_cost -- --ignored --nocapture` prints it.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn recording_cost_of_a_small_get() {
    let inspector = Inspector::default();
    let url = url::Url::parse("http://127.0.0.1:1").unwrap();
    let rec = inspector.recorder(
        &EndpointId::new("bench").unwrap(),
        &url,
        Duration::from_secs(1),
    );
    let req = Request::get("/")
        .header("host", "127.0.0.1:8000")
        .header("user-agent", "oha/1.4")
        .header("accept", "*/*")
        .header("x-piko-endpoint", "bench")
        .header("x-forwarded-for", "127.0.0.1")
        .header("x-forwarded-host", "127.0.0.1:8000")
        .header("x-forwarded-proto", "http")
        .body(())
        .unwrap();
    let resp_headers = {
        let mut h = http::HeaderMap::new();
        h.insert("content-length", "2".parse().unwrap());
        h.insert("date", "Wed, 02 Dec 2026 01:45:55 GMT".parse().unwrap());
        h
    };
    let n = 200_000u32;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let r = rec.begin(&req);
        let _ = r.request_body(http_body_util::Empty::<Bytes>::new());
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
        *resp.headers_mut() = resp_headers.clone();
        let mut body = r.respond(resp, None).into_body();
        while body.frame().await.is_some() {}
    }
    let per = start.elapsed() / n;
    println!("recording one small GET: {per:?}");
    assert_eq!(inspector.list(None).len(), 200);
}
