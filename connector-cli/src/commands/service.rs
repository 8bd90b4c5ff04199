//! `piko service install | uninstall | run`: what the user asked for, said back in one line
//! each; the service definitions themselves are [`crate::service`]'s.

#[cfg(not(windows))]
use std::path::PathBuf;

use crate::cli::{ServiceInstallArgs, ServiceRunArgs, ServiceUninstallArgs};
use crate::exit::Failure;
use crate::service::{self, Spec};
#[cfg(not(windows))]
use crate::service::{launchd, systemd};

/// Print a line to stdout; a closed stdout is not an error.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// The folder a unit or plist goes to: `--dir`, else the system's.
#[cfg(not(windows))]
fn folder(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| {
        PathBuf::from(if cfg!(target_os = "macos") {
            launchd::PLIST_DIR
        } else {
            systemd::UNIT_DIR
        })
    })
}

/// `piko service install`.
pub(crate) fn install(a: ServiceInstallArgs) -> Result<(), Failure> {
    let config = a.config_path.unwrap_or_else(service::default_config);
    let spec = Spec::new(&config)?;
    let start = !a.no_start;
    #[cfg(windows)]
    {
        if a.dir.is_some() {
            return Err(Failure::Usage(
                "--dir: a Windows service has no definition file; leave it out".into(),
            ));
        }
        service::windows::install(&spec, start)?;
        say(&format!(
            "installed: Windows service piko (runs {} with {})",
            spec.exe.display(),
            spec.config.display()
        ));
        if start {
            say("started; it starts at every boot and restarts 5 s after a failure");
        }
        Ok(())
    }
    #[cfg(not(windows))]
    {
        let dir = folder(a.dir);
        let path = if cfg!(target_os = "macos") {
            launchd::install(&spec, &dir, start)?
        } else {
            systemd::install(&spec, &dir, start)?
        };
        say(&format!(
            "installed: {} (runs {})",
            path.display(),
            spec.argv().join(" ")
        ));
        say(if cfg!(target_os = "macos") {
            "token: `sudo piko login --server URL` (System keychain), never in the plist"
        } else {
            "token: PIKO_TOKEN=... in /etc/piko/agent.env (root, mode 0600), never in the unit or the YAML"
        });
        say(match (start, cfg!(target_os = "macos")) {
            (true, true) => "started; logs in /Library/Logs/piko/agent.log",
            (true, false) => "started; logs: journalctl -u piko -f",
            (false, true) => "start it with: sudo launchctl bootstrap system /Library/LaunchDaemons/dev.piko.agent.plist",
            (false, false) => "start it with: sudo systemctl daemon-reload && sudo systemctl enable --now piko",
        });
        Ok(())
    }
}

/// `piko service uninstall`.
pub(crate) fn uninstall(a: ServiceUninstallArgs) -> Result<(), Failure> {
    let stop = !a.no_stop;
    #[cfg(windows)]
    {
        if a.dir.is_some() {
            return Err(Failure::Usage(
                "--dir: a Windows service has no definition file; leave it out".into(),
            ));
        }
        service::windows::uninstall(stop)?;
        say("removed: Windows service piko");
        Ok(())
    }
    #[cfg(not(windows))]
    {
        let dir = folder(a.dir);
        let path = if cfg!(target_os = "macos") {
            launchd::uninstall(&dir, stop)?
        } else {
            systemd::uninstall(&dir, stop)?
        };
        say(&format!("removed: {}", path.display()));
        Ok(())
    }
}

/// `piko service run`: only the Windows service manager starts it.
pub(crate) fn run(a: ServiceRunArgs) -> Result<(), Failure> {
    #[cfg(windows)]
    {
        service::windows::run(a.config_path)
    }
    #[cfg(not(windows))]
    {
        let _ = a;
        Err(Failure::Usage(
            "`piko service run` is for the Windows service manager; here the service runs `piko agent start --config.path F`".into(),
        ))
    }
}
