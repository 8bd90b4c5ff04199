//! A WebSocket connection used as one ordered byte stream.
//!
//! Piko carries the yamux session (and TCP-over-WebSocket connections) in WebSocket binary
//! messages. Message boundaries mean nothing: the receiver concatenates the payloads. This
//! module adapts a [`WebSocketStream`] to [`AsyncRead`] + [`AsyncWrite`].

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest WebSocket message accepted from a peer. A yamux frame is at most the stream window
/// plus a 12-byte header, so this bounds memory without limiting throughput.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Bytes read from the socket at a time. tungstenite allocates this much per connection up
/// front (128 KiB by default), which a server holding thousands of idle upstreams cannot
/// afford; 16 KiB reads still move a large body at full speed.
pub const READ_BUFFER_SIZE: usize = 16 * 1024;

/// Largest WebSocket message this side sends. Longer writes are split (boundaries mean
/// nothing to the receiver), so that one message never needs more than this much room in the
/// write buffer.
pub const MAX_WRITE_MESSAGE: usize = 256 * 1024;

/// Bytes buffered before tungstenite writes them to the socket (its default).
pub const WRITE_BUFFER_SIZE: usize = 128 * 1024;

/// Most bytes a connection may hold for a peer that does not read: the write buffer plus one
/// message, and room for the pongs of a peer that reads slowly. tungstenite answers every
/// ping with a pong in this buffer, so without a bound a peer that sends pings and never
/// reads grew the server by gigabytes (4.7 GB in 15 s); at the bound, further pongs replace
/// each other (one is kept) and a data write that does not fit fails.
pub const MAX_WRITE_BUFFER_SIZE: usize = WRITE_BUFFER_SIZE + MAX_WRITE_MESSAGE + 128 * 1024;

/// Pong bytes a peer may be owed (pings received since this side last flushed) before a
/// write insists on flushing them first and, when the peer does not take them, fails with
/// [`not_reading`]. A peer that pings and never reads is so cut off at its next write
/// instead of holding the connection (and what it relays) for ever. A peer that reads is
/// never owed this much: this side flushes whenever it has nothing more to write at once,
/// and 256 KiB is some 2,000 pings (hours of keepalive) between two such flushes.
pub const MAX_PONG_DEBT: usize = 256 * 1024;

/// Pongs owed to the peer: the size of the pings received since this side last flushed.
#[derive(Debug, Default)]
pub(crate) struct PongDebt(AtomicUsize);

impl PongDebt {
    /// A ping with `payload` bytes arrived: tungstenite has queued (or replaced) a pong.
    pub(crate) fn ping(&self, payload: usize) {
        // Two header bytes: a server's pong is unmasked and its payload at most 125 bytes.
        self.0.fetch_add(payload + 2, Ordering::Relaxed);
    }

    /// Everything queued, pongs included, has been written.
    pub(crate) fn flushed(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Before a write: when the peer is owed more than [`MAX_PONG_DEBT`], flush first; if
    /// that cannot complete at once, the peer is not reading and the write fails.
    pub(crate) fn check<K>(&self, ws: Pin<&mut K>, cx: &mut Context<'_>) -> io::Result<()>
    where
        K: Sink<Message, Error = tungstenite::Error> + ?Sized,
    {
        if self.0.load(Ordering::Relaxed) <= MAX_PONG_DEBT {
            return Ok(());
        }
        match ws.poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.flushed();
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(to_io(e)),
            Poll::Pending => Err(not_reading()),
        }
    }
}

/// The error of a write to a peer that lets its pongs (or data) pile up unread.
pub fn not_reading() -> io::Error {
    io::Error::other("websocket peer is not reading")
}

/// The WebSocket settings both sides use: bounded message and frame sizes, small buffers, a
/// bounded write buffer.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_write_buffer_size(MAX_WRITE_BUFFER_SIZE)
}

/// A [`WebSocketStream`] read and written as a byte stream of binary messages.
///
/// Reads return the payloads of binary messages in order; a close message or the end of the
/// connection (with or without a close handshake) is end-of-file; a text message is an
/// `InvalidData` error (the protocol is binary). Each write becomes one binary message of at
/// most [`MAX_WRITE_MESSAGE`] bytes. Pings are answered by tungstenite; a write to a peer that
/// is owed more than [`MAX_PONG_DEBT`] of pongs and does not take them fails ([`not_reading`]).
///
/// Shutting down the write side sends a Close frame, unless both ends agreed on half-close
/// ([`WsStream::with_half_close`], docs/protocol.md): then an empty binary message ends this
/// direction, the peer's empty binary message is end-of-file, and the WebSocket stays open
/// for the other direction until [`WsStream::close`].
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    read_buf: Bytes,
    eof: bool,
    half_close: bool,
    write_done: bool,
    pongs: PongDebt,
}

