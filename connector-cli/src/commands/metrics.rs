//! `--server.enabled`: the agent's own HTTP port, serving its Prometheus metrics at
//! `/metrics` (as the original Go agent; other paths are 404).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use piko_connector_core::metrics::AgentMetrics;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::exit::Failure;

/// Listen on `addr` and serve `metrics` until `shutdown`. A port that cannot be bound is a
/// runtime failure, as in the original agent.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: AgentMetrics,
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::Runtime(format!(
            "cannot listen on {addr} for --server.enabled: {e}; choose another --server.bind-addr"
        ))
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    // The log line tells scripts (and tests) the port when asked for port 0.
    info!(addr = %bound, "metrics server listening");
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "metrics accept failed");
                        continue;
                    }
                },
            };
            let metrics = metrics.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&req, &metrics)) }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn answer<B>(req: &Request<B>, metrics: &AgentMetrics) -> Response<Full<Bytes>> {
    let mut resp = if req.uri().path() == "/metrics" && req.method() == hyper::Method::GET {
        let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"404 page not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    resp
}
