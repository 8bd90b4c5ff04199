//! How `piko` ends: every failure is one line on stderr and one of the exit codes below, the
//! same table `piko --help` prints.

use std::process::ExitCode;

use piko_protocol::process::SECOND_SIGNAL_EXIT;

/// Success, a graceful stop (first SIGINT/SIGTERM) included.
pub const OK: u8 = 0;
/// The run failed: the server rejected the token, a local port is taken, the agent stopped.
pub const RUNTIME: u8 = 1;
/// Bad input: an unknown flag, a bad value, a config file that does not parse.
pub const USAGE: u8 = 2;

/// The exit code table, printed at the end of `piko --help` (and in docs/connector.md).
pub const TABLE: &str = "\
Exit codes:
  0    success, or stopped by SIGINT/SIGTERM
  1    runtime failure (token rejected, local port taken, agent stopped)
  2    usage or config error (bad flag or value, config file that does not parse)
  130  a second SIGINT/SIGTERM while stopping: exit at once";

/// A one-line failure message with the exit code it maps to.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad input: exit [`USAGE`].
    Usage(String),
    /// The run failed: exit [`RUNTIME`].
    Runtime(String),
}

impl Failure {
    /// The exit code of this failure.
    pub(crate) fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => USAGE,
            Failure::Runtime(_) => RUNTIME,
        }
    }
}

/// Print a failure as `error: ...` and give the process's exit code.
pub(crate) fn report(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(f) => {
            let (Failure::Usage(message) | Failure::Runtime(message)) = &f;
            eprintln!("error: {message}");
            ExitCode::from(f.code())
        }
    }
}

/// The second-signal code the table states is the one `piko_protocol::process` exits with.
const _: () = assert!(SECOND_SIGNAL_EXIT == 130);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_code_piko_exits_with() {
        let cases = [
            (OK as i32, "success"),
            (RUNTIME as i32, "runtime failure"),
            (USAGE as i32, "usage or config error"),
            (SECOND_SIGNAL_EXIT, "a second SIGINT/SIGTERM"),
        ];
        for (code, meaning) in cases {
            let row = TABLE
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{code} ")))
                .unwrap_or_else(|| panic!("no row for exit code {code}:\n{TABLE}"));
            assert!(row.contains(meaning), "{row}");
        }
        assert_eq!(Failure::Usage("x".into()).code(), USAGE);
        assert_eq!(Failure::Runtime("x".into()).code(), RUNTIME);
    }
}
