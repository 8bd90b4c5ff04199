//! One benchmark run: start the service and the systems, run each scenario round by round with
//! the systems alternating, measure idle costs, and build the [`Report`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

use crate::idle;
use crate::load::{self, HttpLoad, LoadGen};
use crate::procfs::{self, MachineInfo, RssSampler};
use crate::report::{median, IdleReport, Report, ScenarioReport, SystemResult, TargetReport};
use crate::service::MIB;
use crate::systems::{self, Bins, Running, System};
use crate::tcp::{self, Direction};
use crate::websocket;

/// How much to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One very short round: direct and piko, small GET and 1 MiB download.
    Smoke,
    /// Under three minutes.
    Quick,
    /// Five rounds of ten seconds, 10,000 idle upstreams.
    Full,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Smoke => "smoke",
            Mode::Quick => "quick",
            Mode::Full => "full",
        }
    }
}

/// Options of `piko-bench run`.
#[derive(Debug, Clone)]
pub struct Options {
    /// How much to run.
    pub mode: Mode,
    /// Results directory.
    pub out: PathBuf,
    /// Where piko-server, piko and piko-bench are.
    pub bin_dir: PathBuf,
    /// Force the built-in load generator.
    pub builtin_loadgen: bool,
    /// Override the rounds of the mode.
    pub rounds: Option<usize>,
    /// Override the seconds per measurement.
    pub secs: Option<f64>,
    /// Only these systems (all when empty).
    pub systems: Vec<System>,
    /// Only these scenario ids (all of the mode's when empty).
    pub scenarios: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Http {
        path: &'static str,
        upload: bool,
        conns: usize,
        keepalive: bool,
        per_mib: bool,
    },
    Ws {
        sessions: usize,
    },
    Tcp {
        dir: Direction,
        conns: usize,
    },
}

struct Scenario {
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    kind: Kind,
}

