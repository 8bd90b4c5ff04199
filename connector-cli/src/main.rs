//! `piko`: the Piko connector for terminals and unattended devices.
//!
//! Thin: parses options, sets up logging, builds the runtime and calls `piko-connector-core`.
//! Status lines go to stdout, logs to stderr. Exit codes: 0 ok, 1 runtime failure, 2 usage or
//! config error.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use piko_connector_core::config::{
    AgentConfig, ConfigError, ConfigFile, ConnectConfig, EndpointConfig, Protocol,
    DEFAULT_CONNECT_URL,
};
use piko_connector_core::forward::{forward_tcp, DEFAULT_PROXY_URL};
use piko_connector_core::{Agent, AgentError, Secret};
use piko_protocol::EndpointId;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "piko",
    version,
    about = "Expose local services through a Piko server"
)]
struct Cli {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long = "log.level", global = true, env = "PIKO_LOG_LEVEL")]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register endpoints with a Piko server and forward their traffic to local services.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Listen locally and carry each connection to an endpoint through the Piko proxy.
    #[command(subcommand)]
    Forward(ForwardCommand),
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// Expose a local HTTP service: `piko agent http shop 3000`.
    Http(ExposeArgs),
    /// Expose a local TCP service: `piko agent tcp db localhost:5432`.
    Tcp(ExposeArgs),
    /// Run every endpoint of a config file (the original agent's YAML format).
    Start(StartArgs),
}

#[derive(Subcommand, Debug)]
enum ForwardCommand {
    /// Forward local TCP connections to a TCP endpoint: `piko forward tcp 5432 db`.
    Tcp(ForwardArgs),
}

