//! Prometheus metrics, with the original Piko's names, served by the admin port at `/metrics`.
//!
//! Request metrics are updated as requests finish; the upstream and cluster gauges are read
//! from the registry when a scrape comes, so the data path pays nothing for them.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::upstream::Registry as Upstreams;

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds (Prometheus' defaults, as the original uses).
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Request and response size buckets in bytes: 256 × 4ⁿ up to 4 MiB, as the original.
const SIZE_BUCKETS: [f64; 8] = [
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// The request method as a label; other methods are counted together, so a client cannot
/// create label sets without bound.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum MethodLabel {
    /// GET.
    GET,
    /// HEAD.
    HEAD,
    /// POST.
    POST,
    /// PUT.
    PUT,
    /// PATCH.
    PATCH,
    /// DELETE.
    DELETE,
    /// OPTIONS.
    OPTIONS,
    /// Any other method.
    OTHER,
}

impl From<&http::Method> for MethodLabel {
    fn from(m: &http::Method) -> Self {
        match *m {
            http::Method::GET => Self::GET,
            http::Method::HEAD => Self::HEAD,
            http::Method::POST => Self::POST,
            http::Method::PUT => Self::PUT,
            http::Method::PATCH => Self::PATCH,
            http::Method::DELETE => Self::DELETE,
            http::Method::OPTIONS => Self::OPTIONS,
            _ => Self::OTHER,
        }
    }
}

/// Labels of the request metrics (`status`, `method`, as the original).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Response status code.
    pub status: u16,
    /// Request method.
    pub method: MethodLabel,
}

/// Label of `piko_upstreams_remote_requests_total`: the node a request was forwarded to.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node's id (`cluster.node_id`).
    pub node_id: String,
}

/// Label of `piko_cluster_nodes`: `active` or `unreachable` (the original's values; it also
/// has `left`, for nodes that left, which this cluster removes from its membership).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The node status.
    pub status: &'static str,
}

/// This node's metrics.
pub struct Metrics {
    registry: Registry,
    requests_in_flight: Gauge,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    request_size: Histogram,
    response_size: Histogram,
    remote_requests: Family<NodeLabel, Counter>,
    connected_upstreams: Gauge,
    registered_endpoints: Gauge,
    upstream_requests: Counter,
    streams_opened: Counter,
    cluster_nodes: Family<StatusLabel, Gauge>,
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_last_log_index: Gauge,
    raft_applied_index: Gauge,
}