fn scenarios(mode: Mode) -> Vec<Scenario> {
    let all = vec![
        Scenario {
            id: "small_get_keepalive",
            title: "small GET, keep-alive, 64 conns",
            unit: "req/s",
            kind: Kind::Http {
                path: "/",
                upload: false,
                conns: 64,
                keepalive: true,
                per_mib: false,
            },
        },
        Scenario {
            id: "small_get_new_conn",
            title: "small GET, new connection each, 32 conns",
            unit: "req/s",
            kind: Kind::Http {
                path: "/",
                upload: false,
                conns: 32,
                keepalive: false,
                per_mib: false,
            },
        },
        Scenario {
            id: "download_1m",
            title: "1 MiB download, 8 conns",
            unit: "MB/s",
            kind: Kind::Http {
                path: "/1m",
                upload: false,
                conns: 8,
                keepalive: true,
                per_mib: true,
            },
        },
        Scenario {
            id: "upload_1m",
            title: "1 MiB upload, 8 conns",
            unit: "MB/s",
            kind: Kind::Http {
                path: "/upload",
                upload: true,
                conns: 8,
                keepalive: true,
                per_mib: true,
            },
        },
        Scenario {
            id: "websocket_echo",
            title: "WebSocket echo, 1,000 sessions",
            unit: "msg/s",
            kind: Kind::Ws { sessions: 1000 },
        },
        Scenario {
            id: "tcp_download",
            title: "TCP download (forward), 4 conns",
            unit: "MB/s",
            kind: Kind::Tcp {
                dir: Direction::Download,
                conns: 4,
            },
        },
        Scenario {
            id: "tcp_upload",
            title: "TCP upload (forward), 4 conns",
            unit: "MB/s",
            kind: Kind::Tcp {
                dir: Direction::Upload,
                conns: 4,
            },
        },
    ];
    match mode {
        Mode::Smoke => all
            .into_iter()
            .filter(|s| s.id == "small_get_keepalive" || s.id == "download_1m")
            .collect(),
        _ => all,
    }
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!("piko-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Sample {
    value: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    errors: BTreeMap<String, u64>,
}

/// Run the benchmark and write the report into `opts.out`.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let started_utc = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let (rounds, secs, idle_n) = match opts.mode {
        Mode::Smoke => (1, 1.0, 0),
        Mode::Quick => (2, 2.0, 2_000),
        Mode::Full => (5, 10.0, 10_000),
    };
    let rounds = opts.rounds.unwrap_or(rounds).max(1);
    let secs = opts.secs.unwrap_or(secs).max(0.2);
    let duration = Duration::from_secs_f64(secs);
    let tcp_per_conn: u64 = if opts.mode == Mode::Full {
        1 << 30
    } else {
        256 << 20
    };
    let cpu_window = if opts.mode == Mode::Smoke {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };

    let machine = MachineInfo::collect();
    let bins = Bins::in_dir(&opts.bin_dir)?;
    let tmp = TempDir::new()?;
    let gen = if opts.builtin_loadgen {
        LoadGen::Builtin
    } else {
        LoadGen::detect()
    };
    let mut tools = BTreeMap::new();
    if let LoadGen::Oha { program, .. } = &gen {
        tools.insert(
            "oha".into(),
            procfs::tool_version(program, "--version").unwrap_or_default(),
        );
    }
    let upload_body = Bytes::from(vec![b'u'; MIB]);
    let upload_file = tmp.0.join("upload.bin");
    load::write_body_file(&upload_file, &upload_body)?;

    let wanted: Vec<System> = match opts.mode {
        Mode::Smoke if opts.systems.is_empty() => vec![System::Direct, System::Piko],
        _ if opts.systems.is_empty() => System::DEFAULT.to_vec(),
        _ => opts.systems.clone(),
    };
    let needs_tcp = opts.mode != Mode::Smoke;

    println!("starting the local service and the systems under test …");
    let service = systems::start_service(&bins, &tmp.0).await?;
    let mut statuses = BTreeMap::new();
    let mut running: Vec<Running> = Vec::new();
    let mut not_measured = Vec::new();
    for sys in System::ALL {
        if !wanted.contains(&sys) {
            continue;
        }
        let started = match sys {
            System::Direct => Ok(systems::direct(&service)),
            System::Piko => systems::piko(&bins, &service, &tmp.0, needs_tcp, true).await,
            // Only the HTTP scenarios compare the inspector on and off.
            System::PikoNoInspect => systems::piko(&bins, &service, &tmp.0, false, false).await,
            System::Rathole => match procfs::tool_version("rathole", "-V") {
                Some(v) => {
                    tools.insert("rathole".into(), v);
                    systems::rathole(&service, &tmp.0).await
                }
                None => Err(anyhow::anyhow!(
                    "`rathole` is not installed (cargo install --locked rathole)"
                )),
            },
            System::Nginx => match procfs::tool_version("nginx", "-v") {
                Some(v) => {
                    tools.insert("nginx".into(), v);
                    systems::nginx(&service, &tmp.0).await
                }
                None => Err(anyhow::anyhow!(
                    "`nginx` is not installed (apt-get install nginx-light)"
                )),
            },
        };
        match started {
            Ok(r) => {
                println!("  {sys}: ready, HTTP at {}", r.http);
                statuses.insert(sys.name().to_string(), "ok".to_string());
                running.push(r);
            }
            Err(e) if sys == System::Direct || sys == System::Piko => {
                return Err(e.context(format!("start {sys}")));
            }
            Err(e) => {
                let why = format!("{e:#}");
                println!("  {sys}: NOT RUN: {why}");
                not_measured.push(format!("{sys}: not run ({why})"));
                statuses.insert(sys.name().to_string(), why);
            }
        }
    }

    // Idle CPU before any load: the connector must not poll.
    let mut idle_report = IdleReport {
        cpu_window_secs: cpu_window.as_secs_f64(),
        ..Default::default()
    };
    if let Some(p) = running.iter().find(|r| r.system == System::Piko) {
        let agent = p.pid("piko agent");
        let server = p.pid("piko-server");
        let (a, s) = tokio::join!(
            async {
                match agent {
                    Some(pid) => procfs::cpu_percent(pid, cpu_window).await,
                    None => None,
                }
            },
            async {
                match server {
                    Some(pid) => procfs::cpu_percent(pid, cpu_window).await,
                    None => None,
                }
            }
        );
        idle_report.agent_cpu_percent_idle = a;
        idle_report.server_cpu_percent_idle = s;
        println!(
            "idle CPU over {:.0} s: piko agent {:.2} %, piko-server {:.2} %",
            cpu_window.as_secs_f64(),
            a.unwrap_or(f64::NAN),
            s.unwrap_or(f64::NAN)
        );
    }

    let mut scens = scenarios(opts.mode);
    if !opts.scenarios.is_empty() {
        scens.retain(|s| opts.scenarios.iter().any(|id| id == s.id));
        anyhow::ensure!(
            !scens.is_empty(),
            "no scenario matches {:?}; see piko-bench run --help",
            opts.scenarios
        );
    }
    let mut scenario_reports = Vec::new();
    for sc in &scens {
        println!("\n== {} ({}) ==", sc.title, sc.unit);
        let mut samples: BTreeMap<System, Vec<Sample>> = BTreeMap::new();
        let mut rss: BTreeMap<System, BTreeMap<String, u64>> = BTreeMap::new();
        for round in 1..=rounds {
            for sys in running.iter_mut() {
                let carries = match sc.kind {
                    Kind::Tcp { .. } => sys.tcp.is_some(),
                    _ => true,
                };
                if !carries {
                    continue;
                }
                if let Err(e) = sys.check_alive() {
                    println!("  round {round} {}: skipped: {e:#}", sys.system);
                    samples.entry(sys.system).or_default().push(Sample {
                        value: 0.0,
                        p50: None,
                        p99: None,
                        errors: BTreeMap::from([(format!("{e:#}"), 1)]),
                    });
                    continue;
                }
                let sampler = RssSampler::start(sys.pids());
                let sample = measure(
                    sc.kind,
                    sys,
                    &gen,
                    duration,
                    &upload_body,
                    &upload_file,
                    tcp_per_conn,
                )
                .await;
                let peaks = sampler.finish().await;
                let e = rss.entry(sys.system).or_default();
                for (name, kib) in peaks {
                    let v = e.entry(name).or_default();
                    *v = (*v).max(kib);
                }
                let lat = match sample.p99 {
                    Some(p99) => format!(
                        ", p50 {:.2} ms, p99 {p99:.2} ms",
                        sample.p50.unwrap_or(f64::NAN)
                    ),
                    None => String::new(),
                };
                let errs: u64 = sample.errors.values().sum();
                let errs = if errs > 0 {
                    format!(
                        ", {errs} errors (e.g. {})",
                        sample.errors.keys().next().map_or("", |s| s.as_str())
                    )
                } else {
                    String::new()
                };
                println!(
                    "  round {round} {:>7}: {} {}{lat}{errs}",
                    sys.system.name(),
                    crate::report::thousands(sample.value),
                    sc.unit
                );
                samples.entry(sys.system).or_default().push(sample);
            }
        }
        let mut results = BTreeMap::new();
        for (sys, ss) in &samples {
            let values: Vec<f64> = ss.iter().map(|s| s.value).collect();
            let p50: Vec<f64> = ss.iter().filter_map(|s| s.p50).collect();
            let p99: Vec<f64> = ss.iter().filter_map(|s| s.p99).collect();
            let mut errors = BTreeMap::new();
            for s in ss {
                for (e, n) in &s.errors {
                    *errors.entry(e.clone()).or_default() += n;
                }
            }
            results.insert(
                sys.name().to_string(),
                SystemResult {
                    median: median(&values),
                    ratio_vs_direct: None,
                    rounds: values,
                    p50_ms: (!p50.is_empty()).then(|| median(&p50)),
                    p99_ms: (!p99.is_empty()).then(|| median(&p99)),
                    peak_rss_kib: rss.remove(sys).unwrap_or_default(),
                    errors,
                },
            );
        }
        let direct = results.get("direct").map(|r: &SystemResult| r.median);
        for r in results.values_mut() {
            r.ratio_vs_direct = direct.filter(|d| *d > 0.0).map(|d| r.median / d);
        }
        scenario_reports.push(ScenarioReport {
            id: sc.id.into(),
            title: sc.title.into(),
            unit: sc.unit.into(),
            results,
        });
    }

    // Idle registered upstreams.
    if idle_n > 0 {
        if running.iter().any(|r| r.system == System::Piko) {
            println!("\n== {idle_n} idle registered upstreams (a fresh piko-server) ==");
            idle_report = idle_upstreams(&bins, &tmp.0, idle_n, cpu_window, idle_report).await;
        }
    } else {
        not_measured.push("idle registered upstreams: not in smoke mode".into());
    }
    let idle = (running.iter().any(|r| r.system == System::Piko)).then_some(idle_report);

    // What the product logged.
    let mut piko_log_lines = BTreeMap::new();
    for r in &running {
        if r.system != System::Piko {
            continue;
        }
        for p in &r.procs {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
                .collect();
            if lines.is_empty() {
                continue;
            }
            let mut shown: Vec<String> = lines.iter().take(8).map(|l| l.to_string()).collect();
            if lines.len() > 8 {
                shown.push(format!("… {} such lines in all", lines.len()));
            }
            piko_log_lines.insert(p.name.clone(), shown);
        }
    }

    not_measured.push(
        "piko with a cross-node hop: waits for the cluster issue (a single node is measured)"
            .into(),
    );
    if running.iter().any(|r| r.system == System::Nginx) && opts.mode != Mode::Smoke {
        not_measured.push(
            "nginx for raw TCP: nginx-light has no stream module, so the TCP rows have no nginx column"
                .into(),
        );
    }

    let mut report = Report {
        mode: opts.mode.name().into(),
        started_utc,
        wall_secs: 0.0,
        machine,
        tools,
        loadgen: gen.name().into(),
        rounds,
        round_secs: secs,
        systems: statuses,
        scenarios: scenario_reports,
        idle,
        targets: Vec::new(),
        piko_log_lines,
        not_measured,
    };
    report.targets = targets(&report);
    report.wall_secs = started.elapsed().as_secs_f64();
    drop(running);
    drop(service);
    Ok(report)
}

