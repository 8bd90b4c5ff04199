//! `piko server`: the server's own command line ([`piko_server::cli`]), mounted as a
//! subcommand, as the original Go Piko is one binary (images, units and charts run
//! `piko server --config.path …`). Same flags, output and exit codes as `piko-server`.

use std::ffi::OsString;
use std::process::ExitCode;

/// The subcommand's name, as the first argument of `piko`.
pub(crate) const NAME: &str = "server";

/// Whether `args` (the process's, program name first) run `piko server`: then [`run`] gets
/// them as they are, before `piko`'s own parser sees flags it does not know.
pub(crate) fn is_server(args: &[OsString]) -> bool {
    args.get(1).is_some_and(|a| a == NAME)
}

/// Run `piko server ARGS` (`args` from `server` on).
pub(crate) fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = piko_server::cli::command("piko server").get_matches_from(args);
    piko_server::run_command("piko server", &matches)
}

/// `piko [--log.level L] [--log.subsystems S] server ARGS`, parsed by `piko`'s parser (its
/// global flags came first): the same as `piko server --log.level L --log.subsystems S ARGS`.
pub(crate) fn run_after_globals(
    log_level: Option<String>,
    log_subsystems: Vec<String>,
    args: Vec<String>,
) -> ExitCode {
    let mut all = vec![NAME.to_string()];
    if let Some(level) = log_level {
        all.extend(["--log.level".to_string(), level]);
    }
    if !log_subsystems.is_empty() {
        all.extend(["--log.subsystems".to_string(), log_subsystems.join(",")]);
    }
    all.extend(args);
    run(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_as_the_first_argument_is_the_server() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(is_server(&args(&["piko", "server", "--config.path", "f"])));
        assert!(is_server(&args(&["piko", "server"])));
        assert!(!is_server(&args(&[
            "piko", "agent", "http", "server", "3000"
        ])));
        assert!(!is_server(&args(&["piko"])));
    }
}
