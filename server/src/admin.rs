//! The admin port: health, readiness, Prometheus metrics and status as JSON; [`forward`]
//! asks another node's admin port (`?forward=NODE`).

pub mod forward;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};

use crate::auth::PortAuth;
use crate::cluster::{Cluster, Member, NodeStatus};
use crate::http::{json_error, json_response, Body, ConnInfo};
use crate::metrics::{ClusterFigures, Metrics, CONTENT_TYPE};
use crate::upstream::Registry;

pub use forward::{ForwardSettings, FORWARD_TIMEOUT};

/// `admin.*`: the admin port's configured settings, validated by `config`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address (`admin.bind_addr`).
    pub bind_addr: std::net::SocketAddr,
    /// Address announced to other nodes (`None`: the bound one).
    pub advertise_addr: Option<String>,
    /// Token verification (`/health` and `/ready` stay open).
    pub auth: PortAuth,
    /// TLS of the port.
    pub tls: Option<crate::tls::TlsFiles>,
    /// How `?forward=` reaches other nodes' admin ports (`admin.tls.client`).
    pub forward: ForwardSettings,
}

/// The membership API: `DELETE /cluster/nodes/{id}` removes a node.
pub const NODES_API: &str = "/cluster/nodes/";

/// A node as the status routes show it when it runs without a cluster: the fields of
/// [`Member`], its name as `id` (the shape of a cluster node's status).
fn member_json(m: &Member) -> serde_json::Value {
    json!({
        "id": m.name,
        "proxy_addr": m.proxy_addr,
        "upstream_addr": m.upstream_addr,
        "admin_addr": m.admin_addr,
        "cluster_addr": m.cluster_addr,
    })
}

/// A node in the list of `/status/cluster/nodes`: the original Go Piko's fields (`endpoints`
/// is the number of endpoints, `upstreams` of upstreams), then this project's
/// (`endpoint_upstreams`: endpoint → upstreams, `role`, the other addresses).
fn node_summary(n: &NodeStatus) -> serde_json::Value {
    json!({
        "id": n.id,
        "status": n.status,
        "proxy_addr": n.proxy_addr,
        "admin_addr": n.admin_addr,
        "endpoints": n.endpoints.len(),
        "upstreams": n.upstreams,
        "endpoint_upstreams": n.endpoints,
        "role": n.role,
        "upstream_addr": n.upstream_addr,
        "cluster_addr": n.cluster_addr,
    })
}

/// Query parameter naming the node that should answer an admin request (`?forward=ID`).
const FORWARD_QUERY: &str = "forward";

/// The value of `?forward=` in `query`, if any.
fn forward_target(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == FORWARD_QUERY).then_some(v)
    })
}

/// Serves the admin routes.
pub struct Admin {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    node: Member,
    auth: PortAuth,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
    /// For `?forward=`: how other nodes' admin ports are reached.
    forwarding: ForwardSettings,
}

