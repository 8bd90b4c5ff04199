//! What a client or upstream that misbehaves on purpose can make a node hold: WebSocket
//! peers that flood pings and never read, yamux peers that flood control frames, HTTP/2
//! connections that never finish their handshake or sit idle.
//!
//! The memory tests run the real `piko-server` binary and read its resident size from
//! `/proc`, so that what is measured is the server alone (`cargo build --bins` first).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use piko_connector_core::config::Protocol;
use piko_tests::{client, EchoUpstream, NodeProcess, TestConnector, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The resident set size of `server`'s process in bytes.
fn rss(server: &NodeProcess) -> u64 {
    let pid = server.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kib * 1024
}

/// A TCP connection with a small receive buffer, so that the kernel holds little of what
/// the server sends to a client that does not read.
async fn small_window_connect(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A WebSocket upgrade written by hand; returns the socket after the `101`.
async fn ws_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = small_window_connect(addr).await;
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut byte))
            .await
            .expect("upgrade answered in time")
            .expect("upgrade answer");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

const OP_BINARY: u8 = 0x2;
const OP_PING: u8 = 0x9;

/// One client WebSocket frame, masked with the all-zero key (so the payload goes as is).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

/// 1 MiB of WebSocket pings with the largest payload a control frame may carry.
fn ws_pings() -> Vec<u8> {
    let one = ws_frame(OP_PING, &[b'p'; 125]);
    one.repeat((1 << 20) / one.len())
}

/// A yamux header: version 0, type, flags, stream id, length (big-endian).
fn yamux(ty: u8, flags: u16, stream: u32, length: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[1] = ty;
    h[2..4].copy_from_slice(&flags.to_be_bytes());
    h[4..8].copy_from_slice(&stream.to_be_bytes());
    h[8..12].copy_from_slice(&length.to_be_bytes());
    h
}

/// How a flood ended.
#[derive(Debug, PartialEq)]
enum Flooded {
    /// The time was up (or the peer stopped taking bytes).
    Timeout,
    /// A write failed: the server closed the connection.
    Cut,
}

/// Write `batch` again and again, never reading, for `secs` (or until the peer stops taking
/// it or closes); returns the bytes written and how it ended.
async fn flood_until(
    s: &mut TcpStream,
    mut batch: impl FnMut() -> Vec<u8>,
    secs: u64,
) -> (u64, Flooded) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    while tokio::time::Instant::now() < deadline {
        let b = batch();
        match tokio::time::timeout_at(deadline, s.write_all(&b)).await {
            Ok(Ok(())) => sent += b.len() as u64,
            Ok(Err(_)) => return (sent, Flooded::Cut),
            Err(_) => break,
        }
    }
    (sent, Flooded::Timeout)
}

/// [`flood_until`], for its byte count.
async fn flood(s: &mut TcpStream, batch: impl FnMut() -> Vec<u8>, secs: u64) -> u64 {
    flood_until(s, batch, secs).await.0
}

/// Growth of the server's memory the tests tolerate while one peer misbehaves. Without the
/// limits the same floods grew it by gigabytes (pongs and yamux answers queued for ever).
const RSS_BUDGET: u64 = 8 << 20;

fn assert_bounded(server: &NodeProcess, before: u64, what: &str, sent: u64) {
    let after = rss(server);
    eprintln!(
        "{what}: sent {} MiB; server RSS {} -> {} MiB",
        sent >> 20,
        before >> 20,
        after >> 20
    );
    assert!(
        after.saturating_sub(before) < RSS_BUDGET,
        "{what}: server RSS grew from {} to {} MiB",
        before >> 20,
        after >> 20
    );
}

