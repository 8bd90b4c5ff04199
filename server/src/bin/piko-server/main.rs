//! `piko-server`: parse options, set up logging, bind, run; or ask a node for its status
//! ([`status`]).

mod status;
mod subsystems;

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Arg, ArgAction, ArgMatches, Command};
use piko_server::config::{self, env_name, flag_name, leaf_keys, Sources};
use tokio_util::sync::CancellationToken;

fn cli() -> Command {
    let mut cmd = Command::new("piko-server")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Run a Piko server node: proxy (8000), upstream (8001), admin (8002) and cluster (8003) ports")
        .after_help(format!(
            "SIGINT or SIGTERM stops the node gracefully (drain, then leave the cluster) and exits 0; \
             a second signal exits at once with code {}.",
            piko_protocol::process::SECOND_SIGNAL_EXIT
        ))
        .arg(Arg::new("config.path").long("config.path").value_name("FILE").help("YAML configuration file"))
        .arg(
            bool_flag(Arg::new("config.expand-env").long("config.expand-env"))
                .help("Expand $VAR, ${VAR} and ${VAR:default} in the configuration file"),
        )
        .subcommand(
            Command::new("status")
                .about("Print a node's status from its admin port")
                .arg(
                    Arg::new("what")
                        .required(true)
                        .value_parser(["endpoints", "nodes", "node", "raft", "health"])
                        .help("endpoints | nodes | node ID | raft | health (exit 0 when healthy: for container health checks)"),
                )
                .arg(Arg::new("id").help("The node id, for `status node ID`"))
                .arg(
                    Arg::new("server.url")
                        .long("server.url")
                        .default_value("http://localhost:8002")
                        .help("Admin URL of the node"),
                )
                .arg(
                    Arg::new("server.token")
                        .long("server.token")
                        .env("PIKO_SERVER_TOKEN")
                        .hide_env_values(true)
                        .help("Token for an admin port with authentication"),
                ),
        );
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
            arg
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

fn sources(m: &ArgMatches) -> anyhow::Result<Sources> {
    let mut src = Sources {
        env: std::env::vars().collect(),
        expand_env: m
            .get_one::<String>("config.expand-env")
            .is_some_and(|v| v == "true"),
        ..Sources::default()
    };
    if let Some(path) = m.get_one::<String>("config.path") {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("config.path: cannot read {path}"))?;
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

fn init_logging(log: &config::LogFile) {
    let mut filter = format!(
        // openraft warns about routine races (stale responses after a vote or membership
        // change); its errors still show, and `log.subsystems: [cluster]` shows the rest.
        "{},hyper=warn,h2=warn,tungstenite=warn,tokio_tungstenite=warn,openraft=error",
        log.level
    );
    for s in &log.subsystems {
        for target in subsystems::targets(s) {
            filter.push_str(&format!(",{target}=debug"));
        }
        if matches!(s.as_str(), "cluster" | "cluster.manager" | "gossip") {
            filter.push_str(",openraft=info");
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: piped logs are read by tools (and by grep).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    let runtime = match piko_protocol::process::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(("status", sub)) = matches.subcommand() {
        return match runtime.block_on(status::run(sub)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let config = match sources(&matches).and_then(|s| config::load(&s).map_err(anyhow::Error::from))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            eprintln!("see `piko-server --help` for the options");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    runtime.block_on(async move {
        let listeners = match piko_server::Listeners::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{e}; choose another address with the flag of that key");
                return ExitCode::from(1);
            }
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        // The process's own task: a second signal exits the process, whatever else runs.
        tokio::spawn(piko_protocol::process::stop_on_signals(move || {
            stop.cancel();
            tracing::info!(
                "signal received; shutting down gracefully (send again to exit at once)"
            );
        }));
        match piko_server::run(listeners, config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::from(1)
            }
        }
    })
}
