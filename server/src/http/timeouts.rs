//! Header and idle timeouts of client connections, HTTP/1.1 and HTTP/2.
//!
//! hyper's own header timer also runs while a keep-alive connection waits for its next
//! request, so with it an idle connection lives only as long as a request head may take to
//! arrive (10 s), where the original Piko keeps idle connections for `idle_timeout` (5 min).
//! Here the service tells the connection when a request starts and when its response has been
//! sent ([`Activity`]); the connection's reader ([`ClientIo`]) then knows which timer applies:
//! - no request in flight and no byte of the next head yet: `idle_timeout` (the first request
//!   of a connection gets `read_header_timeout`), then the connection ends quietly;
//! - the next head has started: `read_header_timeout`, then `408 Request Timeout` (hyper would
//!   only close the connection);
//! - a request in flight or an upgraded connection: no timer here.
//!
//! HTTP/2 (h2c, or h2 after TLS) is told apart by its 24-byte preface, compared in full: an
//! HTTP/1.1 head whose method happens to be `PRI` is still HTTP/1.1. Until the preface and the
//! client's first SETTINGS frame are in, the connection has the header timer of a first
//! request (without the 408); before this, a client that sent `PRI ` and nothing more was
//! never closed. After that handshake hyper's keepalive pings apply, and
//! [`Activity::http2_idle`] tells the connection when it has had no request in flight for
//! `idle_timeout`, so that it goes away (GOAWAY, then close).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// The answer to a request head that took too long.
pub(crate) const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 35\r\n\r\n{\"error\":\"request header timeout\"}\n";

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame header's length.
const H2_FRAME_HEADER: usize = 9;

/// What the service knows about a connection's requests, shared with its reader.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    /// Woken when an HTTP/2 connection's handshake ends or its last request does.
    http2_changed: Notify,
}

#[derive(Debug)]
struct State {
    /// Requests whose response has not been sent to the end.
    in_flight: usize,
    /// The connection switched protocols: timers no longer apply.
    upgraded: bool,
    /// When the connection last became idle (accepted, or its last response ended).
    idle_since: Instant,
    /// Whether a request has been served (the first one gets the header timeout to start).
    served: bool,
    /// When the first byte of the next request head arrived.
    head_started: Option<Instant>,
    /// The reader, parked without a timer while a request was in flight: woken when the
    /// connection turns idle so that it arms the idle timer.
    reader: Option<Waker>,
    /// The connection is HTTP/2 and its handshake is done.
    http2: bool,
}

