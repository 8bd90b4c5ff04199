//! Whole-request and whole-response deadlines (`proxy.http.read_timeout` and
//! `proxy.http.write_timeout`), with the meaning Go's `http.Server` gives them in the
//! original:
//! - read: the request, its body included, has arrived within the limit;
//! - write: the response has been sent within the limit;
//!
//! both counted from the moment the request head has been read. An upgraded connection
//! (WebSocket, TCP over WebSocket) has neither once it has switched protocols, as Go clears a
//! connection's deadlines when a handler hijacks it.
//!
//! The timers live inside the body types ([`RequestBody`] for the body passed on to the
//! next hop, [`PooledBody`](super::PooledBody) for the response), pinned in place: a limit
//! that is off costs no timer, no allocation and no clock read; one that is on costs one
//! timer per request, checked before each body frame (as Go checks its deadline on each
//! read and write).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// A body error: the peer's, or a [`DeadlineExceeded`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The configuration key of the whole-request limit.
pub const READ_TIMEOUT_KEY: &str = "proxy.http.read_timeout";
/// The configuration key of the whole-response limit.
pub const WRITE_TIMEOUT_KEY: &str = "proxy.http.write_timeout";

/// When one limit of a request runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The moment.
    pub at: Instant,
    /// The configured limit.
    pub limit: Duration,
    /// Its configuration key, for the log line and the error.
    pub key: &'static str,
}

impl Deadline {
    /// `limit` after `start` (no deadline for `None`), under `key`.
    pub fn after(start: Instant, limit: Option<Duration>, key: &'static str) -> Option<Self> {
        limit.map(|limit| Self {
            at: start + limit,
            limit,
            key,
        })
    }
}

/// A limit ran out: the error a body returns at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{key}: not done within {limit:?}")]
pub struct DeadlineExceeded {
    /// The configuration key.
    pub key: &'static str,
    /// The limit.
    pub limit: Duration,
}

impl DeadlineExceeded {
    /// The deadline error in `e`'s chain of sources, if any (a request body's error arrives
    /// wrapped by the client that was sending it).
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(d) = e.downcast_ref::<DeadlineExceeded>() {
                return Some(*d);
            }
            cur = e.source();
        }
        None
    }
}

pin_project_lite::pin_project! {
    /// A deadline's timer, armed only when there is a deadline.
    #[derive(Debug)]
    pub struct Timer {
        #[pin]
        sleep: Option<Sleep>,
        deadline: Option<Deadline>,
        // Whether the expiry has been reported (logged) already.
        reported: bool,
    }
}

impl Timer {
    /// A timer for `deadline`; `None` is no timer at all.
    pub fn new(deadline: Option<Deadline>) -> Self {
        Self {
            sleep: deadline.map(|d| tokio::time::sleep_until(d.at)),
            deadline,
            reported: false,
        }
    }

    /// No deadline.
    pub fn off() -> Self {
        Self {
            sleep: None,
            deadline: None,
            reported: false,
        }
    }

    /// Ready with the deadline once it has passed (and at every poll after), and whether
    /// this is the first time it says so (to log once); never ready without a deadline.
    /// Registers `cx` to be woken at the deadline.
    pub fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(Deadline, bool)> {
        let this = self.project();
        match (this.sleep.as_pin_mut(), this.deadline) {
            (Some(sleep), Some(d)) => sleep.poll(cx).map(|()| {
                let first = !std::mem::replace(this.reported, true);
                (*d, first)
            }),
            _ => Poll::Pending,
        }
    }
}

pin_project_lite::pin_project! {
    /// A client's request body on its way to the next hop, failing with [`DeadlineExceeded`]
    /// if it has not all arrived by its deadline (`proxy.http.read_timeout`).
    pub struct RequestBody {
        inner: Incoming,
        #[pin]
        timer: Timer,
    }
}

impl RequestBody {
    /// `inner`, to arrive by `deadline` (`None`: no limit).
    pub fn new(inner: Incoming, deadline: Option<Deadline>) -> Self {
        Self {
            inner,
            timer: if deadline.is_some() {
                Timer::new(deadline)
            } else {
                Timer::off()
            },
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if this.inner.is_end_stream() {
            return Poll::Ready(None);
        }
        if let Poll::Ready((d, first)) = this.timer.poll_expired(cx) {
            if first {
                tracing::info!(
                    limit = ?d.limit,
                    "{}: the request body did not arrive in time; the request fails",
                    d.key
                );
            }
            return Poll::Ready(Some(Err(Box::new(DeadlineExceeded {
                key: d.key,
                limit: d.limit,
            }))));
        }
        Pin::new(this.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_at_its_deadline_and_never_without_one() {
        let start = Instant::now();
        let d = Deadline::after(start, Some(Duration::from_secs(2)), READ_TIMEOUT_KEY);
        let mut on = Box::pin(Timer::new(d));
        let (fired, first) = std::future::poll_fn(|cx| on.as_mut().poll_expired(cx)).await;
        assert_eq!((fired.key, first), (READ_TIMEOUT_KEY, true));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let again = std::future::poll_fn(|cx| on.as_mut().poll_expired(cx)).await;
        assert_eq!(again, (fired, false), "still expired, reported once");
        let mut off = Box::pin(Timer::off());
        let never = tokio::time::timeout(
            Duration::from_secs(3600),
            std::future::poll_fn(|cx| off.as_mut().poll_expired(cx)),
        )
        .await;
        assert!(never.is_err(), "no deadline, no expiry");
        assert_eq!(Deadline::after(start, None, WRITE_TIMEOUT_KEY), None);
    }

    #[test]
    fn a_deadline_error_is_found_through_its_wrappers() {
        #[derive(Debug, thiserror::Error)]
        #[error("sending failed")]
        struct Wrapper(#[source] BoxError);
        let inner = DeadlineExceeded {
            key: WRITE_TIMEOUT_KEY,
            limit: Duration::from_secs(1),
        };
        let wrapped = Wrapper(Box::new(inner));
        assert_eq!(DeadlineExceeded::find(&wrapped), Some(inner));
        let other = Wrapper("connection reset".into());
        assert_eq!(DeadlineExceeded::find(&other), None);
        assert_eq!(
            inner.to_string(),
            "proxy.http.write_timeout: not done within 1s"
        );
    }
}