async fn measure(
    kind: Kind,
    sys: &Running,
    gen: &LoadGen,
    duration: Duration,
    upload_body: &Bytes,
    upload_file: &std::path::Path,
    tcp_per_conn: u64,
) -> Sample {
    match kind {
        Kind::Http {
            path,
            upload,
            conns,
            keepalive,
            per_mib,
        } => {
            let l = HttpLoad {
                addr: sys.http,
                path,
                post_body: upload.then(|| upload_body.clone()),
                post_file: upload.then(|| upload_file.to_path_buf()),
                conns,
                keepalive,
                duration,
            };
            match load::run(gen, &l).await {
                Ok(r) => Sample {
                    value: if per_mib {
                        r.ok_per_sec * MIB as f64 / 1e6
                    } else {
                        r.ok_per_sec
                    },
                    p50: Some(r.p50_ms),
                    p99: Some(r.p99_ms),
                    errors: r.errors,
                },
                Err(e) => Sample {
                    value: 0.0,
                    p50: None,
                    p99: None,
                    errors: BTreeMap::from([(format!("{e:#}"), 1)]),
                },
            }
        }
        Kind::Ws { sessions } => {
            let r = websocket::run(sys.http, sessions, duration).await;
            let mut errors = r.errors;
            if r.connected < sessions {
                errors.insert(
                    format!("only {} of {sessions} sessions connected", r.connected),
                    1,
                );
            }
            Sample {
                value: r.msgs_per_sec,
                p50: Some(r.p50_ms),
                p99: Some(r.p99_ms),
                errors,
            }
        }
        Kind::Tcp { dir, conns } => match sys.tcp {
            Some(addr) => {
                let r = tcp::run(addr, dir, conns, tcp_per_conn, duration).await;
                Sample {
                    value: r.mb_per_sec,
                    p50: None,
                    p99: None,
                    errors: r.errors,
                }
            }
            None => Sample {
                value: f64::NAN,
                p50: None,
                p99: None,
                errors: BTreeMap::new(),
            },
        },
    }
}