/// The cluster's figures at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterFigures {
    /// Nodes in the membership that answer, this one included.
    pub active: usize,
    /// Nodes in the membership whose lease ran out.
    pub unreachable: usize,
    /// Current Raft term.
    pub term: u64,
    /// Whether this node leads.
    pub leader: bool,
    /// Index of the last Raft log entry.
    pub last_log_index: u64,
    /// Index of the last entry applied to the state machine.
    pub applied_index: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric of the node.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("piko");
        let requests_in_flight = Gauge::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        let connected_upstreams = Gauge::default();
        let registered_endpoints = Gauge::default();
        let upstream_requests = Counter::default();
        let streams_opened = Counter::default();
        let cluster_nodes = Family::<StatusLabel, Gauge>::default();
        let request_size = Histogram::new(SIZE_BUCKETS);
        let response_size = Histogram::new(SIZE_BUCKETS);
        let remote_requests = Family::<NodeLabel, Counter>::default();
        let (raft_term, raft_leader, raft_last_log_index, raft_applied_index) = Default::default();
        {
            let proxy = registry.sub_registry_with_prefix("proxy");
            proxy.register(
                "requests_in_flight",
                "Number of requests currently handled by the proxy",
                requests_in_flight.clone(),
            );
            proxy.register("requests", "Total proxy requests", requests.clone());
            proxy.register(
                "request_latency_seconds",
                "Time until the response head, by status and method",
                latency.clone(),
            );
            proxy.register(
                "request_size_bytes",
                "Request size: target, method, version, headers and Content-Length",
                request_size.clone(),
            );
            proxy.register(
                "response_size_bytes",
                "Response body bytes sent to the client",
                response_size.clone(),
            );
        }
        {
            let upstreams = registry.sub_registry_with_prefix("upstreams");
            upstreams.register(
                "connected_upstreams",
                "Upstream connections registered on this node",
                connected_upstreams.clone(),
            );
            upstreams.register(
                "registered_endpoints",
                "Endpoints with at least one upstream on this node",
                registered_endpoints.clone(),
            );
            upstreams.register(
                "upstream_requests",
                "Requests sent to an upstream connected to this node",
                upstream_requests.clone(),
            );
            upstreams.register(
                "remote_requests",
                "Requests forwarded to another node, by its id",
                remote_requests.clone(),
            );
            upstreams.register(
                "streams_opened",
                "Streams opened to upstreams connected to this node (fewer than requests when keep-alive streams are reused)",
                streams_opened.clone(),
            );
        }
        registry.sub_registry_with_prefix("cluster").register(
            "nodes",
            "Nodes this node knows of, itself included, by status",
            cluster_nodes.clone(),
        );
        {
            let raft = registry.sub_registry_with_prefix("raft");
            raft.register("term", "Current Raft term", Gauge::clone(&raft_term));
            raft.register(
                "is_leader",
                "1 while this node is the Raft leader",
                Gauge::clone(&raft_leader),
            );
            raft.register(
                "last_log_index",
                "Index of the last Raft log entry",
                Gauge::clone(&raft_last_log_index),
            );
            raft.register(
                "last_applied_index",
                "Index of the last log entry applied to the replicated state",
                Gauge::clone(&raft_applied_index),
            );
        }
        Self {
            registry,
            requests_in_flight,
            requests,
            latency,
            request_size,
            response_size,
            remote_requests,
            connected_upstreams,
            registered_endpoints,
            upstream_requests,
            streams_opened,
            cluster_nodes,
            raft_term,
            raft_leader,
            raft_last_log_index,
            raft_applied_index,
        }
    }

    /// A proxy request started; the guard counts it in flight until dropped.
    pub fn request_started(&self) -> InFlight<'_> {
        self.requests_in_flight.inc();
        InFlight(&self.requests_in_flight)
    }

    /// A proxy request of about `size` bytes (see [`request_size`]) got its response head
    /// after `elapsed`.
    pub fn request_done(&self, method: &http::Method, status: u16, elapsed: Duration, size: u64) {
        self.request_size.observe(size as f64);
        let labels = RequestLabels {
            status,
            method: method.into(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// A request (or TCP connection) went to an upstream of this node, on a new stream when
    /// `opened`.
    pub fn upstream_request(&self, opened: bool) {
        self.upstream_requests.inc();
        if opened {
            self.streams_opened.inc();
        }
    }

    /// A request went to node `node_id`.
    pub fn remote_request(&self, node_id: &str) {
        // The label allocates: forwarded requests only, which cost a node-to-node call anyway.
        self.remote_requests
            .get_or_create(&NodeLabel {
                node_id: node_id.to_string(),
            })
            .inc();
    }

    /// The metrics in the OpenMetrics text format, gauges read from `upstreams` and
    /// `cluster` now.
    pub fn encode(&self, upstreams: &Upstreams, cluster: &ClusterFigures) -> String {
        self.connected_upstreams
            .set(upstreams.upstream_count() as i64);
        self.registered_endpoints
            .set(upstreams.endpoints().len() as i64);
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (status, n) in [
            ("active", cluster.active),
            ("unreachable", cluster.unreachable),
        ] {
            self.cluster_nodes
                .get_or_create(&StatusLabel { status })
                .set(clamp(n as u64));
        }
        self.raft_term.set(clamp(cluster.term));
        self.raft_leader.set(i64::from(cluster.leader));
        self.raft_last_log_index.set(clamp(cluster.last_log_index));
        self.raft_applied_index.set(clamp(cluster.applied_index));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl crate::http::BodyMeter for Metrics {
    fn body_done(&self, bytes: u64) {
        self.response_size.observe(bytes as f64);
    }
}

/// A request's size as the original counts it: target, method, version, header names and
/// values, `Host`, and the body's `Content-Length` when given. Reads the head; allocates
/// nothing.
pub fn request_size<B>(req: &http::Request<B>) -> u64 {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    let host = req.headers().get(http::header::HOST).map_or(0, |h| h.len());
    let body = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    (target + req.method().as_str().len() + "HTTP/1.1".len() + headers + host) as u64 + body
}

/// Counts a request in flight until dropped (also when the client goes away).
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Standalone;
    use std::sync::Arc;

    #[test]
    fn request_size_counts_the_head_and_the_declared_body() {
        let req = http::Request::post("/a?b=1")
            .header("host", "shop")
            .header("content-length", "10")
            .body(())
            .unwrap();
        // "/a?b=1" 6 + "POST" 4 + "HTTP/1.1" 8 + host 4+4 + content-length 14+2 + Host 4 + 10
        assert_eq!(request_size(&req), 6 + 4 + 8 + 8 + 16 + 4 + 10);
    }

    #[test]
    fn names_labels_and_values() {
        let m = Metrics::new();
        {
            let _a = m.request_started();
            let _b = m.request_started();
            assert!(m
                .encode(
                    &Upstreams::new(Arc::new(Standalone)),
                    &ClusterFigures::default()
                )
                .contains("piko_proxy_requests_in_flight 2\n"));
        }
        m.request_done(&http::Method::GET, 200, Duration::from_millis(3), 100);
        m.request_done(&http::Method::GET, 200, Duration::from_millis(30), 2000);
        m.request_done(
            &http::Method::from_bytes(b"BREW").unwrap(),
            502,
            Duration::ZERO,
            0,
        );
        crate::http::BodyMeter::body_done(&m, 5000);
        m.upstream_request(true);
        m.upstream_request(false);
        m.remote_request("node-2");
        let figures = ClusterFigures {
            active: 2,
            unreachable: 1,
            term: 7,
            leader: true,
            last_log_index: 42,
            applied_index: 41,
        };
        let out = m.encode(&Upstreams::new(Arc::new(Standalone)), &figures);
        for want in [
            "piko_proxy_requests_in_flight 0\n",
            "piko_proxy_requests_total{status=\"200\",method=\"GET\"} 2\n",
            "piko_proxy_requests_total{status=\"502\",method=\"OTHER\"} 1\n",
            "piko_proxy_request_latency_seconds_bucket{le=\"0.005\",status=\"200\",method=\"GET\"} 1\n",
            "piko_proxy_request_latency_seconds_count{status=\"200\",method=\"GET\"} 2\n",
            "piko_upstreams_connected_upstreams 0\n",
            "piko_upstreams_registered_endpoints 0\n",
            "piko_cluster_nodes{status=\"active\"} 2\n",
            "piko_cluster_nodes{status=\"unreachable\"} 1\n",
            "piko_proxy_request_size_bytes_bucket{le=\"256.0\"} 2\n",
            "piko_proxy_request_size_bytes_bucket{le=\"4096.0\"} 3\n",
            "piko_proxy_request_size_bytes_count 3\n",
            "piko_proxy_response_size_bytes_bucket{le=\"4096.0\"} 0\n",
            "piko_proxy_response_size_bytes_bucket{le=\"16384.0\"} 1\n",
            "piko_upstreams_upstream_requests_total 2\n",
            "piko_upstreams_streams_opened_total 1\n",
            "piko_upstreams_remote_requests_total{node_id=\"node-2\"} 1\n",
            "piko_raft_term 7\n",
            "piko_raft_is_leader 1\n",
            "piko_raft_last_log_index 42\n",
            "piko_raft_last_applied_index 41\n",
        ] {
            assert!(out.contains(want), "{want:?} missing from\n{out}");
        }
    }
}
