//! The results of a run: the JSON model, the Markdown table, and the files in the results dir.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::procfs::MachineInfo;
use crate::systems::System;

/// Why the targets not met are not met: the profile, written down with the harness.
pub const ANALYSIS: &str = include_str!("../analysis.md");

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `quick`, `full` or `smoke`.
    pub mode: String,
    /// Start time, RFC 3339 UTC.
    pub started_utc: String,
    /// Wall time of the run, seconds.
    pub wall_secs: f64,
    /// The machine and the commit measured.
    pub machine: MachineInfo,
    /// Versions of the tools used.
    pub tools: BTreeMap<String, String>,
    /// `oha` or `builtin`.
    pub loadgen: String,
    /// Rounds per scenario.
    pub rounds: usize,
    /// Seconds per measurement.
    pub round_secs: f64,
    /// `ok`, or why a system was not run.
    pub systems: BTreeMap<String, String>,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioReport>,
    /// Idle measurements (piko).
    pub idle: Option<IdleReport>,
    /// Issue 3's targets, each met or not.
    pub targets: Vec<TargetReport>,
    /// Warning and error lines the Piko processes logged during the run (first few of each).
    pub piko_log_lines: BTreeMap<String, Vec<String>>,
    /// What this run did not measure, and why.
    pub not_measured: Vec<String>,
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Stable id (`small_get_keepalive`, ...).
    pub id: String,
    /// Human title.
    pub title: String,
    /// Unit of `median` (higher is better).
    pub unit: String,
    /// Per system name.
    pub results: BTreeMap<String, SystemResult>,
}

/// One system in one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SystemResult {
    /// Median over rounds.
    pub median: f64,
    /// `median / direct's median` in this run.
    pub ratio_vs_direct: Option<f64>,
    /// Each round's value.
    pub rounds: Vec<f64>,
    /// Median over rounds of the 50th percentile latency, ms.
    pub p50_ms: Option<f64>,
    /// Median over rounds of the 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
    /// Peak RSS of each process of the system during the scenario, KiB.
    pub peak_rss_kib: BTreeMap<String, u64>,
    /// Errors by text, summed over rounds.
    pub errors: BTreeMap<String, u64>,
}

/// Idle upstreams and idle CPU.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleReport {
    /// Upstreams asked for.
    pub upstreams: usize,
    /// Upstreams the server listed as registered.
    pub registered: usize,
    /// Registrations that failed.
    pub failed: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// Server RSS before registering, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS with all registered, KiB.
    pub server_rss_after_kib: Option<u64>,
    /// (after − before) / registered.
    pub kib_per_upstream: Option<f64>,
    /// Server CPU % with the idle upstreams registered.
    pub server_cpu_percent_with_upstreams: Option<f64>,
    /// Connector (`piko agent`) CPU % while no request flows.
    pub agent_cpu_percent_idle: Option<f64>,
    /// Server CPU % while no request flows (before registering).
    pub server_cpu_percent_idle: Option<f64>,
    /// Seconds each CPU measurement lasted.
    pub cpu_window_secs: f64,
}

/// A target of issue 3.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// What is aimed at.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// `None` when it could not be measured.
    pub met: Option<bool>,
}

impl ScenarioReport {
    /// A system's median, if measured.
    pub fn median(&self, s: System) -> Option<f64> {
        self.results.get(s.name()).map(|r| r.median)
    }

    /// A system's p99, if measured.
    pub fn p99(&self, s: System) -> Option<f64> {
        self.results.get(s.name()).and_then(|r| r.p99_ms)
    }
}

/// Median of `v` (NaN for none).
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// `12,345` style, no decimals.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

fn ms(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => "—".into(),
    }
}

fn mib(kib: Option<&u64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1}", *k as f64 / 1024.0))
}

impl Report {
    /// Systems in round order that have a column.
    fn columns(&self) -> Vec<System> {
        System::ALL
            .into_iter()
            .filter(|s| self.systems.contains_key(s.name()))
            .collect()
    }

