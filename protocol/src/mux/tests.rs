//! Hand-written frames against a session: every frame type and flag, and each malformed input.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

use super::frame::*;
use super::*;

const T: Duration = Duration::from_secs(5);

/// A session under test plus the raw peer end that speaks frames by hand.
struct Harness {
    peer: DuplexStream,
    session: Session,
    driver: tokio::task::JoinHandle<Result<(), MuxError>>,
}

fn start(mode: Mode) -> Harness {
    let (a, peer) = tokio::io::duplex(1 << 20);
    let config = Config {
        keepalive_interval: None,
        ..Config::default()
    };
    let (session, driver) = Session::new(a, mode, config);
    Harness {
        peer,
        session,
        driver: tokio::spawn(driver),
    }
}

async fn read_frame<R: AsyncRead + Unpin>(peer: &mut R) -> (Header, Vec<u8>) {
    let mut h = [0u8; HEADER_LEN];
    timeout(T, peer.read_exact(&mut h))
        .await
        .expect("frame in time")
        .expect("read header");
    let header = Header::decode(&h).expect("valid header from the session");
    let mut body = vec![
        0u8;
        if header.ty == FrameType::Data {
            header.length as usize
        } else {
            0
        }
    ];
    peer.read_exact(&mut body).await.expect("read body");
    (header, body)
}

async fn session_error(h: Harness) -> MuxError {
    match timeout(T, h.driver)
        .await
        .expect("session ends in time")
        .expect("driver task")
    {
        Err(e) => e,
        Ok(()) => panic!("expected the session to fail"),
    }
}

#[tokio::test]
async fn ping_syn_is_answered_with_ack() {
    let mut h = start(Mode::Server);
    h.peer
        .write_all(&raw_frame(TYPE_PING, FLAG_SYN, 0, 0xdead_beef, &[]))
        .await
        .unwrap();
    let (hdr, _) = read_frame(&mut h.peer).await;
    assert_eq!(
        hdr,
        Header {
            ty: FrameType::Ping,
            flags: FLAG_ACK,
            stream_id: 0,
            length: 0xdead_beef
        }
    );
}

