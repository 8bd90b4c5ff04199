//! What carries a session: a stream of byte chunks in, a sink of byte chunks out.
//!
//! Over a WebSocket a chunk is a binary message, passed through without copying; over a plain
//! byte stream (tests, other transports) chunks are whatever a read returns.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{future, stream, Sink, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::ws::{to_io, PongDebt};

/// Bytes asked of a byte stream per read.
const READ_CHUNK: usize = 16 * 1024;

/// The chunks read from `rd`, ending at end-of-file.
pub(crate) fn byte_chunks<R>(
    rd: R,
) -> impl Stream<Item = io::Result<Bytes>> + Unpin + Send + 'static
where
    R: AsyncRead + Unpin + Send + 'static,
{
    Box::pin(stream::unfold(Some(rd), |state| async move {
        let mut rd = state?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        match rd.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.freeze()), Some(rd))),
            Err(e) => Some((Err(e), None)),
        }
    }))
}

/// A sink writing (and flushing) each chunk to `wr`; closing shuts `wr` down.
pub(crate) fn byte_sink<W>(wr: W) -> WriteSink<W>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    WriteSink {
        wr,
        pending: Bytes::new(),
    }
}

/// [`byte_sink`]'s sink: one chunk in flight at a time.
pub(crate) struct WriteSink<W> {
    wr: W,
    pending: Bytes,
}

impl<W: AsyncWrite + Unpin> WriteSink<W> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.wr).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<Bytes> for WriteSink<W> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_drain(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Bytes) -> io::Result<()> {
        self.get_mut().pending = item;
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.wr).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.wr).poll_shutdown(cx)
    }
}

/// The binary messages of `ws` as chunks, and a sink sending chunks as binary messages.
/// A close message ends the stream; a text message is an `InvalidData` error; a write to a
/// peer that does not take its pongs fails (see [`crate::ws::MAX_PONG_DEBT`]).
#[allow(clippy::type_complexity)]
pub(crate) fn websocket<S>(
    ws: WebSocketStream<S>,
) -> (
    impl Stream<Item = io::Result<Bytes>> + Unpin + Send + 'static,
    impl Sink<Bytes, Error = io::Error> + Unpin + Send + 'static,
)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, messages) = ws.split();
    let pongs = Arc::new(PongDebt::default());
    let owed = pongs.clone();
    let chunks = messages
        .take_while(|m| {
            future::ready(!matches!(
                m,
                Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed)
            ))
        })
        .filter_map(move |m| {
            future::ready(match m {
                Ok(Message::Binary(b)) if !b.is_empty() => Some(Ok(b)),
                Ok(Message::Ping(p)) => {
                    owed.ping(p.len());
                    None
                }
                Ok(Message::Binary(_) | Message::Pong(_) | Message::Frame(_)) => None,
                Ok(Message::Text(_)) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "text websocket message on a binary byte stream",
                ))),
                Ok(Message::Close(_)) => None,
                Err(e) => Some(Err(to_io(e))),
            })
        });
    let sink = MessageSink { inner: sink, pongs };
    (Box::pin(chunks), sink)
}

/// [`websocket`]'s sink: each chunk one binary message, written only while the peer takes
/// its pongs ([`PongDebt`]).
struct MessageSink<K> {
    inner: K,
    pongs: Arc<PongDebt>,
}

impl<K> Sink<Bytes> for MessageSink<K>
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.pongs.check(Pin::new(&mut this.inner), cx)?;
        Pin::new(&mut this.inner).poll_ready(cx).map_err(to_io)
    }

    fn start_send(self: Pin<&mut Self>, item: Bytes) -> io::Result<()> {
        Pin::new(&mut self.get_mut().inner)
            .start_send(Message::Binary(item))
            .map_err(to_io)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx)).map_err(to_io)?;
        this.pongs.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_close(cx)
            .map_err(to_io)
    }
}
