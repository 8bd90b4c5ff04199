//! The yamux session carried over the upstream connection.
//!
//! The Piko server is the yamux *server* (even stream ids) and opens one stream per proxied
//! connection; the upstream is the yamux *client* (odd ids) and accepts them, as in the
//! original Piko and hashicorp/yamux: 12-byte big-endian header, version 0, types
//! Data/WindowUpdate/Ping/GoAway, flags SYN/ACK/FIN/RST, 256 KiB initial stream window.
//!
//! Why not a crate: `tokio-yamux` only applies a peer's window update when the stream is
//! *read*, so a stream that only writes (a large download) stalls for ever once its window is
//! spent; `yamux` (rust-libp2p) closes the whole connection on a received GoAway, so in-flight
//! requests die when a node drains. Both were checked against the tests in `tests.rs`. This
//! implementation keeps the shared state small: a stream table, a write queue flushed by the
//! session's one task, and per-stream buffers with wakers.
//!
//! Layout: [`frame`] (header codec), `session` (this file: [`Session`], the connection task),
//! `stream` ([`Stream`], the `AsyncRead + AsyncWrite` handle).

pub mod frame;
mod stream;
#[cfg(test)]
mod tests;
mod transport;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ws::MAX_WRITE_MESSAGE;
use frame::{FrameType, Header, HEADER_LEN, INITIAL_WINDOW};
pub use stream::Stream;

/// Per-stream receive window granted by Piko peers. Larger than yamux's 256 KiB default so
/// that one stream carries a large body at full speed; peers that keep 256 KiB still work.
pub const STREAM_WINDOW: u32 = 4 << 20;

/// Default of [`Config::max_unacked_opens`]: hashicorp/yamux's accept backlog, which is also
/// the original Piko's cap on unacknowledged opens.
pub const MAX_UNACKED_OPENS: usize = 256;

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The upstream side: opens odd stream ids, accepts the server's streams.
    Client,
    /// The Piko server side: opens even stream ids.
    Server,
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Receive window granted to the peer on each stream (at least 256 KiB).
    pub stream_window: u32,
    /// Interval between keepalive pings; `None` disables them (the peer's are still answered).
    pub keepalive_interval: Option<Duration>,
    /// With keepalive pings on: how long the session may receive nothing at all before the
    /// peer counts as gone. Any bytes count, not only ping answers, so a link busy with data
    /// whose answers queue behind it stays up. `None`: a ping still unanswered when the next
    /// is due ends the session.
    pub keepalive_timeout: Option<Duration>,
    /// Streams opened by the peer and not yet accepted; more are reset.
    pub accept_backlog: usize,
    /// Open streams at most; more are refused (local) or reset (peer).
    pub max_streams: usize,
    /// Streams this side opened that the peer has not acknowledged yet, at most; a further
    /// [`Session::open`] waits for an acknowledgement. A yamux peer resets SYNs beyond its
    /// accept backlog (256 in hashicorp/yamux), so a burst sent to a peer that is slow to
    /// accept (a stalled original agent lost up to a quarter of 1000 requests) would fail
    /// instead of waiting its turn.
    pub max_unacked_opens: usize,
    /// Queued outgoing bytes above which stream writes wait.
    pub write_queue_limit: usize,
    /// Queued bytes of answers to the peer (ping acks, replies to its SYNs) above which the
    /// session stops reading from the peer until they are written: a peer that sends pings
    /// or SYNs and never reads cannot grow the queue (it grew by 1.9 GB in 10 s).
    pub reply_queue_limit: usize,
    /// How long a stream this side has finished and dropped waits for the peer's FIN before
    /// it is reset: a peer that never closes its side cannot hold streams for ever.
    pub linger: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stream_window: STREAM_WINDOW,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_timeout: None,
            accept_backlog: 256,
            max_streams: 65_536,
            max_unacked_opens: MAX_UNACKED_OPENS,
            write_queue_limit: 1 << 20,
            reply_queue_limit: 64 * 1024,
            linger: Duration::from_secs(30),
        }
    }
}