/// Send `count` frames made by `frame` from a peer that does not read, over a connection
/// whose buffers hold 16 KiB each way; check that the session stops reading with a bounded
/// queue, then read every answer and check it with `answer`.
async fn flood_without_reading(
    mode: Mode,
    count: u32,
    frame: impl Fn(u32) -> Vec<u8>,
    answer: impl Fn(u32, Header),
) {
    let (a, peer) = tokio::io::duplex(16 * 1024);
    let config = Config {
        keepalive_interval: None,
        ..Config::default()
    };
    let limit = config.reply_queue_limit;
    let (session, driver) = Session::new(a, mode, config);
    let driver = tokio::spawn(driver);
    let (mut rd, mut wr) = tokio::io::split(peer);
    let flood: Vec<u8> = (0..count).flat_map(frame).collect();
    assert!(
        flood.len() > 4 * limit,
        "the flood is larger than what may be queued"
    );
    let writer = tokio::spawn(async move { wr.write_all(&flood).await.map(|()| wr) });
    // Time is paused: this returns once every task waits, the session included.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !writer.is_finished(),
        "the session read a flood of {count} frames while its answers went unread"
    );
    let queued = lock(&session.shared.wq).buf.len();
    assert!(queued <= limit + HEADER_LEN, "{queued} bytes queued");
    // Reading lets the session go on: every frame is answered, none lost.
    for i in 0..count {
        let (hdr, _) = read_frame(&mut rd).await;
        answer(i, hdr);
    }
    let _wr = timeout(T, writer)
        .await
        .expect("the whole flood is taken")
        .unwrap()
        .unwrap();
    assert!(!driver.is_finished(), "the session is still up");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_pings_and_never_reads_stops_being_read() {
    flood_without_reading(
        Mode::Server,
        50_000,
        |i| raw_frame(TYPE_PING, FLAG_SYN, 0, i, &[]),
        |i, hdr| {
            assert_eq!(
                hdr,
                Header {
                    ty: FrameType::Ping,
                    flags: FLAG_ACK,
                    stream_id: 0,
                    length: i
                }
            )
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_opens_streams_and_never_reads_stops_being_read() {
    // Nobody accepts the streams: the first 256 wait in the backlog (acknowledged), the
    // others are refused (reset). Either way each SYN is answered once.
    let backlog = Config::default().accept_backlog as u32;
    flood_without_reading(
        Mode::Server,
        50_000,
        |i| raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0, &[]),
        |i, hdr| {
            let flag = if i < backlog { FLAG_ACK } else { FLAG_RST };
            assert_eq!(
                (hdr.ty, hdr.flags, hdr.stream_id),
                (FrameType::WindowUpdate, flag, 2 * i + 1)
            );
        },
    )
    .await;
}

#[tokio::test]
async fn keepalive_sends_pings_and_times_out_without_answers() {
    let (a, mut peer) = tokio::io::duplex(1 << 16);
    let config = Config {
        keepalive_interval: Some(Duration::from_millis(50)),
        ..Config::default()
    };
    let (_session, driver) = Session::new(a, Mode::Client, config);
    let driver = tokio::spawn(driver);
    let (hdr, _) = read_frame(&mut peer).await;
    assert_eq!((hdr.ty, hdr.flags), (FrameType::Ping, FLAG_SYN));
    // Never answer: the session must give up on its own.
    let res = timeout(T, driver).await.unwrap().unwrap();
    assert!(matches!(res, Err(MuxError::KeepaliveTimeout)), "{res:?}");
}

/// With a keepalive timeout, any bytes from the peer keep the session up (here the peer's
/// own pings, while ours go unanswered); once the peer falls silent the session ends one
/// timeout after the last bytes, not an interval later.
#[tokio::test(start_paused = true)]
async fn keepalive_timeout_counts_any_bytes_and_ends_a_silent_session() {
    let (a, mut peer) = tokio::io::duplex(1 << 20);
    let config = Config {
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_timeout: Some(Duration::from_secs(12)),
        ..Config::default()
    };
    let (_session, driver) = Session::new(a, Mode::Client, config);
    let driver = tokio::spawn(driver);
    let start = tokio::time::Instant::now();
    for i in 0..6 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        peer.write_all(&raw_frame(TYPE_PING, FLAG_SYN, 0, i, &[]))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!driver.is_finished(), "a talking peer is alive after 31 s");
    let last_bytes = start + Duration::from_secs(30);
    let res = timeout(Duration::from_secs(60), driver)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(res, Err(MuxError::KeepaliveTimeout)), "{res:?}");
    let silent_for = tokio::time::Instant::now() - last_bytes;
    assert!(
        silent_for >= Duration::from_secs(12) && silent_for < Duration::from_millis(12_100),
        "ended {silent_for:?} after the last bytes"
    );
    // It pinged all along: the peer received our pings every 5 s.
    // (No data frames flowed, so everything sent is 12-byte headers.)
    let mut sent = Vec::new();
    peer.read_to_end(&mut sent).await.unwrap();
    let pings = sent
        .chunks(HEADER_LEN)
        .filter_map(|h| Header::decode(h.try_into().ok()?).ok())
        .filter(|h| (h.ty, h.flags) == (FrameType::Ping, FLAG_SYN))
        .count();
    assert_eq!(pings, 8, "one ping per 5 s over 42 s");
}