impl Activity {
    /// A fresh connection's activity.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                in_flight: 0,
                upgraded: false,
                idle_since: Instant::now(),
                served: false,
                head_started: None,
                reader: None,
                http2: false,
            }),
            http2_changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request head has been read and the service is handling it.
    pub fn request_started(&self) {
        let mut st = self.lock();
        st.in_flight += 1;
        st.head_started = None;
    }

    /// The connection has been upgraded (WebSocket, TCP over WebSocket).
    pub fn upgraded(&self) {
        self.lock().upgraded = true;
    }

    /// A response has been sent to the end (or abandoned).
    fn response_done(&self) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            st.idle_since = Instant::now();
            st.served = true;
            st.head_started = None;
            if let Some(w) = st.reader.take() {
                w.wake();
            }
            if st.http2 {
                drop(st);
                self.http2_changed.notify_waiters();
            }
        }
    }

    /// The HTTP/2 preface and first SETTINGS frame are in: the idle timer starts.
    fn http2_ready(&self) {
        let mut st = self.lock();
        st.http2 = true;
        st.idle_since = Instant::now();
        drop(st);
        self.http2_changed.notify_waiters();
    }

    /// Completes once the connection is HTTP/2, past its handshake, and has had no request
    /// in flight for `idle`; pending for ever on HTTP/1.1 connections.
    pub async fn http2_idle(&self, idle: Duration) {
        loop {
            let changed = self.http2_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = {
                let st = self.lock();
                (st.http2 && st.in_flight == 0).then(|| st.idle_since + idle)
            };
            match deadline {
                Some(at) if at <= Instant::now() => return,
                // Woken early by a request ending (a new deadline) or at the deadline, when a
                // request may have started since: check again either way.
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Track `body`: the response ends when the body has been read to the end or dropped.
    pub fn track<B>(self: &Arc<Self>, body: B) -> TrackedBody<B> {
        TrackedBody {
            inner: body,
            activity: Some(self.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that tells its connection's [`Activity`] when the response is over.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        activity: Option<Arc<Activity>>,
    }

    impl<B> PinnedDrop for TrackedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            done(this.project().activity);
        }
    }
}

fn done(activity: &mut Option<Arc<Activity>>) {
    if let Some(a) = activity.take() {
        a.response_done();
    }
}

impl<B: Body<Data = Bytes>> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            done(this.activity);
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a connection's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// The bytes so far are the first `seen` bytes of the HTTP/2 preface (or none yet).
    Unknown { seen: usize },
    /// HTTP/1.1.
    Http1,
    /// HTTP/2, preface in; `seen` bytes of the first frame (SETTINGS), whose header is
    /// kept as it arrives.
    Http2Handshake {
        seen: usize,
        header: [u8; H2_FRAME_HEADER],
    },
    /// HTTP/2 with its handshake done.
    Http2,
}

impl Proto {
    /// Take in the connection's next bytes; returns whether they finished an HTTP/2
    /// handshake.
    fn advance(&mut self, mut new: &[u8]) -> bool {
        loop {
            match self {
                Proto::Unknown { seen } => {
                    let want = &H2_PREFACE[*seen..];
                    let n = want.len().min(new.len());
                    if new[..n] != want[..n] {
                        *self = Proto::Http1;
                        return false;
                    }
                    *seen += n;
                    new = &new[n..];
                    if *seen < H2_PREFACE.len() {
                        return false;
                    }
                    *self = Proto::Http2Handshake {
                        seen: 0,
                        header: [0; H2_FRAME_HEADER],
                    };
                }
                Proto::Http2Handshake { seen, header } => {
                    if *seen < H2_FRAME_HEADER {
                        let n = (H2_FRAME_HEADER - *seen).min(new.len());
                        header[*seen..*seen + n].copy_from_slice(&new[..n]);
                        *seen += n;
                        new = &new[n..];
                        if *seen < H2_FRAME_HEADER {
                            return false;
                        }
                    }
                    // The payload length: 24 bits, big-endian. hyper checks the rest.
                    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                    let end = H2_FRAME_HEADER + len;
                    *seen += (end - *seen).min(new.len());
                    if *seen < end {
                        return false;
                    }
                    *self = Proto::Http2;
                    return true;
                }
                Proto::Http1 | Proto::Http2 => return false,
            }
        }
    }
}

/// A client connection's byte stream with the header and idle timers of this module.
pub struct ClientIo<T> {
    inner: T,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// What the connection's first bytes say it is.
    proto: Proto,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<T> ClientIo<T> {
    /// Wrap `inner`, whose requests `activity` reports.
    pub fn new(
        inner: T,
        activity: Arc<Activity>,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            activity,
            header_timeout,
            idle_timeout,
            proto: Proto::Unknown { seen: 0 },
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    /// When the connection gives up, and whether a request head was under way; with no timer,
    /// the reader's waker is kept to be woken when the connection turns idle.
    fn deadline(&self, cx: &Context<'_>) -> Option<(Instant, bool)> {
        if self.proto == Proto::Http2 {
            return None;
        }
        let mut st = self.activity.lock();
        if st.upgraded {
            return None;
        }
        if st.in_flight > 0 {
            st.reader = Some(cx.waker().clone());
            return None;
        }
        Some(match st.head_started {
            Some(t) => (t + self.header_timeout, true),
            None if st.served => (st.idle_since + self.idle_timeout, false),
            None => (st.idle_since + self.header_timeout, false),
        })
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() && this.proto != Proto::Http2 {
                    {
                        let mut st = this.activity.lock();
                        if st.in_flight == 0 && st.head_started.is_none() {
                            st.head_started = Some(Instant::now());
                        }
                    }
                    if this.proto.advance(new) {
                        this.activity.http2_ready();
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, in_head)) = this.deadline(cx) else {
                    return Poll::Pending;
                };
                if this.armed != Some(deadline) {
                    this.timer.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if in_head {
                    // Best effort: the connection is closing either way. An HTTP/2 client
                    // gets no HTTP/1.1 answer; a partial preface may be an HTTP/1.1 head.
                    if !matches!(this.proto, Proto::Http2Handshake { .. }) {
                        let _ = Pin::new(&mut this.inner).poll_write(cx, REQUEST_TIMEOUT_RESPONSE);
                        let _ = Pin::new(&mut this.inner).poll_flush(cx);
                    }
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request header timeout",
                    )))
                } else {
                    // Idle for too long: end of stream, which hyper takes as a quiet close.
                    Poll::Ready(Ok(()))
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(300);

    fn pair() -> (
        ClientIo<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Activity>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        let activity = Activity::new();
        (ClientIo::new(a, activity.clone(), HEAD, IDLE), b, activity)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_closes_after_the_header_timeout() {
        let (mut io, _peer, _) = pair();
        let start = Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "a quiet end of stream");
        assert_eq!(start.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_lasts_the_idle_timeout() {
        let (mut io, _peer, activity) = pair();
        activity.request_started();
        drop(activity.track(()));
        let start = Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_parked_during_a_request_arms_the_idle_timer_when_it_ends() {
        let (mut io, _peer, activity) = pair();
        activity.request_started();
        let body = activity.track(());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            io.read(&mut buf).await.unwrap()
        });
        tokio::time::sleep(IDLE * 2).await;
        assert!(
            !reader.is_finished(),
            "no timer while the request is in flight"
        );
        let done = Instant::now();
        drop(body);
        assert_eq!(reader.await.unwrap(), 0);
        assert_eq!(done.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_gets_408() {
        let (mut io, mut peer, _) = pair();
        peer.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let mut answer = vec![0u8; REQUEST_TIMEOUT_RESPONSE.len()];
        peer.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, REQUEST_TIMEOUT_RESPONSE);
    }

    #[tokio::test(start_paused = true)]
    async fn no_timer_while_a_request_is_served_or_after_an_upgrade() {
        let (mut io, _peer, activity) = pair();
        activity.request_started();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(IDLE * 2, io.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "still waiting while the request is in flight"
        );
        activity.upgraded();
        drop(activity.track(()));
        let read = tokio::time::timeout(IDLE * 2, io.read(&mut buf)).await;
        assert!(read.is_err(), "an upgraded connection has no idle timer");
    }

    /// An empty SETTINGS frame: what completes an HTTP/2 handshake after the preface.
    const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

    #[test]
    fn the_preface_and_first_frame_are_told_apart_from_http1_byte_by_byte() {
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        let cases: [(&str, &[u8], Proto); 6] = [
            ("a GET", b"GET / HTTP/1.1\r\n", Proto::Http1),
            ("a PRI method", b"PRI /x HTTP/1.1\r\n", Proto::Http1),
            ("`PRI `", b"PRI ", Proto::Unknown { seen: 4 }),
            (
                "the preface",
                H2_PREFACE,
                Proto::Http2Handshake {
                    seen: 0,
                    header: [0; 9],
                },
            ),
            (
                "half a SETTINGS frame",
                &h2[..h2.len() - 3],
                Proto::Http2Handshake {
                    seen: 12,
                    header: [0, 0, 6, 4, 0, 0, 0, 0, 0],
                },
            ),
            ("preface and SETTINGS", &h2, Proto::Http2),
        ];
        for (what, bytes, want) in cases {
            // Whole, and one byte at a time: reads may cut anywhere.
            let mut whole = Proto::Unknown { seen: 0 };
            let done = whole.advance(bytes);
            assert_eq!(whole, want, "{what}");
            assert_eq!(done, want == Proto::Http2, "{what}");
            let mut bytewise = Proto::Unknown { seen: 0 };
            let finished = bytes.iter().filter(|b| bytewise.advance(&[**b])).count();
            assert_eq!(bytewise, want, "{what}, byte by byte");
            assert_eq!(
                finished,
                usize::from(want == Proto::Http2),
                "{what}, byte by byte"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_preface_gets_the_header_timeout_and_408() {
        let (mut io, mut peer, _) = pair();
        peer.write_all(b"PRI ").await.unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), HEAD);
        let mut answer = vec![0u8; REQUEST_TIMEOUT_RESPONSE.len()];
        peer.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, REQUEST_TIMEOUT_RESPONSE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_handshake_must_end_within_the_header_timeout() {
        let (mut io, mut peer, activity) = pair();
        peer.write_all(H2_PREFACE).await.unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), H2_PREFACE.len());
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), HEAD);
        drop(io);
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no HTTP/1.1 answer to an HTTP/2 client");
        let idle = tokio::time::timeout(IDLE * 2, activity.http2_idle(IDLE)).await;
        assert!(idle.is_err(), "never an HTTP/2 connection");
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_http2_handshake_only_the_idle_timer_applies() {
        let (mut io, mut peer, activity) = pair();
        peer.write_all(H2_PREFACE).await.unwrap();
        peer.write_all(&EMPTY_SETTINGS).await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < H2_PREFACE.len() + EMPTY_SETTINGS.len() {
            got += io.read(&mut buf).await.unwrap();
        }
        let ready = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            io.read(&mut buf).await
        });
        // Requests come and go; the connection is idle only after the last one.
        tokio::time::sleep(IDLE / 2).await;
        activity.request_started();
        let body = activity.track(());
        tokio::time::sleep(IDLE * 2).await;
        let busy = Instant::now();
        drop(body);
        tokio::time::timeout(IDLE * 2, activity.http2_idle(IDLE))
            .await
            .expect("idle after the last request");
        assert_eq!(busy.elapsed(), IDLE);
        assert!(ready.elapsed() > IDLE * 2);
        assert!(
            !reader.is_finished(),
            "no header or idle timer on the reader"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_with_no_request_is_idle_after_the_idle_timeout() {
        let (mut io, mut peer, activity) = pair();
        let mut hello = H2_PREFACE.to_vec();
        hello.extend_from_slice(&EMPTY_SETTINGS);
        peer.write_all(&hello).await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < hello.len() {
            got += io.read(&mut buf).await.unwrap();
        }
        let start = Instant::now();
        activity.http2_idle(IDLE).await;
        assert_eq!(start.elapsed(), IDLE);
    }
}
