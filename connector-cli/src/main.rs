//! `piko`: the Piko connector for terminals and unattended devices.
//!
//! Thin: [`cli`] parses the command line, [`commands`] sets up logging, builds the runtime
//! and calls `piko-connector-core`, [`service`] knows the OS service managers, [`exit`] turns the outcome into one line on stderr and an
//! exit code (the table is in `piko --help` and docs/connector.md). Status lines go to
//! stdout, logs to stderr. `piko server` is the server's own command line
//! ([`commands::server`]).

#![cfg_attr(test, allow(clippy::unwrap_used))]
// The clap types' doc comments are `--help` text (URLs and `[user:pass@]` as users type
// them), not rustdoc markup.
#![allow(rustdoc::bare_urls, rustdoc::broken_intra_doc_links)]

mod cli;
mod commands;
mod exit;
mod service;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The server's command line is its own (`piko-server`'s): handed over whole.
    if commands::server::is_server(&args) {
        return commands::server::run(&args[1..]);
    }
    let cli = cli::Cli::parse_from(args);
    if let cli::Command::Server(a) = cli.command {
        return commands::server::run_after_globals(cli.log_level, cli.log_subsystems, a.args);
    }
    exit::report(commands::run(cli))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::cli::Cli;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_ends_with_the_exit_code_table() {
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.trim_end()
                .ends_with(crate::exit::TABLE.lines().last().unwrap_or_default()),
            "{help}"
        );
        assert!(help.contains("Exit codes:"), "{help}");
    }
}
