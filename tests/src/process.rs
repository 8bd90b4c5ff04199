//! What the harness's real processes share: a log file both output streams go to, read
//! while the process runs, and the addresses the process logs when it binds.
//!
//! Each process binds `127.0.0.1:0` and says where it listens in its log, so no test guesses
//! a free port (a port picked in advance can be taken before the process binds it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::wait_until;

/// A child's log file (stdout and stderr), appended to across restarts.
pub struct ProcessLog {
    path: PathBuf,
}

impl ProcessLog {
    /// The log at `path` (created on the first [`ProcessLog::attach`]).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send `cmd`'s stdout and stderr to the log; returns where this run's lines start.
    pub fn attach(&self, cmd: &mut tokio::process::Command) -> usize {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .expect("open the process log");
        let offset = file.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let out = file.try_clone().expect("clone the log handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(file);
        offset
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// What was logged from byte `offset` on (the start of one run).
    pub fn since(&self, offset: usize) -> String {
        self.text().get(offset..).unwrap_or("").to_string()
    }

    /// Wait until a line from `offset` on contains `needle`; returns that line.
    pub async fn wait_for_line(&self, what: &str, offset: usize, needle: &str) -> String {
        let mut found = None;
        wait_until(what, Duration::from_secs(20), || {
            found = self
                .since(offset)
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string);
            let done = found.is_some();
            async move { done }
        })
        .await;
        found.unwrap_or_default()
    }

    /// Wait until the log from `offset` on gives the address after `tag` (`addr=`-style
    /// fields: `tag` ends just before the address).
    pub async fn wait_for_addr(&self, what: &str, offset: usize, tag: &str) -> SocketAddr {
        let mut found = None;
        wait_until(what, Duration::from_secs(20), || {
            found = addr_after(&self.since(offset), tag);
            let done = found.is_some();
            async move { done }
        })
        .await;
        found.unwrap_or_else(|| unreachable!("wait_until returned without the address"))
    }
}

/// The address right after the first `tag` in `text` (up to the next whitespace).
pub fn addr_after(text: &str, tag: &str) -> Option<SocketAddr> {
    text.lines().find_map(|l| {
        l.split_once(tag)?
            .1
            .split(|c: char| c.is_whitespace() || c == '"')
            .next()?
            .parse()
            .ok()
    })
}

/// Send SIGTERM to the process `pid` (the graceful stop).
pub fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_after_their_tag() {
        let log = "2026-12-02T04:00:00Z  INFO piko_server::http: listening port=\"admin\" addr=127.0.0.1:40123 tls=false\n\
                   2026-12-02T04:00:00Z  INFO piko::commands::inspect: inspector listening addr=127.0.0.1:40999\n";
        let cases: &[(&str, Option<&str>)] = &[
            ("listening port=\"admin\" addr=", Some("127.0.0.1:40123")),
            ("inspector listening addr=", Some("127.0.0.1:40999")),
            ("listening port=\"proxy\" addr=", None),
        ];
        for (tag, want) in cases {
            assert_eq!(
                addr_after(log, tag),
                want.map(|w| w.parse().unwrap()),
                "{tag}"
            );
        }
    }
}
