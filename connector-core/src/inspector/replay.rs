//! Replay: send a recorded request (maybe edited) to its endpoint's local target again and
//! record the answer as a new exchange linked to the original.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use piko_protocol::access_log::is_sensitive;
use piko_protocol::http::strip_hop_by_hop;

use super::exchange::{Exchange, ExchangeId, ReplayEdit};
use super::record::Pending;
use super::redact::{self, MASK};
use super::store::Capture;
use super::Shared;

/// Why a replay was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// No such exchange (never recorded, or evicted since).
    #[error(
        "no request {0} in the inspector (it may have been evicted; `piko inspect` lists the ids)"
    )]
    NotFound(ExchangeId),
    /// The recorded request body is incomplete, so sending it again would send something else.
    #[error("request {0} had its body truncated at {1} bytes; replay it with an edited body")]
    Truncated(ExchangeId, usize),
    /// The request's headers were not kept (the inspector's memory was full).
    #[error("request {0} was recorded without its headers (inspector memory was full); replay it with edited headers")]
    HeadersDropped(ExchangeId),
    /// WebSocket sessions are not replayed.
    #[error("request {0} is a WebSocket session, which cannot be replayed")]
    WebSocket(ExchangeId),
    /// The endpoint no longer runs here.
    #[error("endpoint {0} of request {1} is not served by this connector any more")]
    NoTarget(String, ExchangeId),
    /// The edit is not a valid request.
    #[error("invalid edit: {0}")]
    BadEdit(String),
}

/// Where an endpoint's requests go, as the forwarder sends them.
pub(crate) struct ReplayTarget {
    scheme: Scheme,
    authority: Authority,
    /// Path of the target URL without its trailing `/`.
    base_path: String,
    timeout: Duration,
}

impl ReplayTarget {
    /// The target of an `http://host:port[/base]` URL, or `None` if it has no usable host.
    pub(crate) fn new(url: &url::Url, timeout: Duration) -> Option<Self> {
        let host = match url.host()? {
            url::Host::Ipv6(ip) => format!("[{ip}]"),
            h => h.to_string(),
        };
        let port = url.port_or_known_default()?;
        Some(Self {
            scheme: Scheme::try_from(url.scheme()).ok()?,
            authority: Authority::try_from(format!("{host}:{port}")).ok()?,
            base_path: url.path().trim_end_matches('/').to_string(),
            timeout,
        })
    }

    fn uri(&self, pq: &str) -> Result<Uri, ReplayError> {
        let bad = |e: http::Error| ReplayError::BadEdit(format!("path {pq:?}: {e}"));
        let full = format!("{}{pq}", self.base_path);
        let pq = PathAndQuery::try_from(full.as_str()).map_err(|e| bad(e.into()))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(bad)
    }
}

/// The client replays go through (its own small pool: replays are rare).
pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// The headers to send: the edit's (a masked credential keeps its recorded value) or the
/// recorded ones.
fn headers(
    id: ExchangeId,
    recorded: Option<&HeaderMap>,
    edit: Option<&[(String, String)]>,
) -> Result<HeaderMap, ReplayError> {
    let Some(edit) = edit else {
        return recorded.cloned().ok_or(ReplayError::HeadersDropped(id));
    };
    let mut out = HeaderMap::new();
    for (name, value) in edit {
        let n = HeaderName::try_from(name.trim())
            .map_err(|_| ReplayError::BadEdit(format!("{name:?} is not a header name")))?;
        if value == MASK && is_sensitive(&n) {
            // The page was shown `***`: send what was recorded.
            if let Some(v) = recorded.map(|r| r.get_all(&n)) {
                for v in v {
                    out.append(n.clone(), v.clone());
                }
            }
            continue;
        }
        let v = HeaderValue::try_from(value.as_str()).map_err(|_| {
            ReplayError::BadEdit(format!("the value of header {name} is not valid in HTTP"))
        })?;
        out.append(n, v);
    }
    Ok(out)
}

