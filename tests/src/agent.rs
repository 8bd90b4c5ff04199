//! [`AgentProcess`]: a real `piko agent` process, its output in a log file the test reads,
//! its inspector address read from that log.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use crate::bin;
use crate::process::{sigterm, ProcessLog};

/// A `piko` process (usually `piko agent ...`) with stdout and stderr in one log file, killed
/// when dropped.
pub struct AgentProcess {
    child: tokio::process::Child,
    log: ProcessLog,
    _dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Run `piko ARGS`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        let dir = tempfile::tempdir().expect("agent temp dir");
        let log = ProcessLog::new(dir.path().join("piko.log"));
        let mut cmd = tokio::process::Command::new(bin("piko"));
        cmd.args(args).kill_on_drop(true);
        log.attach(&mut cmd);
        let child = cmd.spawn().expect("spawn piko");
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    /// Everything it printed so far (status lines and logs).
    pub fn output(&self) -> String {
        self.log.text()
    }

    /// Wait until a line contains `needle`; returns the line.
    pub async fn wait_for_line(&self, needle: &str) -> String {
        self.log
            .wait_for_line(&format!("piko prints {needle:?}"), 0, needle)
            .await
    }

    /// The address its inspector listens on, from its `inspector listening addr=` log line
    /// (so `--inspect.addr 127.0.0.1:0` works).
    pub async fn inspector_addr(&self) -> SocketAddr {
        self.log
            .wait_for_addr(
                "the agent logs its inspector address",
                0,
                "inspector listening addr=",
            )
            .await
    }

    /// The address in its first log line containing `tag` (`metrics server listening addr=`).
    pub async fn logged_addr(&self, what: &str, tag: &str) -> SocketAddr {
        self.log.wait_for_addr(what, 0, tag).await
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("piko running")
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGTERM, then wait (up to 20 s) for it to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        sigterm(self.child.id().expect("piko running"));
        self.wait().await
    }

    /// Wait (up to 20 s) for it to exit on its own.
    pub async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("piko exits within 20 s")
            .expect("wait for piko")
    }
}
