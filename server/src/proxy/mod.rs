//! The proxy port: routes client HTTP requests, WebSocket upgrades and TCP-over-WebSocket
//! connections to an upstream of the endpoint they name.

mod error;
mod forward;
pub mod pool;

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use piko_protocol::http::{is_upgrade, relay_response_head, strip_hop_by_hop};
use piko_protocol::mux::{MuxError, Stream};
use piko_protocol::paths::{
    AUTHORIZATION_HEADER, ENDPOINT_HEADER, FORWARD_HEADER, TCP_PATH_PREFIX,
};
use piko_protocol::ws::{ws_config, WsStream};
use piko_protocol::EndpointId;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

pub use error::ProxyError;
use pool::{CheckoutError, PooledBody};

use crate::auth::{AuthError, PortAuth, Token};
use crate::cluster::Cluster;
use crate::http::{is_websocket_upgrade, websocket_accept, Body, ConnInfo};
use crate::metrics::Metrics;
use crate::upstream::{Registry, Upstream};
use piko_protocol::access_log::{AccessLog, PendingRecord, RecordSink, Requested};
use piko_protocol::{access_enabled, access_record};

/// Routes requests to upstreams.
pub struct Proxy {
    registry: Arc<Registry>,
    timeout: Duration,
    auth: PortAuth,
    access: AccessLog,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
}

/// Where a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// A client, on the proxy port: may be forwarded to another node.
    Client,
    /// Another node's proxy, on the cluster port: served here or not at all.
    Forwarded,
}

/// Where the proxy's access-log records go: the proxy's log, with the client's address.
struct ProxyRecords {
    proxy: Arc<Proxy>,
    remote: std::net::IpAddr,
}

impl RecordSink for ProxyRecords {
    fn write(
        &self,
        r: &Requested,
        status: u16,
        headers: Option<&http::HeaderMap>,
        error: Option<&str>,
    ) {
        access_record!(
            "piko_server::proxy::access",
            &self.proxy.access,
            r,
            status,
            headers,
            error,
            remote = %self.remote
        );
    }
}

/// Whether a verified token (if any) may reach `endpoint`.
fn permit(token: Option<&Token>, endpoint: &EndpointId) -> Result<(), ProxyError> {
    match token {
        Some(t) if !t.permits(endpoint.as_str()) => Err(AuthError::NotPermitted.into()),
        _ => Ok(()),
    }
}