async fn idle_upstreams(
    bins: &Bins,
    dir: &std::path::Path,
    n: usize,
    cpu_window: Duration,
    mut report: IdleReport,
) -> IdleReport {
    report.upstreams = n;
    // A server of its own, so memory kept from the load scenarios does not hide the cost.
    let (proc, _, ports) = match systems::piko_server(bins, dir, "piko-server idle").await {
        Ok(s) => s,
        Err(e) => {
            report.first_error = Some(format!("start a piko-server for the idle test: {e:#}"));
            return report;
        }
    };
    let server = proc.pid;
    report.server_rss_before_kib = procfs::rss_kib(server);
    let t0 = Instant::now();
    let idle = idle::register(ports.upstream, n).await;
    report.failed = idle.failed;
    report.first_error = idle.first_error.clone();
    let want = idle.len();
    let _ = systems::wait_for(
        "the idle upstreams to be listed",
        Duration::from_secs(60),
        || async {
            systems::piko_endpoints(ports.admin)
                .await
                .is_some_and(|v| idle::count_idle(&v) >= want)
        },
    )
    .await;
    report.registered = systems::piko_endpoints(ports.admin)
        .await
        .map_or(0, |v| idle::count_idle(&v));
    println!(
        "  {} registered ({} failed) in {:.1} s",
        report.registered,
        report.failed,
        t0.elapsed().as_secs_f64()
    );
    // Let allocations settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.server_rss_after_kib = procfs::rss_kib(server);
    if let (Some(b), Some(a)) = (report.server_rss_before_kib, report.server_rss_after_kib) {
        if report.registered > 0 {
            report.kib_per_upstream = Some((a as f64 - b as f64) / report.registered as f64);
        }
    }
    report.server_cpu_percent_with_upstreams = procfs::cpu_percent(server, cpu_window).await;
    println!(
        "  piko-server RSS {} → {} KiB: {:.1} KiB per upstream; CPU {:.2} %",
        report.server_rss_before_kib.unwrap_or(0),
        report.server_rss_after_kib.unwrap_or(0),
        report.kib_per_upstream.unwrap_or(f64::NAN),
        report.server_cpu_percent_with_upstreams.unwrap_or(f64::NAN)
    );
    drop(idle);
    drop(proc);
    report
}

