//! yamux frames read and written by hand over a WebSocket byte stream, from the yamux spec
//! alone (no project protocol code), so that wire tests pin the format rather than our codec.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Frame type: stream data.
pub const DATA: u8 = 0;
/// Frame type: a stream's window update (also opens and acknowledges streams).
pub const WINDOW_UPDATE: u8 = 1;
/// Frame type: session ping.
pub const PING: u8 = 2;
/// Flag: opens a stream, or asks for a ping's answer.
pub const SYN: u16 = 1;
/// Flag: acknowledges a stream, or answers a ping.
pub const ACK: u16 = 2;
/// Flag: the sender will write no more on the stream.
pub const FIN: u16 = 4;
/// Flag: the stream is reset.
pub const RST: u16 = 8;

/// One encoded frame: version 0, type, flags, stream id, length (big-endian), then `body`.
pub fn frame(ty: u8, flags: u16, id: u32, len: u32, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8, ty];
    f.extend_from_slice(&flags.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// One decoded frame.
#[derive(Debug)]
pub struct Frame {
    /// [`DATA`], [`WINDOW_UPDATE`], [`PING`] or GoAway.
    pub ty: u8,
    /// [`SYN`], [`ACK`], [`FIN`], [`RST`] bits.
    pub flags: u16,
    /// The stream (0 for session frames).
    pub id: u32,
    /// Body length for data, else the window delta, ping value or GoAway code.
    pub len: u32,
    /// The data frame's body (empty for other types).
    pub body: Vec<u8>,
}

/// A yamux session seen frame by frame over a WebSocket whose binary messages carry it.
pub struct RawMux<S> {
    ws: WebSocketStream<S>,
    buf: Vec<u8>,
    /// Answer the peer's pings while reading, instead of returning them.
    pub answer_pings: bool,
    /// Time allowed for any one frame.
    pub frame_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawMux<S> {
    /// Frames over `ws`; pings are returned to the caller unless [`RawMux::answer_pings`].
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            buf: Vec::new(),
            answer_pings: false,
            frame_timeout: Duration::from_secs(10),
        }
    }

    /// Send `bytes` (one or more encoded frames) as one binary message.
    pub async fn send(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send a websocket message");
    }

    /// The next whole frame, however the peer split its messages.
    pub async fn next_frame(&mut self) -> Frame {
        loop {
            if let Some(f) = self.take_buffered() {
                if self.answer_pings && f.ty == PING && f.flags & SYN != 0 {
                    self.send(frame(PING, ACK, 0, f.len, &[])).await;
                    continue;
                }
                return f;
            }
            let msg = tokio::time::timeout(self.frame_timeout, self.ws.next())
                .await
                .expect("a frame from the peer in time")
                .expect("the connection is open")
                .expect("a websocket message");
            match msg {
                Message::Binary(b) => self.buf.extend_from_slice(&b),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected websocket message {other:?}"),
            }
        }
    }

    fn take_buffered(&mut self) -> Option<Frame> {
        let h = self.buf.get(..12)?;
        assert_eq!(h[0], 0, "yamux version");
        let ty = h[1];
        let flags = u16::from_be_bytes([h[2], h[3]]);
        let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let body_len = if ty == DATA { len as usize } else { 0 };
        if self.buf.len() < 12 + body_len {
            return None;
        }
        let body = self.buf[12..12 + body_len].to_vec();
        self.buf.drain(..12 + body_len);
        Some(Frame {
            ty,
            flags,
            id,
            len,
            body,
        })
    }
}