impl Proxy {
    /// A proxy over `registry` giving upstreams `timeout` to start each response; clients
    /// authenticate with `auth` when it is enabled; each request is recorded in `access` and
    /// counted in `metrics`.
    pub fn new(
        registry: Arc<Registry>,
        timeout: Duration,
        auth: PortAuth,
        access: AccessLog,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            registry,
            timeout,
            auth,
            access,
            metrics,
            cluster: None,
        }
    }

    /// Forward requests for endpoints with no upstream on this node to nodes of `cluster`.
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Handle one client request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        self.serve(req, conn, Hop::Client).await
    }

    /// Handle a request another node forwarded (cluster port): served by a local upstream or
    /// answered with an error, never forwarded again.
    pub async fn handle_forwarded(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<Body> {
        self.serve(req, conn, Hop::Forwarded).await
    }

    async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
        hop: Hop,
    ) -> Response<Body> {
        let _in_flight = self.metrics.request_started();
        let (method, start) = (req.method().clone(), std::time::Instant::now());
        let record = self
            .access
            .begin(&req, |l| access_enabled!("piko_server::proxy::access", l))
            .map(|r| {
                let sink = ProxyRecords {
                    proxy: self.clone(),
                    remote: conn.remote.ip(),
                };
                PendingRecord::new(sink, r)
            });
        let result = if let Some(rest) = req.uri().path().strip_prefix(TCP_PATH_PREFIX) {
            let rest = rest.to_string();
            self.tcp(req, &rest, conn, hop).await
        } else {
            self.http(req, conn, hop).await
        };
        let mut error = None;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                // With an access record the error goes there: one line per failed request.
                match e.status() {
                    s if s.is_server_error() && record.is_none() => {
                        warn!(error = %e, "proxy request failed")
                    }
                    _ => debug!(error = %e, "proxy request rejected"),
                }
                if record.is_some() {
                    error = Some(e.to_string());
                }
                let mut resp = e.response();
                if hop == Hop::Forwarded && matches!(e, ProxyError::NoUpstream) {
                    // Nothing of the request reached an upstream: the forwarding node may
                    // try another node.
                    resp.headers_mut().insert(
                        forward::NO_UPSTREAM_HEADER,
                        HeaderValue::from_static("true"),
                    );
                }
                resp
            }
        };
        let status = resp.status().as_u16();
        self.metrics.request_done(&method, status, start.elapsed());
        if let Some(record) = record {
            record.finish(status, resp.headers(), error.as_deref());
        }
        resp
    }

    fn endpoint_of(req: &Request<Incoming>) -> Result<EndpointId, ProxyError> {
        let header = match req.headers().get(ENDPOINT_HEADER) {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| ProxyError::BadEndpoint("endpoint id is not valid text".into()))?,
            ),
            None => None,
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        match EndpointId::from_request_parts(header, host) {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(ProxyError::MissingEndpoint),
            Err(e) => Err(ProxyError::BadEndpoint(e.to_string())),
        }
    }

    /// Try `connect` on upstreams of `endpoint` until one takes it: an upstream whose session
    /// refuses new streams (going away, closed) is removed from routing and the next is tried.
    async fn on_upstream<T, F, Fut>(
        &self,
        endpoint: &EndpointId,
        mut connect: F,
    ) -> Result<(Arc<Upstream>, T), ProxyError>
    where
        F: FnMut(Arc<Upstream>) -> Fut,
        Fut: std::future::Future<Output = Result<T, CheckoutError>>,
    {
        for _ in 0..8 {
            let u = self
                .registry
                .select(endpoint)
                .ok_or(ProxyError::NoUpstream)?;
            match connect(u.clone()).await {
                Ok(conn) => return Ok((u, conn)),
                Err(CheckoutError::Open(MuxError::TooManyStreams)) => {
                    return Err(ProxyError::UpstreamUnreachable)
                }
                Err(CheckoutError::Open(e)) => {
                    debug!(endpoint = %endpoint, upstream = u.id, error = %e, "upstream cannot take streams; removing it");
                    self.registry.remove(endpoint, u.id);
                }
                Err(CheckoutError::Handshake(e)) => {
                    debug!(endpoint = %endpoint, upstream = u.id, error = %e, "upstream connection failed");
                    return Err(ProxyError::UpstreamUnreachable);
                }
            }
        }
        Err(ProxyError::UpstreamUnreachable)
    }

    /// An upstream of `endpoint` and an HTTP connection to it. Upgrades get a connection of
    /// their own; other requests reuse idle ones.
    async fn checkout(
        &self,
        endpoint: &EndpointId,
        fresh: bool,
    ) -> Result<(Arc<Upstream>, SendRequest<Incoming>), ProxyError> {
        self.on_upstream(endpoint, |u| async move {
            if fresh {
                pool::connect(&u.session).await
            } else {
                u.pool.checkout(&u.session).await
            }
        })
        .await
    }

    /// A raw stream to an upstream of `endpoint` (TCP over WebSocket).
    async fn open_stream(&self, endpoint: &EndpointId) -> Result<Stream, ProxyError> {
        let (_, stream) = self
            .on_upstream(endpoint, |u| async move { Ok(u.session.open()?) })
            .await?;
        Ok(stream)
    }

    async fn http(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        hop: Hop,
    ) -> Result<Response<Body>, ProxyError> {
        // Authentication comes first, as in the original: no token, no other answer.
        let token = self.auth.authenticate(req.headers())?;
        let endpoint = Self::endpoint_of(&req)?;
        permit(token.as_ref(), &endpoint)?;
        let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
        let (upstream, sender) = match self.checkout(&endpoint, upgrade).await {
            // Boxed: forwarding's large future would otherwise grow every request's future
            // (measured: about 5 % fewer requests per second unboxed).
            Err(ProxyError::NoUpstream) if hop == Hop::Client => {
                return Box::pin(self.forward(req, conn, &endpoint)).await
            }
            other => other?,
        };
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        rewrite_head(&mut parts, conn, hop, upgrade)?;
        parts.headers.remove(FORWARD_HEADER);
        // Piko's own credential is for Piko; the service keeps its own `Authorization`.
        parts.headers.remove(AUTHORIZATION_HEADER);
        let req = Request::from_parts(parts, body);

        let send = pool::send(sender, &upstream.session, req);
        let resp = if upgrade {
            send.await
        } else {
            match tokio::time::timeout(self.timeout, send).await {
                Ok(r) => r,
                Err(_) => return Err(ProxyError::UpstreamTimeout),
            }
        };
        let (mut resp, sender) = resp.map_err(|e| {
            debug!(error = %e, "upstream request failed");
            ProxyError::UpstreamUnreachable
        })?;

        if relay_response_head(&mut resp, client_upgrade) {
            return Ok(resp.map(|b| Either::Left(PooledBody::unpooled(b))));
        }
        Ok(resp.map(|b| Either::Left(PooledBody::new(b, sender, upstream))))
    }

    async fn tcp(
        &self,
        req: Request<Incoming>,
        rest: &str,
        conn: ConnInfo,
        hop: Hop,
    ) -> Result<Response<Body>, ProxyError> {
        let token = self.auth.authenticate(req.headers())?;
        let endpoint = EndpointId::new(rest).map_err(|e| ProxyError::BadEndpoint(e.to_string()))?;
        permit(token.as_ref(), &endpoint)?;
        if !is_websocket_upgrade(&req) {
            return Err(ProxyError::BadRequest(
                "expected a websocket upgrade".into(),
            ));
        }
        let mut stream = match self.open_stream(&endpoint).await {
            Err(ProxyError::NoUpstream) if hop == Hop::Client => {
                return Box::pin(self.forward(req, conn, &endpoint)).await
            }
            other => other?,
        };
        /// Time the close handshake may take once both directions have ended.
        const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
        use piko_protocol::paths::HALF_CLOSE_HEADER;
        // A client that asks for half-close (this project's `piko forward`) gets it: each
        // direction ends on its own (docs/protocol.md). Others (the original Go forwarder)
        // get what the original server does: a Close when the upstream's side ends.
        let half_close = req
            .headers()
            .get(HALF_CLOSE_HEADER)
            .is_some_and(|v| v.as_bytes() == b"1");
        let mut resp = websocket_accept(&req);
        if half_close {
            resp.headers_mut()
                .insert(HALF_CLOSE_HEADER, HeaderValue::from_static("1"));
        }
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return debug!(error = %e, "tcp upgrade failed"),
            };
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(ws_config()),
            )
            .await;
            let mut ws = if half_close {
                WsStream::with_half_close(ws)
            } else {
                WsStream::new(ws)
            };
            // The client's end becomes FIN on the stream and the upstream's FIN the client's
            // end; the stream is closed both ways when this returns Ok. On an error it is
            // dropped: a reset, unless FIN was sent (then the upstream's FIN ends it).
            match piko_protocol::relay(&mut ws, &mut stream).await {
                Ok(_) => {
                    if let Ok(Err(e)) = tokio::time::timeout(CLOSE_TIMEOUT, ws.close()).await {
                        debug!(error = %e, endpoint = %endpoint, "tcp close handshake failed");
                    }
                }
                Err(e) => {
                    debug!(error = %e, endpoint = %endpoint, "tcp connection ended with an error")
                }
            }
        });
        Ok(resp)
    }
}

