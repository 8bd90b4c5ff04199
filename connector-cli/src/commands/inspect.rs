//! `piko inspect`: read a running agent's request inspector through its JSON API (loopback,
//! `--inspect.addr`), and the agent side: serving that API.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use piko_connector_core::config::{InspectAddr, DEFAULT_INSPECT_ADDR};
use piko_connector_core::inspector::{
    api, Body, BodyEncoding, Exchange, ExchangeKind, ExchangeSummary, Inspector, Recorded,
    ReplayEdit,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::{parse_inspect_addr, InspectArgs, InspectCommand};
use crate::exit::Failure;

/// Start serving `inspector` on `addr`; a port that cannot be bound is a warning (the agent
/// runs without an inspector) and gives `None`.
pub(crate) async fn serve(
    addr: SocketAddr,
    inspector: Inspector,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!("inspector: cannot listen on {addr}: {e}; running without the request inspector (pass another --inspect.addr)");
            return None;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    if !bound.ip().is_loopback() {
        warn!("inspector: listening on {bound}, which is not loopback: anyone who reaches it can read request bodies and replay requests");
    }
    // The log line tells scripts (and tests) the port when `--inspect.addr` asked for port 0.
    info!(addr = %bound, "inspector listening");
    let _ = writeln!(std::io::stdout(), "inspector: http://{bound}");
    Some(tokio::spawn(api::serve(listener, inspector, shutdown)))
}

/// The agent's inspector address `piko inspect` reads (its `--inspect.addr`).
fn parse_addr(a: &str) -> Result<SocketAddr, Failure> {
    match parse_inspect_addr(a)? {
        InspectAddr::At(addr) => Ok(addr),
        // "" turns an agent's inspector off; there is nothing to read at "".
        InspectAddr::Off => Err(Failure::Usage(format!(
            "--inspect.addr \"\" is not an address; use host:port such as {DEFAULT_INSPECT_ADDR}"
        ))),
    }
}

/// Run `piko inspect ...`.
pub(crate) async fn run(args: InspectArgs) -> Result<(), Failure> {
    match args.command {
        None => {
            let addr = parse_addr(&args.addr.addr)?;
            list(addr, args.endpoint.as_deref(), args.limit, args.follow).await
        }
        Some(InspectCommand::Show { id, json, addr }) => {
            let addr = parse_addr(&addr.addr)?;
            let id = check_id(&id)?;
            let (_, body) = call(addr, Method::GET, &format!("/api/requests/{id}"), None).await?;
            if json {
                out(&format!("{}\n", String::from_utf8_lossy(&body)));
                return Ok(());
            }
            let x: Exchange = decode(&body)?;
            out(&show(&x));
            Ok(())
        }
        Some(InspectCommand::Replay {
            id,
            method,
            path,
            headers,
            body,
            body_file,
            addr,
        }) => {
            let addr = parse_addr(&addr.addr)?;
            let id = check_id(&id)?;
            let edit = edit(method, path, headers, body, body_file)?;
            let payload = match &edit {
                Some(e) => Some(
                    serde_json::to_vec(e)
                        .map_err(|e| Failure::Runtime(format!("cannot write the edit: {e}")))?,
                ),
                None => None,
            };
            let (_, body) = call(
                addr,
                Method::POST,
                &format!("/api/requests/{id}/replay"),
                payload,
            )
            .await?;
            let x: Exchange = decode(&body)?;
            out(&format!("{}\n{}\n", header_row(), row(&x.summary)));
            Ok(())
        }
    }
}

fn check_id(id: &str) -> Result<u64, Failure> {
    id.trim().parse::<u64>().map_err(|_| {
        Failure::Usage(format!(
            "invalid request id {id:?}: ids are the numbers in the first column of `piko inspect`"
        ))
    })
}

fn edit(
    method: Option<String>,
    path: Option<String>,
    headers: Vec<String>,
    body: Option<String>,
    body_file: Option<std::path::PathBuf>,
) -> Result<Option<ReplayEdit>, Failure> {
    let headers = if headers.is_empty() {
        None
    } else {
        Some(
            headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                        .ok_or_else(|| {
                            Failure::Usage(format!("--header {h:?}: write it as \"Name: value\""))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    let (body, body_base64) = match (body, body_file) {
        (Some(b), _) => (Some(b), None),
        (None, Some(f)) => {
            let bytes = std::fs::read(&f).map_err(|e| {
                Failure::Usage(format!("--body-file: cannot read {}: {e}", f.display()))
            })?;
            match String::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(e) => {
                    use base64::Engine;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(e.into_bytes());
                    (None, Some(b64))
                }
            }
        }
        (None, None) => (None, None),
    };
    let edit = ReplayEdit {
        method,
        path,
        headers,
        body,
        body_base64,
    };
    Ok((edit != ReplayEdit::default()).then_some(edit))
}

/// Write to stdout; a closed stdout (piped into `head`) is not an error worth a panic.
fn out(s: &str) {
    let _ = std::io::stdout().write_all(s.as_bytes());
    let _ = std::io::stdout().flush();
}

fn not_running(addr: SocketAddr, e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(format!(
        "no agent inspector at {addr} ({e}); start `piko agent` first, or pass the agent's --inspect.addr"
    ))
}

/// One API call: the response, after checking its status (an error status is the API's
/// one-line error).
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<http::Response<hyper::body::Incoming>, Failure> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            not_running(addr, "nothing listens there")
        } else {
            not_running(addr, e)
        }
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| not_running(addr, e))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Failure::Runtime(format!("cannot build the request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| not_running(addr, e))?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or_else(|| format!("the inspector answered {status}"));
    Err(if status == StatusCode::BAD_REQUEST {
        Failure::Usage(message)
    } else {
        Failure::Runtime(message)
    })
}

async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), Failure> {
    let resp = send(addr, method, path, body).await?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::Runtime(format!("the inspector's answer broke off: {e}")))?
        .to_bytes();
    Ok((status, body))
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        Failure::Runtime(format!(
            "the inspector's answer is not what this piko expects ({e}); are the agent and piko the same version?"
        ))
    })
}

