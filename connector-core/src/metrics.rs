//! The agent's Prometheus metrics, under the original Go agent's names (`piko_agent_*`), so
//! its dashboards keep working: requests in flight, totals and latency by status, method and
//! endpoint, and request and response sizes. Recorded by the HTTP forwarder when the agent
//! serves them (`--server.enabled`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Prometheus' default latency buckets, in seconds (the original's `DefBuckets`).
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Labels of the request totals and latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    status: u16,
    method: String,
    endpoint: String,
}

/// Labels of the per-endpoint metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

struct Inner {
    registry: Registry,
    in_flight: Family<EndpointLabels, Gauge>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    request_size: Family<EndpointLabels, Histogram>,
    response_size: Family<EndpointLabels, Histogram>,
}

/// Every endpoint's request metrics; cheap to clone (clones share them).
#[derive(Clone)]
pub struct AgentMetrics {
    inner: Arc<Inner>,
}

fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(256.0, 4.0, 8))
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("piko_agent");
        let in_flight = Family::<EndpointLabels, Gauge>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let request_size = Family::<EndpointLabels, Histogram>::new_with_constructor(
            size_histogram as fn() -> Histogram,
        );
        let response_size = Family::<EndpointLabels, Histogram>::new_with_constructor(
            size_histogram as fn() -> Histogram,
        );
        registry.register(
            "requests_in_flight",
            "Number of requests currently handled by this agent",
            in_flight.clone(),
        );
        registry.register("requests", "Total requests", requests.clone());
        registry.register(
            "request_latency_seconds",
            "Request latency",
            latency.clone(),
        );
        registry.register("request_size_bytes", "Request size", request_size.clone());
        registry.register(
            "response_size_bytes",
            "Response size",
            response_size.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                in_flight,
                requests,
                latency,
                request_size,
                response_size,
            }),
        }
    }
}

impl AgentMetrics {
    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// Start recording a request of `endpoint`: counts it in flight until the returned
    /// guard finishes.
    pub fn begin<B>(&self, endpoint: &str, req: &http::Request<B>) -> RequestMetrics {
        let labels = EndpointLabels {
            endpoint: endpoint.to_string(),
        };
        self.inner.in_flight.get_or_create(&labels).inc();
        self.inner
            .request_size
            .get_or_create(&labels)
            .observe(approximate_size(req) as f64);
        RequestMetrics {
            metrics: self.clone(),
            labels,
            method: req.method().to_string(),
            started: Instant::now(),
            done: false,
        }
    }
}

/// URL, method, protocol, headers, host and declared body length, as the original counts.
fn approximate_size<B>(req: &http::Request<B>) -> usize {
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    let body = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    // "HTTP/1.1"
    req.uri().to_string().len() + req.method().as_str().len() + 8 + headers + body
}

/// One request being recorded.
pub struct RequestMetrics {
    metrics: AgentMetrics,
    labels: EndpointLabels,
    method: String,
    started: Instant,
    done: bool,
}

impl RequestMetrics {
    /// The response head is ready with `status`: count the request, and wrap the body so its
    /// size is recorded when it has been sent.
    pub fn respond<B>(mut self, status: u16, body: B) -> SizedBody<B> {
        self.done = true;
        let m = &self.metrics.inner;
        let labels = RequestLabels {
            status,
            method: std::mem::take(&mut self.method),
            endpoint: self.labels.endpoint.clone(),
        };
        m.requests.get_or_create(&labels).inc();
        m.latency
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        m.in_flight.get_or_create(&self.labels).dec();
        SizedBody {
            body,
            size: 0,
            histogram: m.response_size.get_or_create(&self.labels).clone(),
        }
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        if !self.done {
            self.metrics
                .inner
                .in_flight
                .get_or_create(&self.labels)
                .dec();
        }
    }
}

/// A response body that records its size in bytes when it is dropped (sent or abandoned).
pub struct SizedBody<B> {
    body: B,
    size: u64,
    histogram: Histogram,
}

impl<B> Drop for SizedBody<B> {
    fn drop(&mut self) {
        self.histogram.observe(self.size as f64);
    }
}

impl<B: Body + Unpin> Body for SizedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.size += data.remaining() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[test]
    fn records_under_the_original_agents_names() {
        let m = AgentMetrics::default();
        let req = http::Request::post("/orders")
            .header("content-length", "5")
            .body(())
            .unwrap();
        let r = m.begin("shop", &req);
        assert!(m
            .encode()
            .contains("piko_agent_requests_in_flight{endpoint=\"shop\"} 1"));
        let body = r.respond(201, Full::new(bytes::Bytes::from_static(b"hello world")));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt.block_on(body.collect()).unwrap().to_bytes();
        assert_eq!(&got[..], b"hello world");
        let text = m.encode();
        for want in [
            "piko_agent_requests_in_flight{endpoint=\"shop\"} 0",
            "piko_agent_requests_total{status=\"201\",method=\"POST\",endpoint=\"shop\"} 1",
            "piko_agent_request_latency_seconds_count{status=\"201\",method=\"POST\",endpoint=\"shop\"} 1",
            "piko_agent_request_size_bytes_count{endpoint=\"shop\"} 1",
            "piko_agent_response_size_bytes_sum{endpoint=\"shop\"} 11.0",
            "piko_agent_response_size_bytes_bucket{le=\"256.0\",endpoint=\"shop\"} 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
