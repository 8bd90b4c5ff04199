//! The agent as a systemd unit: installers/systemd/piko.service (the unit the .deb ships)
//! with this binary's path and config file in its `ExecStart=`.

use std::path::{Path, PathBuf};

use super::Spec;
use crate::exit::Failure;

/// The unit the .deb installs, at `/usr/bin/piko` with `/etc/piko/agent.yaml`.
pub(crate) const PACKAGED_UNIT: &str = include_str!("../../../installers/systemd/piko.service");

/// Where system units written by an administrator live.
pub(crate) const UNIT_DIR: &str = "/etc/systemd/system";

/// The unit file's name.
pub(crate) fn file_name() -> String {
    format!("{}.service", super::NAME)
}

/// The packaged unit with `spec`'s command line in `ExecStart=` (the one line that differs).
pub(crate) fn unit(spec: &Spec) -> String {
    let exec = spec
        .argv()
        .iter()
        .map(|a| quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    PACKAGED_UNIT
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={exec}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// One word of `ExecStart=`: quoted when it holds a space, a quote, a backslash or `%`
/// (systemd's specifier character, doubled).
fn quote(word: &str) -> String {
    let word = word.replace('%', "%%");
    if word
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'')
    {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        word
    }
}

/// Write the unit into `dir`; then, when `start`, enable and start it with systemctl.
pub(crate) fn install(spec: &Spec, dir: &Path, start: bool) -> Result<PathBuf, Failure> {
    let path = dir.join(file_name());
    std::fs::write(&path, unit(spec)).map_err(|e| {
        Failure::Runtime(format!(
            "cannot write {} ({e}); run as root (sudo), or give --dir",
            path.display()
        ))
    })?;
    if start {
        super::run_tool("systemctl", &["daemon-reload"])?;
        super::run_tool("systemctl", &["enable", "--now", &file_name()])?;
    }
    Ok(path)
}

/// Stop and disable the unit (when `stop`), then remove its file from `dir`.
pub(crate) fn uninstall(dir: &Path, stop: bool) -> Result<PathBuf, Failure> {
    let path = dir.join(file_name());
    if !path.exists() {
        return Err(Failure::Usage(format!(
            "{} does not exist: the service is not installed there (give --dir if it was installed elsewhere)",
            path.display()
        )));
    }
    if stop {
        super::run_tool("systemctl", &["disable", "--now", &file_name()])?;
    }
    std::fs::remove_file(&path).map_err(|e| {
        Failure::Runtime(format!(
            "cannot remove {} ({e}); run as root (sudo)",
            path.display()
        ))
    })?;
    if stop {
        super::run_tool("systemctl", &["daemon-reload"])?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(exe: &str, config: &str) -> Spec {
        Spec {
            exe: exe.into(),
            config: config.into(),
        }
    }

    #[test]
    fn the_unit_runs_this_binary_with_its_config_and_keeps_the_packaged_hardening() {
        let u = unit(&spec("/opt/piko/bin/piko", "/srv/piko/agent.yaml"));
        assert!(
            u.contains(
                "\nExecStart=/opt/piko/bin/piko agent start --config.path /srv/piko/agent.yaml\n"
            ),
            "{u}"
        );
        assert_eq!(u.matches("ExecStart=").count(), 1, "{u}");
        for line in [
            "Restart=on-failure",
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "EnvironmentFile=-/etc/piko/agent.env",
        ] {
            assert!(u.lines().any(|l| l == line), "missing {line}:\n{u}");
        }
        assert!(
            !u.lines()
                .any(|l| l.starts_with("Environment=") && l.contains("TOKEN")),
            "no token in the unit:\n{u}"
        );
    }

    #[test]
    fn exec_start_words_are_quoted_for_systemd() {
        let cases = [
            ("plain", "plain"),
            ("/a b/piko", "\"/a b/piko\""),
            ("100%", "100%%"),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("c:\\x", "\"c:\\\\x\""),
        ];
        for (word, want) in cases {
            assert_eq!(quote(word), want, "{word}");
        }
    }
}