fn body(
    id: ExchangeId,
    shared: &Shared,
    recorded: &Capture,
    edit: Option<&ReplayEdit>,
) -> Result<Bytes, ReplayError> {
    if let Some(b64) = edit.and_then(|e| e.body_base64.as_deref()) {
        return base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map(Bytes::from)
            .map_err(|e| ReplayError::BadEdit(format!("body_base64: {e}")));
    }
    if let Some(text) = edit.and_then(|e| e.body.as_deref()) {
        return Ok(Bytes::copy_from_slice(text.as_bytes()));
    }
    if recorded.truncated {
        return Err(ReplayError::Truncated(id, shared.body_limit));
    }
    Ok(Bytes::copy_from_slice(&recorded.data))
}

/// Send exchange `id` again (changed by `edit`) and record the answer; the new exchange is
/// returned when its response has ended. A target that fails gives an exchange with the error
/// (502/504), as for tunnelled requests; only a request that cannot be sent is an `Err`.
pub(crate) async fn replay(
    shared: &Arc<Shared>,
    id: ExchangeId,
    edit: Option<ReplayEdit>,
) -> Result<Exchange, ReplayError> {
    let entry = shared.store.get(id).ok_or(ReplayError::NotFound(id))?;
    if entry.ws.is_some() {
        return Err(ReplayError::WebSocket(id));
    }
    let target = shared
        .target(&entry.endpoint)
        .ok_or_else(|| ReplayError::NoTarget(entry.endpoint.to_string(), id))?;
    let edit = edit.as_ref();
    let method = match edit.and_then(|e| e.method.as_deref()) {
        Some(m) => Method::from_bytes(m.trim().as_bytes())
            .map_err(|_| ReplayError::BadEdit(format!("{m:?} is not an HTTP method")))?,
        None => entry.method.clone(),
    };
    let path = match edit.and_then(|e| e.path.as_deref()) {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => {
            return Err(ReplayError::BadEdit(format!(
                "path {p:?} must start with '/'"
            )))
        }
        None => entry
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string()),
    };
    let mut headers = headers(
        id,
        entry.request.headers.map.as_ref(),
        edit.and_then(|e| e.headers.as_deref()),
    )?;
    let body = body(id, shared, &entry.request.body, edit)?;
    let uri = target.uri(&path)?;
    let shown_uri = Uri::try_from(path.as_str())
        .map_err(|e| ReplayError::BadEdit(format!("path {path:?}: {e}")))?;

    // The body may have changed: its length is ours to state, and hop-by-hop headers were
    // about the original's connection.
    strip_hop_by_hop(&mut headers, false);
    headers.remove(header::CONTENT_LENGTH);
    if !body.is_empty() || matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let endpoint = entry.endpoint.clone();
    drop(entry);

    let pending = Pending::new(
        shared.clone(),
        endpoint,
        Some(id),
        method.clone(),
        shown_uri,
        &headers,
    );
    let mut captured = Capture::new(&shared.store, shared.body_limit);
    captured.observe(&shared.store, &body);
    pending.set_request_body(captured);

    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    match tokio::time::timeout(target.timeout, shared.client.request(req)).await {
        Err(_) => pending.respond(504, &HeaderMap::new(), Some("upstream timeout")),
        Ok(Err(e)) if e.is_connect() => {
            pending.respond(502, &HeaderMap::new(), Some("upstream unreachable"))
        }
        Ok(Err(_)) => pending.respond(502, &HeaderMap::new(), Some("upstream request failed")),
        Ok(Ok(resp)) => {
            pending.respond(resp.status().as_u16(), resp.headers(), None);
            let mut captured = Capture::new(&shared.store, shared.body_limit);
            let mut body = resp.into_body();
            // A stream that never ends (server-sent events) is read for the endpoint's
            // timeout at most.
            let read = tokio::time::timeout(target.timeout, async {
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => {
                            if let Some(d) = f.data_ref() {
                                captured.observe(&shared.store, d);
                            }
                        }
                        Err(e) => return Some(format!("response body failed: {e}")),
                    }
                }
                None
            })
            .await;
            let error = match read {
                Ok(e) => e,
                Err(_) => Some(format!(
                    "stopped reading the response after {}",
                    humantime::format_duration(target.timeout)
                )),
            };
            pending.set_response_body(captured, error);
        }
    }
    let stored = pending.commit().ok_or(ReplayError::NotFound(id))?;
    Ok(redact::exchange(&stored))
}
