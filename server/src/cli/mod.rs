//! The server's command line, shared by the `piko-server` binary and `piko server` (the
//! original Go Piko is one binary, and images, units and charts run `piko server`): one flag
//! per configuration key (from [`leaf_keys`]), the configuration they make with the file and
//! the environment, the log set-up, and [`status`], which asks a node's admin port.
//!
//! [`crate::run_command`] runs what [`command`] parsed.

mod logging;
pub mod status;
mod subsystems;

use std::collections::BTreeMap;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::config::{self, env_name, flag_name, leaf_keys, Config, Sources};

pub use logging::init_logging;

/// The server's command as `bin_name` runs it (`piko-server`, or `piko server`, whose
/// subcommand is then `server`): every flag of the configuration, `--config.path`,
/// `--config.expand-env`, and the `status` subcommand.
pub fn command(bin_name: &'static str) -> Command {
    let name = bin_name.rsplit(' ').next().unwrap_or(bin_name);
    let mut cmd = Command::new(name)
        .bin_name(bin_name)
        .version(env!("CARGO_PKG_VERSION"))
        .about("Run a Piko server node: proxy (8000), upstream (8001), admin (8002) and cluster (8003) ports")
        .long_about(
            "Run a Piko server node: proxy (8000), upstream (8001), admin (8002) and cluster (8003) ports.\n\n\
             Every key of the YAML configuration is a flag (`proxy.bind_addr` is --proxy.bind-addr) and \
             an environment variable (PIKO_PROXY_BIND_ADDR); a flag wins over the environment, which wins \
             over the file (--config.path).",
        )
        .after_help(format!(
            "Examples:\n  \
             {bin_name} --config.path server.yaml\n  \
             {bin_name} --cluster.node-id piko-1 --cluster.join piko-0.piko:8003\n  \
             {bin_name} status cluster nodes --server.url http://localhost:8002\n\n\
             SIGINT or SIGTERM stops the node gracefully (drain, then leave the cluster) and exits 0; \
             a second signal exits at once with code {}. A bad flag, key or value exits 2; a node that \
             cannot run (a port in use, a cluster it cannot join) exits 1.",
            piko_protocol::process::SECOND_SIGNAL_EXIT
        ))
        .arg(
            Arg::new("config.path")
                .long("config.path")
                .value_name("FILE")
                .help("YAML configuration file"),
        )
        .arg(
            bool_flag(Arg::new("config.expand-env").long("config.expand-env"))
                .help("Expand $VAR, ${VAR} and ${VAR:default} in the configuration file"),
        )
        .subcommand(status::command());
    for (key, default) in leaf_keys() {
        let shown = serde_yaml_ng::to_string(&default).unwrap_or_default();
        let shown = shown.trim();
        let help = format!(
            "env {}; default {}",
            env_name(&key),
            if shown.is_empty() { "\"\"" } else { shown }
        );
        let arg = Arg::new(key.clone())
            .long(flag_name(&key))
            .value_name("VALUE")
            .action(ArgAction::Append)
            .help(help);
        cmd = cmd.arg(if default.as_bool().is_some() {
            bool_flag(arg)
        } else {
            // The next argument is the value whatever it starts with, as in the original: a
            // PEM key (`-----BEGIN`), a negative number.
            arg.allow_hyphen_values(true)
        });
    }
    cmd
}

/// A bool flag as the original's: `--flag` alone is `true`, and `--flag=true|false` (or
/// `--flag false`) sets the value.
fn bool_flag(arg: Arg) -> Arg {
    arg.num_args(0..=1)
        .default_missing_value("true")
        .value_parser(["true", "false"])
        .value_name("BOOL")
}

/// The configuration [`command`]'s flags name, over the file and the process's environment.
pub fn load_config(m: &ArgMatches) -> Result<Config, LoadError> {
    config::load(&sources(m)?).map_err(LoadError::Config)
}

/// The configuration could not be made: exit 2, as for a bad flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// `--config.path` names a file that cannot be read.
    #[error("config.path: cannot read {path}: {source}")]
    File {
        /// The path given.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key has a bad value, or the file does not parse.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// The sources [`load_config`] reads: the file `--config.path` names, the environment, and
/// each configuration flag given, by its key (`--proxy.bind-addr` is `proxy.bind_addr`).
pub fn sources(m: &ArgMatches) -> Result<Sources, LoadError> {
    let mut src = Sources {
        env: std::env::vars().collect(),
        expand_env: m
            .get_one::<String>("config.expand-env")
            .is_some_and(|v| v == "true"),
        ..Sources::default()
    };
    if let Some(path) = m.get_one::<String>("config.path") {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::File {
            path: path.clone(),
            source,
        })?;
        src.file = Some((path.clone(), text));
    }
    let mut flags = BTreeMap::new();
    for key in leaf_keys().keys() {
        if let Some(vals) = m.get_many::<String>(key) {
            flags.insert(key.clone(), vals.cloned().collect());
        }
    }
    src.flags = flags;
    Ok(src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_well_formed_under_both_names() {
        command("piko-server").debug_assert();
        command("piko server").debug_assert();
    }

    #[test]
    fn flags_reach_the_configuration_and_a_bad_value_names_its_key() {
        let m = command("piko-server")
            .try_get_matches_from([
                "piko-server",
                "--proxy.bind-addr",
                "127.0.0.1:9000",
                "--proxy.access-log.disable",
            ])
            .unwrap();
        let c = load_config(&m).unwrap();
        assert_eq!(c.proxy.bind_addr.to_string(), "127.0.0.1:9000");
        let m = command("piko-server")
            .try_get_matches_from(["piko-server", "--proxy.bind-addr", "nowhere"])
            .unwrap();
        let e = load_config(&m).unwrap_err().to_string();
        assert!(e.contains("proxy.bind_addr"), "{e}");
        let m = command("piko-server")
            .try_get_matches_from(["piko-server", "--proxy.auth.rsa-public-key", "-----BEGIN"])
            .unwrap();
        let e = load_config(&m).unwrap_err().to_string();
        assert!(e.contains("proxy.auth.rsa_public_key: invalid key"), "{e}");
        let m = command("piko-server")
            .try_get_matches_from(["piko-server", "--config.path", "/nonexistent/piko.yaml"])
            .unwrap();
        let e = load_config(&m).unwrap_err().to_string();
        assert!(
            e.starts_with("config.path: cannot read /nonexistent/piko.yaml"),
            "{e}"
        );
    }
}