#[derive(Args, Debug)]
struct TokenArg {
    /// Token sent to the server as `Authorization: Bearer`.
    #[arg(long = "connect.token", env = "PIKO_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args, Debug)]
struct ExposeArgs {
    /// The endpoint id to register.
    endpoint: String,
    /// The local target: a port (3000), host:port, or http://host:port.
    addr: String,
    /// Piko server URL (its upstream port).
    #[arg(long = "connect.url", default_value = DEFAULT_CONNECT_URL)]
    url: String,
    #[command(flatten)]
    token: TokenArg,
    /// Time allowed to open the connection to the server.
    #[arg(long = "connect.timeout", default_value = "30s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Per-request timeout to the local target.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// On shutdown, time to let in-flight requests finish.
    #[arg(long = "grace-period", default_value = "5s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
}

#[derive(Args, Debug)]
struct StartArgs {
    /// The YAML config file.
    #[arg(long = "config.path")]
    config_path: PathBuf,
    /// Piko server URL; overrides `connect.url` of the file.
    #[arg(long = "connect.url")]
    url: Option<String>,
    #[command(flatten)]
    token: TokenArg,
    /// On shutdown, time to let in-flight requests finish; overrides `grace_period` of the file.
    #[arg(long = "grace-period", value_parser = humantime::parse_duration)]
    grace_period: Option<Duration>,
}

#[derive(Args, Debug)]
struct ForwardArgs {
    /// Local address to listen on: a port (5432) or host:port.
    local_addr: String,
    /// The TCP endpoint to connect to.
    endpoint: String,
    /// Piko proxy URL (its proxy port).
    #[arg(long = "connect.url", default_value = DEFAULT_PROXY_URL)]
    url: String,
    #[command(flatten)]
    token: TokenArg,
}

/// A one-line failure message with the exit code it maps to.
enum Failure {
    /// Bad input: exit 2.
    Usage(String),
    /// The run failed: exit 1.
    Runtime(String),
}

impl Failure {
    /// A failure from an `anyhow` chain (context, then causes).
    fn runtime(e: anyhow::Error) -> Self {
        Failure::Runtime(format!("{e:#}"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(level: &str) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| {
        Failure::Usage(format!(
            "--log.level {level:?} is not a valid level or filter ({e}); use error, warn, info, debug or trace"
        ))
    })?;
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

fn token(arg: TokenArg) -> Option<Secret> {
    arg.token.filter(|t| !t.is_empty()).map(Secret::new)
}

fn run(cli: Cli) -> Result<(), Failure> {
    // Load the config file first: its log level applies unless --log.level is given.
    let (job, file_level) = match cli.command {
        Command::Agent(AgentCommand::Http(a)) => {
            (Job::Agent(expose_config(a, Protocol::Http)?), None)
        }
        Command::Agent(AgentCommand::Tcp(a)) => {
            (Job::Agent(expose_config(a, Protocol::Tcp)?), None)
        }
        Command::Agent(AgentCommand::Start(a)) => {
            let file = ConfigFile::from_yaml_file(&a.config_path).map_err(|e| match e {
                ConfigError::Read { .. } => Failure::Usage(format!("{e}; check --config.path")),
                e => Failure::Usage(e.to_string()),
            })?;
            let mut config = file.agent;
            if let Some(url) = a.url {
                config.connect.url = url;
            }
            if let Some(g) = a.grace_period {
                config.grace_period = g;
            }
            config.connect.token = token(a.token);
            (Job::Agent(config), file.log_level)
        }
        Command::Forward(ForwardCommand::Tcp(a)) => {
            let endpoint = EndpointId::new(&a.endpoint).map_err(|e| {
                Failure::Usage(format!("invalid endpoint id {:?}: {e}", a.endpoint))
            })?;
            let local = if a.local_addr.bytes().all(|b| b.is_ascii_digit()) {
                format!("127.0.0.1:{}", a.local_addr)
            } else {
                a.local_addr.clone()
            };
            (
                Job::Forward {
                    local,
                    url: a.url,
                    endpoint,
                    token: token(a.token),
                },
                None,
            )
        }
    };
    let level = cli
        .log_level
        .or(file_level)
        .unwrap_or_else(|| "info".to_string());
    init_logging(&level)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::runtime)?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        match job {
            Job::Agent(config) => run_agent(config, shutdown).await,
            Job::Forward {
                local,
                url,
                endpoint,
                token,
            } => {
                let listener = tokio::net::TcpListener::bind(&local).await.map_err(|e| {
                    Failure::Runtime(format!(
                        "cannot listen on {local}: {e}; choose a free local address"
                    ))
                })?;
                if let Ok(addr) = listener.local_addr() {
                    println!("forwarding {addr} → endpoint {endpoint}");
                }
                forward_tcp(listener, url, endpoint, token, shutdown)
                    .await
                    .map_err(|e| Failure::Usage(e.to_string()))
            }
        }
    })
}

enum Job {
    Agent(AgentConfig),
    Forward {
        local: String,
        url: String,
        endpoint: EndpointId,
        token: Option<Secret>,
    },
}

fn expose_config(a: ExposeArgs, protocol: Protocol) -> Result<AgentConfig, Failure> {
    let endpoint =
        EndpointConfig::parse(&a.endpoint, &a.addr, protocol, a.timeout).map_err(|e| match e {
            ConfigError::Addr { .. } => Failure::Usage(format!("endpoint {}: {e}", a.endpoint)),
            e => Failure::Usage(e.to_string()),
        })?;
    Ok(AgentConfig {
        connect: ConnectConfig {
            url: a.url,
            token: token(a.token),
            timeout: a.connect_timeout,
        },
        endpoints: vec![endpoint],
        grace_period: a.grace_period,
    })
}

async fn run_agent(config: AgentConfig, shutdown: CancellationToken) -> Result<(), Failure> {
    let agent = Agent::new(config);
    let mut events = agent.subscribe();
    let printer = tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok(ev) => println!("{ev}"),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            }
        }
    });
    let result = agent.run(shutdown).await;
    // The agent and its tunnels are gone, so the channel closes once drained.
    let _ = printer.await;
    match result {
        Ok(()) => Ok(()),
        Err(
            e @ AgentError::Rejected {
                status: 401 | 403, ..
            },
        ) => Err(Failure::Runtime(format!(
            "{e}; check --connect.token or PIKO_TOKEN"
        ))),
        Err(
            e @ (AgentError::InvalidToken | AgentError::NoEndpoints | AgentError::Unusable { .. }),
        ) => Err(Failure::Usage(e.to_string())),
        Err(e) => Err(Failure::Runtime(e.to_string())),
    }
}

/// Cancel `shutdown` on Ctrl-C or SIGTERM; a second signal exits at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("shutting down; press Ctrl-C again to exit now");
    shutdown.cancel();
    wait_for_signal().await;
    std::process::exit(130);
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_agent_http() {
        let cli = Cli::try_parse_from([
            "piko",
            "agent",
            "http",
            "shop",
            "3000",
            "--connect.url",
            "http://10.0.0.1:8001",
            "--timeout",
            "5s",
        ])
        .unwrap();
        let Command::Agent(AgentCommand::Http(a)) = cli.command else {
            panic!("{cli:?}")
        };
        let c = expose_config(a, Protocol::Http).ok().unwrap();
        assert_eq!(c.connect.url, "http://10.0.0.1:8001");
        assert_eq!(c.endpoints[0].timeout, Duration::from_secs(5));
        assert_eq!(c.endpoints[0].target.to_string(), "http://127.0.0.1:3000");
        assert_eq!(c.grace_period, Duration::from_secs(5));
    }

    #[test]
    fn forward_defaults_to_the_proxy_port() {
        let cli = Cli::try_parse_from(["piko", "forward", "tcp", "5432", "db"]).unwrap();
        let Command::Forward(ForwardCommand::Tcp(a)) = cli.command else {
            panic!()
        };
        assert_eq!(a.url, "http://localhost:8000");
    }
}
