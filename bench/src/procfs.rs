//! Process memory and CPU from `/proc`, and a description of the machine.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

/// A `VmXxx:` field of `/proc/<pid>/status`, in KiB.
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size now, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// CPU time (user + system) consumed so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux unless told otherwise).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// CPU use of `pid` over `window`, in percent of one core.
pub async fn cpu_percent(pid: u32, window: Duration) -> Option<f64> {
    let before = cpu_ticks(pid)?;
    tokio::time::sleep(window).await;
    let after = cpu_ticks(pid)?;
    Some((after - before) as f64 / clock_ticks() as f64 / window.as_secs_f64() * 100.0)
}

/// Samples the RSS of named processes every 50 ms until stopped; yields the peak of each.
pub struct RssSampler {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<BTreeMap<String, u64>>,
}

impl RssSampler {
    /// Start sampling `procs` (name, pid).
    pub fn start(procs: Vec<(String, u32)>) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak: BTreeMap<String, u64> = BTreeMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            // Bounded by the caller's stop, and in any case by ten minutes.
            for _ in 0..12_000 {
                for (name, pid) in &procs {
                    if let Some(kib) = rss_kib(*pid) {
                        let e = peak.entry(name.clone()).or_default();
                        *e = (*e).max(kib);
                    }
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
            }
            peak
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Stop and return the peak RSS of each process, in KiB.
    pub async fn finish(mut self) -> BTreeMap<String, u64> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap_or_default()
    }
}

/// What the report says about the machine and the code.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// Logical CPUs.
    pub nproc: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Total memory, MiB.
    pub mem_mib: u64,
    /// `/proc/loadavg` when the run started: other work on the machine skews the figures.
    pub loadavg_at_start: String,
    /// `git describe` of the tree measured (with `-dirty` if it had changes).
    pub git_commit: String,
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let s = if s.is_empty() { e } else { s };
    (!s.is_empty()).then(|| s.lines().next().unwrap_or_default().to_string())
}

impl MachineInfo {
    /// Read it from the system and `git`.
    pub fn collect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Self {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            mem_mib: mem_kib / 1024,
            loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            // Set when the binaries were built from another tree than the current directory.
            git_commit: std::env::var("PIKO_BENCH_GIT_COMMIT")
                .ok()
                .filter(|c| !c.is_empty())
                .or_else(|| {
                    command_line(
                        "git",
                        &["describe", "--always", "--dirty", "--exclude", "*"],
                    )
                })
                .unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// The first line a tool prints for `--version` (or `-v`), if it runs.
pub fn tool_version(cmd: &str, arg: &str) -> Option<String> {
    command_line(cmd, &[arg])
}
