//! Many idle registered upstreams: WebSocket registrations speaking the yamux client side with
//! the project's own session, held open while the server's memory is measured.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use piko_protocol::mux::{self, Mode, Session};
use tokio::task::JoinHandle;

/// Open registrations, closed when dropped.
pub struct IdleUpstreams {
    sessions: Vec<(Session, JoinHandle<Result<(), mux::MuxError>>)>,
    /// Registrations that failed, with the first error.
    pub failed: usize,
    /// The first failure's text.
    pub first_error: Option<String>,
}

impl IdleUpstreams {
    /// Registrations open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

impl Drop for IdleUpstreams {
    fn drop(&mut self) {
        for (s, driver) in &self.sessions {
            s.close();
            driver.abort();
        }
    }
}

/// Register `n` upstreams for endpoints `idle-0` … `idle-{n-1}` at `upstream`, 64 at a time,
/// each attempt bounded to 10 s.
pub async fn register(upstream: SocketAddr, n: usize) -> IdleUpstreams {
    let results: Vec<Result<_, String>> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let url = format!("ws://{upstream}/piko/v1/upstream/idle-{i}");
            let dial = tokio_tungstenite::connect_async_with_config(
                url,
                Some(piko_protocol::ws::ws_config()),
                true,
            );
            match tokio::time::timeout(Duration::from_secs(10), dial).await {
                Ok(Ok((ws, _))) => {
                    let (session, driver) =
                        Session::over_websocket(ws, Mode::Client, mux::Config::default());
                    Ok((session, tokio::spawn(driver)))
                }
                Ok(Err(e)) => Err(format!("register idle-{i}: {e}")),
                Err(_) => Err(format!("register idle-{i}: no answer within 10 s")),
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut idle = IdleUpstreams {
        sessions: Vec::with_capacity(n),
        failed: 0,
        first_error: None,
    };
    for r in results {
        match r {
            Ok(s) => idle.sessions.push(s),
            Err(e) => {
                idle.failed += 1;
                idle.first_error.get_or_insert(e);
            }
        }
    }
    idle
}

/// How many `idle-*` endpoints the admin answer lists.
pub fn count_idle(endpoints: &serde_json::Value) -> usize {
    endpoints
        .as_object()
        .map_or(0, |m| m.keys().filter(|k| k.starts_with("idle-")).count())
}