    /// The main table: medians with ratios to direct, then latency rows.
    pub fn table(&self) -> String {
        let cols = self.columns();
        let mut t = String::new();
        let _ = write!(t, "| scenario | unit |");
        for c in &cols {
            let _ = write!(t, " {c} |");
        }
        t.push('\n');
        let _ = write!(t, "|---|---|");
        for _ in &cols {
            t.push_str("---:|");
        }
        t.push('\n');
        for s in &self.scenarios {
            let _ = write!(t, "| {} | {} |", s.title, s.unit);
            for c in &cols {
                let cell = match s.results.get(c.name()) {
                    None if self.systems.get(c.name()).is_some_and(|v| v != "ok") => {
                        "not run".into()
                    }
                    None => "n/a".into(),
                    Some(r) => match r.ratio_vs_direct {
                        Some(ratio) if *c != System::Direct => {
                            format!("{} ({ratio:.2}×)", thousands(r.median))
                        }
                        _ => thousands(r.median),
                    },
                };
                let _ = write!(t, " {cell} |");
            }
            t.push('\n');
            if s.results.values().any(|r| r.p99_ms.is_some()) {
                let _ = write!(t, "| ↳ latency p50 / p99 | ms |");
                for c in &cols {
                    let cell = s.results.get(c.name()).map_or("—".into(), |r| {
                        format!("{} / {}", ms(r.p50_ms), ms(r.p99_ms))
                    });
                    let _ = write!(t, " {cell} |");
                }
                t.push('\n');
            }
        }
        t
    }

    /// Peak RSS per process per scenario, MiB.
    pub fn rss_table(&self) -> String {
        let mut procs: Vec<String> = Vec::new();
        for s in &self.scenarios {
            for r in s.results.values() {
                for p in r.peak_rss_kib.keys() {
                    if !procs.contains(p) {
                        procs.push(p.clone());
                    }
                }
            }
        }
        if procs.is_empty() {
            return String::new();
        }
        procs.sort();
        let mut t = String::from("| scenario |");
        for p in &procs {
            let _ = write!(t, " {p} |");
        }
        t.push_str("\n|---|");
        for _ in &procs {
            t.push_str("---:|");
        }
        t.push('\n');
        for s in &self.scenarios {
            let _ = write!(t, "| {} |", s.title);
            for p in &procs {
                let v = s.results.values().find_map(|r| r.peak_rss_kib.get(p));
                let _ = write!(t, " {} |", mib(v));
            }
            t.push('\n');
        }
        t
    }

    /// The targets table.
    pub fn targets_table(&self) -> String {
        let mut t = String::from("| target | measured | met |\n|---|---|---|\n");
        for g in &self.targets {
            let met = match g.met {
                Some(true) => "✅ met",
                Some(false) => "❌ not met",
                None => "— not measured",
            };
            let _ = writeln!(t, "| {} | {} | {met} |", g.target, g.measured);
        }
        t
    }