impl<S> WsStream<S> {
    /// Wrap an established WebSocket; shutdown sends a Close frame (a full close).
    pub fn new(inner: WebSocketStream<S>) -> Self {
        Self {
            inner,
            read_buf: Bytes::new(),
            eof: false,
            half_close: false,
            write_done: false,
            pongs: PongDebt::default(),
        }
    }

    /// Wrap a WebSocket whose two ends agreed on half-close: an empty binary message ends
    /// one direction (this side's on shutdown, the peer's as end-of-file).
    pub fn with_half_close(inner: WebSocketStream<S>) -> Self {
        Self {
            half_close: true,
            ..Self::new(inner)
        }
    }

    /// The wrapped WebSocket.
    pub fn into_inner(self) -> WebSocketStream<S> {
        self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// End the WebSocket with the close handshake: send Close (unless sent already), then read
    /// and drop what the peer still sends until its Close and the end of the connection.
    /// Callers bound it with a timeout; a peer that never answers is their concern.
    pub async fn close(&mut self) -> io::Result<()> {
        use futures_util::StreamExt;
        match self.inner.close(None).await {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => {}
            Err(e) => return Err(to_io(e)),
        }
        while let Some(msg) = self.inner.next().await {
            match msg {
                Ok(_) | Err(tungstenite::Error::ConnectionClosed) => {}
                Err(e) => return Err(to_io(e)),
            }
        }
        Ok(())
    }
}

/// A tungstenite error as an I/O error (closed connections are `BrokenPipe`).
pub(crate) fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        // The peer has not read what was already sent (a bounded buffer is full of it).
        tungstenite::Error::WriteBufferFull(_) => not_reading(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read_buf.is_empty() {
                let n = self.read_buf.len().min(buf.remaining());
                buf.put_slice(&self.read_buf[..n]);
                self.read_buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                // The peer's agreed end of its direction; without the agreement an empty
                // message carries nothing, as for the original Go peers (which skip it).
                Some(Ok(Message::Binary(data))) if data.is_empty() => self.eof = self.half_close,
                Some(Ok(Message::Binary(data))) => self.read_buf = data,
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Ok(Message::Ping(p))) => self.pongs.ping(p.len()),
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text websocket message on a binary byte stream",
                    )))
                }
                // A TCP end without a Close frame is how the original Go forwarder finishes
                // (gorilla's `Close` drops the connection): every byte before it arrived in
                // order, so it is end of stream, carried on as FIN rather than a reset.
                Some(Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                )) => self.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.write_done {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "websocket closed for writing",
            )));
        }
        let this = &mut *self;
        let mut sink = Pin::new(&mut this.inner);
        this.pongs.check(sink.as_mut(), cx)?;
        ready!(sink.as_mut().poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_WRITE_MESSAGE);
        sink.start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx)).map_err(to_io)?;
        self.pongs.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.half_close {
            return match ready!(Pin::new(&mut self.inner).poll_close(cx)) {
                Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
                Err(e) => Poll::Ready(Err(to_io(e))),
            };
        }
        // Half-close: a Close frame would end both directions (tungstenite and gorilla answer
        // it at once and refuse to send after it), so an empty binary message ends ours.
        if !self.write_done {
            let mut sink = Pin::new(&mut self.inner);
            ready!(sink.as_mut().poll_ready(cx)).map_err(to_io)?;
            sink.start_send(Message::Binary(Bytes::new()))
                .map_err(to_io)?;
            self.write_done = true;
        }
        Pin::new(&mut self.inner).poll_flush(cx).map_err(to_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let a = WebSocketStream::from_raw_socket(a, Role::Client, Some(ws_config())).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, Some(ws_config())).await;
        (a, b)
    }

    #[tokio::test]
    async fn messages_form_one_byte_stream() {
        let (mut a, b) = pair().await;
        let mut b = WsStream::new(b);
        a.send(Message::Binary(Bytes::from_static(b"hel")))
            .await
            .unwrap();
        a.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        a.send(Message::Binary(Bytes::from_static(b"lo")))
            .await
            .unwrap();
        a.close(None).await.unwrap();
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello");
    }

    #[tokio::test]
    async fn writes_become_binary_messages() {
        let (a, mut b) = pair().await;
        let mut a = WsStream::new(a);
        a.write_all(b"abc").await.unwrap();
        a.flush().await.unwrap();
        match b.next().await {
            Some(Ok(Message::Binary(data))) => assert_eq!(&data[..], b"abc"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn half_close_ends_one_direction_with_an_empty_message_and_keeps_the_other() {
        let (a, b) = pair().await;
        let (mut a, mut b) = (WsStream::with_half_close(a), WsStream::with_half_close(b));
        a.write_all(b"request").await.unwrap();
        a.shutdown().await.unwrap();
        let err = a.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // The other direction is still open.
        b.write_all(b"answer").await.unwrap();
        b.shutdown().await.unwrap();
        let mut back = Vec::new();
        a.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer");
        let closing = tokio::spawn(async move { b.close().await });
        tokio::time::timeout(std::time::Duration::from_secs(5), a.close())
            .await
            .expect("handshake in time")
            .unwrap();
        closing.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn without_half_close_an_empty_message_is_nothing_and_shutdown_is_close() {
        let (a, mut b) = pair().await;
        let mut a = WsStream::new(a);
        b.send(Message::Binary(Bytes::new())).await.unwrap();
        b.send(Message::Binary(Bytes::from_static(b"x")))
            .await
            .unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            a.read(&mut buf).await.unwrap(),
            1,
            "the empty message is skipped"
        );
        a.shutdown().await.unwrap();
        assert!(matches!(b.next().await, Some(Ok(Message::Close(_)))));
    }

    #[tokio::test]
    async fn a_connection_ended_without_a_close_frame_is_end_of_stream() {
        let (a, b) = pair().await;
        let mut b = WsStream::new(b);
        let mut a = a;
        a.send(Message::Binary(Bytes::from_static(b"last words")))
            .await
            .unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }

    #[tokio::test]
    async fn long_writes_are_split_into_bounded_messages_and_arrive_whole() {
        let (a, mut b) = pair().await;
        let mut a = WsStream::new(a);
        let data: Vec<u8> = (0..(3 * MAX_WRITE_MESSAGE + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                a.write_all(&data).await.unwrap();
                a.shutdown().await.unwrap();
            })
        };
        let mut got = Vec::new();
        while let Some(msg) = b.next().await {
            match msg.unwrap() {
                Message::Binary(m) => {
                    assert!(m.len() <= MAX_WRITE_MESSAGE, "a {} byte message", m.len());
                    got.extend_from_slice(&m);
                }
                Message::Close(_) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes arrive in order");
    }

    /// A client ping frame with a 125-byte payload, masked with the all-zero key.
    fn raw_ping() -> Vec<u8> {
        let mut f = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
        f.extend_from_slice(&[b'p'; 125]);
        f
    }

    #[tokio::test]
    async fn a_peer_that_floods_pings_and_never_reads_fails_the_next_write() {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let server =
            WebSocketStream::from_raw_socket(server, Role::Server, Some(ws_config())).await;
        let (mut rd, mut wr) = tokio::io::split(WsStream::new(server));
        // The server keeps reading, and so answers every ping with a pong.
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let res = rd.read_to_end(&mut out).await;
            (res, out.len())
        });
        // The client never reads: its half for reading is only kept open.
        let (_client_rd, mut client_wr) = tokio::io::split(client);
        let flood = raw_ping().repeat(8 * MAX_WRITE_BUFFER_SIZE / raw_ping().len());
        tokio::time::timeout(Duration::from_secs(5), client_wr.write_all(&flood))
            .await
            .expect("the server keeps reading pings")
            .unwrap();
        // Pongs for a quarter of them fill the bounded buffer: the next write is refused
        // instead of being queued behind megabytes of pongs the client will never read.
        let write = tokio::time::timeout(Duration::from_secs(5), async {
            wr.write_all(b"data").await?;
            wr.flush().await
        })
        .await
        .expect("the write ends instead of waiting for the peer for ever");
        let err = write.unwrap_err();
        assert_eq!(err.to_string(), not_reading().to_string());
        assert!(!reader.is_finished(), "reading goes on");
        client_wr.shutdown().await.unwrap();
        let (_, n) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader sees the end (an error: no close handshake)")
            .unwrap();
        assert_eq!(n, 0, "pings carry no data");
    }

    #[tokio::test]
    async fn text_message_is_an_error() {
        let (mut a, b) = pair().await;
        let mut b = WsStream::new(b);
        a.send(Message::Text("hi".into())).await.unwrap();
        let err = b.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn oversized_message_is_an_error() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut a = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let small = WebSocketConfig::default()
            .max_message_size(Some(1024))
            .max_frame_size(Some(1024));
        let b = WebSocketStream::from_raw_socket(b, Role::Server, Some(small)).await;
        let mut b = WsStream::new(b);
        let writer = tokio::spawn(async move {
            let _ = a.send(Message::Binary(Bytes::from(vec![0u8; 4096]))).await;
            a
        });
        let err = b.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        drop(writer);
    }
}
