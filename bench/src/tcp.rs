//! Raw TCP throughput through a tunnel: a few connections, each moving a bounded number of
//! bytes (or stopping at the end of the run), against the service's TCP source/sink.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::service::{TcpRequest, UPLOAD_ACK_EVERY};

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Service → client.
    Download,
    /// Client → service, counted by the service's acks.
    Upload,
}

/// What a TCP run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TcpResult {
    /// Delivered megabytes (10^6 bytes) per second over all connections.
    pub mb_per_sec: f64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Failures by text.
    pub errors: BTreeMap<String, u64>,
}

/// Move up to `per_conn` bytes on each of `conns` connections, for at most `duration`.
pub async fn run(
    addr: SocketAddr,
    dir: Direction,
    conns: usize,
    per_conn: u64,
    duration: Duration,
) -> TcpResult {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(one(addr, dir, per_conn, deadline)))
        .collect();
    let mut r = TcpResult::default();
    for t in tasks {
        match t.await {
            Ok((n, None)) => r.bytes += n,
            Ok((n, Some(e))) => {
                r.bytes += n;
                *r.errors.entry(e).or_default() += 1;
            }
            Err(e) => *r.errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    r.mb_per_sec = r.bytes as f64 / 1e6 / start.elapsed().as_secs_f64();
    r
}

async fn one(
    addr: SocketAddr,
    dir: Direction,
    total: u64,
    deadline: Instant,
) -> (u64, Option<String>) {
    let mut moved = 0u64;
    let work = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        match dir {
            Direction::Download => {
                stream
                    .write_all(&TcpRequest::Download(total).encode())
                    .await?;
                let mut buf = vec![0u8; 256 * 1024];
                while moved < total {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        anyhow::bail!("connection closed after {moved} of {total} bytes");
                    }
                    moved += n as u64;
                }
            }
            Direction::Upload => {
                stream
                    .write_all(&TcpRequest::Upload(total).encode())
                    .await?;
                let (mut rd, mut wr) = stream.split();
                let buf = vec![0u8; 256 * 1024];
                let writer = async {
                    let mut left = total;
                    while left > 0 {
                        let n = left.min(buf.len() as u64) as usize;
                        wr.write_all(&buf[..n]).await?;
                        left -= n as u64;
                    }
                    // Keep the write half open: some tunnels end the stream on a half-close.
                    std::future::pending::<()>().await;
                    anyhow::Ok(())
                };
                let reader = async {
                    let mut acks = [0u8; 64];
                    let want = total / UPLOAD_ACK_EVERY;
                    let mut got = 0u64;
                    while got < want {
                        let n = rd.read(&mut acks).await?;
                        if n == 0 {
                            anyhow::bail!("connection closed after {got} MiB acknowledged");
                        }
                        got += n as u64;
                        moved = got * UPLOAD_ACK_EVERY;
                    }
                    anyhow::Ok(())
                };
                tokio::select! {
                    r = writer => r?,
                    r = reader => r?,
                }
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(())) | Err(_) => (moved, None),
        Ok(Err(e)) => (moved, Some(format!("{e:#}"))),
    }
}
