//! Serving a proxied stream of a TCP endpoint: one local TCP connection per stream.

use std::time::Duration;

use piko_protocol::mux;
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// Connect to `addr` and relay bytes both ways until either side closes. If the target cannot
/// be reached the stream is dropped, which resets it: the client sees its connection close.
pub(super) async fn serve(mut stream: mux::Stream, addr: &str, timeout: Duration) {
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
    match piko_protocol::relay(&mut stream, &mut tcp).await {
        Ok((up, down)) => debug!(
            bytes_to_target = up,
            bytes_from_target = down,
            "tcp stream done"
        ),
        Err(e) => debug!(error = %e, "tcp stream ended"),
    }
}