fn encode_query(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn list(
    addr: SocketAddr,
    endpoint: Option<&str>,
    limit: usize,
    follow: bool,
) -> Result<(), Failure> {
    let filter = endpoint
        .map(|e| format!("&endpoint={}", encode_query(e)))
        .unwrap_or_default();
    // Subscribe first, so nothing falls between the list and the stream.
    let stream = if follow {
        Some(
            send(
                addr,
                Method::GET,
                &format!("/api/requests/stream?{}", filter.trim_start_matches('&')),
                None,
            )
            .await?,
        )
    } else {
        None
    };
    let (_, body) = call(
        addr,
        Method::GET,
        &format!("/api/requests?limit={}{filter}", limit.max(1)),
        None,
    )
    .await?;
    #[derive(serde::Deserialize)]
    struct List {
        requests: Vec<ExchangeSummary>,
    }
    let list: List = decode(&body)?;
    let mut text = format!("{}\n", header_row());
    // Following: oldest first, so that new requests continue the list at the bottom.
    let rows: Vec<&ExchangeSummary> = if follow {
        list.requests.iter().rev().collect()
    } else {
        list.requests.iter().collect()
    };
    for s in rows {
        let _ = writeln!(text, "{}", row(s));
    }
    if list.requests.is_empty() && !follow {
        text.push_str("(no requests yet)\n");
    }
    out(&text);
    let Some(stream) = stream else {
        return Ok(());
    };
    let mut body = stream.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Runtime(format!("the agent went away: {e}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            if let Ok(s) = serde_json::from_slice::<ExchangeSummary>(&line) {
                out(&format!("{}\n", row(&s)));
            }
        }
    }
    Err(Failure::Runtime("the agent stopped".into()))
}

fn header_row() -> String {
    format!(
        "{:<6} {:<12} {:<16} {:<7} {:<40} {:>6} {:>10} {:>9} {:>9}  {}",
        "ID", "TIME", "ENDPOINT", "METHOD", "PATH", "STATUS", "DURATION", "IN", "OUT", "NOTE"
    )
}

/// `s` cut to `n` characters, with `…` when cut.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut c: String = s.chars().take(n - 1).collect();
    c.push('…');
    c
}

fn row(s: &ExchangeSummary) -> String {
    // "2026-01-02T03:04:05.678Z" → "03:04:05.678"
    let time = s.started_at.get(11..23).unwrap_or(&s.started_at);
    let status = s.status.map_or("-".to_string(), |c| c.to_string());
    let duration = match s.duration_ms {
        Some(ms) if ms < 1000.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{:.2}s", ms / 1000.0),
        None => "open".to_string(),
    };
    let mut note = Vec::new();
    if s.kind == ExchangeKind::WebSocket {
        note.push("websocket".to_string());
    }
    if let Some(of) = s.replay_of {
        note.push(format!("replay of {of}"));
    }
    if let Some(e) = &s.error {
        note.push(e.clone());
    }
    format!(
        "{:<6} {:<12} {:<16} {:<7} {:<40} {:>6} {:>10} {:>9} {:>9}  {}",
        s.id.0,
        time,
        cut(s.endpoint.as_str(), 16),
        cut(&s.method, 7),
        cut(&s.path, 40),
        status,
        duration,
        size(s.request_size),
        size(s.response_size),
        note.join("; ")
    )
    .trim_end()
    .to_string()
}

