//! Recording on the data path: what the forwarder calls for each request.
//!
//! Cheap by design, because it runs for every request whether or not anyone looks: the request
//! line and headers are kept as they are (reference-counted clones, redacted only when read),
//! bodies pass through a [`Tap`] that copies at most the body limit and counts the rest, and the
//! exchange is stored once, when the response body ends (or the client goes away), by whoever
//! drops the last handle. Nothing is formatted or allocated for the live stream unless someone
//! subscribed.

use std::fmt::Display;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use hyper::upgrade::OnUpgrade;
use piko_protocol::EndpointId;

use super::exchange::ExchangeId;
use super::store::{Capture, Entry, KeptHeaders, Part};
use super::websocket::{self, WsStats};
use super::Shared;

/// Error of an exchange whose client went away before the response head.
const CLIENT_GONE: &str = "client went away";
/// Error of an exchange whose client went away during the response body.
const CLIENT_GONE_MID_BODY: &str = "client went away before the response ended";

/// Records the requests of one endpoint into its [`Inspector`](super::Inspector). Cheap to
/// clone.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
    endpoint: EndpointId,
}

impl Recorder {
    pub(crate) fn new(shared: Arc<Shared>, endpoint: EndpointId) -> Self {
        Self { shared, endpoint }
    }

    /// Start recording `req` (as it arrived through the tunnel).
    pub fn begin<B>(&self, req: &Request<B>) -> Recording {
        Recording(Arc::new(Pending::new(
            self.shared.clone(),
            self.endpoint.clone(),
            None,
            req.method().clone(),
            req.uri()
                .path_and_query()
                .map_or_else(|| req.uri().path(), |pq| pq.as_str()),
            req.headers(),
        )))
    }
}

/// One request being recorded; stored when this handle and the response body's [`Tap`] are
/// both gone.
pub struct Recording(Arc<Pending>);

impl Recording {
    /// Wrap the request body so its start is captured on its way to the target.
    pub fn request_body<B: Body>(&self, body: B) -> Tap<B> {
        let mut tap = Tap {
            inner: body,
            side: Some(Side {
                pending: PendingRef::Weak(Arc::downgrade(&self.0)),
                capture: Some(Capture::new(&self.0.shared.store, self.0.shared.body_limit)),
                response: false,
            }),
        };
        tap.finish_if_empty();
        tap
    }

    /// Record the response head (and `error`, for the forwarder's own error answers) and wrap
    /// its body, whose end completes the record.
    pub fn respond<B: Body>(&self, resp: Response<B>, error: Option<&str>) -> Response<Tap<B>> {
        self.0
            .respond(resp.status().as_u16(), resp.headers(), error);
        resp.map(|body| {
            let mut tap = Tap {
                inner: body,
                side: Some(Side {
                    pending: PendingRef::Strong(self.0.clone()),
                    capture: Some(Capture::new(&self.0.shared.store, self.0.shared.body_limit)),
                    response: true,
                }),
            };
            tap.finish_if_empty();
            tap
        })
    }

    /// The relay that joins the two sides of an upgrade, counting bytes (and WebSocket frames
    /// when `websocket`) each way; the entry is stored at once and updated when the relay (which
    /// the caller runs) ends.
    pub fn upgraded(
        &self,
        client: OnUpgrade,
        target: OnUpgrade,
        websocket: bool,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stats = Arc::new(WsStats::new());
        self.0.state().ws = Some(stats.clone());
        let shared = Arc::downgrade(&self.0.shared);
        let closed = stats.clone();
        websocket::splice(client, target, websocket, stats, self.0.start, move || {
            if let (Some(shared), Some(id)) = (shared.upgrade(), closed.id()) {
                shared.publish_id(id);
            }
        })
    }
}

/// A body passed through unchanged while its start is captured and its bytes counted.
pub struct Tap<B> {
    inner: B,
    side: Option<Side>,
}

impl<B> Tap<B> {
    /// A body that records nothing (the inspector is off).
    pub fn plain(inner: B) -> Self {
        Self { inner, side: None }
    }
}

impl<B: Body> Tap<B> {
    /// A body with nothing in it may never be polled: it has ended already.
    fn finish_if_empty(&mut self) {
        if self.inner.is_end_stream() {
            if let Some(side) = &mut self.side {
                side.finish(None);
            }
        }
    }
}

enum PendingRef {
    /// The response side keeps the record open until its body ends.
    Strong(Arc<Pending>),
    /// The request side does not: a request body still streaming after the response ended
    /// must not hold the record back.
    Weak(Weak<Pending>),
}

struct Side {
    pending: PendingRef,
    capture: Option<Capture>,
    response: bool,
}

impl Side {
    fn observe(&mut self, data: &[u8]) {
        if let (Some(c), PendingRef::Strong(p)) = (&mut self.capture, &self.pending) {
            c.observe(&p.shared.store, data);
        } else if let (Some(c), PendingRef::Weak(w)) = (&mut self.capture, &self.pending) {
            if let Some(p) = w.upgrade() {
                c.observe(&p.shared.store, data);
            }
        }
    }

