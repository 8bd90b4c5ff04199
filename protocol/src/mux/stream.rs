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
    session_closed: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl StreamShared {
    pub(crate) fn new(id: u32, window: u32) -> Self {
        Self {
            id,
            state: Mutex::new(StreamState {
                recv: VecDeque::new(),
                recv_window: window,
                consumed: 0,
                send_window: INITIAL_WINDOW,
                local_fin: false,
                remote_fin: false,
                reset: false,
                session_closed: false,
                read_waker: None,
                write_waker: None,
            }),
        }
    }

    /// Apply a Data or WindowUpdate frame; returns whether the stream is finished.
    pub(crate) fn on_frame(&self, hdr: Header, body: Bytes) -> Result<bool, MuxError> {
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
                if !body.is_empty() && !st.reset {
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
/// Dropping a stream that is not closed both ways resets it.
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
        let st = lock(&self.inner.state);
        let finished = st.reset || st.session_closed || (st.local_fin && st.remote_fin);
        drop(st);
        if !finished {
            self.session
                .queue_control(FrameType::WindowUpdate, frame::FLAG_RST, self.inner.id, 0);
        }
        self.session.remove_stream(self.inner.id);
    }
}