/// Why a session or stream operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    /// The session is closed.
    #[error("session closed")]
    Closed,
    /// The peer sent GoAway: it accepts no new streams.
    #[error("peer is going away")]
    GoAway,
    /// The configured stream limit is reached.
    #[error("too many open streams")]
    TooManyStreams,
    /// All stream ids are used up.
    #[error("stream ids exhausted")]
    StreamsExhausted,
    /// The peer broke the protocol.
    #[error("yamux protocol error: {0}")]
    Protocol(String),
    /// The peer stopped answering keepalive pings.
    #[error("keepalive timeout: peer stopped answering pings")]
    KeepaliveTimeout,
    /// The underlying connection failed.
    #[error("connection error: {0}")]
    Io(Arc<io::Error>),
}

impl From<io::Error> for MuxError {
    fn from(e: io::Error) -> Self {
        MuxError::Io(Arc::new(e))
    }
}

impl From<frame::HeaderError> for MuxError {
    fn from(e: frame::HeaderError) -> Self {
        MuxError::Protocol(e.to_string())
    }
}

/// A yamux session. Cheap to clone; all clones drive the same connection.
///
/// [`Session::new`] returns the session and the future that runs the connection: the caller
/// spawns it (and so owns its lifetime) and learns from its output why the session ended.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    mode: Mode,
    config: Config,
    table: Mutex<Table>,
    wq: Mutex<WriteQueue>,
    writer_notify: Notify,
    state_notify: Notify,
    /// Set when the queued answers reach `reply_queue_limit`; the read loop then waits for
    /// `replies_drained`, which the writer signals when it takes the queue.
    replies_full: AtomicBool,
    replies_drained: Notify,
    /// When the session started; `last_read_ms` counts from it.
    started: Instant,
    /// Milliseconds after `started` when bytes last arrived (kept only with a
    /// `keepalive_timeout`).
    last_read_ms: AtomicU64,
}

struct Table {
    streams: HashMap<u32, Arc<stream::StreamShared>>,
    next_id: u32,
    max_peer_id: u32,
    /// Streams this side opened that the peer has not answered yet (see
    /// [`Config::max_unacked_opens`]).
    unacked: usize,
    accept_queue: VecDeque<Stream>,
    local_go_away: bool,
    remote_go_away: bool,
    closed: Option<MuxError>,
    ping_id: u32,
    ping_outstanding: Option<(u32, Instant)>,
    rtt: Option<Duration>,
}

struct WriteQueue {
    buf: BytesMut,
    /// Bytes of `buf` that answer the peer's frames (see `Config::reply_queue_limit`).
    replies: usize,
    blocked: Vec<Waker>,
    close_requested: bool,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data inconsistent in a way
    // that matters more than stopping: keep going with the inner value.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    /// Remove stream `id`; returns whether that freed a slot of `max_unacked_opens` that was
    /// full (an open may be waiting for it).
    fn forget(&mut self, id: u32, config: &Config) -> bool {
        let Some(st) = self.streams.remove(&id) else {
            return false;
        };
        if !st.take_unacked() {
            return false;
        }
        let was_full = self.unacked >= config.max_unacked_opens;
        self.unacked = self.unacked.saturating_sub(1);
        was_full
    }
}

impl WriteQueue {
    fn push(&mut self, ty: FrameType, flags: u16, stream_id: u32, length: u32, body: &[u8]) {
        self.buf.extend_from_slice(
            &Header {
                ty,
                flags,
                stream_id,
                length,
            }
            .encode(),
        );
        self.buf.extend_from_slice(body);
    }
}

