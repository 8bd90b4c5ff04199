//! `piko service install | uninstall`: run `piko agent start` as an OS service — a systemd
//! unit on Linux ([`systemd`]), a launchd daemon on macOS ([`launchd`]), a Windows service
//! ([`windows`]). Each writes the definition and, unless told not to, asks the OS's service
//! manager to start it now and at every boot.

#[cfg(not(windows))]
pub(crate) mod launchd;
#[cfg(not(windows))]
pub(crate) mod systemd;
#[cfg(windows)]
pub(crate) mod windows;

use std::path::{Path, PathBuf};

use crate::exit::Failure;

/// The service's name: `piko.service`, `dev.piko.agent`, the Windows service `piko`.
pub(crate) const NAME: &str = "piko";

/// What a service runs: this binary's `agent start` with one config file.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The absolute path of the `piko` binary the service runs.
    pub(crate) exe: PathBuf,
    /// The absolute path of the agent's config file.
    pub(crate) config: PathBuf,
}

impl Spec {
    /// The spec for this binary and `config`, checking that the file is there: a service
    /// that fails at every boot for want of its config is worse than an error now.
    pub(crate) fn new(config: &Path) -> Result<Spec, Failure> {
        let exe = std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .map_err(|e| Failure::Runtime(format!("cannot tell where this piko binary is: {e}")))?;
        let config = std::path::absolute(config)
            .map_err(|e| Failure::Usage(format!("--config.path {}: {e}", config.display())))?;
        if !config.is_file() {
            return Err(Failure::Usage(format!(
                "--config.path {}: no such file; write the agent's config there first \
                 (see installers/systemd/agent.yaml for an example), then install the service",
                config.display()
            )));
        }
        Ok(Spec { exe, config })
    }

    /// The command line the service runs, program first (a Windows service runs
    /// `service run` instead, see [`windows`]).
    #[cfg(not(windows))]
    pub(crate) fn argv(&self) -> Vec<String> {
        vec![
            self.exe.display().to_string(),
            "agent".into(),
            "start".into(),
            "--config.path".into(),
            self.config.display().to_string(),
        ]
    }
}

/// The config file a service uses when `--config.path` is not given.
pub(crate) fn default_config() -> PathBuf {
    if cfg!(windows) {
        let base = std::env::var_os("ProgramData").unwrap_or_else(|| "C:\\ProgramData".into());
        PathBuf::from(base).join("piko").join("agent.yaml")
    } else if cfg!(target_os = "macos") {
        PathBuf::from("/Library/Application Support/piko/agent.yaml")
    } else {
        PathBuf::from("/etc/piko/agent.yaml")
    }
}

/// Run an OS tool (`systemctl`, `launchctl`) and turn its failure into one line.
#[cfg(not(windows))]
pub(crate) fn run_tool(program: &str, args: &[&str]) -> Result<(), Failure> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot run {program} ({e}); write the definition only with --no-start and start it yourself"
            ))
        })?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr);
    Err(Failure::Runtime(format!(
        "`{program} {}` failed ({}): {}; are you root (sudo)?",
        args.join(" "),
        out.status,
        why.trim()
    )))
}