#[tokio::test]
async fn server_opens_even_streams_and_carries_data_both_ways() {
    let mut h = start(Mode::Server);
    let mut stream = h.session.open().await.expect("open");
    assert_eq!(stream.id() % 2, 0);
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (syn, _) = read_frame(&mut h.peer).await;
    assert_eq!(
        syn,
        Header {
            ty: FrameType::WindowUpdate,
            flags: FLAG_SYN,
            stream_id: stream.id(),
            length: STREAM_WINDOW - INITIAL_WINDOW
        }
    );
    let (data, body) = read_frame(&mut h.peer).await;
    assert_eq!(
        (data.ty, data.stream_id, body.as_slice()),
        (FrameType::Data, stream.id(), &b"GET / HTTP/1.1\r\n\r\n"[..])
    );
    let id = stream.id();
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_ACK, id, 0, &[]))
        .await
        .unwrap();
    h.peer
        .write_all(&raw_frame(TYPE_DATA, 0, id, 5, b"hello"))
        .await
        .unwrap();
    h.peer
        .write_all(&raw_frame(TYPE_DATA, FLAG_FIN, id, 0, &[]))
        .await
        .unwrap();
    let mut got = Vec::new();
    timeout(T, stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"hello");
    stream.shutdown().await.unwrap();
    let (fin, _) = read_frame(&mut h.peer).await;
    assert_eq!((fin.flags, fin.stream_id), (FLAG_FIN, id));
    timeout(T, h.session.idle())
        .await
        .expect("stream closed both ways leaves the table");
}

#[tokio::test]
async fn client_accepts_streams_opened_by_the_peer() {
    let mut h = start(Mode::Client);
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, &[]))
        .await
        .unwrap();
    h.peer
        .write_all(&raw_frame(TYPE_DATA, 0, 2, 4, b"ping"))
        .await
        .unwrap();
    let mut stream = timeout(T, h.session.accept())
        .await
        .unwrap()
        .expect("stream");
    assert_eq!(stream.id(), 2);
    let (ack, _) = read_frame(&mut h.peer).await;
    assert_eq!(
        (ack.ty, ack.flags, ack.stream_id),
        (FrameType::WindowUpdate, FLAG_ACK, 2)
    );
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    stream.write_all(b"pong").await.unwrap();
    let (data, body) = read_frame(&mut h.peer).await;
    assert_eq!(
        (data.ty, data.stream_id, body.as_slice()),
        (FrameType::Data, 2, &b"pong"[..])
    );
}

#[tokio::test]
async fn syn_on_a_data_frame_carries_payload() {
    let mut h = start(Mode::Client);
    h.peer
        .write_all(&raw_frame(TYPE_DATA, FLAG_SYN, 4, 3, b"abc"))
        .await
        .unwrap();
    let mut stream = timeout(T, h.session.accept())
        .await
        .unwrap()
        .expect("stream");
    let mut buf = [0u8; 3];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"abc");
}

#[tokio::test]
async fn rst_from_peer_fails_the_stream() {
    let mut h = start(Mode::Client);
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, &[]))
        .await
        .unwrap();
    let mut stream = timeout(T, h.session.accept()).await.unwrap().unwrap();
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_RST, 2, 0, &[]))
        .await
        .unwrap();
    let err = timeout(T, stream.read(&mut [0u8; 8]))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let err = stream.write_all(b"x").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn dropping_an_open_stream_resets_it() {
    let mut h = start(Mode::Server);
    let stream = h.session.open().await.unwrap();
    let id = stream.id();
    drop(stream);
    let _syn = read_frame(&mut h.peer).await;
    let (rst, _) = read_frame(&mut h.peer).await;
    assert_eq!((rst.flags, rst.stream_id), (FLAG_RST, id));
    assert_eq!(h.session.num_streams(), 0);
}