impl Session {
    /// Start a session over a byte stream `io`. Spawn the returned future; it ends when the
    /// connection does.
    pub fn new<T>(
        io: T,
        mode: Mode,
        config: Config,
    ) -> (Self, impl Future<Output = Result<(), MuxError>> + Send)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        Self::over_chunks(
            transport::byte_chunks(rd),
            transport::byte_sink(wr),
            mode,
            config,
        )
    }

    /// Start a session over a WebSocket whose binary messages carry the byte stream. Frames
    /// are read out of messages and written into them without the copies a byte stream needs.
    pub fn over_websocket<S>(
        ws: tokio_tungstenite::WebSocketStream<S>,
        mode: Mode,
        config: Config,
    ) -> (Self, impl Future<Output = Result<(), MuxError>> + Send)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (reader, writer) = transport::websocket(ws);
        Self::over_chunks(reader, writer, mode, config)
    }

    fn over_chunks<R, W>(
        reader: R,
        writer: W,
        mode: Mode,
        config: Config,
    ) -> (Self, impl Future<Output = Result<(), MuxError>> + Send)
    where
        R: futures_util::Stream<Item = io::Result<Bytes>> + Unpin + Send + 'static,
        W: futures_util::Sink<Bytes, Error = io::Error> + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            mode,
            config,
            table: Mutex::new(Table {
                streams: HashMap::new(),
                next_id: if mode == Mode::Client { 1 } else { 2 },
                max_peer_id: 0,
                unacked: 0,
                accept_queue: VecDeque::new(),
                local_go_away: false,
                remote_go_away: false,
                closed: None,
                ping_id: 0,
                ping_outstanding: None,
                rtt: None,
            }),
            wq: Mutex::new(WriteQueue {
                buf: BytesMut::new(),
                replies: 0,
                blocked: Vec::new(),
                close_requested: false,
                closed: false,
            }),
            writer_notify: Notify::new(),
            state_notify: Notify::new(),
            replies_full: AtomicBool::new(false),
            replies_drained: Notify::new(),
            started: Instant::now(),
            last_read_ms: AtomicU64::new(0),
        });
        let driver = run(shared.clone(), reader, writer);
        (Self { shared }, driver)
    }

    /// Open a stream to the peer. Returns at once with the SYN queued, unless the peer has
    /// not acknowledged [`Config::max_unacked_opens`] streams yet: then it waits for an
    /// acknowledgement (callers bound the wait with their own timeout).
    pub async fn open(&self) -> Result<Stream, MuxError> {
        loop {
            let notified = self.shared.state_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(opened) = self.try_open() {
                return opened;
            }
            notified.await;
        }
    }

    /// Open a stream now, or `None` while too many opens are unacknowledged.
    fn try_open(&self) -> Option<Result<Stream, MuxError>> {
        let shared = &self.shared;
        let mut t = lock(&shared.table);
        if let Some(e) = &t.closed {
            return Some(Err(e.clone()));
        }
        if t.remote_go_away {
            return Some(Err(MuxError::GoAway));
        }
        if t.local_go_away {
            return Some(Err(MuxError::Closed));
        }
        if t.streams.len() >= shared.config.max_streams {
            return Some(Err(MuxError::TooManyStreams));
        }
        if t.unacked >= shared.config.max_unacked_opens {
            return None;
        }
        let id = t.next_id;
        let Some(next) = id.checked_add(2) else {
            return Some(Err(MuxError::StreamsExhausted));
        };
        t.next_id = next;
        t.unacked += 1;
        let st = Arc::new(stream::StreamShared::opened(
            id,
            shared.config.stream_window,
        ));
        t.streams.insert(id, st.clone());
        let delta = shared.config.stream_window.saturating_sub(INITIAL_WINDOW);
        lock(&shared.wq).push(FrameType::WindowUpdate, frame::FLAG_SYN, id, delta, &[]);
        drop(t);
        shared.writer_notify.notify_one();
        Some(Ok(Stream::new(st, self.shared.clone())))
    }

    /// Wait for the next stream the peer opens; `None` once the session has ended.
    pub async fn accept(&self) -> Option<Stream> {
        loop {
            let notified = self.shared.state_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut t = lock(&self.shared.table);
                if let Some(s) = t.accept_queue.pop_front() {
                    return Some(s);
                }
                if t.closed.is_some() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Tell the peer this side opens and accepts no new streams; open ones carry on.
    pub fn go_away(&self) {
        let mut t = lock(&self.shared.table);
        if t.local_go_away || t.closed.is_some() {
            return;
        }
        t.local_go_away = true;
        lock(&self.shared.wq).push(FrameType::GoAway, 0, 0, frame::GO_AWAY_NORMAL, &[]);
        drop(t);
        self.shared.writer_notify.notify_one();
    }

    /// Close the session: queued frames are flushed, then the connection is shut down.
    pub fn close(&self) {
        lock(&self.shared.wq).close_requested = true;
        self.shared.writer_notify.notify_one();
    }

    /// Whether the peer sent GoAway.
    pub fn is_gone_away(&self) -> bool {
        lock(&self.shared.table).remote_go_away
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.table).closed.is_some()
    }

    /// Wait until the peer sends GoAway or the session ends.
    pub async fn gone_away(&self) {
        self.wait_for(|t| t.remote_go_away || t.closed.is_some())
            .await
    }

    /// Wait until the session has ended.
    pub async fn closed(&self) {
        self.wait_for(|t| t.closed.is_some()).await
    }

    /// Wait until no stream is open (or the session has ended).
    pub async fn idle(&self) {
        self.wait_for(|t| t.streams.is_empty() || t.closed.is_some())
            .await
    }

    async fn wait_for(&self, cond: impl Fn(&Table) -> bool) {
        loop {
            let notified = self.shared.state_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&lock(&self.shared.table)) {
                return;
            }
            notified.await;
        }
    }

    /// Number of open streams.
    pub fn num_streams(&self) -> usize {
        lock(&self.shared.table).streams.len()
    }

    /// Round-trip time measured by the last answered keepalive ping.
    pub fn rtt(&self) -> Option<Duration> {
        lock(&self.shared.table).rtt
    }

    /// This side's mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }
}

