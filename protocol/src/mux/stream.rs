//! One yamux stream: buffers, windows and the `AsyncRead + AsyncWrite` handle.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{self, FrameType, Header, INITIAL_WINDOW};
use super::{lock, MuxError, Shared};

/// State shared between the session task and a stream's handle.
pub(crate) struct StreamShared {
    id: u32,
    /// This side opened the stream and the peer has not answered it yet.
    unacked: std::sync::atomic::AtomicBool,
    state: Mutex<StreamState>,
}

struct StreamState {
    recv: VecDeque<Bytes>,
    /// Bytes the peer may still send before it needs a window update.
    recv_window: u32,
    /// Bytes read by the application since the last window update we sent.
    consumed: u32,
    /// Bytes we may still send.
    send_window: u32,
    local_fin: bool,
    remote_fin: bool,
    reset: bool,
    /// The handle was dropped after this side's FIN: the stream waits for the peer's FIN
    /// with nobody reading (see [`Stream`]'s `Drop`).
    detached: bool,
    /// When it was detached: a peer that never sends its FIN gets a reset after
    /// `Config::linger` (see `Shared::reset_lingering`).
    detached_at: Option<tokio::time::Instant>,
    session_closed: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl StreamShared {
    /// A stream this side opens: unanswered until the peer's first frame on it.
    pub(crate) fn opened(id: u32, window: u32) -> Self {
        let st = Self::new(id, window);
        st.unacked.store(true, std::sync::atomic::Ordering::Relaxed);
        st
    }

    /// Whether the stream was still unanswered; it no longer is.
    pub(crate) fn take_unacked(&self) -> bool {
        // A load first: the common case (answered long ago) writes nothing.
        self.unacked.load(std::sync::atomic::Ordering::Relaxed)
            && self
                .unacked
                .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    pub(crate) fn new(id: u32, window: u32) -> Self {
        Self {
            id,
            unacked: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(StreamState {
                recv: VecDeque::new(),
                recv_window: window,
                consumed: 0,
                send_window: INITIAL_WINDOW,
                local_fin: false,
                remote_fin: false,
                reset: false,
                detached: false,
                detached_at: None,
                session_closed: false,
                read_waker: None,
                write_waker: None,
            }),
        }
    }

    /// Apply a Data or WindowUpdate frame; returns whether the stream is finished.
    pub(crate) fn on_frame(
        &self,
        session: &Shared,
        hdr: Header,
        body: Bytes,
    ) -> Result<bool, MuxError> {
        let mut st = lock(&self.state);
        match hdr.ty {
            FrameType::WindowUpdate => {
                st.send_window = st.send_window.saturating_add(hdr.length);
                if let Some(w) = st.write_waker.take() {
                    w.wake();
                }
            }
            FrameType::Data => {
                let len = body.len() as u32;
                if len > st.recv_window {
                    return Err(MuxError::Protocol(format!(
                        "stream {} received {len} bytes with only {} left in its window",
                        self.id, st.recv_window
                    )));
                }
                st.recv_window -= len;
                if st.detached && !st.reset {
                    // Nobody will read it: dropped, and no window is granted back. A peer
                    // that spends the whole window on a stream we closed is not going to
                    // finish: reset it rather than hold it.
                    if st.recv_window == 0 && !st.remote_fin && hdr.flags & frame::FLAG_FIN == 0 {
                        st.reset = true;
                        drop(st);
                        session.queue_control(FrameType::WindowUpdate, frame::FLAG_RST, self.id, 0);
                        return Ok(true);
                    }
                } else if !body.is_empty() && !st.reset {
                    st.recv.push_back(body);
                    if let Some(w) = st.read_waker.take() {
                        w.wake();
                    }
                }
            }
            FrameType::Ping | FrameType::GoAway => {}
        }
        if hdr.flags & frame::FLAG_FIN != 0 {
            st.remote_fin = true;
            if let Some(w) = st.read_waker.take() {
                w.wake();
            }
        }
        if hdr.flags & frame::FLAG_RST != 0 {
            st.reset = true;
            st.wake_all();
        }
        Ok(st.reset || (st.local_fin && st.remote_fin))
    }

    /// Reset the stream if it has waited detached for the peer's FIN since before `cutoff`;
    /// returns whether it did (the caller removes it and sends the RST).
    pub(crate) fn reset_if_lingering(&self, cutoff: tokio::time::Instant) -> bool {
        let mut st = lock(&self.state);
        if st.reset || !st.detached || st.detached_at.is_none_or(|t| t > cutoff) {
            return false;
        }
        st.reset = true;
        true
    }

    pub(crate) fn on_session_closed(&self) {
        let mut st = lock(&self.state);
        st.session_closed = true;
        st.wake_all();
    }
}

impl StreamState {
    fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

/// A stream of a [`Session`](super::Session): an ordered, flow-controlled byte stream.
///
/// `shutdown` sends FIN (a half-close: reading goes on). Dropping a stream closes it as
/// dropping a TCP socket does: if this side had not shut down, it is reset (RST: the peer
/// learns the exchange was cut short); if it had, it stays open for the peer's FIN, with what
/// the peer still sends discarded, as hashicorp/yamux keeps a closed stream. A reset there
/// would lose data: hashicorp/yamux (the original Piko's) fails every read after RST, even
/// of bytes it already holds, so the original server answered 502 to every HTTP request
/// whose stream was reset right behind the response's FIN.
pub struct Stream {
    inner: Arc<StreamShared>,
    session: Arc<Shared>,
}

impl Stream {
    pub(crate) fn new(inner: Arc<StreamShared>, session: Arc<Shared>) -> Self {
        Self { inner, session }
    }

    /// The stream id.
    pub fn id(&self) -> u32 {
        self.inner.id
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = lock(&this.inner.state);
        if st.recv.is_empty() {
            // A peer that finished sending before resetting (a close without waiting for our
            // FIN) delivered everything: that is end of stream, not an error.
            if st.remote_fin {
                return Poll::Ready(Ok(()));
            }
            if st.reset {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "stream reset by peer",
                )));
            }
            if st.session_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "session closed",
                )));
            }
            st.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = 0usize;
        while buf.remaining() > 0 {
            let Some(front) = st.recv.front_mut() else {
                break;
            };
            let k = front.len().min(buf.remaining());
            buf.put_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                st.recv.pop_front();
            }
            n += k;
        }
        st.consumed += n as u32;
        let window = this.session.config.stream_window;
        if st.consumed >= window / 2 && !st.remote_fin && !st.reset && !st.session_closed {
            let delta = st.consumed;
            st.consumed = 0;
            st.recv_window += delta;
            drop(st);
            this.session
                .queue_control(FrameType::WindowUpdate, 0, this.inner.id, delta);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut st = lock(&this.inner.state);
        if st.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream reset by peer",
            )));
        }
        if st.session_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "session closed",
            )));
        }
        if st.local_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream closed for writing",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if st.send_window == 0 {
            st.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(st.send_window as usize);
        {
            let mut wq = lock(&this.session.wq);
            if wq.closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "session closed",
                )));
            }
            if wq.buf.len() >= this.session.config.write_queue_limit {
                wq.blocked.push(cx.waker().clone());
                return Poll::Pending;
            }
            wq.push(FrameType::Data, 0, this.inner.id, n as u32, &buf[..n]);
        }
        st.send_window -= n as u32;
        drop(st);
        this.session.writer_notify.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Data is queued to the session task, which writes and flushes it promptly.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = lock(&this.inner.state);
        if st.local_fin || st.reset || st.session_closed {
            return Poll::Ready(Ok(()));
        }
        st.local_fin = true;
        let done = st.remote_fin;
        drop(st);
        this.session
            .queue_control(FrameType::WindowUpdate, frame::FLAG_FIN, this.inner.id, 0);
        if done {
            this.session.remove_stream(this.inner.id);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = lock(&self.inner.state);
        let finished = st.reset || st.session_closed || (st.local_fin && st.remote_fin);
        if !finished && st.local_fin {
            // Closed this way already: wait for the peer's FIN (or RST, or the session's
            // end), which removes the stream; hold none of its data meanwhile.
            st.detached = true;
            st.detached_at = Some(tokio::time::Instant::now());
            st.recv.clear();
            st.read_waker = None;
            st.write_waker = None;
            return;
        }
        drop(st);
        if !finished {
            self.session
                .queue_control(FrameType::WindowUpdate, frame::FLAG_RST, self.inner.id, 0);
        }
        self.session.remove_stream(self.inner.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::timeout;

    use super::super::frame::*;
    use super::super::{Config, Mode, Session};

    const T: Duration = Duration::from_secs(5);

    /// A client session (the connector's side) whose peer end speaks raw frames.
    fn client(stream_window: u32) -> (Session, DuplexStream) {
        let (a, peer) = tokio::io::duplex(1 << 20);
        let config = Config {
            keepalive_interval: None,
            stream_window,
            ..Config::default()
        };
        let (session, driver) = Session::new(a, Mode::Client, config);
        tokio::spawn(driver);
        (session, peer)
    }

    async fn read_header(peer: &mut DuplexStream) -> Header {
        let mut h = [0u8; HEADER_LEN];
        timeout(T, peer.read_exact(&mut h))
            .await
            .expect("frame in time")
            .expect("read header");
        let header = Header::decode(&h).expect("valid header");
        if header.ty == FrameType::Data {
            let mut body = vec![0u8; header.length as usize];
            peer.read_exact(&mut body).await.expect("read body");
        }
        header
    }

    /// Ping the session and return the stream frames it sent before the answer: all it had
    /// queued when the ping arrived.
    async fn frames_before_pong(peer: &mut DuplexStream, value: u32) -> Vec<Header> {
        peer.write_all(&raw_frame(TYPE_PING, FLAG_SYN, 0, value, &[]))
            .await
            .unwrap();
        let mut seen = Vec::new();
        loop {
            let h = read_header(peer).await;
            if h.ty == FrameType::Ping && h.flags == FLAG_ACK && h.length == value {
                return seen;
            }
            seen.push(h);
        }
    }

    /// The peer opens stream 2 and the application answers, shuts down and drops it.
    async fn answered_and_dropped(session: &Session, peer: &mut DuplexStream) {
        peer.write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0, &[]))
            .await
            .unwrap();
        let mut stream = timeout(T, session.accept()).await.unwrap().expect("stream");
        stream.write_all(b"answer").await.unwrap();
        stream.shutdown().await.unwrap();
        drop(stream);
        let frames = frames_before_pong(peer, 1).await;
        let flags: Vec<u16> = frames.iter().map(|h| h.flags).collect();
        assert_eq!(flags, [FLAG_ACK, 0, FLAG_FIN], "ack, data, FIN: {frames:?}");
    }

    #[tokio::test]
    async fn a_stream_dropped_after_shutdown_waits_for_the_peers_fin_without_a_reset() {
        let (session, mut peer) = client(super::super::STREAM_WINDOW);
        answered_and_dropped(&session, &mut peer).await;
        assert_eq!(session.num_streams(), 1, "open until the peer's FIN");
        // The peer may still send (a request body it had under way): dropped, no reset.
        peer.write_all(&raw_frame(TYPE_DATA, 0, 2, 4, b"late"))
            .await
            .unwrap();
        assert_eq!(frames_before_pong(&mut peer, 2).await, []);
        peer.write_all(&raw_frame(TYPE_WINDOW_UPDATE, FLAG_FIN, 2, 0, &[]))
            .await
            .unwrap();
        timeout(T, session.idle())
            .await
            .expect("the peer's FIN removes it");
        assert_eq!(frames_before_pong(&mut peer, 3).await, [], "no reset after");
    }

    #[tokio::test]
    async fn a_dropped_stream_whose_peer_spends_its_whole_window_is_reset() {
        let (session, mut peer) = client(INITIAL_WINDOW);
        answered_and_dropped(&session, &mut peer).await;
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..(INITIAL_WINDOW as usize / chunk.len() - 1) {
            peer.write_all(&raw_frame(TYPE_DATA, 0, 2, chunk.len() as u32, &chunk))
                .await
                .unwrap();
        }
        assert_eq!(frames_before_pong(&mut peer, 2).await, [], "window left");
        peer.write_all(&raw_frame(TYPE_DATA, 0, 2, chunk.len() as u32, &chunk))
            .await
            .unwrap();
        let frames = frames_before_pong(&mut peer, 3).await;
        assert_eq!(
            frames
                .iter()
                .map(|h| (h.flags, h.stream_id))
                .collect::<Vec<_>>(),
            [(FLAG_RST, 2)]
        );
        assert_eq!(session.num_streams(), 0);
    }

    #[tokio::test]
    async fn a_dropped_stream_whose_peer_never_finishes_is_reset_after_the_linger_time() {
        let (a, mut peer) = tokio::io::duplex(1 << 20);
        let config = Config {
            keepalive_interval: None,
            linger: Duration::from_millis(400),
            ..Config::default()
        };
        let (session, driver) = Session::new(a, Mode::Client, config);
        tokio::spawn(driver);
        answered_and_dropped(&session, &mut peer).await;
        assert_eq!(session.num_streams(), 1, "waits for the peer's FIN");
        let started = tokio::time::Instant::now();
        timeout(T, session.idle())
            .await
            .expect("the stream is given up after the linger time");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "given up after {waited:?}, linger 400 ms"
        );
        let frames = frames_before_pong(&mut peer, 2).await;
        assert_eq!(
            frames
                .iter()
                .map(|h| (h.flags, h.stream_id))
                .collect::<Vec<_>>(),
            [(FLAG_RST, 2)],
            "the peer is told with a reset"
        );
    }
}
