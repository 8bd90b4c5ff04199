//! The admin port: health, readiness, Prometheus metrics and status as JSON.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use bytes::Bytes;
use http_body_util::{Either, Full};

use crate::auth::PortAuth;
use crate::cluster::{Cluster, ClusterError};

/// The membership API: `DELETE /cluster/nodes/{id}` removes a node.
pub const NODES_API: &str = "/cluster/nodes/";
use crate::http::{json_error, json_response, Body, ConnInfo};
use crate::metrics::{ClusterFigures, Metrics, CONTENT_TYPE};
use crate::upstream::Registry;

/// What this node tells others and operators about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Proxy address.
    pub proxy_addr: String,
    /// Upstream address.
    pub upstream_addr: String,
    /// Admin address.
    pub admin_addr: String,
    /// Cluster address.
    pub cluster_addr: String,
}

/// Serves the admin routes.
pub struct Admin {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    node: NodeInfo,
    auth: PortAuth,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
}

impl Admin {
    /// Admin routes over `registry`; `/ready` follows `ready`; `/metrics` serves `metrics`.
    pub fn new(
        registry: Arc<Registry>,
        ready: Arc<AtomicBool>,
        node: NodeInfo,
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
            Err(ClusterError::Refused(e)) => json_error(StatusCode::CONFLICT, &e),
            Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }

    fn figures(&self) -> ClusterFigures {
        match &self.cluster {
            Some(c) => {
                let (term, leader, last_log_index, applied_index) = c.raft_figures();
                ClusterFigures {
                    nodes: c.node_count(),
                    term,
                    leader,
                    last_log_index,
                    applied_index,
                }
            }
            None => ClusterFigures {
                nodes: 1,
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
                Some(c) => json_response(StatusCode::OK, &json!(c.nodes())),
                None => {
                    let mut node = serde_json::to_value(&self.node).unwrap_or_default();
                    node["endpoints"] = json!(self.registry.endpoints());
                    node["upstreams"] = json!(self.registry.upstream_count());
                    json_response(StatusCode::OK, &json!([node]))
                }
            },
            "/status/cluster/raft" => match &self.cluster {
                Some(c) => json_response(StatusCode::OK, &c.raft_status()),
                None => json_error(StatusCode::NOT_FOUND, "this node runs without a cluster"),
            },
            p if p.starts_with("/status/cluster/nodes/") => {
                let id = &p["/status/cluster/nodes/".len()..];
                let found = match &self.cluster {
                    Some(c) => c.nodes().into_iter().find(|n| n.id == id).map(|n| json!(n)),
                    None => (id == self.node.id).then(|| json!(self.node)),
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