#[tokio::test]
async fn a_tcp_client_that_floods_websocket_pings_and_never_reads_is_bounded_and_cut() {
    let server = NodeProcess::start(&[]).await;
    let echo = piko_tests::tcp_echo().await;
    let _conn = TestConnector::start(
        &server.upstream(),
        &[("flood-tcp", &echo.to_string(), Protocol::Tcp)],
    );
    server.wait_for_upstreams("flood-tcp", 1).await;
    let mut s = ws_upgrade(server.proxy_addr(), "/_piko/v1/tcp/flood-tcp").await;
    let before = rss(&server);
    let pings = ws_pings();
    let sent = flood(&mut s, || pings.clone(), 8).await;
    assert_bounded(&server, before, "pings on a TCP connection", sent);
    assert!(
        sent >= 2 * RSS_BUDGET,
        "the flood reached the server: {sent} bytes"
    );

    // Data for the echo service, and more pings, still without reading: the server must
    // write the answer, cannot (the client owes it the reading of its pongs), and ends the
    // connection instead of waiting for ever. The client sees it as a failed write.
    s.write_all(&ws_frame(OP_BINARY, b"hello")).await.unwrap();
    let (more, end) = flood_until(&mut s, || pings.clone(), 15).await;
    assert_eq!(
        end,
        Flooded::Cut,
        "the server kept the connection open ({} MiB more pings taken)",
        more >> 20
    );
    assert_bounded(
        &server,
        before,
        "pings on a TCP connection, then data",
        sent + more,
    );
}

#[tokio::test]
async fn an_upstream_that_floods_pings_and_never_reads_is_bounded() {
    let server = NodeProcess::start(&[]).await;
    // One endpoint per flood: a raw client answers no keepalive pings, so the server drops it
    // once it has been quiet for its keepalive timeout; each flood counts only its own session.

    // WebSocket pings on the upstream connection.
    let mut ws_pinger = ws_upgrade(server.upstream_addr(), "/piko/v1/upstream/flood-ws").await;
    server.wait_for_upstreams("flood-ws", 1).await;
    let before = rss(&server);
    let pings = ws_pings();
    let sent = flood(&mut ws_pinger, || pings.clone(), 8).await;
    assert_bounded(&server, before, "websocket pings on an upstream", sent);
    assert!(
        sent >= 2 * RSS_BUDGET,
        "the flood reached the server: {sent} bytes"
    );

    // Yamux pings, 1 MiB of them per binary message.
    let mut yamux_pinger =
        ws_upgrade(server.upstream_addr(), "/piko/v1/upstream/flood-pings").await;
    server.wait_for_upstreams("flood-pings", 1).await;
    let before = rss(&server);
    let mut id = 0u32;
    let sent = flood(
        &mut yamux_pinger,
        || {
            let mut frames = Vec::with_capacity(1 << 20);
            for _ in 0..(1 << 20) / 12 {
                id = id.wrapping_add(1);
                frames.extend_from_slice(&yamux(2, 1, 0, id));
            }
            ws_frame(OP_BINARY, &frames)
        },
        5,
    )
    .await;
    assert_bounded(&server, before, "yamux pings on an upstream", sent);
    assert!(
        sent >= 1 << 20,
        "the flood reached the server: {sent} bytes"
    );

    // Yamux SYNs: each is answered (and refused: upstreams do not open streams).
    let mut syn_flooder = ws_upgrade(server.upstream_addr(), "/piko/v1/upstream/flood-syns").await;
    server.wait_for_upstreams("flood-syns", 1).await;
    let before = rss(&server);
    let mut stream = 1u32;
    let sent = flood(
        &mut syn_flooder,
        || {
            let mut frames = Vec::with_capacity(1 << 20);
            for _ in 0..(1 << 20) / 12 {
                frames.extend_from_slice(&yamux(1, 1, stream, 0));
                stream = stream.wrapping_add(2);
            }
            ws_frame(OP_BINARY, &frames)
        },
        5,
    )
    .await;
    assert_bounded(&server, before, "yamux SYNs on an upstream", sent);
    assert!(
        sent >= 1 << 20,
        "the flood reached the server: {sent} bytes"
    );
}

// ---- HTTP/2 handshake, idle and keepalive timers ----

const HEADER_TIMEOUT: Duration = Duration::from_millis(400);
const IDLE_TIMEOUT: Duration = Duration::from_millis(2000);

async fn h2_server() -> (TestServer, EchoUpstream, TestConnector) {
    let server = TestServer::start_with(|c| {
        c.proxy.http.read_header_timeout = HEADER_TIMEOUT;
        c.proxy.http.idle_timeout = IDLE_TIMEOUT;
    })
    .await;
    let echo = EchoUpstream::named("h2-limits").await;
    let conn = TestConnector::http(&server, "h2-limits", &echo.target());
    server.wait_for_upstreams("h2-limits", 1).await;
    (server, echo, conn)
}

