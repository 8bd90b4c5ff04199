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
/// connection is end-of-file; a text message is an `InvalidData` error (the protocol is
/// binary). Each write becomes one binary message. Pings are answered by tungstenite.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    read_buf: Bytes,
    eof: bool,
}

impl<S> WsStream<S> {
    /// Wrap an established WebSocket.
    pub fn new(inner: WebSocketStream<S>) -> Self {
        Self {
            inner,
            read_buf: Bytes::new(),
            eof: false,
        }
    }

    /// The wrapped WebSocket.
    pub fn into_inner(self) -> WebSocketStream<S> {
        self.inner
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
                Some(Ok(Message::Binary(data))) => self.read_buf = data,
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text websocket message on a binary byte stream",
                    )))
                }
                Some(Err(tungstenite::Error::ConnectionClosed)) => self.eof = true,
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
        match ready!(Pin::new(&mut self.inner).poll_close(cx)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
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