fn size(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
    }
}

/// A byte count as the limit is written (`64 KiB`).
fn limit(n: usize) -> String {
    if n > 0 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

fn show_part(text: &mut String, title: &str, p: &Recorded) {
    let _ = writeln!(text, "\n{title} headers:");
    if p.headers_dropped {
        let _ = writeln!(text, "  (not kept: the inspector's memory was full)");
    }
    for (k, v) in &p.headers {
        let _ = writeln!(text, "  {k}: {v}");
    }
    show_body(text, title, &p.body);
}

fn show_body(text: &mut String, title: &str, b: &Body) {
    if b.size == 0 {
        let _ = writeln!(text, "\n{title} body: empty");
        return;
    }
    let _ = writeln!(text, "\n{title} body ({}):", size(b.size));
    match b.encoding {
        BodyEncoding::Base64 => {
            let _ = writeln!(
                text,
                "  (binary, {} captured; base64 with `piko inspect show --json`)",
                size(b.captured as u64)
            );
        }
        BodyEncoding::Text => {
            text.push_str(&b.data);
            if !b.data.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    if b.truncated {
        let _ = writeln!(
            text,
            "… truncated at {} ({} in all)",
            limit(b.captured),
            size(b.size)
        );
    }
}

fn show(x: &Exchange) -> String {
    let s = &x.summary;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "request {} · endpoint {} · {}",
        s.id, s.endpoint, s.started_at
    );
    let status = s.status.map_or("no response".to_string(), |c| {
        let reason = StatusCode::from_u16(c)
            .ok()
            .and_then(|c| c.canonical_reason())
            .unwrap_or("");
        format!("{c} {reason}").trim_end().to_string()
    });
    let duration = s
        .duration_ms
        .map_or("still open".to_string(), |ms| format!("in {ms:.1} ms"));
    let _ = writeln!(text, "{} {} → {status} {duration}", s.method, s.path);
    if let Some(of) = s.replay_of {
        let _ = writeln!(text, "replay of request {of}");
    }
    if let Some(e) = &s.error {
        let _ = writeln!(text, "error: {e}");
    }
    if let Some(ws) = &x.websocket {
        let _ = writeln!(
            text,
            "websocket: {} frames / {} in, {} frames / {} out{}",
            ws.frames_in,
            size(ws.bytes_in),
            ws.frames_out,
            size(ws.bytes_out),
            if ws.closed { " (closed)" } else { " (open)" }
        );
    }
    show_part(&mut text, "Request", &x.request);
    match &x.response {
        Some(r) => show_part(&mut text, "Response", r),
        None => text.push_str("\nNo response.\n"),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_addresses_parse_or_say_what_to_write() {
        assert_eq!(parse_addr("4041").ok(), "127.0.0.1:4041".parse().ok());
        assert_eq!(
            parse_addr("localhost:4041").ok(),
            "127.0.0.1:4041".parse().ok()
        );
        let Err(Failure::Usage(e)) = parse_addr("nowhere") else {
            panic!("a bad address is a usage error")
        };
        assert!(
            e.starts_with("--inspect.addr \"nowhere\" is not an address"),
            "{e}"
        );
        let Err(Failure::Usage(e)) = parse_addr(" ") else {
            panic!("piko inspect needs an address")
        };
        assert!(
            e.starts_with("--inspect.addr \"\" is not an address"),
            "{e}"
        );
        let off = crate::cli::ServeArgs {
            addr: Some(" ".into()),
        };
        assert!(matches!(off.resolve(None), Ok(InspectAddr::Off)));
    }

    #[test]
    fn rows_cut_long_paths_and_say_what_is_special() {
        let s: ExchangeSummary = serde_json::from_value(serde_json::json!({
            "id": 12, "endpoint": "shop", "started_at": "2026-01-02T03:04:05.678Z",
            "started_at_ms": 0, "method": "GET", "path": format!("/{}", "a".repeat(60)),
            "status": 502, "duration_ms": 1.25, "request_size": 0, "response_size": 2048,
            "kind": "http", "replay_of": 3, "error": "upstream unreachable"
        }))
        .unwrap();
        let r = row(&s);
        assert!(r.starts_with("12     03:04:05.678 shop"), "{r}");
        assert!(r.contains("aaa… "), "{r}");
        assert!(r.contains("   502 "), "{r}");
        assert!(r.contains("1.2ms") || r.contains("1.3ms"), "{r}");
        assert!(r.contains("2.0 KiB"), "{r}");
        assert!(r.ends_with("replay of 3; upstream unreachable"), "{r}");
    }
}