/// Make a client's request head fit for the next hop: origin-form target, HTTP/1.1, no
/// hop-by-hop headers, `Host` kept, `X-Forwarded-*` set (once: a forwarded request has them
/// from the node the client reached).
fn rewrite_head(
    parts: &mut http::request::Parts,
    conn: ConnInfo,
    hop: Hop,
    upgrade: bool,
) -> Result<(), ProxyError> {
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    if let Some(host) = &host {
        parts.headers.insert(header::HOST, host.clone());
        if !parts.headers.contains_key("x-forwarded-host") {
            parts.headers.insert("x-forwarded-host", host.clone());
        }
    }
    if hop == Hop::Client {
        let ip = conn.remote.ip().to_string();
        let xff = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert("x-forwarded-for", v);
        }
        if !parts.headers.contains_key("x-forwarded-proto") {
            let proto = if conn.tls { "https" } else { "http" };
            parts
                .headers
                .insert("x-forwarded-proto", HeaderValue::from_static(proto));
        }
    }
    parts.version = Version::HTTP_11;
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse::<Uri>()
        .map_err(|_| ProxyError::BadRequest("invalid request target".into()))?;
    Ok(())
}

/// HTTP/2 clients may split `cookie` into one field per pair; HTTP/1.1 wants one line, the
/// pairs joined with `; ` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cookies_are_joined() {
        let mut h = http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, vec![HeaderValue::from_static("a=1; b=2; c=3")]);
        let mut one = http::HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("only=1"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "only=1");
    }
}
