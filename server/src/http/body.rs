//! The body of every response the server writes: a proxied body, which gives its upstream
//! connection back for reuse at its end, or a small one of the server's own.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

/// The body of every response the server writes: a proxied body or a small one of its own.
pub type Body = Either<PooledBody, Full<Bytes>>;

/// Takes back a keep-alive connection whose response was read to the end: an upstream's
/// connection pool. A trait so that this layer, below `upstream`, can name the body type all
/// ports write; an `Arc<Upstream>` becomes an `Arc<dyn PoolReturn>` without an allocation.
pub trait PoolReturn: Send + Sync {
    /// Keep `sender` for the next request (or drop it, if the pool is full or it closed).
    fn put_back(&self, sender: SendRequest<Incoming>);
}

/// Told the size of a response body once it has been sent (or abandoned): the proxy's
/// response-size metric. A trait for the same reason as [`PoolReturn`].
pub trait BodyMeter: Send + Sync {
    /// `bytes` of body went to the client.
    fn body_done(&self, bytes: u64);
}

/// A response body that returns its connection to the pool once read to the end.
pub struct PooledBody {
    inner: Incoming,
    give_back: Option<(SendRequest<Incoming>, Arc<dyn PoolReturn>)>,
    meter: Option<Arc<dyn BodyMeter>>,
    sent: u64,
}

impl PooledBody {
    /// A body that returns `sender` to `pool` at its end (the upstream it came from).
    pub fn new(inner: Incoming, sender: SendRequest<Incoming>, pool: Arc<dyn PoolReturn>) -> Self {
        Self {
            inner,
            give_back: Some((sender, pool)),
            meter: None,
            sent: 0,
        }
    }

    /// Report the bytes sent to `meter` when the body ends or is dropped.
    pub fn metered(mut self, meter: Arc<dyn BodyMeter>) -> Self {
        self.meter = Some(meter);
        self
    }

    fn report(&mut self) {
        if let Some(m) = self.meter.take() {
            m.body_done(self.sent);
        }
    }

    /// A body whose connection is not reused (upgrades).
    pub fn unpooled(inner: Incoming) -> Self {
        Self {
            inner,
            give_back: None,
            meter: None,
            sent: 0,
        }
    }

    fn release(&mut self) {
        if let Some((sender, pool)) = self.give_back.take() {
            pool.put_back(sender);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(None) => {
                self.release();
                self.report();
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.give_back = None,
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response: not reusable.
        if self.inner.is_end_stream() {
            self.release();
        }
        self.report();
    }
}
