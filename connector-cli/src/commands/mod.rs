//! What each subcommand does, after [`crate::cli`] parsed it: set up logging, build the
//! runtime, run. Every failure comes back as a [`Failure`] for [`crate::exit`].
//!
//! - [`agent`]: `piko agent http|tcp|start`, with [`reload`] following `start`'s file and
//!   [`inspect`] serving the request inspector.
//! - [`forward`]: `piko forward tcp`.
//! - [`login`]: `piko login|logout|status`.
//! - [`inspect`]: `piko inspect` (and the agent's side of it).

mod agent;
mod forward;
mod inspect;
#[cfg(test)]
mod locked;
mod login;
mod reload;

use piko_connector_core::config::Protocol;
use piko_connector_core::credentials;
use tokio_util::sync::CancellationToken;

use crate::cli::{AgentCommand, Cli, Command, ForwardCommand};
use crate::exit::Failure;

/// Run the command `cli` names.
pub(crate) fn run(cli: Cli) -> Result<(), Failure> {
    // Commands that are not long-running log warnings only unless told otherwise.
    let quiet = cli.log_level.clone().unwrap_or_else(|| "warn".to_string());
    match cli.command {
        Command::Login(a) => {
            init_logging(&quiet)?;
            login::login(&a.server.server)
        }
        Command::Logout(a) => {
            init_logging(&quiet)?;
            login::logout(&a.server)
        }
        Command::Status(a) => {
            init_logging(&quiet)?;
            login::status(a.server.as_deref())
        }
        Command::Inspect(a) => {
            init_logging(&quiet)?;
            runtime()?.block_on(inspect::run(a))
        }
        Command::Agent(AgentCommand::Http(a)) => {
            agent::run(agent::expose(a, Protocol::Http)?, cli.log_level)
        }
        Command::Agent(AgentCommand::Tcp(a)) => {
            agent::run(agent::expose(a, Protocol::Tcp)?, cli.log_level)
        }
        Command::Agent(AgentCommand::Start(a)) => agent::run(agent::start(a)?, cli.log_level),
        Command::Forward(ForwardCommand::Tcp(a)) => forward::run(a, cli.log_level),
    }
}

/// Log to stderr at `level` (a level or a tracing filter).
fn init_logging(level: &str) -> Result<(), Failure> {
    // Even at trace level, no token reaches the log.
    let filter = tracing_subscriber::EnvFilter::try_new(credentials::redacted_log_filter(level))
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
