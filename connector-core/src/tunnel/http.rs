//! Serving the HTTP/1.1 requests of one proxied stream from the local HTTP target.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use piko_protocol::access_log::{AccessLog, PendingRecord, RecordSink, Requested};
use piko_protocol::http::{
    has_token, is_upgrade, join_upgrades, relay_response_head, strip_hop_by_hop,
};
use piko_protocol::{access_enabled, access_record};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{ConfigError, EndpointConfig, HttpClientConfig};
use crate::inspector::{Recorder, Recording, Tap};
use crate::metrics::AgentMetrics;
use crate::transport::client_config_for;

/// Body of responses sent back through the tunnel: the target's, streamed, or our JSON error.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The relay of a connection's upgrade (WebSocket), left by the request that upgraded it for
/// the connection's own task to run: so it is tracked with the tunnel's streams, runs in the
/// stream's span, and counts in the tunnel's drain, rather than in a detached task.
#[derive(Clone, Default)]
struct UpgradeRelay(Arc<Mutex<Option<Relay>>>);

/// An upgraded connection's relay, until it ends.
type Relay = Pin<Box<dyn Future<Output = ()> + Send>>;

impl UpgradeRelay {
    fn put(&self, relay: impl Future<Output = ()> + Send + 'static) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::pin(relay));
    }

    fn take(&self) -> Option<Relay> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Forwards requests to one local HTTP target through a keep-alive connection pool.
///
/// Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct HttpForwarder {
    inner: Arc<Inner>,
}

struct Inner {
    /// Request bodies go through a [`Tap`], which passes them on untouched when no
    /// inspector records this endpoint.
    client: Client<HttpsConnector<HttpConnector>, Tap<Incoming>>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// Path of the target URL without its trailing `/` (empty for the root).
    base_path: String,
    timeout: Duration,
    access: AccessLog,
    recorder: Option<Recorder>,
    /// The agent's metrics and this endpoint's label, when the agent serves them.
    metrics: Option<(AgentMetrics, String)>,
}

/// The agent's access-log records: its own log (the `tunnel` span names the endpoint).
impl RecordSink for HttpForwarder {
    fn write(
        &self,
        r: &Requested,
        status: u16,
        headers: Option<&http::HeaderMap>,
        error: Option<&str>,
    ) {
        access_record!(
            "piko_connector_core::tunnel::access",
            &self.inner.access,
            r,
            status,
            headers,
            error
        );
    }
}

/// Why a target URL cannot be forwarded to.
#[derive(Debug, thiserror::Error)]
#[error("target {0} has no usable host and port")]
pub struct BadTarget(String);

impl HttpForwarder {
    /// A forwarder to `target` (an `http://` URL) that gives up on a response after `timeout`
    /// and records each request in `access`.
    pub fn new(target: &url::Url, timeout: Duration, access: AccessLog) -> Result<Self, BadTarget> {
        Self::inspected(target, timeout, access, None)
    }

    /// [`HttpForwarder::new`], recording every exchange with `recorder` when given.
    pub fn inspected(
        target: &url::Url,
        timeout: Duration,
        access: AccessLog,
        recorder: Option<Recorder>,
    ) -> Result<Self, BadTarget> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|_| BadTarget(target.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Self::with_client(
            target,
            timeout,
            access,
            recorder,
            tls,
            HttpClientConfig::default(),
        )
    }

    /// A forwarder for `endpoint` (an HTTP endpoint): its timeout, access log, `tls` towards
    /// an `https://` target and `http_client` pool settings; `key` names the endpoint's
    /// settings in errors (`listeners[0]`).
    pub fn for_endpoint(
        key: &str,
        endpoint: &EndpointConfig,
        target: &url::Url,
        recorder: Option<Recorder>,
    ) -> Result<Self, ConfigError> {
        let tls = if target.scheme() == "https" {
            client_config_for(&format!("{key}.tls"), &endpoint.tls)?
        } else {
            // Never used: plain http needs no trust store (reading the OS's costs time).
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Invalid {
                key: format!("{key}.tls"),
                message: e.to_string(),
            })?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        Self::with_client(
            target,
            endpoint.timeout,
            endpoint.access_log.clone(),
            recorder,
            tls,
            endpoint.http_client,
        )
        .map_err(|e| ConfigError::Addr {
            addr: e.0,
            reason: "the target has no usable host and port".into(),
        })
    }

