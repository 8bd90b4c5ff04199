//! A WebSocket connection used as one ordered byte stream.
//!
//! Piko carries the yamux session (and TCP-over-WebSocket connections) in WebSocket binary
//! messages. Message boundaries mean nothing: the receiver concatenates the payloads. This
//! module adapts a [`WebSocketStream`] to [`AsyncRead`] + [`AsyncWrite`].

use std::io;
use std::pin::Pin;
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

/// The WebSocket settings both sides use: bounded message and frame sizes, small buffers.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
        .read_buffer_size(READ_BUFFER_SIZE)
}

/// A [`WebSocketStream`] read and written as a byte stream of binary messages.
///
/// Reads return the payloads of binary messages in order; a close message or the end of the
/// connection (with or without a close handshake) is end-of-file; a text message is an
/// `InvalidData` error (the protocol is binary). Each write becomes one binary message. Pings
/// are answered by tungstenite.
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
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
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
        let mut sink = Pin::new(&mut self.inner);
        ready!(sink.as_mut().poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_MESSAGE_SIZE);
        sink.start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(to_io)
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
