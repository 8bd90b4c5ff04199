//! `piko-server`: the server's command line ([`piko_server::cli`]), run by
//! [`piko_server::run_command`]. `piko server` is the same command.

use std::process::ExitCode;

fn main() -> ExitCode {
    let matches = piko_server::cli::command("piko-server").get_matches();
    piko_server::run_command("piko-server", &matches)
}