    fn with_client(
        target: &url::Url,
        timeout: Duration,
        access: AccessLog,
        recorder: Option<Recorder>,
        mut tls: rustls::ClientConfig,
        pool: HttpClientConfig,
    ) -> Result<Self, BadTarget> {
        let bad = || BadTarget(target.to_string());
        let host = match target.host().ok_or_else(bad)? {
            url::Host::Ipv6(ip) => format!("[{ip}]"),
            h => h.to_string(),
        };
        let port = target.port_or_known_default().ok_or_else(bad)?;
        let authority =
            http::uri::Authority::try_from(format!("{host}:{port}")).map_err(|_| bad())?;
        let scheme = http::uri::Scheme::try_from(target.scheme()).map_err(|_| bad())?;

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        connector.set_keepalive(Some(pool.keep_alive_timeout));
        connector.enforce_http(false);
        // Requests are HTTP/1.1 (upgrades included): the builder offers exactly that.
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(pool.idle_conn_timeout)
            .pool_max_idle_per_host(pool.max_idle_conns.unwrap_or(usize::MAX))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                scheme,
                authority,
                base_path: target.path().trim_end_matches('/').to_string(),
                timeout,
                access,
                recorder,
                metrics: None,
            }),
        })
    }

    /// Serve the HTTP/1.1 connection carried by `stream` until it closes: every request is
    /// forwarded to the target, bodies streamed both ways, upgrades (WebSocket) relayed.
    /// When `draining` is cancelled the connection finishes its request in flight and closes
    /// (the server keeps idle keep-alive streams, which would otherwise hold a drain open).
    /// A connection that upgrades returns when the upgraded session ends.
    pub async fn serve<S>(&self, stream: S, draining: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let relay = UpgradeRelay::default();
        let upgraded = relay.clone();
        let service = hyper::service::service_fn(move |req| {
            let (this, upgraded) = (this.clone(), upgraded.clone());
            async move { Ok::<_, Infallible>(this.forward(req, &upgraded).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = draining.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "proxied http connection ended with an error");
        }
        // hyper's connection ends when it hands the stream over to the upgrade; the upgraded
        // session ends with either side, or when the tunnel's drain closes the stream.
        if let Some(relay) = relay.take() {
            relay.await;
        }
    }

    /// Record every request in `metrics` as `endpoint`'s. Call before the forwarder is
    /// cloned (it serves no request yet); later calls change nothing.
    pub fn with_metrics(mut self, metrics: AgentMetrics, endpoint: &str) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = Some((metrics, endpoint.to_string()));
        }
        self
    }

    /// Forward one request and return the target's response, or a JSON error response; the
    /// access log, the inspector and the metrics (if any) record it. An upgrade leaves its
    /// relay in `relay`, for the connection's task to run.
    async fn forward(&self, req: Request<Incoming>, relay: &UpgradeRelay) -> Response<ProxyBody> {
        let Some((metrics, endpoint)) = &self.inner.metrics else {
            return self.forward_recorded(req, relay).await;
        };
        let metered = metrics.begin(endpoint, &req);
        let resp = self.forward_recorded(req, relay).await;
        let status = resp.status().as_u16();
        resp.map(|b| metered.respond(status, b).boxed())
    }

    async fn forward_recorded(
        &self,
        req: Request<Incoming>,
        relay: &UpgradeRelay,
    ) -> Response<ProxyBody> {
        let record = self
            .inner
            .access
            .begin(&req, |l| {
                access_enabled!("piko_connector_core::tunnel::access", l)
            })
            .map(|r| PendingRecord::new(self.clone(), r));
        let recording = self.inner.recorder.as_ref().map(|r| r.begin(&req));
        match self.forward_unlogged(req, recording.as_ref(), relay).await {
            Ok(resp) => {
                if let Some(record) = record {
                    record.finish(resp.status().as_u16(), resp.headers(), None);
                }
                match recording {
                    Some(r) => r.respond(resp, None).map(BodyExt::boxed),
                    None => resp.map(BodyExt::boxed),
                }
            }
            Err((status, message)) => {
                let resp = json_error(status, message);
                if let Some(record) = record {
                    record.finish(resp.status().as_u16(), resp.headers(), None);
                }
                match recording {
                    Some(r) => r.respond(resp, Some(message)).map(BodyExt::boxed),
                    None => resp,
                }
            }
        }
    }

    /// The target's response, or the status and message of the error to answer.
    async fn forward_unlogged(
        &self,
        req: Request<Incoming>,
        recording: Option<&Recording>,
        relay: &UpgradeRelay,
    ) -> Result<Response<Incoming>, (StatusCode, &'static str)> {
        let mut req = req.map(|b| match recording {
            Some(r) => r.request_body(b),
            None => Tap::plain(b),
        });
        let upgrade = is_upgrade(req.headers());
        let websocket = upgrade && has_token(req.headers(), header::UPGRADE, "websocket");
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let uri = match self.target_uri(req.uri()) {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "bad request uri");
                return Err((StatusCode::BAD_REQUEST, "invalid request uri"));
            }
        };
        *req.uri_mut() = uri;
        strip_hop_by_hop(req.headers_mut(), upgrade);

        let mut resp = match tokio::time::timeout(
            self.inner.timeout,
            self.inner.client.request(req),
        )
        .await
        {
            Err(_) => {
                warn!(target_url = %self.inner.authority, timeout = ?self.inner.timeout, "local target did not answer in time");
                return Err((StatusCode::GATEWAY_TIMEOUT, "upstream timeout"));
            }
            Ok(Err(e)) if e.is_connect() => {
                warn!(target_url = %self.inner.authority, error = %error_chain(&e), "local target unreachable");
                return Err((StatusCode::BAD_GATEWAY, "upstream unreachable"));
            }
            Ok(Err(e)) => {
                warn!(target_url = %self.inner.authority, error = %error_chain(&e), "request to local target failed");
                return Err((StatusCode::BAD_GATEWAY, "upstream request failed"));
            }
            Ok(Ok(resp)) => resp,
        };

        match client_upgrade {
            Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let target = hyper::upgrade::on(&mut resp);
                match recording {
                    // A recorded upgrade is joined through the inspector, which counts it.
                    Some(r) => relay.put(r.upgraded(client, target, websocket)),
                    None => relay.put(join_upgrades(client, target)),
                }
            }
            _ => {
                relay_response_head(&mut resp, None);
            }
        }
        Ok(resp)
    }

    fn target_uri(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let pq = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        let pq = if self.inner.base_path.is_empty() {
            http::uri::PathAndQuery::try_from(pq)?
        } else {
            http::uri::PathAndQuery::try_from(format!("{}{}", self.inner.base_path, pq))?
        };
        Uri::builder()
            .scheme(self.inner.scheme.clone())
            .authority(self.inner.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A JSON error response `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use piko_protocol::mux::{Config, Mode, Session};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tiny local HTTP server answering `hello <path> host=<host>` on 127.0.0.1:0.
    async fn local_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let host = req
                            .headers()
                            .get(header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = format!("hello {} host={host}", req.uri());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// A session pair over an in-memory pipe; the client side is served by `fwd`.
    fn tunnel(fwd: HttpForwarder) -> Session {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (server, server_driver) = Session::new(a, Mode::Server, Config::default());
        let (client, client_driver) = Session::new(b, Mode::Client, Config::default());
        tokio::spawn(server_driver);
        tokio::spawn(client_driver);
        tokio::spawn(async move {
            while let Some(stream) = client.accept().await {
                let fwd = fwd.clone();
                tokio::spawn(async move { fwd.serve(stream, CancellationToken::new()).await });
            }
        });
        server
    }

    async fn roundtrip(server: &Session, request: &str) -> String {
        let mut s = server.open().await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        // The forwarder ends its side with FIN after `Connection: close`: the response is
        // read to end of stream, then this side closes too (as the original server does).
        let read_all = async {
            let mut out = Vec::new();
            s.read_to_end(&mut out)
                .await
                .expect("the response, then FIN");
            s.shutdown().await.expect("close");
            out
        };
        let out = tokio::time::timeout(Duration::from_secs(5), read_all)
            .await
            .expect("response within 5s");
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_a_request_over_a_stream() {
        let addr = local_server().await;
        let target = url::Url::parse(&format!("http://{addr}")).unwrap();
        let server = tunnel(
            HttpForwarder::new(&target, Duration::from_secs(5), AccessLog::disabled()).unwrap(),
        );
        let resp = roundtrip(
            &server,
            "GET /a/b?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.ends_with("hello /a/b?q=1 host=x"), "{resp}");
    }

    #[tokio::test]
    async fn closed_target_port_gives_502_json_quickly() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target = url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let server = tunnel(
            HttpForwarder::new(&target, Duration::from_secs(30), AccessLog::disabled()).unwrap(),
        );
        let start = std::time::Instant::now();
        let resp = roundtrip(
            &server,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );
        assert!(resp.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("content-type: application/json\r\n"),
            "{resp}"
        );
        assert!(
            resp.ends_with(r#"{"error":"upstream unreachable"}"#),
            "{resp}"
        );
    }

    #[tokio::test]
    async fn slow_target_gives_504_json() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let target = url::Url::parse(&format!("http://{addr}")).unwrap();
        let server = tunnel(
            HttpForwarder::new(&target, Duration::from_millis(200), AccessLog::disabled()).unwrap(),
        );
        let resp = roundtrip(
            &server,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            resp.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
            "{resp}"
        );
        assert!(resp.ends_with(r#"{"error":"upstream timeout"}"#), "{resp}");
    }

    /// `Connection: upgrade` is forwarded; on 101 the two upgraded connections are joined.
    #[tokio::test]
    async fn relays_an_upgrade() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                assert_eq!(req.headers()[header::UPGRADE], "echo");
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let io = on.await.unwrap();
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(io));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                resp.headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("echo"));
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades()
                .await;
        });
        let target = url::Url::parse(&format!("http://{addr}")).unwrap();
        let server = tunnel(
            HttpForwarder::new(&target, Duration::from_secs(5), AccessLog::disabled()).unwrap(),
        );
        let mut s = server.open().await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let io = async {
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
            assert!(
                head.starts_with("http/1.1 101 switching protocols\r\n"),
                "{head}"
            );
            assert!(head.contains("upgrade: echo\r\n"), "{head}");
            s.write_all(b"through the tunnel").await.unwrap();
            let mut echoed = [0u8; 18];
            s.read_exact(&mut echoed).await.unwrap();
            assert_eq!(&echoed, b"through the tunnel");
        };
        tokio::time::timeout(Duration::from_secs(5), io)
            .await
            .unwrap();
    }
}
