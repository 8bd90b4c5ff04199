//! What each subcommand does, after [`crate::cli`] parsed it: set up logging, build the
//! runtime, run. Every failure comes back as a [`Failure`] for [`crate::exit`].
//!
//! - [`agent`]: `piko agent http|tcp|start`, with [`reload`] following `start`'s file and
//!   [`inspect`] serving the request inspector.
//! - [`forward`]: `piko forward tcp`.
//! - [`login`]: `piko login|logout|status`.
//! - [`inspect`]: `piko inspect` (and the agent's side of it).
//! - [`service`]: `piko service install|uninstall` (the OS knowledge is in [`crate::service`]).
//! - [`server`]: `piko server`, the server's own command line (`piko-server`'s).

mod agent;
mod forward;
mod inspect;
#[cfg(test)]
mod locked;
mod login;
mod metrics;
mod reload;
pub(crate) mod server;
mod service;

use piko_connector_core::config::Protocol;
use piko_connector_core::credentials;
use tokio_util::sync::CancellationToken;

use crate::cli::{AgentCommand, Cli, Command, ForwardCommand, ServiceCommand};
use crate::exit::Failure;

/// Run the command `cli` names.
pub(crate) fn run(cli: Cli) -> Result<(), Failure> {
    // Commands that are not long-running log warnings only unless told otherwise.
    let quiet = cli.log_level.clone().unwrap_or_else(|| "warn".to_string());
    match cli.command {
        Command::Login(a) => {
            init_logging(&quiet, &[])?;
            login::login(&a.server.server)
        }
        Command::Logout(a) => {
            init_logging(&quiet, &[])?;
            login::logout(&a.server)
        }
        Command::Status(a) => {
            init_logging(&quiet, &[])?;
            login::status(a.server.as_deref())
        }
        Command::Inspect(a) => {
            init_logging(&quiet, &[])?;
            runtime()?.block_on(inspect::run(a))
        }
        Command::Service(ServiceCommand::Install(a)) => {
            init_logging(&quiet, &[])?;
            service::install(a)
        }
        Command::Service(ServiceCommand::Uninstall(a)) => {
            init_logging(&quiet, &[])?;
            service::uninstall(a)
        }
        Command::Service(ServiceCommand::Run(a)) => service::run(a),
        Command::Agent(AgentCommand::Http(a)) => agent::run(
            agent::expose(a.expose, Protocol::Http, Some(a.http_client))?,
            cli.log_level,
            cli.log_subsystems,
        ),
        Command::Agent(AgentCommand::Tcp(a)) => agent::run(
            agent::expose(a, Protocol::Tcp, None)?,
            cli.log_level,
            cli.log_subsystems,
        ),
        Command::Agent(AgentCommand::Start(a)) => {
            agent::run(agent::start(a)?, cli.log_level, cli.log_subsystems)
        }
        Command::Forward(ForwardCommand::Tcp(a)) => {
            forward::run(a, cli.log_level, cli.log_subsystems)
        }
        Command::Forward(ForwardCommand::Start(a)) => {
            forward::start(a, cli.log_level, cli.log_subsystems)
        }
        // `main` runs it (`server::run`), with the server's own exit codes.
        Command::Server(_) => Err(Failure::Usage(
            "piko server: run as `piko server ...`".into(),
        )),
    }
}

/// `agent start --config.path CONFIG` until `shutdown` is cancelled: what a Windows service
/// runs (the service manager, not a signal, stops it).
#[cfg(windows)]
pub(crate) fn agent_service(
    config: std::path::PathBuf,
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    use clap::Parser;
    let argv: Vec<std::ffi::OsString> = vec![
        "piko".into(),
        "agent".into(),
        "start".into(),
        "--config.path".into(),
        config.into_os_string(),
    ];
    let cli = Cli::try_parse_from(argv).map_err(|e| Failure::Usage(e.to_string()))?;
    let Command::Agent(AgentCommand::Start(a)) = cli.command else {
        return Err(Failure::Usage(
            "the service's command line did not parse as agent start".into(),
        ));
    };
    agent::run_until(
        agent::start(a)?,
        cli.log_level,
        cli.log_subsystems,
        Some(shutdown),
    )
}

/// The original Go agent's log subsystems and the log targets that are them here.
pub(crate) const SUBSYSTEMS: &[(&str, &[&str])] = &[
    ("main", &["piko"]),
    (
        "client",
        &[
            "piko_connector_core::tunnel",
            "piko_connector_core::transport",
        ],
    ),
    ("proxy.http", &["piko_connector_core::tunnel::http"]),
    (
        "proxy.http.access",
        &["piko_connector_core::tunnel::access"],
    ),
    ("proxy.tcp", &["piko_connector_core::tunnel::tcp"]),
    // TCP and HTTP endpoints share one access log target.
    ("proxy.tcp.access", &["piko_connector_core::tunnel::access"]),
    ("server", &["piko::commands::metrics"]),
    ("forwarder", &["piko_connector_core::forward"]),
];

/// `level` plus a debug directive for each log target of `subsystems`; unknown names are
/// returned to be warned about (the original accepts any name).
fn subsystem_filter(level: &str, subsystems: &[String]) -> (String, Vec<String>) {
    let mut filter = level.to_string();
    let mut unknown = Vec::new();
    for name in subsystems
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        match SUBSYSTEMS.iter().find(|(n, _)| *n == name) {
            Some((_, targets)) => {
                for t in *targets {
                    filter.push_str(&format!(",{t}=debug"));
                }
            }
            None => unknown.push(name.to_string()),
        }
    }
    (filter, unknown)
}

/// Log to stderr at `level` (a level or a tracing filter), with every level of the
/// `subsystems` named (`--log.subsystems`).
fn init_logging(level: &str, subsystems: &[String]) -> Result<(), Failure> {
    let (with_subsystems, unknown) = subsystem_filter(level, subsystems);
    // Even at trace level, no token reaches the log.
    let filter =
        tracing_subscriber::EnvFilter::try_new(credentials::redacted_log_filter(&with_subsystems))
        .map_err(|e| {
            Failure::Usage(format!(
                "--log.level {level:?} is not a valid level or filter ({e}); use error, warn, info, debug or trace"
            ))
        })?;
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr must not panic the task that logs.
        .log_internal_errors(false)
        .init();
    for name in unknown {
        let known: Vec<&str> = SUBSYSTEMS.iter().map(|(n, _)| *n).collect();
        tracing::warn!(
            "log.subsystems: no subsystem {name:?} in this agent; known: {}",
            known.join(", ")
        );
    }
    Ok(())
}

/// The runtime both binaries build (`PIKO_WORKER_THREADS` sizes it).
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    piko_protocol::process::runtime()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))
}

/// Cancel `shutdown` on the first SIGINT/SIGTERM; exit 130 on the second. Call inside the
/// runtime.
fn stop_on_signals(shutdown: &CancellationToken) {
    let shutdown = shutdown.clone();
    tokio::spawn(piko_protocol::process::stop_on_signals(move || {
        // Cancel first: if stderr is gone (a closed pipe), logging must not stand in the way.
        shutdown.cancel();
        tracing::info!("shutting down; press Ctrl-C again to exit now");
    }));
}