/// Send `bytes`, then read until the server closes; returns how long that took after the
/// write and what came back.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> (Duration, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(
        res.is_ok(),
        "{:?} still open after 10 s",
        String::from_utf8_lossy(bytes)
    );
    (started.elapsed(), out)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn unfinished_http2_handshakes_are_closed_after_the_header_timeout() {
    let (server, _echo, _conn) = h2_server().await;
    let bound = HEADER_TIMEOUT + Duration::from_secs(2);
    let settings_header = [0u8, 0, 6, 4, 0, 0, 0, 0, 0]; // a 6-byte SETTINGS frame, cut short
    let cases: [(&str, Vec<u8>); 4] = [
        ("`PRI ` alone", b"PRI ".to_vec()),
        ("the whole preface", PREFACE.to_vec()),
        ("the preface and half a SETTINGS frame", {
            let mut v = PREFACE.to_vec();
            v.extend_from_slice(&settings_header);
            v.extend_from_slice(&[0, 3]);
            v
        }),
        // An HTTP/1.1 request line that starts like the preface is still an HTTP/1.1 head.
        (
            "an HTTP/1.1 head starting `PRI`",
            b"PRI /x HTTP/1.1\r\nhost: a".to_vec(),
        ),
    ];
    for (what, bytes) in &cases {
        let (took, out) = closed_after(server.proxy_addr, bytes).await;
        assert!(took < bound, "{what}: closed after {took:?}");
        assert!(
            took >= HEADER_TIMEOUT - Duration::from_millis(100),
            "{what}: closed after {took:?}, before the header timeout"
        );
        eprintln!(
            "{what}: closed after {took:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    let (_, out) = closed_after(server.proxy_addr, &cases[3].1).await;
    assert!(
        out.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

/// An HTTP/2 connection made with hyper's client; resolves when the server closes it.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<Instant>,
) {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(io)
            .await
            .expect("h2 handshake");
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    (send, closed)
}

fn h2_get(path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::builder()
        .uri(format!("http://h2-limits.example.com{path}"))
        .header("x-piko-endpoint", "h2-limits")
        .body(http_body_util::Empty::new())
        .unwrap()
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let (server, _echo, _conn) = h2_server().await;
    // No stream ever: the handshake is done, the idle timer applies (not the header one).
    let started = Instant::now();
    let (_send, closed) = h2_connect(server.proxy_addr).await;
    let at = tokio::time::timeout(IDLE_TIMEOUT + Duration::from_secs(5), closed)
        .await
        .expect("closed by the server")
        .unwrap();
    let took = at - started;
    assert!(
        took >= IDLE_TIMEOUT - Duration::from_millis(200),
        "closed after {took:?}, before the idle timeout"
    );

    // Requests keep it open; once they are over, the idle timer starts again.
    let (mut send, closed) = h2_connect(server.proxy_addr).await;
    for _ in 0..3 {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        let r = send.send_request(h2_get("/name")).await.expect("request");
        assert_eq!(r.status(), 200);
        http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap();
    }
    let last = Instant::now();
    let at = tokio::time::timeout(IDLE_TIMEOUT + Duration::from_secs(5), closed)
        .await
        .expect("closed by the server")
        .unwrap();
    assert!(
        at - last >= IDLE_TIMEOUT - Duration::from_millis(200),
        "closed {:?} after the last request",
        at - last
    );
}

#[tokio::test]
async fn an_http2_request_longer_than_both_timeouts_is_not_cut() {
    let (server, _echo, _conn) = h2_server().await;
    let (mut send, closed) = h2_connect(server.proxy_addr).await;
    let slow = (IDLE_TIMEOUT + HEADER_TIMEOUT * 2).as_millis();
    let r = send
        .send_request(h2_get(&format!("/slow/{slow}")))
        .await
        .expect("slow request answered");
    assert_eq!(r.status(), 200);
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"ok");
    assert!(!closed.is_finished(), "the connection outlived the request");
    let r = client()
        .get(format!("http://{}/name", server.proxy_addr))
        .header("x-piko-endpoint", "h2-limits")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the port still serves HTTP/1.1");
}