    /// The whole Markdown report (with [`ANALYSIS`] when a target is not met).
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Piko benchmark — {} run, {}\n",
            self.mode, self.started_utc
        );
        let _ = writeln!(
            md,
            "- machine: {} × {}, {} MiB RAM, Linux {}; load average at the start {}",
            m.nproc, m.cpu_model, m.mem_mib, m.kernel, m.loadavg_at_start
        );
        let _ = writeln!(md, "- commit: `{}`", m.git_commit);
        let _ = writeln!(
            md,
            "- {} round(s) of {:.1} s per scenario, systems alternating within each round \
             (direct, piko, rathole, nginx); figures are the median over rounds; \
             the ratio in brackets is against direct in the same run; run took {:.0} s",
            self.rounds, self.round_secs, self.wall_secs
        );
        let _ = writeln!(md, "- HTTP load generator: {}", self.loadgen);
        for (tool, v) in &self.tools {
            let _ = writeln!(md, "- {tool}: {v}");
        }
        for (s, status) in &self.systems {
            if status != "ok" {
                let _ = writeln!(md, "- **{s} not run**: {status}");
            }
        }
        let _ = writeln!(md, "\n## Results\n\n{}", self.table());
        let _ = writeln!(md, "MB = 10^6 bytes. \"n/a\": the system does not carry that traffic (nginx-light has no TCP stream module).\n");
        let _ = writeln!(md, "## Targets (issue 3)\n\n{}", self.targets_table());
        if self.targets.iter().any(|t| t.met == Some(false)) {
            // The profile behind the targets not met, kept with the harness (bench/analysis.md).
            let _ = writeln!(md, "{}", ANALYSIS.trim_end());
            md.push('\n');
        }
        if let Some(i) = &self.idle {
            let _ = writeln!(md, "## Idle\n");
            let _ = writeln!(
                md,
                "- {} idle upstreams asked, {} registered, {} failed{}",
                i.upstreams,
                i.registered,
                i.failed,
                i.first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (first: `{e}`)"))
            );
            let _ = writeln!(
                md,
                "- a fresh piko-server (no other traffic): RSS {} → {} MiB: **{} KiB per upstream**",
                mib(i.server_rss_before_kib.as_ref()),
                mib(i.server_rss_after_kib.as_ref()),
                i.kib_per_upstream.map_or("—".into(), |k| format!("{k:.1}"))
            );
            let pct = |x: Option<f64>| x.map_or("—".into(), |v| format!("{v:.2} %"));
            let _ = writeln!(
                md,
                "- CPU over {:.0} s with no traffic (before the load): piko agent {}, piko-server {}; \
                 piko-server with the idle upstreams {}\n",
                i.cpu_window_secs,
                pct(i.agent_cpu_percent_idle),
                pct(i.server_cpu_percent_idle),
                pct(i.server_cpu_percent_with_upstreams)
            );
        }
        let rss = self.rss_table();
        if !rss.is_empty() {
            let _ = writeln!(
                md,
                "## Peak RSS during each scenario (MiB, sampled every 50 ms)\n\n{rss}"
            );
        }
        let mut errors = String::new();
        for s in &self.scenarios {
            for (sys, r) in &s.results {
                for (e, n) in &r.errors {
                    let _ = writeln!(errors, "- {} / {sys}: {n} × `{e}`", s.title);
                }
            }
        }
        if !errors.is_empty() {
            let _ = writeln!(md, "## Errors seen by the clients\n\n{errors}");
        }
        if self.piko_log_lines.values().any(|v| !v.is_empty()) {
            let _ = writeln!(md, "## Warnings and errors logged by Piko\n");
            for (p, lines) in &self.piko_log_lines {
                for l in lines {
                    let _ = writeln!(md, "- {p}: `{l}`");
                }
            }
            md.push('\n');
        }
        if !self.not_measured.is_empty() {
            let _ = writeln!(md, "## Not measured\n");
            for n in &self.not_measured {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }

    /// Write `latest.{md,json}` and a dated copy into `dir`; returns the files written.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // 2026-01-02T03:04:05Z → 2026-01-02-0304
        let s = &self.started_utc;
        let stamp = format!(
            "{}-{}{}",
            s.get(0..10).unwrap_or("unknown"),
            s.get(11..13).unwrap_or("00"),
            s.get(14..16).unwrap_or("00")
        );
        let json = serde_json::to_string_pretty(self)?;
        let md = self.markdown();
        let mut written = Vec::new();
        for base in ["latest".to_string(), format!("{stamp}-{}", self.mode)] {
            for (ext, body) in [("md", &md), ("json", &json)] {
                let p = dir.join(format!("{base}.{ext}"));
                std::fs::write(&p, body).with_context(|| format!("write {}", p.display()))?;
                written.push(p);
            }
        }
        Ok(written)
    }
}