#[tokio::test]
async fn a_write_only_stream_continues_after_a_window_update() {
    let mut h = start(Mode::Server);
    let mut stream = h.session.open().await.unwrap();
    let id = stream.id();
    // More than the 256 KiB the peer granted; the writer never reads.
    let writer = tokio::spawn(async move {
        stream.write_all(&vec![7u8; 300 * 1024]).await.unwrap();
        stream
    });
    let mut received = 0usize;
    while received < INITIAL_WINDOW as usize {
        received += read_frame(&mut h.peer).await.1.len();
    }
    assert_eq!(
        received, INITIAL_WINDOW as usize,
        "the sender stops at the window"
    );
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, 0, id, 1 << 20, &[]))
        .await
        .unwrap();
    while received < 300 * 1024 {
        received += read_frame(&mut h.peer).await.1.len();
    }
    timeout(T, writer).await.expect("writer finishes").unwrap();
}

#[tokio::test]
async fn reader_grants_window_as_it_consumes() {
    let mut h = start(Mode::Client);
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, &[]))
        .await
        .unwrap();
    let mut stream = timeout(T, h.session.accept()).await.unwrap().unwrap();
    let _ack = read_frame(&mut h.peer).await;
    let chunk = vec![1u8; 1 << 20];
    for _ in 0..2 {
        h.peer
            .write_all(&raw_frame(TYPE_DATA, 0, 2, chunk.len() as u32, &chunk))
            .await
            .unwrap();
    }
    let mut buf = vec![0u8; 2 << 20];
    stream.read_exact(&mut buf).await.unwrap();
    let (upd, _) = read_frame(&mut h.peer).await;
    assert_eq!(
        (upd.ty, upd.stream_id, upd.length),
        (FrameType::WindowUpdate, 2, 2 << 20)
    );
}

#[tokio::test]
async fn exceeding_the_window_is_a_protocol_error() {
    let mut h = start(Mode::Client);
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, &[]))
        .await
        .unwrap();
    let chunk = vec![0u8; STREAM_WINDOW as usize];
    h.peer
        .write_all(&raw_frame(TYPE_DATA, 0, 2, STREAM_WINDOW, &chunk))
        .await
        .unwrap();
    h.peer
        .write_all(&raw_frame(TYPE_DATA, 0, 2, 1, b"x"))
        .await
        .unwrap();
    let e = session_error(h).await;
    assert!(e.to_string().contains("window"), "{e}");
}

#[tokio::test]
async fn go_away_stops_new_streams_but_keeps_open_ones() {
    let mut h = start(Mode::Server);
    let mut open = h.session.open().await.unwrap();
    let id = open.id();
    let _syn = read_frame(&mut h.peer).await;
    h.peer
        .write_all(&raw_frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL, &[]))
        .await
        .unwrap();
    timeout(T, h.session.gone_away()).await.unwrap();
    assert!(matches!(h.session.open().await, Err(MuxError::GoAway)));
    h.peer
        .write_all(&raw_frame(TYPE_DATA, FLAG_FIN, id, 2, b"ok"))
        .await
        .unwrap();
    let mut got = Vec::new();
    open.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ok", "streams open before GoAway finish");
}

#[tokio::test]
async fn local_go_away_is_sent_and_refuses_peer_streams() {
    let mut h = start(Mode::Client);
    h.session.go_away();
    let (ga, _) = read_frame(&mut h.peer).await;
    assert_eq!((ga.ty, ga.length), (FrameType::GoAway, GO_AWAY_NORMAL));
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, &[]))
        .await
        .unwrap();
    let (rst, _) = read_frame(&mut h.peer).await;
    assert_eq!((rst.flags, rst.stream_id), (FLAG_RST, 2));
}

#[tokio::test]
async fn go_away_with_error_code_ends_the_session() {
    let mut h = start(Mode::Server);
    h.peer
        .write_all(&raw_frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR, &[]))
        .await
        .unwrap();
    let e = session_error(h).await;
    assert!(e.to_string().contains("error code 1"), "{e}");
}

#[tokio::test]
async fn bad_version_is_a_session_error() {
    let mut h = start(Mode::Server);
    let mut f = raw_frame(TYPE_PING, FLAG_SYN, 0, 1, &[]);
    f[0] = 1;
    h.peer.write_all(&f).await.unwrap();
    let e = session_error(h).await;
    assert!(e.to_string().contains("unsupported yamux version 1"), "{e}");
}