impl Shared {
    fn is_peer_id(&self, id: u32) -> bool {
        match self.mode {
            Mode::Server => id % 2 == 1,
            Mode::Client => id.is_multiple_of(2),
        }
    }

    pub(crate) fn queue_control(&self, ty: FrameType, flags: u16, id: u32, length: u32) {
        {
            let mut wq = lock(&self.wq);
            if wq.closed {
                return;
            }
            wq.push(ty, flags, id, length, &[]);
        }
        self.writer_notify.notify_one();
    }

    /// Queue a frame that answers one of the peer's: counted against `reply_queue_limit`,
    /// which makes the read loop wait (see [`read_loop`]).
    fn queue_reply(&self, ty: FrameType, flags: u16, id: u32, length: u32) {
        {
            let mut wq = lock(&self.wq);
            if wq.closed {
                return;
            }
            wq.push(ty, flags, id, length, &[]);
            wq.replies += HEADER_LEN;
            if wq.replies >= self.config.reply_queue_limit {
                self.replies_full.store(true, Ordering::Release);
            }
        }
        self.writer_notify.notify_one();
    }

    /// Wait until the writer has taken the queued answers.
    async fn replies_written(&self) {
        loop {
            let drained = self.replies_drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !self.replies_full.load(Ordering::Acquire) {
                return;
            }
            drained.await;
        }
    }

