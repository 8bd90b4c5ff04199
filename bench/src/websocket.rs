//! Many concurrent WebSocket echo sessions: connect them all, then each sends a message and
//! waits for its echo, back to back, until the end of the run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::load::{percentile_ms, ENDPOINT_HEADER};

/// What a WebSocket run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WsResult {
    /// Sessions that connected.
    pub connected: usize,
    /// Echoed messages per second over all sessions.
    pub msgs_per_sec: f64,
    /// Round-trip percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile round trip, milliseconds.
    pub p99_ms: f64,
    /// Failures by text.
    pub errors: BTreeMap<String, u64>,
}

/// How long all sessions get to connect before the measurement starts without the rest.
const CONNECT_WINDOW: Duration = Duration::from_secs(20);

/// Run `sessions` echo sessions against `ws://addr/ws` for `duration`.
pub async fn run(addr: SocketAddr, sessions: usize, duration: Duration) -> WsResult {
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let limit = Arc::new(tokio::sync::Semaphore::new(100));
    let tasks: Vec<_> = (0..sessions)
        .map(|_| {
            tokio::spawn(session(
                addr,
                duration,
                start_rx.clone(),
                connected.clone(),
                failed.clone(),
                limit.clone(),
            ))
        })
        .collect();
    let wait_until = Instant::now() + CONNECT_WINDOW;
    while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < sessions
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let _ = start_tx.send(Some(started));
    let mut result = WsResult {
        connected: connected.load(Ordering::Relaxed),
        ..Default::default()
    };
    let mut lat = Vec::new();
    let mut total = 0u64;
    for t in tasks {
        match tokio::time::timeout_at(started + duration + Duration::from_secs(30), t).await {
            Ok(Ok((n, l, err))) => {
                total += n;
                lat.extend(l);
                if let Some(e) = err {
                    *result.errors.entry(e).or_default() += 1;
                }
            }
            Ok(Err(e)) => *result.errors.entry(format!("task: {e}")).or_default() += 1,
            Err(_) => *result.errors.entry("session hung".into()).or_default() += 1,
        }
    }
    let secs = duration.as_secs_f64();
    lat.sort_unstable();
    result.msgs_per_sec = total as f64 / secs;
    result.p50_ms = percentile_ms(&lat, 50.0);
    result.p99_ms = percentile_ms(&lat, 99.0);
    result
}

async fn session(
    addr: SocketAddr,
    duration: Duration,
    mut start: watch::Receiver<Option<Instant>>,
    connected: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    limit: Arc<tokio::sync::Semaphore>,
) -> (u64, Vec<u32>, Option<String>) {
    let connect = async {
        let _permit = limit.acquire().await?;
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut req = format!("ws://{addr}/ws").into_client_request()?;
        req.headers_mut()
            .insert(ENDPOINT_HEADER, http::HeaderValue::from_static("bench"));
        let (ws, _) = tokio_tungstenite::client_async(req, stream).await?;
        anyhow::Ok(ws)
    };
    let mut ws = match tokio::time::timeout(CONNECT_WINDOW, connect).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            failed.fetch_add(1, Ordering::Relaxed);
            return (0, Vec::new(), Some(format!("connect: {e:#}")));
        }
        Err(_) => {
            failed.fetch_add(1, Ordering::Relaxed);
            return (0, Vec::new(), Some("connect: timeout".into()));
        }
    };
    connected.fetch_add(1, Ordering::Relaxed);
    let started = loop {
        if let Some(t) = *start.borrow_and_update() {
            break t;
        }
        if start.changed().await.is_err() {
            return (0, Vec::new(), Some("never started".into()));
        }
    };
    let deadline = started + duration;
    let payload = Bytes::from_static(&[7u8; 32]);
    let (mut n, mut lat) = (0u64, Vec::new());
    let mut err = None;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let round = async {
            ws.send(Message::Binary(payload.clone())).await?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(_))) => return anyhow::Ok(()),
                    Some(Ok(Message::Close(_))) | None => anyhow::bail!("closed by peer"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                }
            }
        };
        match tokio::time::timeout_at(deadline + Duration::from_secs(10), round).await {
            Ok(Ok(())) => {
                // Only round trips that end inside the window count.
                if Instant::now() <= deadline {
                    n += 1;
                    lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            Ok(Err(e)) => {
                err = Some(format!("echo: {e:#}"));
                break;
            }
            Err(_) => {
                err = Some("echo: timeout".into());
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    (n, lat, err)
}