#[tokio::test]
async fn unknown_type_is_a_session_error() {
    let mut h = start(Mode::Server);
    h.peer.write_all(&raw_frame(9, 0, 0, 0, &[])).await.unwrap();
    let e = session_error(h).await;
    assert!(e.to_string().contains("unknown yamux frame type 9"), "{e}");
}

#[tokio::test]
async fn oversize_length_is_a_session_error() {
    let mut h = start(Mode::Server);
    h.peer
        .write_all(&raw_frame(TYPE_DATA, FLAG_SYN, 1, STREAM_WINDOW + 1, &[]))
        .await
        .unwrap();
    let e = session_error(h).await;
    assert!(e.to_string().contains("exceeds the stream window"), "{e}");
}

#[tokio::test]
async fn data_on_a_never_opened_stream_is_a_session_error() {
    let mut h = start(Mode::Server);
    h.peer
        .write_all(&raw_frame(TYPE_DATA, 0, 41, 3, b"xyz"))
        .await
        .unwrap();
    let e = session_error(h).await;
    assert!(e.to_string().contains("never opened"), "{e}");
}

#[tokio::test]
async fn frames_for_a_closed_stream_are_dropped() {
    let mut h = start(Mode::Server);
    let stream = h.session.open().await.unwrap();
    let id = stream.id();
    drop(stream);
    h.peer
        .write_all(&raw_frame(TYPE_DATA, 0, id, 4, b"late"))
        .await
        .unwrap_or(());
    h.peer
        .write_all(&raw_frame(TYPE_PING, FLAG_SYN, 0, 9, &[]))
        .await
        .unwrap();
    loop {
        let (hdr, _) = read_frame(&mut h.peer).await;
        if hdr.ty == FrameType::Ping {
            assert_eq!(hdr.length, 9, "session still answers after the late frame");
            break;
        }
    }
}

#[tokio::test]
async fn wrong_parity_and_reused_ids_are_protocol_errors() {
    let mut h = start(Mode::Server);
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, &[]))
        .await
        .unwrap();
    assert!(session_error(h).await.to_string().contains("parity"));
    let mut h = start(Mode::Client);
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, &[]))
        .await
        .unwrap();
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, &[]))
        .await
        .unwrap();
    assert!(session_error(h).await.to_string().contains("reopened"));
    let mut h = start(Mode::Client);
    h.peer
        .write_all(&raw_frame(TYPE_DATA, 0, 0, 0, &[]))
        .await
        .unwrap();
    assert!(session_error(h).await.to_string().contains("stream id 0"));
}

#[tokio::test]
async fn streams_the_peer_opens_out_of_order_are_accepted() {
    let mut h = start(Mode::Client);
    for id in [6, 2, 4] {
        h.peer
            .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, id, 0, &[]))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let s = timeout(T, h.session.accept())
            .await
            .unwrap()
            .expect("a stream");
        got.push(s.id());
    }
    assert_eq!(got, [6, 2, 4]);
    // Frames for the lower ids reach their streams, and the session stays up.
    h.peer
        .write_all(&raw_frame(TYPE_PING, FLAG_SYN, 0, 5, &[]))
        .await
        .unwrap();
    loop {
        let (hdr, _) = read_frame(&mut h.peer).await;
        if hdr.ty == FrameType::Ping {
            assert_eq!(hdr.length, 5);
            break;
        }
    }
}

