//! The body of every response the server writes: a proxied body, which gives its upstream
//! connection back for reuse at its end (and may have a deadline, see [`super::deadline`]),
//! or a small one of the server's own.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

use super::deadline::{BoxError, Deadline, DeadlineExceeded, RequestBody, Timer};

/// The body of every response the server writes: a proxied body or a small one of its own.
pub type Body = Either<PooledBody, Full<Bytes>>;

/// Takes back a keep-alive connection whose response was read to the end: an upstream's
/// connection pool. A trait so that this layer, below `upstream`, can name the body type all
/// ports write; an `Arc<Upstream>` becomes an `Arc<dyn PoolReturn>` without an allocation.
pub trait PoolReturn: Send + Sync {
    /// Keep `sender` for the next request (or drop it, if the pool is full or it closed).
    fn put_back(&self, sender: SendRequest<RequestBody>);
}

/// Told the size of a response body once it has been sent (or abandoned): the proxy's
/// response-size metric. A trait for the same reason as [`PoolReturn`].
pub trait BodyMeter: Send + Sync {
    /// `bytes` of body went to the client.
    fn body_done(&self, bytes: u64);
}

pin_project_lite::pin_project! {
    /// A response body that returns its connection to the pool once read to the end, and
    /// fails at its deadline (`proxy.http.write_timeout`) if it has not all been sent by then.
    pub struct PooledBody {
        inner: Incoming,
        give_back: Option<(SendRequest<RequestBody>, Arc<dyn PoolReturn>)>,
        meter: Option<Arc<dyn BodyMeter>>,
        sent: u64,
        #[pin]
        timer: Timer,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body dropped before its end leaves the connection mid-response: not reusable.
            if this.inner.is_end_stream() {
                release(this.give_back);
            }
            report(this.meter, *this.sent);
        }
    }
}

fn release(give_back: &mut Option<(SendRequest<RequestBody>, Arc<dyn PoolReturn>)>) {
    if let Some((sender, pool)) = give_back.take() {
        pool.put_back(sender);
    }
}

fn report(meter: &mut Option<Arc<dyn BodyMeter>>, sent: u64) {
    if let Some(m) = meter.take() {
        m.body_done(sent);
    }
}

impl PooledBody {
    /// A body that returns `sender` to `pool` at its end (the upstream it came from).
    pub fn new(
        inner: Incoming,
        sender: SendRequest<RequestBody>,
        pool: Arc<dyn PoolReturn>,
    ) -> Self {
        Self {
            inner,
            give_back: Some((sender, pool)),
            meter: None,
            sent: 0,
            timer: Timer::off(),
        }
    }

    /// A body whose connection is not reused (upgrades, forwarded requests).
    pub fn unpooled(inner: Incoming) -> Self {
        Self {
            inner,
            give_back: None,
            meter: None,
            sent: 0,
            timer: Timer::off(),
        }
    }

    /// Report the bytes sent to `meter` when the body ends or is dropped.
    pub fn metered(mut self, meter: Arc<dyn BodyMeter>) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Fail the body (the client's connection closes) if it is not all sent by `deadline`.
    pub fn with_deadline(mut self, deadline: Option<Deadline>) -> Self {
        if deadline.is_some() {
            self.timer = Timer::new(deadline);
        }
        self
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if !this.inner.is_end_stream() {
            if let Poll::Ready((d, first)) = this.timer.poll_expired(cx) {
                if first {
                    tracing::warn!(
                        limit = ?d.limit,
                        sent = *this.sent,
                        "{}: the response was not sent in time; closing the client's connection",
                        d.key
                    );
                }
                *this.give_back = None;
                return Poll::Ready(Some(Err(Box::new(DeadlineExceeded {
                    key: d.key,
                    limit: d.limit,
                }))));
            }
        }
        let res = Pin::new(&mut *this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(None) => {
                release(this.give_back);
                report(this.meter, *this.sent);
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => *this.give_back = None,
            _ => {}
        }
        res.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