    /// Reset and remove the streams that have waited longer than `linger` for the peer's FIN.
    fn reset_lingering(&self) {
        let Some(cutoff) = Instant::now().checked_sub(self.config.linger) else {
            return;
        };
        let lingering: Vec<u32> = {
            let mut t = lock(&self.table);
            let ids: Vec<u32> = t
                .streams
                .iter()
                .filter(|(_, s)| s.reset_if_lingering(cutoff))
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                t.forget(*id, &self.config);
            }
            ids
        };
        if lingering.is_empty() {
            return;
        }
        tracing::debug!(
            streams = lingering.len(),
            "reset streams whose peer never finished them"
        );
        for id in lingering {
            self.queue_control(FrameType::WindowUpdate, frame::FLAG_RST, id, 0);
        }
        if lock(&self.table).streams.is_empty() {
            self.state_notify.notify_waiters();
        }
    }

    fn mark_read(&self) {
        let ms = self.started.elapsed().as_millis();
        self.last_read_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last_read(&self) -> Instant {
        self.started + Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn remove_stream(&self, id: u32) {
        let mut t = lock(&self.table);
        let freed = t.forget(id, &self.config);
        let idle = t.streams.is_empty();
        drop(t);
        if idle || freed {
            self.state_notify.notify_waiters();
        }
    }

    /// The peer answered stream `st` (its first frame on it): it no longer counts against
    /// `max_unacked_opens`.
    fn answered(&self, st: &stream::StreamShared) {
        if !st.take_unacked() {
            return;
        }
        let mut t = lock(&self.table);
        let was_full = t.unacked >= self.config.max_unacked_opens;
        t.unacked = t.unacked.saturating_sub(1);
        drop(t);
        // Only an open waiting for a slot needs waking; the common case pays nothing.
        if was_full {
            self.state_notify.notify_waiters();
        }
    }

    fn handle(self: &Arc<Self>, hdr: Header, body: Bytes) -> Result<(), MuxError> {
        match hdr.ty {
            FrameType::Ping => {
                if hdr.flags & frame::FLAG_SYN != 0 {
                    self.queue_reply(FrameType::Ping, frame::FLAG_ACK, 0, hdr.length);
                } else if hdr.flags & frame::FLAG_ACK != 0 {
                    let mut t = lock(&self.table);
                    if let Some((id, sent)) = t.ping_outstanding {
                        if id == hdr.length {
                            t.rtt = Some(sent.elapsed());
                            t.ping_outstanding = None;
                        }
                    }
                }
                Ok(())
            }
            FrameType::GoAway => {
                if hdr.length != frame::GO_AWAY_NORMAL {
                    return Err(MuxError::Protocol(format!(
                        "peer went away with error code {}",
                        hdr.length
                    )));
                }
                lock(&self.table).remote_go_away = true;
                self.state_notify.notify_waiters();
                Ok(())
            }
            FrameType::Data | FrameType::WindowUpdate => self.handle_stream(hdr, body),
        }
    }

    fn handle_stream(self: &Arc<Self>, hdr: Header, body: Bytes) -> Result<(), MuxError> {
        let id = hdr.stream_id;
        if id == 0 {
            return Err(MuxError::Protocol("stream frame with stream id 0".into()));
        }
        let st = if hdr.flags & frame::FLAG_SYN != 0 {
            if !self.is_peer_id(id) {
                return Err(MuxError::Protocol(format!(
                    "peer opened stream {id} with this side's id parity"
                )));
            }
            let mut t = lock(&self.table);
            // Only an id still open is a reopen. A lower id than the last is not: Go's yamux
            // picks ids before it takes the write lock, so its SYNs can arrive out of order
            // (seen against the original server under 2 concurrent clients).
            if t.streams.contains_key(&id) {
                return Err(MuxError::Protocol(format!("peer reopened stream {id}")));
            }
            t.max_peer_id = t.max_peer_id.max(id);
            if t.local_go_away
                || t.closed.is_some()
                || t.accept_queue.len() >= self.config.accept_backlog
                || t.streams.len() >= self.config.max_streams
            {
                drop(t);
                tracing::debug!(stream = id, "refusing stream from peer");
                self.queue_reply(FrameType::WindowUpdate, frame::FLAG_RST, id, 0);
                return Ok(());
            }
            let st = Arc::new(stream::StreamShared::new(id, self.config.stream_window));
            t.streams.insert(id, st.clone());
            let delta = self.config.stream_window.saturating_sub(INITIAL_WINDOW);
            self.queue_reply(FrameType::WindowUpdate, frame::FLAG_ACK, id, delta);
            t.accept_queue
                .push_back(Stream::new(st.clone(), self.clone()));
            drop(t);
            self.state_notify.notify_waiters();
            st
        } else {
            let t = lock(&self.table);
            match t.streams.get(&id) {
                Some(st) => st.clone(),
                None => {
                    let known = if self.is_peer_id(id) {
                        id <= t.max_peer_id
                    } else {
                        id < t.next_id
                    };
                    if known {
                        // A frame racing the stream's close: drop it, as yamux peers do.
                        return Ok(());
                    }
                    return Err(MuxError::Protocol(format!(
                        "{} frame for stream {id}, which was never opened",
                        if hdr.ty == FrameType::Data {
                            "data"
                        } else {
                            "window update"
                        }
                    )));
                }
            }
        };
        self.answered(&st);
        let remove = st.on_frame(self, hdr, body)?;
        if remove {
            self.remove_stream(id);
        }
        Ok(())
    }

    fn close_with(&self, err: MuxError) {
        let (streams, unaccepted): (Vec<_>, VecDeque<Stream>) = {
            let mut t = lock(&self.table);
            if t.closed.is_none() {
                t.closed = Some(err);
            }
            let unaccepted = std::mem::take(&mut t.accept_queue);
            t.unacked = 0;
            (t.streams.drain().map(|(_, s)| s).collect(), unaccepted)
        };
        {
            let mut wq = lock(&self.wq);
            wq.closed = true;
            for w in wq.blocked.drain(..) {
                w.wake();
            }
        }
        for s in streams {
            s.on_session_closed();
        }
        // Dropped outside the table lock: a stream's drop takes it.
        drop(unaccepted);
        self.state_notify.notify_waiters();
    }
}

async fn run<R, W>(shared: Arc<Shared>, reader: R, writer: W) -> Result<(), MuxError>
where
    R: futures_util::Stream<Item = io::Result<Bytes>> + Unpin,
    W: futures_util::Sink<Bytes, Error = io::Error> + Unpin,
{
    let result = tokio::select! {
        r = read_loop(&shared, reader) => r,
        r = write_loop(&shared, writer) => r,
        r = keepalive_loop(&shared) => r,
        r = linger_loop(&shared) => r,
    };
    shared.close_with(match &result {
        Ok(()) => MuxError::Closed,
        Err(e) => e.clone(),
    });
    result
}

/// Where the next frame's bytes stand: whole in the current chunk (sliced without a copy) or
/// assembled in `partial` when a frame straddles chunks.
///
/// Backpressure: once the answers to the peer's frames queued since the writer last took the
/// queue reach `reply_queue_limit`, reading waits for the writer. A peer that pings (or
/// opens streams) and never reads so stops being read (and its keepalive times out), and at
/// most twice the limit of answers is held (one batch being written, one queued). Only
/// answers count, not this side's own frames or data: a pair of sessions both busy writing
/// can then never both stop reading.
async fn read_loop<R>(shared: &Arc<Shared>, mut reader: R) -> Result<(), MuxError>
where
    R: futures_util::Stream<Item = io::Result<Bytes>> + Unpin,
{
    use futures_util::StreamExt;
    // Empty until a frame straddles two chunks, so an idle session holds nothing here.
    let mut partial = BytesMut::new();
    loop {
        let chunk = match reader.next().await {
            Some(Ok(c)) => {
                if shared.config.keepalive_timeout.is_some() {
                    shared.mark_read();
                }
                c
            }
            Some(Err(e)) => return Err(e.into()),
            None if partial.is_empty() => return Ok(()),
            None => {
                return Err(MuxError::Protocol(
                    "connection ended in the middle of a frame".into(),
                ))
            }
        };
        if partial.is_empty() {
            let mut data = chunk;
            while let Some(need) = frame_len(shared, &data)? {
                if data.len() < need {
                    break;
                }
                let frame = data.split_to(need);
                dispatch(shared, &frame[..HEADER_LEN], frame.slice(HEADER_LEN..))?;
                if shared.replies_full.load(Ordering::Acquire) {
                    shared.replies_written().await;
                }
            }
            if !data.is_empty() {
                partial.extend_from_slice(&data);
            }
        } else {
            partial.extend_from_slice(&chunk);
            while let Some(need) = frame_len(shared, &partial)? {
                if partial.len() < need {
                    partial.reserve(need - partial.len());
                    break;
                }
                let frame = partial.split_to(need).freeze();
                dispatch(shared, &frame[..HEADER_LEN], frame.slice(HEADER_LEN..))?;
                if shared.replies_full.load(Ordering::Acquire) {
                    shared.replies_written().await;
                }
            }
        }
    }
}

/// The whole length of the frame at the front of `data`, once its header is there.
fn frame_len(shared: &Shared, data: &[u8]) -> Result<Option<usize>, MuxError> {
    let Some(raw) = data.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(raw);
    let hdr = Header::decode(&h)?;
    if hdr.ty != FrameType::Data {
        return Ok(Some(HEADER_LEN));
    }
    if hdr.length > shared.config.stream_window {
        return Err(MuxError::Protocol(format!(
            "data frame length {} exceeds the stream window {}",
            hdr.length, shared.config.stream_window
        )));
    }
    Ok(Some(HEADER_LEN + hdr.length as usize))
}

fn dispatch(shared: &Arc<Shared>, header: &[u8], body: Bytes) -> Result<(), MuxError> {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    shared.handle(Header::decode(&h)?, body)
}

async fn write_loop<W>(shared: &Shared, mut writer: W) -> Result<(), MuxError>
where
    W: futures_util::Sink<Bytes, Error = io::Error> + Unpin,
{
    use futures_util::SinkExt;
    loop {
        let notified = shared.writer_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (chunk, close, drained) = {
            let mut wq = lock(&shared.wq);
            let chunk = std::mem::take(&mut wq.buf);
            wq.replies = 0;
            for w in wq.blocked.drain(..) {
                w.wake();
            }
            let drained = shared.replies_full.swap(false, Ordering::AcqRel);
            (chunk, wq.close_requested, drained)
        };
        if drained {
            shared.replies_drained.notify_waiters();
        }
        if !chunk.is_empty() {
            // Frames of many streams travel together, in messages (or writes) of at most
            // `MAX_WRITE_MESSAGE` bytes: a WebSocket's bounded write buffer holds one more.
            let mut chunk = chunk.freeze();
            while chunk.len() > MAX_WRITE_MESSAGE {
                writer.feed(chunk.split_to(MAX_WRITE_MESSAGE)).await?;
            }
            writer.send(chunk).await?;
            continue;
        }
        if close {
            let _ = writer.close().await;
            return Ok(());
        }
        notified.await;
    }
}

/// Every half `linger`, reset the streams whose peer never finished them. Never returns.
async fn linger_loop(shared: &Shared) -> Result<(), MuxError> {
    let tick = (shared.config.linger / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(tick).await;
        shared.reset_lingering();
    }
}

async fn keepalive_loop(shared: &Shared) -> Result<(), MuxError> {
    let Some(interval) = shared.config.keepalive_interval else {
        return std::future::pending().await;
    };
    if let Some(timeout) = shared.config.keepalive_timeout {
        return keepalive_until_silent(shared, interval, timeout).await;
    }
    loop {
        tokio::time::sleep(interval).await;
        let id = {
            let mut t = lock(&shared.table);
            if t.ping_outstanding.is_some() {
                return Err(MuxError::KeepaliveTimeout);
            }
            t.ping_id = t.ping_id.wrapping_add(1);
            t.ping_outstanding = Some((t.ping_id, Instant::now()));
            t.ping_id
        };
        shared.queue_control(FrameType::Ping, frame::FLAG_SYN, 0, id);
    }
}

/// Ping every `interval`; end the session once nothing has arrived for `timeout`. Wakes at
/// whichever comes first, so a dead link is noticed `timeout` after its last bytes, not a
/// whole interval later.
async fn keepalive_until_silent(
    shared: &Shared,
    interval: Duration,
    timeout: Duration,
) -> Result<(), MuxError> {
    let mut next_ping = Instant::now() + interval;
    loop {
        let silent_at = shared.last_read() + timeout;
        tokio::time::sleep_until(next_ping.min(silent_at)).await;
        let now = Instant::now();
        if now >= shared.last_read() + timeout {
            return Err(MuxError::KeepaliveTimeout);
        }
        if now >= next_ping {
            let id = {
                let mut t = lock(&shared.table);
                t.ping_id = t.ping_id.wrapping_add(1);
                t.ping_outstanding = Some((t.ping_id, now));
                t.ping_id
            };
            shared.queue_control(FrameType::Ping, frame::FLAG_SYN, 0, id);
            next_ping = now + interval;
        }
    }
}