#[tokio::test]
async fn truncated_input_is_an_error_and_closes_streams() {
    let mut h = start(Mode::Server);
    let mut stream = h.session.open().await.unwrap();
    let _syn = read_frame(&mut h.peer).await; // nothing left to write: the reader sees the end first
    h.peer
        .write_all(&raw_frame(TYPE_DATA, 0, stream.id(), 100, b"short"))
        .await
        .unwrap();
    drop(h.peer);
    let res = timeout(T, h.driver).await.unwrap().unwrap();
    assert!(
        matches!(res, Err(MuxError::Protocol(ref m)) if m.contains("middle of a frame")),
        "{res:?}"
    );
    let err = stream.read(&mut [0u8; 4]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
    let res = h.session.open().await;
    assert!(matches!(res, Err(MuxError::Protocol(_))), "{res:?}");
}

/// Serve echo streams on `client`, then send `count` streams of `size + i` bytes through
/// `server` at once and check each comes back intact.
async fn echo_many(server: Session, client: Session, count: u8, size: usize) {
    tokio::spawn(async move {
        while let Some(mut s) = client.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let mut tasks = Vec::new();
    for i in 0..count {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = server.open().await.unwrap();
            let payload = vec![i; size + i as usize];
            let (mut r, mut w) = tokio::io::split(&mut s);
            let send = async {
                w.write_all(&payload).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let (_, n) = tokio::join!(send, r.read_to_end(&mut back));
            n.unwrap();
            assert_eq!(back, payload);
        }));
    }
    for t in tasks {
        timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn two_sessions_carry_many_streams_in_parallel() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, sd) = Session::new(a, Mode::Server, Config::default());
    let (client, cd) = Session::new(b, Mode::Client, Config::default());
    tokio::spawn(sd);
    tokio::spawn(cd);
    echo_many(server.clone(), client, 50, 200_000).await;
    timeout(T, server.idle()).await.unwrap();
}

#[tokio::test]
async fn fin_then_rst_reads_as_end_of_stream() {
    let mut h = start(Mode::Server);
    let mut stream = h.session.open().await.unwrap();
    let id = stream.id();
    let _syn = read_frame(&mut h.peer).await;
    h.peer
        .write_all(&raw_frame(TYPE_DATA, FLAG_FIN, id, 4, b"done"))
        .await
        .unwrap();
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_RST, id, 0, &[]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut got = Vec::new();
    stream
        .read_to_end(&mut got)
        .await
        .expect("data then end of stream, not an error");
    assert_eq!(got, b"done");
}

async fn ws_pair() -> (
    tokio_tungstenite::WebSocketStream<DuplexStream>,
    tokio_tungstenite::WebSocketStream<DuplexStream>,
) {
    use tokio_tungstenite::tungstenite::protocol::Role;
    let (a, b) = tokio::io::duplex(256 * 1024);
    let cfg = Some(crate::ws::ws_config());
    let a = tokio_tungstenite::WebSocketStream::from_raw_socket(a, Role::Server, cfg).await;
    let b = tokio_tungstenite::WebSocketStream::from_raw_socket(b, Role::Client, cfg).await;
    (a, b)
}

#[tokio::test]
async fn sessions_over_websocket_carry_many_streams() {
    let (a, b) = ws_pair().await;
    let (server, sd) = Session::over_websocket(a, Mode::Server, Config::default());
    let (client, cd) = Session::over_websocket(b, Mode::Client, Config::default());
    tokio::spawn(sd);
    tokio::spawn(cd);
    echo_many(server, client, 20, 1_000_000).await;
}

#[tokio::test]
async fn frames_split_across_websocket_messages_are_reassembled() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (a, mut peer) = ws_pair().await;
    let (session, driver) = Session::over_websocket(
        a,
        Mode::Client,
        Config {
            keepalive_interval: None,
            ..Config::default()
        },
    );
    let driver = tokio::spawn(driver);
    // A SYN and a data frame cut at awkward places: inside the header, inside the body.
    let mut bytes = raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, &[]);
    bytes.extend(raw_frame(TYPE_DATA, 0, 2, 10, b"0123456789"));
    for piece in [&bytes[..5], &bytes[5..17], &bytes[17..30], &bytes[30..]] {
        peer.send(Message::Binary(bytes::Bytes::copy_from_slice(piece)))
            .await
            .unwrap();
    }
    let mut stream = timeout(T, session.accept()).await.unwrap().unwrap();
    let mut buf = [0u8; 10];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"0123456789");
    // A text message is not part of the protocol.
    peer.send(Message::Text("hello".into())).await.unwrap();
    let res = timeout(T, driver).await.unwrap().unwrap();
    assert!(
        matches!(&res, Err(MuxError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData),
        "{res:?}"
    );
}

