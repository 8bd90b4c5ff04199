//! Forwarding: a request for an endpoint with no upstream on this node goes, once, to the
//! cluster port of a node that has one (`x-piko-forward: true`), over the cluster's TLS. It
//! goes to the forwarding route, with the client's path and query as data in a header: a
//! client's path never names a cluster route.

use http::header::HeaderValue;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Either};
use hyper::body::{Body as _, Incoming};
use piko_protocol::http::{is_upgrade, relay_response_head};
use piko_protocol::paths::FORWARD_HEADER;
use piko_protocol::EndpointId;
use tracing::debug;

use super::{rewrite_head, Hop, Proxy, ProxyError};
use crate::cluster::network::{full, ClientBody, FORWARD_PATH, FORWARD_TARGET_HEADER};
use crate::cluster::NodeId;
use crate::http::{Body, ConnInfo, Deadline, PooledBody, RequestBody};

/// Nodes tried for one request before giving up.
const MAX_NODES: usize = 3;

/// Set by a node answering a forwarded request it had no upstream for (it may have just lost
/// it, or be draining): nothing was sent, so the request may go to another node.
pub(super) const NO_UPSTREAM_HEADER: &str = "x-piko-no-upstream";

impl Proxy {
    /// Send `req` to another node holding upstreams for `endpoint`, its body to arrive by
    /// `read`. A node that cannot be reached is skipped for the next one when nothing of the
    /// request was sent (no body).
    pub(super) async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        endpoint: &EndpointId,
        read: Option<Deadline>,
    ) -> Result<Response<Body>, ProxyError> {
        let Some(cluster) = &self.cluster else {
            return Err(ProxyError::NoUpstream);
        };
        let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        rewrite_head(
            &mut parts,
            conn,
            self.forwarding(Hop::Client, conn),
            upgrade,
        )?;
        parts
            .headers
            .insert(FORWARD_HEADER, HeaderValue::from_static("true"));
        // Replaces any value the client sent.
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let target = HeaderValue::from_str(target)
            .map_err(|_| ProxyError::BadRequest("invalid request target".into()))?;
        parts.headers.insert(FORWARD_TARGET_HEADER, target);
        let replayable = body.is_end_stream();
        let read = if upgrade { None } else { read };
        let mut body = Some(RequestBody::new(body, read).boxed());
        let mut tried: Vec<NodeId> = Vec::new();
        let resp = loop {
            let Some((node, member)) = cluster.route(endpoint.as_str(), &tried) else {
                return Err(if tried.is_empty() {
                    ProxyError::NoUpstream
                } else {
                    ProxyError::UpstreamUnreachable
                });
            };
            tried.push(node);
            self.metrics.remote_request(&member.name);
            let uri = cluster
                .client()
                .uri(&member.cluster_addr, FORWARD_PATH)
                .map_err(|_| ProxyError::UpstreamUnreachable)?;
            let mut out = Request::builder()
                .method(parts.method.clone())
                .uri(uri)
                .version(Version::HTTP_11)
                .body(body.take().unwrap_or_else(|| full(bytes::Bytes::new())) as ClientBody)
                .map_err(|_| ProxyError::BadRequest("invalid request".into()))?;
            *out.headers_mut() = parts.headers.clone();
            let send = cluster.client().send(out);
            let result = if upgrade {
                send.await
            } else {
                match tokio::time::timeout(self.timeout, send).await {
                    Ok(r) => r,
                    Err(_) => return Err(ProxyError::UpstreamTimeout),
                }
            };
            match result {
                Ok(resp)
                    if replayable
                        && tried.len() < MAX_NODES
                        && resp.headers().contains_key(NO_UPSTREAM_HEADER) =>
                {
                    debug!(node = %member, "node has no upstream any more; trying another");
                }
                Ok(mut resp) => {
                    resp.headers_mut().remove(NO_UPSTREAM_HEADER);
                    break resp;
                }
                Err(e) if e.is_connect() && replayable && tried.len() < MAX_NODES => {
                    debug!(node = %member, error = %e, "node unreachable; trying another");
                }
                Err(e) => {
                    if let Some(client) = super::error::client_body_error(&e) {
                        debug!(node = %member, error = %e, "client request body failed");
                        return Err(client);
                    }
                    debug!(node = %member, error = %e, "forwarding failed");
                    return Err(ProxyError::UpstreamUnreachable);
                }
            }
        };
        // The other node's connection headers (a draining node's `Connection: close`) are
        // about that hop, not the client's connection.
        let mut resp = resp;
        relay_response_head(&mut resp, client_upgrade);
        Ok(resp.map(|b| Either::Left(PooledBody::unpooled(b))))
    }
}
