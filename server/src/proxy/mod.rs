//! The proxy port: routes client HTTP requests, WebSocket upgrades and TCP-over-WebSocket
//! connections to an upstream of the endpoint they name.

mod error;
mod forward;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
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
pub use settings::Settings;

use crate::auth::{AuthError, PortAuth, Token};
use crate::cluster::Cluster;
use crate::http::deadline::{READ_TIMEOUT_KEY, WRITE_TIMEOUT_KEY};
use crate::http::{
    is_websocket_upgrade, websocket_accept, Body, ConnInfo, Deadline, PooledBody, RequestBody,
};
use crate::metrics::Metrics;
use crate::upstream::pool::{self, CheckoutError, Opened, SendError, Wire};
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
    trusted_proxies: Vec<ipnet::IpNet>,
    /// `proxy.http.read_timeout`.
    read_timeout: Option<Duration>,
    /// `proxy.http.write_timeout`.
    write_timeout: Option<Duration>,
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

/// How requests are written to `u`: as negotiated at its registration.
fn wire_of(u: &Upstream) -> Wire {
    if u.keep_alive {
        Wire::KeepAlive
    } else {
        Wire::OnePerStream
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
            trusted_proxies: Vec::new(),
            read_timeout: None,
            write_timeout: None,
        }
    }

    /// Give each client's request `read` to arrive, body included, and its response `write`
    /// to be sent, both counted from its head (`None`: no limit). Upgrades are exempt once
    /// switched, and requests forwarded by another node (that node counts).
    pub fn with_body_timeouts(mut self, read: Option<Duration>, write: Option<Duration>) -> Self {
        self.read_timeout = read;
        self.write_timeout = write;
        self
    }

    /// Keep the `X-Forwarded-*` headers of clients whose address is in one of `nets` (load
    /// balancers in front of this node); every other client's are replaced.
    pub fn with_trusted_proxies(mut self, nets: Vec<ipnet::IpNet>) -> Self {
        self.trusted_proxies = nets;
        self
    }

    /// What a request from `conn` tells the next hop about its client.
    fn forwarding(&self, hop: Hop, conn: ConnInfo) -> Forwarding {
        match hop {
            Hop::Client => Forwarding::Set {
                trusted_peer: trusts(&self.trusted_proxies, conn.remote.ip()),
            },
            Hop::Forwarded => Forwarding::Keep,
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
        let (method, start) = (req.method().clone(), tokio::time::Instant::now());
        // The node that took the client's connection counts; a forwarded request's
        // deadlines are the forwarding node's.
        let (read, write) = match hop {
            Hop::Client => (
                Deadline::after(start, self.read_timeout, READ_TIMEOUT_KEY),
                Deadline::after(start, self.write_timeout, WRITE_TIMEOUT_KEY),
            ),
            Hop::Forwarded => (None, None),
        };
        let size = crate::metrics::request_size(&req);
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
        let result = match write {
            None => self.dispatch(req, conn, hop, read).await,
            // Until the response head: a response that cannot start in time gets a 504 (Go's
            // server would only close the connection).
            Some(d) => tokio::time::timeout_at(d.at, self.dispatch(req, conn, hop, read))
                .await
                .unwrap_or(Err(ProxyError::ResponseTimeout)),
        };
        let mut error = None;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                // With an access record the error goes there: one line per failed request.
                match e.status() {
                    _ if matches!(e, ProxyError::ResponseTimeout) => warn!(
                        limit = ?self.write_timeout.unwrap_or_default(),
                        "{WRITE_TIMEOUT_KEY}: no response could be started in time; answered 504"
                    ),
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
        self.metrics
            .request_done(&method, status, start.elapsed(), size);
        // An upgrade's connection is relayed once switched, with no deadline (Go clears its
        // deadlines when a handler hijacks the connection).
        let write = write.filter(|_| status != 101);
        let resp = resp.map(|body| match body {
            Either::Left(b) => Either::Left(b.metered(self.metrics.clone()).with_deadline(write)),
            Either::Right(b) => {
                let len = hyper::body::Body::size_hint(&b).exact().unwrap_or(0);
                crate::http::BodyMeter::body_done(&*self.metrics, len);
                Either::Right(b)
            }
        });
        if let Some(record) = record {
            record.finish(status, resp.headers(), error.as_deref());
        }
        resp
    }

    /// Route one request: refused, TCP over WebSocket, or HTTP.
    async fn dispatch(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        hop: Hop,
        read: Option<Deadline>,
    ) -> Result<Response<Body>, ProxyError> {
        refuse_unsupported(&req)?;
        if let Some(rest) = req.uri().path().strip_prefix(TCP_PATH_PREFIX) {
            let rest = rest.to_string();
            self.tcp(req, &rest, conn, hop).await
        } else {
            self.http(req, conn, hop, read).await
        }
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

    /// An upstream of `endpoint` and an HTTP connection to it, and whether it is a new one.
    /// Upgrades, and every request to an upstream that did not negotiate keep-alive, get a
    /// connection (a stream) of their own; other requests reuse idle ones.
    async fn checkout(
        &self,
        endpoint: &EndpointId,
        fresh: bool,
    ) -> Result<(Arc<Upstream>, (SendRequest<RequestBody>, Opened)), ProxyError> {
        self.on_upstream(endpoint, |u| async move {
            if fresh || !u.keep_alive {
                Ok((pool::connect(&u.session, wire_of(&u)).await?, true))
            } else {
                u.pool.checkout(&u.session).await
            }
        })
        .await
    }

    /// A raw stream to an upstream of `endpoint` (TCP over WebSocket).
    async fn open_stream(&self, endpoint: &EndpointId) -> Result<Stream, ProxyError> {
        let (_, stream) = self
            .on_upstream(endpoint, |u| async move { Ok(u.session.open().await?) })
            .await?;
        Ok(stream)
    }

    /// An HTTP request (or an upgrade), passed on to an upstream or another node; its body
    /// must arrive by `read` (not an upgrade's).
    async fn http(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        hop: Hop,
        read: Option<Deadline>,
    ) -> Result<Response<Body>, ProxyError> {
        // Authentication comes first, as in the original: no token, no other answer.
        let token = self.auth.authenticate(req.headers())?;
        let endpoint = Self::endpoint_of(&req)?;
        permit(token.as_ref(), &endpoint)?;
        let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
        // One deadline for the stream (which waits while the upstream has not acknowledged
        // `mux::Config::max_unacked_opens` streams) and the response head.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let checkout = tokio::time::timeout_at(deadline, self.checkout(&endpoint, upgrade));
        let (upstream, (sender, opened)) = match checkout.await {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            // Boxed: forwarding's large future would otherwise grow every request's future
            // (measured: about 5 % fewer requests per second unboxed).
            Ok(Err(ProxyError::NoUpstream)) if hop == Hop::Client => {
                return Box::pin(self.forward(req, conn, &endpoint, read)).await
            }
            Ok(other) => other?,
        };
        self.metrics.upstream_request(opened);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        rewrite_head(&mut parts, conn, self.forwarding(hop, conn), upgrade)?;
        parts.headers.remove(FORWARD_HEADER);
        // Piko's own credential is for Piko; the service keeps its own `Authorization`.
        parts.headers.remove(AUTHORIZATION_HEADER);
        if !upstream.keep_alive && !upgrade {
            // What the original server sends: the upstream may close the stream after its
            // answer, and need not wait for another request on it.
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let read = if upgrade { None } else { read };
        let req = Request::from_parts(parts, RequestBody::new(body, read));

        let send = pool::send(sender, &upstream.session, wire_of(&upstream), req);
        let resp = if upgrade {
            send.await
        } else {
            match tokio::time::timeout_at(deadline, send).await {
                Ok(r) => r,
                Err(_) => return Err(ProxyError::UpstreamTimeout),
            }
        };
        let (mut resp, sender) = resp.map_err(|e| {
            if let SendError::Request(e) = &e {
                if let Some(client) = error::client_body_error(e) {
                    debug!(error = %e, "client request body failed");
                    return client;
                }
            }
            debug!(error = %e, "upstream request failed");
            ProxyError::UpstreamUnreachable
        })?;

        if relay_response_head(&mut resp, client_upgrade) || !upstream.keep_alive {
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
        let mut stream = match tokio::time::timeout(self.timeout, self.open_stream(&endpoint)).await
        {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(ProxyError::NoUpstream)) if hop == Hop::Client => {
                return Box::pin(self.forward(req, conn, &endpoint, None)).await
            }
            Ok(other) => other?,
        };
        self.metrics.upstream_request(true);
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
        // Not tracked, as before this refactor: a TCP tunnel lives as long as its upstream
        // stream, which the upstream's drain closes after the grace period.
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

/// Whether the peer at `ip` is in one of `nets`. An IPv4 peer on a dual-stack socket shows
/// as `::ffff:a.b.c.d` and is matched as IPv4.
fn trusts(nets: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// Refuse what cannot be passed on faithfully, before anything else (the original's Go HTTP
/// server does the same for transfer codings, before its handler runs).
fn refuse_unsupported<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    // hyper reads `gzip, chunked` as chunked and hands over the still-gzipped bytes; the next
    // hop would get them without the coding. Only plain `chunked` is accepted, as by Go's
    // net/http (and so by the original agent behind the tunnel).
    let mut codings = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(ProxyError::UnsupportedTransferEncoding),
    }
}

/// What the next hop learns about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwarding {
    /// This node took the client's connection: `X-Forwarded-*` describe it. A trusted peer
    /// (a load balancer in `proxy.trusted_proxies`) keeps the values it sent and has its
    /// address appended to `X-Forwarded-For`; any other peer's values are replaced, since a
    /// plain-HTTP client could otherwise claim `https`, another host or another address.
    Set {
        /// The peer is a trusted proxy.
        trusted_peer: bool,
    },
    /// Another node took the connection and set them already (a forwarded request).
    Keep,
}

/// Make a client's request head fit for the next hop: origin-form target, HTTP/1.1, no
/// hop-by-hop headers, `Host` kept, `X-Forwarded-*` set as `forwarding` says.
fn rewrite_head(
    parts: &mut http::request::Parts,
    conn: ConnInfo,
    forwarding: Forwarding,
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
    }
    if let Forwarding::Set { trusted_peer } = forwarding {
        set_forwarded(&mut parts.headers, conn, host, trusted_peer);
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

const X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: header::HeaderName = header::HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: header::HeaderName = header::HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: header::HeaderName = header::HeaderName::from_static("x-real-ip");

/// Set `X-Forwarded-For`/`-Host`/`-Proto` for a request this node took from `conn`.
///
/// An untrusted peer's `X-Forwarded-For` is replaced by its address, not appended to: services
/// commonly take the leftmost entry as the client, and nothing an untrusted peer says about
/// earlier hops can be checked, so the peer's address is the only true entry. Its `Forwarded`
/// (RFC 7239, the same claims in one header) is removed for the same reason, and its
/// `X-Real-IP` (nginx's single-address form, which many services read) says its address.
fn set_forwarded(
    headers: &mut http::HeaderMap,
    conn: ConnInfo,
    host: Option<HeaderValue>,
    trusted_peer: bool,
) {
    let ip = conn.remote.ip().to_canonical().to_string();
    let proto = HeaderValue::from_static(if conn.tls { "https" } else { "http" });
    if !trusted_peer {
        headers.remove(header::FORWARDED);
        if let Ok(v) = HeaderValue::from_str(&ip) {
            headers.insert(X_FORWARDED_FOR, v.clone());
            headers.insert(X_REAL_IP, v);
        }
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST, host),
            None => headers.remove(X_FORWARDED_HOST),
        };
        headers.insert(X_FORWARDED_PROTO, proto);
        return;
    }
    // Several fields of one list are one list (RFC 9110 §5.3).
    let mut xff = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    xff.push_str(&ip);
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Some(host) = host {
        headers.entry(X_FORWARDED_HOST).or_insert(host);
    }
    headers.entry(X_FORWARDED_PROTO).or_insert(proto);
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.entry(X_REAL_IP).or_insert(v);
    }
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
    use http::StatusCode;

    #[test]
    fn only_plain_chunked_and_no_connect_pass() {
        let cases: [(&str, &[&str], Option<StatusCode>); 9] = [
            ("POST", &[], None),
            ("POST", &["chunked"], None),
            ("POST", &["Chunked "], None),
            (
                "POST",
                &["gzip, chunked"],
                Some(StatusCode::NOT_IMPLEMENTED),
            ),
            (
                "POST",
                &["gzip", "chunked"],
                Some(StatusCode::NOT_IMPLEMENTED),
            ),
            (
                "POST",
                &["chunked, chunked"],
                Some(StatusCode::NOT_IMPLEMENTED),
            ),
            ("POST", &["identity"], Some(StatusCode::NOT_IMPLEMENTED)),
            ("CONNECT", &[], Some(StatusCode::METHOD_NOT_ALLOWED)),
            ("GET", &[], None),
        ];
        for (method, te, want) in cases {
            let mut req = Request::builder().method(method).uri("/");
            for v in te {
                req = req.header(header::TRANSFER_ENCODING, *v);
            }
            let req = req.body(()).unwrap();
            let got = refuse_unsupported(&req).err().map(|e| e.status());
            assert_eq!(got, want, "{method} {te:?}");
        }
    }

    #[test]
    fn forwarded_headers_by_trust() {
        let conn = ConnInfo {
            remote: "[::ffff:192.0.2.9]:4000".parse().unwrap(),
            tls: true,
        };
        let sent = || {
            let mut h = http::HeaderMap::new();
            h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.1"));
            h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.2"));
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            h.insert(
                X_FORWARDED_HOST,
                HeaderValue::from_static("claimed.example"),
            );
            h.insert(
                header::FORWARDED,
                HeaderValue::from_static("for=203.0.113.1"),
            );
            h
        };
        let host = Some(HeaderValue::from_static("shop.example.com"));
        let mut untrusted = sent();
        set_forwarded(&mut untrusted, conn, host.clone(), false);
        assert_eq!(untrusted[&X_FORWARDED_FOR], "192.0.2.9");
        assert_eq!(untrusted[&X_FORWARDED_PROTO], "https");
        assert_eq!(untrusted[&X_FORWARDED_HOST], "shop.example.com");
        assert!(!untrusted.contains_key(header::FORWARDED));
        let mut trusted = sent();
        set_forwarded(&mut trusted, conn, host, true);
        assert_eq!(
            trusted.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            vec!["203.0.113.1, 198.51.100.2, 192.0.2.9"]
        );
        assert_eq!(trusted[&X_FORWARDED_PROTO], "http");
        assert_eq!(trusted[&X_FORWARDED_HOST], "claimed.example");
        assert!(trusted.contains_key(header::FORWARDED));
    }

    #[test]
    fn trusted_proxies_match_mapped_ipv4_peers() {
        let nets: Vec<ipnet::IpNet> =
            vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        for (ip, want) in [
            ("10.1.2.3", true),
            ("::ffff:10.1.2.3", true),
            ("fd12::1", true),
            ("11.0.0.1", false),
            ("::1", false),
        ] {
            assert_eq!(trusts(&nets, ip.parse().unwrap()), want, "{ip}");
        }
    }

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