    /// Hand the capture to the record (once): at the end of the body, on an error, or when the
    /// body is dropped before its end.
    fn finish(&mut self, error: Option<String>) {
        let Some(capture) = self.capture.take() else {
            return;
        };
        let pending = match &self.pending {
            PendingRef::Strong(p) => Some(p.clone()),
            PendingRef::Weak(w) => w.upgrade(),
        };
        let Some(pending) = pending else { return };
        let mut state = pending.state();
        if self.response {
            state.response_body = Some(capture);
            state.finished = Some(Instant::now());
        } else {
            state.request_body = Some(capture);
        }
        if error.is_some() && state.error.is_none() {
            state.error = error;
        }
    }
}

impl<B> Body for Tap<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(r), Some(side)) = (&polled, &mut this.side) {
            match r {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        side.observe(data);
                    }
                    // hyper may stop polling once the body says it is done.
                    if this.inner.is_end_stream() {
                        side.finish(None);
                    }
                }
                Some(Err(e)) => {
                    let what = if side.response { "response" } else { "request" };
                    side.finish(Some(format!("{what} body failed: {e}")));
                }
                None => side.finish(None),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tap<B> {
    fn drop(&mut self) {
        if let Some(side) = &mut self.side {
            // Still holding its capture: dropped before its end. For a response, that is the
            // client going away (bodies that were empty from the start finished at once).
            let error = side.response.then(|| CLIENT_GONE_MID_BODY.to_string());
            side.finish(error);
        }
    }
}

/// The state an exchange builds up while it is in flight.
#[derive(Default)]
struct State {
    status: Option<u16>,
    response_headers: Option<KeptHeaders>,
    request_body: Option<Capture>,
    response_body: Option<Capture>,
    finished: Option<Instant>,
    error: Option<String>,
    ws: Option<Arc<WsStats>>,
}

/// An exchange in flight; stored when dropped.
pub(crate) struct Pending {
    shared: Arc<Shared>,
    endpoint: EndpointId,
    replay_of: Option<ExchangeId>,
    started: SystemTime,
    start: Instant,
    method: Method,
    path: Box<str>,
    request_headers: Option<KeptHeaders>,
    state: Mutex<State>,
}

impl Pending {
    pub(crate) fn new(
        shared: Arc<Shared>,
        endpoint: EndpointId,
        replay_of: Option<ExchangeId>,
        method: Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Self {
        let request_headers = Some(KeptHeaders::keep(&shared.store, headers));
        Self {
            shared,
            endpoint,
            replay_of,
            started: SystemTime::now(),
            start: Instant::now(),
            method,
            path: Box::from(path),
            request_headers,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn respond(&self, status: u16, headers: &HeaderMap, error: Option<&str>) {
        let kept = KeptHeaders::keep(&self.shared.store, headers);
        let mut state = self.state();
        state.status = Some(status);
        state.response_headers = Some(kept);
        if let Some(e) = error {
            state.error = Some(e.to_string());
        }
    }

    /// Set the captured request body directly (replays know their body).
    pub(crate) fn set_request_body(&self, capture: Capture) {
        self.state().request_body = Some(capture);
    }

    /// Set the captured response body and the end time directly.
    pub(crate) fn set_response_body(&self, capture: Capture, error: Option<String>) {
        let mut state = self.state();
        state.response_body = Some(capture);
        state.finished = Some(Instant::now());
        if error.is_some() {
            state.error = error;
        }
    }

    /// Store the exchange now and return it.
    pub(crate) fn commit(mut self) -> Option<Arc<Entry>> {
        self.take_entry().map(|e| self.shared.commit(e))
    }

    fn take_entry(&mut self) -> Option<Entry> {
        let request_headers = self.request_headers.take()?;
        let state = std::mem::take(self.state.get_mut().unwrap_or_else(PoisonError::into_inner));
        let store = &self.shared.store;
        let mut error = state.error;
        let finished = state.finished.unwrap_or_else(|| {
            if state.status.is_none() && error.is_none() {
                error = Some(CLIENT_GONE.to_string());
            }
            Instant::now()
        });
        let response = state.response_headers.map(|headers| Part {
            headers,
            body: state
                .response_body
                .unwrap_or_else(|| Capture::new(store, 0)),
        });
        Some(Entry {
            id: ExchangeId(0),
            endpoint: self.endpoint.clone(),
            replay_of: self.replay_of,
            started: self.started,
            duration: state
                .ws
                .is_none()
                .then(|| finished.duration_since(self.start)),
            method: self.method.clone(),
            path: std::mem::take(&mut self.path),
            status: state.status,
            error,
            request: Part {
                headers: request_headers,
                body: state.request_body.unwrap_or_else(|| Capture::new(store, 0)),
            },
            response,
            ws: state.ws,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(entry) = self.take_entry() {
            self.shared.commit(entry);
        }
    }
}