impl Admin {
    /// Admin routes of `node` over `registry`; `/ready` follows `ready`; `/metrics` serves
    /// `metrics`.
    pub fn new(
        registry: Arc<Registry>,
        ready: Arc<AtomicBool>,
        node: Member,
        auth: PortAuth,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            auth,
            registry,
            ready,
            node,
            metrics,
            cluster: None,
            forwarding: ForwardSettings::default(),
        }
    }

    /// Reach other nodes' admin ports for `?forward=` as `settings` say (default: plain
    /// HTTP, [`FORWARD_TIMEOUT`]).
    pub fn with_forwarding(mut self, settings: ForwardSettings) -> Self {
        self.forwarding = settings;
        self
    }

    /// This node as `/status/cluster/nodes/{id}` shows it: the original's fields (endpoints
    /// as endpoint → upstreams) and this project's.
    fn local_node(&self) -> serde_json::Value {
        if let Some(c) = &self.cluster {
            if let Some(n) = c.nodes().into_iter().find(|n| n.id == self.node.name) {
                return json!(n);
            }
        }
        let mut node = member_json(&self.node);
        node["status"] = json!("active");
        node["endpoints"] = json!(self.registry.endpoints());
        node["upstreams"] = json!(self.registry.upstream_count());
        node
    }

    /// The admin address of node `id`, if this node knows it.
    fn admin_addr_of(&self, id: &str) -> Option<String> {
        match &self.cluster {
            Some(c) => c
                .nodes()
                .into_iter()
                .find(|n| n.id == id)
                .map(|n| n.admin_addr),
            None => None,
        }
    }

    /// `?forward=ID`: the same request, asked of node `id`'s admin port, answered as it
    /// answers (404 for a node this one does not know).
    async fn forward(&self, id: &str, req: &Request<Incoming>) -> Response<Body> {
        let Some(addr) = self.admin_addr_of(id) else {
            return json_error(StatusCode::NOT_FOUND, &format!("node {id:?} not found"));
        };
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut out = Request::builder()
            .method(req.method().clone())
            .uri(target)
            .header(http::header::HOST, addr.as_str());
        // The caller's admin credential is good on every node of the cluster.
        if let Some(auth) = req.headers().get(http::header::AUTHORIZATION) {
            out = out.header(http::header::AUTHORIZATION, auth.clone());
        }
        let Ok(out) = out.body(Empty::new()) else {
            return json_error(
                StatusCode::BAD_GATEWAY,
                &format!("node {id:?} has an invalid admin address {addr:?}"),
            );
        };
        match forward::ask(&self.forwarding, &addr, out).await {
            Ok(answer) => {
                let (parts, body) = answer.into_parts();
                let mut resp = Response::new(Either::Right(Full::new(body)));
                *resp.status_mut() = parts.status;
                if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
                    resp.headers_mut()
                        .insert(http::header::CONTENT_TYPE, ct.clone());
                }
                resp
            }
            Err(e) => {
                let status = match e {
                    forward::ForwardError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                tracing::warn!(node = id, %addr, error = %e, "?forward= to another node's admin port failed");
                json_error(status, &format!("node {id:?} at {addr}: {e}"))
            }
        }
    }

    /// Answer the cluster routes from `cluster`.
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// `DELETE /cluster/nodes/{id}`: take a node out of the cluster (a node that will not
    /// come back). Its endpoint entries go with it.
    async fn remove_node(&self, id: &str) -> Response<Body> {
        let Some(cluster) = &self.cluster else {
            return json_error(StatusCode::NOT_FOUND, "this node runs without a cluster");
        };
        if !cluster.nodes().iter().any(|n| n.id == id) {
            return json_error(StatusCode::NOT_FOUND, &format!("node {id:?} not found"));
        }
        match cluster.leave_member(id).await {
            Ok(()) => json_response(StatusCode::OK, &json!({ "removed": id })),
            Err(e) if e.is_refusal() => json_error(StatusCode::CONFLICT, &e.to_string()),
            Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }

    fn figures(&self) -> ClusterFigures {
        match &self.cluster {
            Some(c) => {
                let (term, leader, last_log_index, applied_index) = c.raft_figures();
                let nodes = c.nodes();
                let active = nodes.iter().filter(|n| n.status == "active").count();
                ClusterFigures {
                    active,
                    unreachable: nodes.len() - active,
                    term,
                    leader,
                    last_log_index,
                    applied_index,
                }
            }
            None => ClusterFigures {
                active: 1,
                ..ClusterFigures::default()
            },
        }
    }

    /// Handle one admin request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _conn: ConnInfo,
    ) -> Response<Body> {
        let path = req.uri().path();
        let removing = req.method() == Method::DELETE && path.starts_with(NODES_API);
        if req.method() != Method::GET && !removing {
            return json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        // Probes stay open whatever the admin authentication.
        if path != "/health" && path != "/ready" {
            if let Err(e) = self.auth.authenticate(req.headers()) {
                return json_error(StatusCode::UNAUTHORIZED, &e.to_string());
            }
        }
        if let Some(id) = forward_target(req.uri().query()) {
            if id != self.node.name {
                return self.forward(id, &req).await;
            }
        }
        if removing {
            return self.remove_node(&path[NODES_API.len()..]).await;
        }
        match path {
            "/health" => json_response(StatusCode::OK, &json!({"status": "ok"})),
            "/ready" => {
                let raft_ok = self.cluster.as_ref().is_none_or(|c| c.is_healthy());
                if !raft_ok {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"status": "raft stopped; see the log"}),
                    )
                } else if self.ready.load(Ordering::SeqCst) {
                    json_response(StatusCode::OK, &json!({"status": "ready"}))
                } else {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"status": "shutting down"}),
                    )
                }
            }
            "/metrics" => Response::builder()
                .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(Either::Right(Full::new(Bytes::from(
                    self.metrics.encode(&self.registry, &self.figures()),
                ))))
                .unwrap_or_else(|_| {
                    json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                }),
            "/status/upstream/endpoints" => {
                json_response(StatusCode::OK, &json!(self.registry.endpoints()))
            }
            "/status/cluster/nodes" => match &self.cluster {
                Some(c) => {
                    let nodes: Vec<_> = c.nodes().iter().map(node_summary).collect();
                    json_response(StatusCode::OK, &json!(nodes))
                }
                None => {
                    let endpoints = self.registry.endpoints();
                    let mut node = member_json(&self.node);
                    node["status"] = json!("active");
                    node["endpoints"] = json!(endpoints.len());
                    node["upstreams"] = json!(self.registry.upstream_count());
                    node["endpoint_upstreams"] = json!(endpoints);
                    json_response(StatusCode::OK, &json!([node]))
                }
            },
            "/status/cluster/nodes/local" => json_response(StatusCode::OK, &self.local_node()),
            "/status/cluster/raft" => match &self.cluster {
                Some(c) => json_response(StatusCode::OK, &c.raft_status()),
                None => json_error(StatusCode::NOT_FOUND, "this node runs without a cluster"),
            },
            p if p.starts_with("/status/cluster/nodes/") => {
                let id = &p["/status/cluster/nodes/".len()..];
                let found = match &self.cluster {
                    Some(c) => c.nodes().into_iter().find(|n| n.id == id).map(|n| json!(n)),
                    None => (id == self.node.name).then(|| self.local_node()),
                };
                match found {
                    Some(n) => json_response(StatusCode::OK, &n),
                    None => json_error(StatusCode::NOT_FOUND, &format!("node {id:?} not found")),
                }
            }
            _ => json_error(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::cluster::node::testing;

    /// Log lines written by the code under test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The node's readiness once its Raft core panics: the core is made to panic in-process
    /// (see `testing::panic_raft_core`; the cluster port refuses the message that did it from
    /// other nodes), and `/ready` and the log are what an operator sees.
    // One thread: the test's log subscriber then sees the Raft and watcher tasks too.
    #[tokio::test(flavor = "current_thread")]
    async fn ready_fails_and_an_error_is_logged_once_when_the_raft_core_panics() {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::ERROR)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let cluster = testing::single_node().await;
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(cluster.clone().watch_raft(shutdown.clone()));
        let admin = Arc::new(
            Admin::new(
                Arc::new(Registry::new(cluster.clone())),
                Arc::new(AtomicBool::new(true)),
                Member {
                    name: "solo".into(),
                    ..Member::default()
                },
                PortAuth::default(),
                Arc::new(Metrics::new()),
            )
            .with_cluster(cluster.clone()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ready", listener.local_addr().unwrap());
        tokio::spawn(crate::http::serve(
            listener,
            crate::http::ServeOptions {
                name: "admin",
                limits: Default::default(),
                tls: None,
                shutdown: shutdown.clone(),
                grace: Duration::from_secs(1),
            },
            move |req, conn| admin.clone().handle(req, conn),
        ));
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let ready = || async {
            let resp = client.get(url.parse().unwrap()).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (status, body)
        };
        assert_eq!(ready().await.0, StatusCode::OK);

        testing::panic_raft_core(&cluster).await;
        tokio::time::timeout(Duration::from_secs(10), watcher)
            .await
            .expect("the watcher notices the core is gone")
            .unwrap();
        let (status, body) = ready().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "raft stopped; see the log");
        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let errors: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("raft stopped"))
            .collect();
        assert_eq!(errors.len(), 1, "one error line: {logs}");
        assert!(
            errors[0].contains("ERROR") && errors[0].contains("restart it"),
            "{logs}"
        );
        shutdown.cancel();
    }
}
