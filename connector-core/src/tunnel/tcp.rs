//! Serving a proxied stream of a TCP endpoint: one local TCP connection per stream.

use std::time::Duration;

use piko_protocol::access_event;
use piko_protocol::mux;
use tokio::net::TcpStream;
use tracing::{warn, Level};

/// Connect to `addr` and relay bytes both ways until both sides are done: the stream's FIN
/// shuts down the local connection's write side, and the local service's own shutdown becomes
/// FIN, so either side may half-close and still read the other's answer. If the target cannot
/// be reached the stream is dropped, which resets it: the client sees its connection close.
/// The access log records each connection at `access` (`None`: at debug only).
pub(super) async fn serve(
    mut stream: mux::Stream,
    addr: &str,
    timeout: Duration,
    access: Option<Level>,
) {
    let level = access.unwrap_or(Level::DEBUG);
    let mut tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            warn!(target_addr = addr, error = %e, "local target unreachable");
            return;
        }
        Err(_) => {
            warn!(
                target_addr = addr,
                ?timeout,
                "local target did not accept in time"
            );
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    access_event!(
        "piko_connector_core::tunnel::access",
        level,
        target_addr = addr,
        "connection opened"
    );
    let start = std::time::Instant::now();
    match piko_protocol::relay(&mut stream, &mut tcp).await {
        Ok((up, down)) => access_event!(
            "piko_connector_core::tunnel::access",
            level,
            target_addr = addr,
            bytes_to_target = up,
            bytes_from_target = down,
            duration_ms = start.elapsed().as_secs_f64() * 1000.0,
            "connection closed"
        ),
        Err(e) => access_event!(
            "piko_connector_core::tunnel::access",
            level,
            target_addr = addr,
            error = %e,
            duration_ms = start.elapsed().as_secs_f64() * 1000.0,
            "connection closed"
        ),
    }
}
