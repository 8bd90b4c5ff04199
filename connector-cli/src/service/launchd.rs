//! The agent as a launchd daemon on macOS: a property list in /Library/LaunchDaemons that
//! starts `piko agent start` at boot and again whenever it exits with a failure.

use std::path::{Path, PathBuf};

use super::Spec;
use crate::exit::Failure;

/// The daemon's label (and its plist's name).
pub(crate) const LABEL: &str = "dev.piko.agent";

/// Where system daemons' property lists live.
pub(crate) const PLIST_DIR: &str = "/Library/LaunchDaemons";

/// Where the daemon's stdout and stderr go.
const LOG_FILE: &str = "/Library/Logs/piko/agent.log";

/// The plist's file name.
pub(crate) fn file_name() -> String {
    format!("{LABEL}.plist")
}

/// The property list for `spec`. Like the systemd unit it holds no token: the daemon uses
/// the token `sudo piko login` stored in the System keychain, or one in the config file
/// readable by root only.
pub(crate) fn plist(spec: &Spec) -> String {
    let args: String = spec
        .argv()
        .iter()
        .map(|a| format!("    <string>{}</string>\n", xml_escape(a)))
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>{LABEL}</string>
  <key>ProgramArguments</key>
  <array>
{args}  </array>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ThrottleInterval</key>
  <integer>5</integer>
  <key>StandardOutPath</key>
  <string>{LOG_FILE}</string>
  <key>StandardErrorPath</key>
  <string>{LOG_FILE}</string>
</dict>
</plist>
"#
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Write the plist into `dir`; then, when `start`, load it into launchd's system domain.
pub(crate) fn install(spec: &Spec, dir: &Path, start: bool) -> Result<PathBuf, Failure> {
    let path = dir.join(file_name());
    std::fs::write(&path, plist(spec)).map_err(|e| {
        Failure::Runtime(format!(
            "cannot write {} ({e}); run as root (sudo), or give --dir",
            path.display()
        ))
    })?;
    if start {
        super::run_tool(
            "launchctl",
            &["bootstrap", "system", &path.display().to_string()],
        )?;
    }
    Ok(path)
}

/// Unload the daemon (when `stop`), then remove its plist from `dir`.
pub(crate) fn uninstall(dir: &Path, stop: bool) -> Result<PathBuf, Failure> {
    let path = dir.join(file_name());
    if !path.exists() {
        return Err(Failure::Usage(format!(
            "{} does not exist: the service is not installed there (give --dir if it was installed elsewhere)",
            path.display()
        )));
    }
    if stop {
        super::run_tool("launchctl", &["bootout", &format!("system/{LABEL}")])?;
    }
    std::fs::remove_file(&path).map_err(|e| {
        Failure::Runtime(format!(
            "cannot remove {} ({e}); run as root (sudo)",
            path.display()
        ))
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plist_runs_agent_start_and_restarts_only_after_a_failure() {
        let p = plist(&Spec {
            exe: "/usr/local/bin/piko".into(),
            config: "/Library/Application Support/piko/a&b.yaml".into(),
        });
        let args = "    <string>/usr/local/bin/piko</string>\n    <string>agent</string>\n    <string>start</string>\n    <string>--config.path</string>\n    <string>/Library/Application Support/piko/a&amp;b.yaml</string>\n";
        assert!(p.contains(args), "{p}");
        assert!(p.contains("<key>SuccessfulExit</key>\n    <false/>"), "{p}");
        assert!(p.contains(&format!("<string>{LABEL}</string>")), "{p}");
    }
}
