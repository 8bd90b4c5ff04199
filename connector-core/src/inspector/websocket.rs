//! Upgraded connections: the two sides are joined as before, through a wrapper that counts the
//! bytes each way and, for WebSockets, the frames, by following the frame headers (RFC 6455
//! §5.2) in the relayed bytes. Payloads are skipped by length, so the work per chunk is a few
//! header bytes whatever the frame sizes; nothing is buffered.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::exchange::{ExchangeId, WebSocketStats};

/// `closed_micros` while the session is open.
const OPEN: u64 = u64::MAX;

/// Live counts of one upgraded connection, read by the inspector while it runs.
pub(crate) struct WsStats {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Microseconds from the request to the end of the session, or [`OPEN`].
    closed_micros: AtomicU64,
    /// The entry's id, set when it is stored.
    id: OnceLock<ExchangeId>,
}

impl WsStats {
    pub(crate) fn new() -> Self {
        Self {
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            closed_micros: AtomicU64::new(OPEN),
            id: OnceLock::new(),
        }
    }

    pub(crate) fn set_id(&self, id: ExchangeId) {
        let _ = self.id.set(id);
    }

    pub(crate) fn id(&self) -> Option<ExchangeId> {
        self.id.get().copied()
    }

    /// The counts now.
    pub(crate) fn snapshot(&self) -> WebSocketStats {
        WebSocketStats {
            frames_in: self.frames_in.load(Ordering::Relaxed),
            frames_out: self.frames_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            closed: self.closed_micros.load(Ordering::Acquire) != OPEN,
        }
    }

    /// Time from the request to the end of the session, once it has ended.
    pub(crate) fn duration(&self) -> Option<Duration> {
        match self.closed_micros.load(Ordering::Acquire) {
            OPEN => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn close(&self, after: Duration) {
        let us = u64::try_from(after.as_micros())
            .unwrap_or(OPEN - 1)
            .min(OPEN - 1);
        self.closed_micros.store(us, Ordering::Release);
    }
}

/// Follows WebSocket frame headers across chunk boundaries.
#[derive(Default)]
pub(crate) struct FrameCounter {
    head: [u8; 14],
    have: usize,
    need: usize,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
}

impl FrameCounter {
    /// Account `buf`; returns how many frames started in it.
    pub(crate) fn feed(&mut self, mut buf: &[u8]) -> u64 {
        let mut frames = 0;
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.skip -= n as u64;
                buf = &buf[n..];
                continue;
            }
            self.head[self.have] = buf[0];
            self.have += 1;
            buf = &buf[1..];
            if self.have == 2 {
                let ext = match self.head[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
                self.need = 2 + ext + mask;
            }
            if self.have >= 2 && self.have == self.need {
                let len = match self.head[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                    127 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.head[2..10]);
                        u64::from_be_bytes(b)
                    }
                    n => u64::from(n),
                };
                self.skip = len;
                self.have = 0;
                frames += 1;
            }
        }
        frames
    }
}

/// One side of the splice: counts what is read from it.
struct Counted<'a, T> {
    io: T,
    frames: Option<FrameCounter>,
    frame_total: &'a AtomicU64,
    byte_total: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let this = &mut *self;
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.byte_total
                    .fetch_add(new.len() as u64, Ordering::Relaxed);
                if let Some(fc) = &mut this.frames {
                    let n = fc.feed(new);
                    if n > 0 {
                        this.frame_total.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Join the client and target sides of an upgrade like
/// [`piko_protocol::http::join_upgrades`], counting into `stats`; `on_close` runs when the
/// session ends. The caller runs it, in the task of the stream that carried the upgrade.
pub(crate) async fn splice(
    client: OnUpgrade,
    target: OnUpgrade,
    websocket: bool,
    stats: Arc<WsStats>,
    started: Instant,
    on_close: impl FnOnce() + Send + 'static,
) {
    match tokio::try_join!(client, target) {
        Ok((client, target)) => {
            let mut client = Counted {
                io: TokioIo::new(client),
                frames: websocket.then(FrameCounter::default),
                frame_total: &stats.frames_in,
                byte_total: &stats.bytes_in,
            };
            let mut target = Counted {
                io: TokioIo::new(target),
                frames: websocket.then(FrameCounter::default),
                frame_total: &stats.frames_out,
                byte_total: &stats.bytes_out,
            };
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut target).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
    stats.close(started.elapsed());
    on_close();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client sends it (masked) or a server (unmasked).
    fn frame(opcode: u8, payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        match payload_len {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0x55, payload_len));
        f
    }

    #[test]
    fn counts_frames_of_every_length_form_across_any_chunking() {
        let mut stream = Vec::new();
        let lens = [0usize, 5, 125, 126, 300, 65_535, 65_536, 200_000];
        for (i, &len) in lens.iter().enumerate() {
            stream.extend(frame(if i % 2 == 0 { 1 } else { 2 }, len, i % 3 == 0));
        }
        stream.extend(frame(9, 4, true)); // a ping
        let want = lens.len() as u64 + 1;
        for chunk in [1usize, 2, 3, 7, 13, 1000, 65_536, stream.len()] {
            let mut fc = FrameCounter::default();
            let got: u64 = stream.chunks(chunk).map(|c| fc.feed(c)).sum();
            assert_eq!(got, want, "chunks of {chunk}");
            assert_eq!((fc.have, fc.skip), (0, 0), "ends on a frame boundary");
        }
    }
}
