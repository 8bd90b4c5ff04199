//! The inspector's JSON API, which a CLI agent serves on loopback for `piko inspect`.
//!
//! - `GET /api/requests[?endpoint=ID][&limit=N]`: `{"requests": [summary, ...]}`, newest first.
//! - `GET /api/requests/stream[?endpoint=ID]`: new and updated summaries as they happen, one
//!   JSON object per line (NDJSON), until the client or the agent goes away.
//! - `GET /api/requests/{id}`: one exchange in full.
//! - `POST /api/requests/{id}/replay`, body empty or a JSON [`ReplayEdit`]: the new exchange.
//!
//! Errors are `{"error": "..."}` with 400 (bad id, bad JSON), 404 (no such request or route),
//! 405, 409 (cannot be replayed), 413 or 403. The inspector shows request bodies and can
//! replay requests with their credentials, so on a loopback address it answers only requests
//! naming a loopback host (a web page cannot reach it through DNS rebinding) and refuses
//! replays a web page of another origin asks for.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use piko_protocol::EndpointId;
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, warn, Instrument};

use super::{ExchangeId, Inspector, ReplayEdit, ReplayError};

/// Largest replay edit accepted (edits carry a body of up to the body limit, maybe base64).
const MAX_EDIT_BYTES: usize = 1 << 20;

/// Most summaries one list answer holds unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 1000;

type ApiBody = BoxBody<Bytes, Infallible>;

/// Serve the API of `inspector` on `listener` until `shutdown`; open streams end then too.
pub async fn serve(listener: TcpListener, inspector: Inspector, shutdown: CancellationToken) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let conns = TaskTracker::new();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "inspector: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let inspector = inspector.clone();
        let shutdown = shutdown.clone();
        let span = info_span!("inspector_api", %remote);
        conns.spawn(
            async move {
                let stop = shutdown.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let inspector = inspector.clone();
                    let stop = stop.clone();
                    async move { Ok::<_, Infallible>(handle(req, &inspector, loopback, stop).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), svc);
                let mut conn = std::pin::pin!(conn);
                let r = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = r {
                    debug!(error = %e, "inspector connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    conns.close();
    conns.wait().await;
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ApiBody> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, message: &str) -> Response<ApiBody> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Whether a `Host` (or `Origin` host) names this machine: `localhost`, `127.x.y.z`, `[::1]`.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The value of query parameter `key`, percent-decoded.
fn query_param(req: &Request<Incoming>, key: &str) -> Option<String> {
    let q = req.uri().query()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

async fn handle(
    req: Request<Incoming>,
    inspector: &Inspector,
    loopback: bool,
    shutdown: CancellationToken,
) -> Response<ApiBody> {
    if loopback {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !is_loopback_host(host) {
            return error(
                StatusCode::FORBIDDEN,
                "the inspector answers only requests to localhost or a loopback address",
            );
        }
    }
    let path = req.uri().path().trim_end_matches('/').to_string();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["api", "requests"]) => list(&req, inspector),
        (&Method::GET, ["api", "requests", "stream"]) => stream(&req, inspector, shutdown),
        (&Method::GET, ["api", "requests", id]) => match id.parse::<ExchangeId>() {
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            Ok(id) => match inspector.get(id) {
                Some(x) => json(StatusCode::OK, &x),
                None => error(
                    StatusCode::NOT_FOUND,
                    &ReplayError::NotFound(id).to_string(),
                ),
            },
        },
        (&Method::POST, ["api", "requests", id, "replay"]) => {
            let id = match id.parse::<ExchangeId>() {
                Ok(id) => id,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            replay(req, inspector, id).await
        }
        (_, ["api", "requests"] | ["api", "requests", _] | ["api", "requests", _, "replay"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such route; see /api/requests"),
    }
}

/// `?endpoint=`: `Ok(None)` when absent.
fn endpoint_param(req: &Request<Incoming>) -> Result<Option<EndpointId>, Box<Response<ApiBody>>> {
    match query_param(req, "endpoint").filter(|e| !e.is_empty()) {
        None => Ok(None),
        Some(e) => EndpointId::new(&e).map(Some).map_err(|err| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                &format!("invalid endpoint {e:?}: {err}"),
            ))
        }),
    }
}

fn list(req: &Request<Incoming>, inspector: &Inspector) -> Response<ApiBody> {
    let endpoint = match endpoint_param(req) {
        Ok(e) => e,
        Err(resp) => return *resp,
    };
    let limit = match query_param(req, "limit") {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid limit {l:?}: use a positive number"),
                )
            }
        },
    };
    let requests = inspector.list_limited(endpoint.as_ref(), limit);
    json(StatusCode::OK, &serde_json::json!({ "requests": requests }))
}

fn stream(
    req: &Request<Incoming>,
    inspector: &Inspector,
    shutdown: CancellationToken,
) -> Response<ApiBody> {
    let endpoint = match endpoint_param(req) {
        Ok(e) => e,
        Err(resp) => return *resp,
    };
    let rx = inspector.subscribe();
    let lines = futures_util::stream::unfold(
        (rx, endpoint, shutdown),
        |(mut rx, endpoint, shutdown)| async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    r = rx.recv() => r,
                };
                match next {
                    Ok(s) if endpoint.as_ref().is_none_or(|e| *e == s.endpoint) => {
                        let mut line = serde_json::to_vec(&s).unwrap_or_default();
                        line.push(b'\n');
                        return Some((Bytes::from(line), (rx, endpoint, shutdown)));
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    let body = StreamBody::new(lines.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut resp = Response::new(BodyExt::boxed(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn replay(
    req: Request<Incoming>,
    inspector: &Inspector,
    id: ExchangeId,
) -> Response<ApiBody> {
    // A page of another origin may POST here without asking first (a "simple" request):
    // only this machine's own pages and non-browser clients (no Origin) may replay.
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://").map(|(_, h)| h.to_string()))
            .unwrap_or_default();
        if !is_loopback_host(&host) {
            return error(
                StatusCode::FORBIDDEN,
                "replays are not accepted from web pages of other origins",
            );
        }
    }
    let body = match Limited::new(req.into_body(), MAX_EDIT_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the replay edit is larger than {MAX_EDIT_BYTES} bytes"),
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
            )
        }
    };
    let edit = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<ReplayEdit>(&body) {
            Ok(e) => Some(e),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid replay edit: {e}"),
                )
            }
        }
    };
    match inspector.replay(id, edit).await {
        Ok(x) => json(StatusCode::OK, &x),
        Err(e @ ReplayError::NotFound(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ ReplayError::BadEdit(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        for ok in [
            "127.0.0.1:4040",
            "localhost:4040",
            "LOCALHOST",
            "[::1]:4040",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example.com:4040",
            "10.0.0.1:4040",
            "",
            "localhost.evil.com",
            "[::2]:1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