#[tokio::test]
async fn a_websocket_close_ends_the_session_cleanly() {
    let (a, mut peer) = ws_pair().await;
    let (_session, driver) = Session::over_websocket(
        a,
        Mode::Client,
        Config {
            keepalive_interval: None,
            ..Config::default()
        },
    );
    let driver = tokio::spawn(driver);
    peer.close(None).await.unwrap();
    let res = timeout(T, driver).await.unwrap().unwrap();
    assert!(res.is_ok(), "{res:?}");
}

/// A peer that does not acknowledge: the first 256 opens go out at once, the next waits for
/// an answer (an ACK, or an RST refusing a stream) instead of being sent and reset by a peer
/// whose accept backlog is full; a session that ends fails the waiting open.
#[tokio::test]
async fn opens_past_the_unacked_cap_wait_for_an_answer() {
    let mut h = start(Mode::Server);
    assert_eq!(h.session.shared.config.max_unacked_opens, 256);
    let mut streams = Vec::new();
    for _ in 0..256 {
        let open = timeout(Duration::from_millis(100), h.session.open()).await;
        streams.push(open.expect("under the cap: at once").unwrap());
    }
    for i in 0..256u32 {
        let (hdr, _) = read_frame(&mut h.peer).await;
        assert_eq!((hdr.flags, hdr.stream_id), (FLAG_SYN, 2 + 2 * i));
    }
    let session = h.session.clone();
    let mut waiting = tokio::spawn(async move { session.open().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the 257th open waits for an ACK");
    // Nothing was sent for it meanwhile.
    let mut byte = [0u8; 1];
    assert!(timeout(Duration::from_millis(50), h.peer.read(&mut byte))
        .await
        .is_err());

    // An ACK (the peer's first frame on stream 2) frees a slot.
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_ACK, 2, 0, &[]))
        .await
        .unwrap();
    let s = timeout(T, &mut waiting).await.expect("open after an ACK");
    streams.push(s.unwrap().unwrap());
    assert_eq!(streams.last().unwrap().id(), 2 + 2 * 256);
    let (hdr, _) = read_frame(&mut h.peer).await;
    assert_eq!((hdr.flags, hdr.stream_id), (FLAG_SYN, 2 + 2 * 256));

    // A refusal (RST, no ACK) frees one too: the refused stream is answered.
    let session = h.session.clone();
    let waiting = tokio::spawn(async move { session.open().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    h.peer
        .write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_RST, 4, 0, &[]))
        .await
        .unwrap();
    let s = timeout(T, waiting).await.expect("open after an RST");
    streams.push(s.unwrap().unwrap());
    assert_eq!(streams.last().unwrap().id(), 2 + 2 * 257);

    // A stream this side drops before any answer frees its slot as well.
    let session = h.session.clone();
    let waiting = tokio::spawn(async move { session.open().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    drop(streams.pop());
    streams.push(
        timeout(T, waiting)
            .await
            .expect("open after a local drop")
            .unwrap()
            .unwrap(),
    );

    // A session that ends fails a waiting open rather than leaving it hanging.
    let session = h.session.clone();
    let waiting = tokio::spawn(async move { session.open().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    drop(h.peer);
    let r = timeout(T, waiting)
        .await
        .expect("fails when the session ends");
    assert!(r.unwrap().is_err());
}
