//! Header and idle timeouts of HTTP/1.1 client connections.
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
//! - a request in flight, an upgraded connection, or HTTP/2: no timer here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The answer to a request head that took too long.
pub(crate) const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 35\r\n\r\n{\"error\":\"request header timeout\"}\n";

/// What the service knows about a connection's requests, shared with its reader.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
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
            }),
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

/// A response body that tells its connection's [`Activity`] when the response is over.
pub struct TrackedBody<B> {
    inner: B,
    activity: Option<Arc<Activity>>,
}

impl<B> TrackedBody<B> {
    fn done(&mut self) {
        if let Some(a) = self.activity.take() {
            a.response_done();
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.done();
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

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        self.done();
    }
}

/// A client connection's byte stream with the header and idle timers of this module.
pub struct ClientIo<T> {
    inner: T,
    activity: Arc<Activity>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// `Some(true)` once the connection turned out to be HTTP/2 (its preface starts `PRI `).
    http2: Option<bool>,
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
            http2: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    /// When the connection gives up, and whether a request head was under way; with no timer,
    /// the reader's waker is kept to be woken when the connection turns idle.
    fn deadline(&self, cx: &Context<'_>) -> Option<(Instant, bool)> {
        if self.http2 == Some(true) {
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
                if !new.is_empty() {
                    if this.http2.is_none() {
                        this.http2 = Some(new.starts_with(b"PRI "));
                    }
                    let mut st = this.activity.lock();
                    if st.in_flight == 0 && st.head_started.is_none() {
                        st.head_started = Some(Instant::now());
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
                    // Best effort: the connection is closing either way.
                    let _ = Pin::new(&mut this.inner).poll_write(cx, REQUEST_TIMEOUT_RESPONSE);
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
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
}