fn find<'a>(r: &'a Report, id: &str) -> Option<&'a ScenarioReport> {
    r.scenarios.iter().find(|s| s.id == id)
}

fn ratio_target(r: &Report, id: &str, what: &str, other: System, min: f64) -> TargetReport {
    let s = find(r, id);
    let piko = s.and_then(|s| s.median(System::Piko));
    let o = s.and_then(|s| s.median(other));
    let target = format!("{what} ≥ {min}× {other}");
    match (piko, o) {
        (Some(p), Some(o)) if o > 0.0 => TargetReport {
            target,
            measured: format!(
                "{:.2}× (piko {} vs {other} {})",
                p / o,
                crate::report::thousands(p),
                crate::report::thousands(o)
            ),
            met: Some(p / o >= min),
        },
        _ => TargetReport {
            target,
            measured: format!("{other} or piko not measured"),
            met: None,
        },
    }
}

fn targets(r: &Report) -> Vec<TargetReport> {
    let mut t = vec![
        ratio_target(
            r,
            "small_get_keepalive",
            "small GET keep-alive req/s",
            System::Rathole,
            1.0,
        ),
        ratio_target(
            r,
            "small_get_keepalive",
            "small GET keep-alive req/s",
            System::Direct,
            0.65,
        ),
        ratio_target(
            r,
            "small_get_new_conn",
            "small GET new connection req/s",
            System::Rathole,
            2.0,
        ),
        ratio_target(
            r,
            "download_1m",
            "1 MiB download MB/s",
            System::Rathole,
            3.0,
        ),
        ratio_target(r, "download_1m", "1 MiB download MB/s", System::Direct, 0.5),
        ratio_target(r, "upload_1m", "1 MiB upload MB/s", System::Rathole, 3.0),
        ratio_target(r, "upload_1m", "1 MiB upload MB/s", System::Direct, 0.5),
    ];
    let s = find(r, "small_get_keepalive");
    let (p, o) = (
        s.and_then(|s| s.p99(System::Piko)),
        s.and_then(|s| s.p99(System::Rathole)),
    );
    t.push(match (p, o) {
        (Some(p), Some(o)) if p.is_finite() && o.is_finite() => TargetReport {
            target: "p99 latency at the small-GET load ≤ rathole's".into(),
            measured: format!("piko {p:.2} ms vs rathole {o:.2} ms"),
            met: Some(p <= o),
        },
        _ => TargetReport {
            target: "p99 latency at the small-GET load ≤ rathole's".into(),
            measured: "rathole or piko not measured".into(),
            met: None,
        },
    });
    let idle = r.idle.as_ref();
    t.push(match idle.and_then(|i| i.kib_per_upstream) {
        Some(k) => TargetReport {
            target: "≤ 30 KiB server RSS per idle registered upstream".into(),
            measured: format!(
                "{k:.1} KiB ({} upstreams)",
                idle.map_or(0, |i| i.registered)
            ),
            met: Some(k <= 30.0),
        },
        None => TargetReport {
            target: "≤ 30 KiB server RSS per idle registered upstream".into(),
            measured: "not measured".into(),
            met: None,
        },
    });
    t.push(match idle.and_then(|i| i.agent_cpu_percent_idle) {
        Some(c) => TargetReport {
            target: "connector CPU when idle ~0 (≤ 0.5 % of a core)".into(),
            measured: format!("{c:.2} %"),
            met: Some(c <= 0.5),
        },
        None => TargetReport {
            target: "connector CPU when idle ~0 (≤ 0.5 % of a core)".into(),
            measured: "not measured".into(),
            met: None,
        },
    });
    t
}
