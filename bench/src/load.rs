//! HTTP load: `oha` when installed (the load generator users know), or a small built-in hyper
//! client with the same shape (N connections, fixed duration) so the harness depends on nothing
//! outside the workspace.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Header naming the Piko endpoint; sent to every system so requests are the same everywhere.
pub const ENDPOINT_HEADER: &str = "x-piko-endpoint";

/// Which load generator drives HTTP scenarios.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadGen {
    /// `oha` at this path, with its JSON output flag.
    Oha {
        /// The program.
        program: String,
        /// `--output-format json` (1.5+) or `-j` (older).
        json_flag: Vec<String>,
    },
    /// The built-in hyper client.
    Builtin,
}

impl LoadGen {
    /// `oha` if it runs, else the built-in client.
    pub fn detect() -> Self {
        let Ok(out) = std::process::Command::new("oha").arg("--help").output() else {
            return LoadGen::Builtin;
        };
        let help = String::from_utf8_lossy(&out.stdout);
        let json_flag = if help.contains("--output-format") {
            vec!["--output-format".into(), "json".into()]
        } else {
            vec!["-j".into()]
        };
        LoadGen::Oha {
            program: "oha".into(),
            json_flag,
        }
    }

    /// Short name for the report.
    pub fn name(&self) -> &'static str {
        match self {
            LoadGen::Oha { .. } => "oha",
            LoadGen::Builtin => "builtin",
        }
    }
}

/// One HTTP load run.
#[derive(Debug, Clone)]
pub struct HttpLoad {
    /// Where to send requests.
    pub addr: SocketAddr,
    /// Request path.
    pub path: &'static str,
    /// `Some(body)` sends `POST` with this body.
    pub post_body: Option<Bytes>,
    /// The same body in a file (for `oha -D`).
    pub post_file: Option<std::path::PathBuf>,
    /// Concurrent connections.
    pub conns: usize,
    /// Reuse connections (else one connection per request).
    pub keepalive: bool,
    /// How long to send.
    pub duration: Duration,
}

/// What one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadResult {
    /// Successful (2xx) responses per second.
    pub ok_per_sec: f64,
    /// Successful responses.
    pub ok: u64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Non-2xx statuses and transport errors, by text.
    pub errors: BTreeMap<String, u64>,
}

/// Run `load` with `gen`.
pub async fn run(gen: &LoadGen, load: &HttpLoad) -> anyhow::Result<LoadResult> {
    match gen {
        LoadGen::Oha { program, json_flag } => oha(program, json_flag, load).await,
        LoadGen::Builtin => Ok(builtin(load).await),
    }
}

async fn oha(program: &str, json_flag: &[String], load: &HttpLoad) -> anyhow::Result<LoadResult> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.kill_on_drop(true)
        .arg("--no-tui")
        .args(json_flag)
        .arg("--wait-ongoing-requests-after-deadline")
        .args(["-z", &format!("{}ms", load.duration.as_millis())])
        .args(["-c", &load.conns.to_string()])
        .args(["-H", &format!("{ENDPOINT_HEADER}: bench")]);
    if !load.keepalive {
        cmd.arg("--disable-keepalive");
    }
    if let Some(file) = &load.post_file {
        cmd.args(["-m", "POST", "-D"]).arg(file);
    }
    cmd.arg(format!("http://{}{}", load.addr, load.path));
    cmd.stdin(std::process::Stdio::null());
    let limit = load.duration + Duration::from_secs(60);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("oha did not finish within {limit:?}"))?
        .context("run oha")?;
    if !out.status.success() {
        bail!(
            "oha failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_oha(&out.stdout)
}

fn parse_oha(json: &[u8]) -> anyhow::Result<LoadResult> {
    let v: serde_json::Value = serde_json::from_slice(json).context("parse oha's JSON output")?;
    let secs = v["summary"]["total"].as_f64().unwrap_or(0.0);
    let mut ok = 0u64;
    let mut errors = BTreeMap::new();
    if let Some(codes) = v["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            if code.starts_with('2') {
                ok += n;
            } else {
                errors.insert(format!("HTTP {code}"), n);
            }
        }
    }
    if let Some(errs) = v["errorDistribution"].as_object() {
        for (e, n) in errs {
            errors.insert(e.clone(), n.as_u64().unwrap_or(0));
        }
    }
    let pct = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
    Ok(LoadResult {
        ok_per_sec: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
        ok,
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
        errors,
    })
}

/// Percentile `p` (0–100) of sorted microsecond samples, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    sorted_us[i.min(sorted_us.len() - 1)] as f64 / 1000.0
}

struct ConnStats {
    ok: u64,
    lat_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

/// The built-in generator: `conns` tasks, each sending requests back to back until the end.
pub async fn builtin(load: &HttpLoad) -> LoadResult {
    let start = Instant::now();
    let deadline = start + load.duration;
    let tasks: Vec<_> = (0..load.conns)
        .map(|_| tokio::spawn(builtin_conn(load.clone(), deadline)))
        .collect();
    let mut ok = 0;
    let mut lat = Vec::new();
    let mut errors = BTreeMap::new();
    for t in tasks {
        match t.await {
            Ok(s) => {
                ok += s.ok;
                lat.extend(s.lat_us);
                for (e, n) in s.errors {
                    *errors.entry(e).or_default() += n;
                }
            }
            Err(e) => *errors.entry(format!("task failed: {e}")).or_default() += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    LoadResult {
        ok_per_sec: ok as f64 / secs,
        ok,
        p50_ms: percentile_ms(&lat, 50.0),
        p99_ms: percentile_ms(&lat, 99.0),
        errors,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn one_request(
    sender: &mut Sender,
    load: &HttpLoad,
) -> anyhow::Result<Result<(), http::StatusCode>> {
    let mut req = http::Request::builder()
        .uri(load.path)
        .header(http::header::HOST, load.addr.to_string())
        .header(ENDPOINT_HEADER, "bench");
    if !load.keepalive {
        req = req.header(http::header::CONNECTION, "close");
    }
    let req = match &load.post_body {
        Some(body) => req
            .method(http::Method::POST)
            .body(Full::new(body.clone()))?,
        None => req.body(Full::new(Bytes::new()))?,
    };
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(if status.is_success() {
        Ok(())
    } else {
        Err(status)
    })
}

async fn builtin_conn(load: HttpLoad, deadline: Instant) -> ConnStats {
    let mut s = ConnStats {
        ok: 0,
        lat_us: Vec::new(),
        errors: BTreeMap::new(),
    };
    let grace = deadline + Duration::from_secs(10);
    let mut sender: Option<Sender> = None;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let result = tokio::time::timeout_at(grace, async {
            let mut snd = match sender.take() {
                Some(snd) => snd,
                None => connect(load.addr).await?,
            };
            let r = one_request(&mut snd, &load).await?;
            if load.keepalive {
                sender = Some(snd);
            }
            anyhow::Ok(r)
        })
        .await;
        match result {
            Ok(Ok(Ok(()))) => {
                s.ok += 1;
                s.lat_us
                    .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Ok(Ok(Err(status))) => *s.errors.entry(format!("HTTP {status}")).or_default() += 1,
            Ok(Err(e)) => {
                *s.errors.entry(format!("{e:#}")).or_default() += 1;
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => *s.errors.entry("timeout".into()).or_default() += 1,
        }
    }
    s
}

/// Write `body` to a file for `oha -D`.
pub fn write_body_file(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, body).with_context(|| format!("write {}", path.display()))
}
