//! `piko`: the Piko connector for terminals and unattended devices.
//!
//! Thin: parses options, sets up logging, builds the runtime and calls `piko-connector-core`.
//! Status lines go to stdout, logs to stderr. Exit codes: 0 ok, 1 runtime failure, 2 usage or
//! config error.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod inspect;
mod login;
mod reload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use piko_connector_core::config::{
    AgentConfig, ConfigError, ConfigFile, ConnectConfig, EndpointConfig, Protocol, TransportConfig,
    DEFAULT_CONNECT_URL,
};
use piko_connector_core::credentials::{
    self, default_store, resolve_token, CredentialError, TokenSource, TOKEN_ENV,
};
use piko_connector_core::forward::{forward_tcp_via, DEFAULT_PROXY_URL};
use piko_connector_core::{Agent, AgentError, Connector, Inspector, Secret};
use piko_protocol::access_log::{AccessLog, AccessLogConfig, HeaderListConfig};
use piko_protocol::EndpointId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    /// Store a server's token in the OS keychain (or a 0600 file where there is none).
    Login(LoginArgs),
    /// Remove a server's stored token.
    Logout(ServerArg),
    /// Show where tokens are stored and for which servers (never the tokens).
    Status(StatusArgs),
    /// Show the requests a running agent served (`piko inspect`, `show ID`, `replay ID`).
    Inspect(inspect::InspectArgs),
}

#[derive(Args, Debug)]
struct ServerArg {
    /// The server URL the token is for, as given to --connect.url (https://piko.example.com).
    #[arg(long)]
    server: String,
}

#[derive(Args, Debug)]
struct LoginArgs {
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Only this server.
    #[arg(long)]
    server: Option<String>,
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
    /// Token sent to the server as `Authorization: Bearer`; else PIKO_TOKEN, else the token
    /// `piko login` stored for the server.
    #[arg(long = "connect.token")]
    token: Option<String>,
}

#[derive(Args, Debug, Default, Clone)]
struct TransportArgs {
    /// PEM file of CA certificates to trust besides the OS trust store.
    #[arg(long = "connect.tls.root-cas", value_name = "FILE")]
    root_cas: Option<PathBuf>,
    /// PEM client certificate to present to the server (mTLS); needs --connect.tls.key.
    #[arg(long = "connect.tls.cert", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// PEM private key of --connect.tls.cert.
    #[arg(long = "connect.tls.key", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Do not verify the server's certificate. Only for testing: the connection can be intercepted.
    #[arg(long = "connect.tls.insecure-skip-verify")]
    insecure_skip_verify: bool,
    /// HTTP proxy to tunnel through with CONNECT (http://[user:pass@]host:port); by default
    /// HTTPS_PROXY/HTTP_PROXY and NO_PROXY decide.
    #[arg(long = "connect.proxy-url", value_name = "URL")]
    proxy_url: Option<String>,
}

impl TransportArgs {
    /// Flags override the file's values.
    fn over(self, mut base: TransportConfig) -> TransportConfig {
        if self.root_cas.is_some() {
            base.tls.root_cas = self.root_cas;
        }
        if self.cert.is_some() {
            base.tls.cert = self.cert;
        }
        if self.key.is_some() {
            base.tls.key = self.key;
        }
        base.tls.insecure_skip_verify |= self.insecure_skip_verify;
        if let Some(p) = self.proxy_url.filter(|p| !p.trim().is_empty()) {
            base.proxy_url = Some(p);
        }
        base
    }
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
    #[command(flatten)]
    transport: TransportArgs,
    /// Time allowed to open the connection to the server.
    #[arg(long = "connect.timeout", default_value = "30s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Per-request timeout to the local target.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// On shutdown, time to let in-flight requests finish.
    #[arg(long = "grace-period", default_value = "5s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
    #[command(flatten)]
    access_log: AccessLogArgs,
    #[command(flatten)]
    inspect: inspect::ServeArgs,
}

/// The access log of an exposed endpoint, as the original agent's `--access-log.*` flags.
#[derive(Args, Debug)]
struct AccessLogArgs {
    /// Level of access-log records: debug, info, warn or error (5xx answers at warn at least).
    #[arg(long = "access-log.level", default_value = "info")]
    level: String,
    /// Record no request (connections of TCP endpoints then log at debug). Also takes
    /// `=true`/`=false`, as the original agent's flag does.
    #[arg(
        long = "access-log.disable",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        action = clap::ArgAction::Set
    )]
    disable: bool,
    /// Log only these request headers (comma-separated). Credentials always show as ***.
    #[arg(long = "access-log.request-headers.allow-list", value_delimiter = ',')]
    request_allow: Vec<String>,
    /// Log every request header but these (comma-separated).
    #[arg(long = "access-log.request-headers.block-list", value_delimiter = ',')]
    request_block: Vec<String>,
    /// Log only these response headers (comma-separated).
    #[arg(long = "access-log.response-headers.allow-list", value_delimiter = ',')]
    response_allow: Vec<String>,
    /// Log every response header but these (comma-separated).
    #[arg(long = "access-log.response-headers.block-list", value_delimiter = ',')]
    response_block: Vec<String>,
}

impl AccessLogArgs {
    fn access_log(self) -> Result<AccessLog, Failure> {
        let config = AccessLogConfig {
            level: self.level,
            disable: self.disable,
            request_headers: HeaderListConfig {
                allow_list: self.request_allow,
                block_list: self.request_block,
            },
            response_headers: HeaderListConfig {
                allow_list: self.response_allow,
                block_list: self.response_block,
            },
        };
        AccessLog::new(&config).map_err(|e| {
            // "request_headers.allow_list: ..." names --access-log.request-headers.allow-list.
            let (key, msg) = e.split_once(": ").unwrap_or(("level", &e));
            let flag = format!("--access-log.{}", key.replace('_', "-"));
            Failure::Usage(if msg.contains("not both") {
                format!("{flag}.allow-list and {flag}.block-list: give one of the two, not both")
            } else {
                format!("{flag}: {msg}")
            })
        })
    }
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
    #[command(flatten)]
    transport: TransportArgs,
    /// On shutdown, time to let in-flight requests finish; overrides `grace_period` of the file.
    #[arg(long = "grace-period", value_parser = humantime::parse_duration)]
    grace_period: Option<Duration>,
    #[command(flatten)]
    inspect: inspect::ServeArgs,
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
    #[command(flatten)]
    transport: TransportArgs,
}

/// A one-line failure message with the exit code it maps to.
pub(crate) enum Failure {
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

fn run(cli: Cli) -> Result<(), Failure> {
    // Load the config file first: its log level applies unless --log.level is given.
    let (job, file_level) = match cli.command {
        Command::Login(a) => {
            init_logging(cli.log_level.as_deref().unwrap_or("warn"))?;
            return login::login(&a.server.server);
        }
        Command::Logout(a) => {
            init_logging(cli.log_level.as_deref().unwrap_or("warn"))?;
            return login::logout(&a.server);
        }
        Command::Status(a) => {
            init_logging(cli.log_level.as_deref().unwrap_or("warn"))?;
            return login::status(a.server.as_deref());
        }
        Command::Inspect(a) => {
            init_logging(cli.log_level.as_deref().unwrap_or("warn"))?;
            return inspect::run(a);
        }
        Command::Agent(AgentCommand::Http(a)) => (expose_job(a, Protocol::Http)?, None),
        Command::Agent(AgentCommand::Tcp(a)) => (expose_job(a, Protocol::Tcp)?, None),
        Command::Agent(AgentCommand::Start(a)) => {
            let file = ConfigFile::from_yaml_file(&a.config_path).map_err(|e| match e {
                ConfigError::Read { .. } => Failure::Usage(format!("{e}; check --config.path")),
                e => Failure::Usage(e.to_string()),
            })?;
            let mut config = file.agent;
            if let Some(url) = a.url.clone() {
                config.connect.url = url;
            }
            if let Some(g) = a.grace_period {
                config.grace_period = g;
            }
            let reload = reload::Spec {
                path: a.config_path.clone(),
                url: a.url.clone(),
                grace_period: a.grace_period,
                transport: a.transport.clone(),
                token: a.token.token.clone(),
            };
            let job = Job {
                kind: JobKind::Agent(config),
                transport: a.transport.over(file.transport),
                token: a.token.token,
                reload: Some(reload),
                inspect: a.inspect.addr()?,
            };
            (job, file.log_level)
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
            let job = Job {
                kind: JobKind::Forward {
                    local,
                    url: a.url,
                    endpoint,
                },
                transport: a.transport.over(TransportConfig::default()),
                token: a.token.token,
                reload: None,
                inspect: None,
            };
            (job, None)
        }
    };
    let level = cli
        .log_level
        .or(file_level)
        .unwrap_or_else(|| "info".to_string());
    init_logging(&level)?;

    // Read the TLS files and settle the proxy before anything runs: mistakes there are
    // config errors (exit 2) naming the setting.
    let connector = Connector::new(&job.transport).map_err(|e| Failure::Usage(setting_error(e)))?;
    let token = token_for(job.token, job.kind.server_url());

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // PIKO_WORKER_THREADS pins the runtime's size (default: one worker per core).
    if let Some(n) = std::env::var("PIKO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::runtime)?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        match job.kind {
            JobKind::Agent(mut config) => {
                config.connect.token = token;
                // Only HTTP endpoints have requests to inspect.
                let http = config
                    .endpoints
                    .iter()
                    .any(|e| e.protocol == Protocol::Http);
                let mut agent = Agent::new(config).with_connector(connector);
                if let Some(spec) = job.reload {
                    agent =
                        agent.with_updates(reload::watch(spec, job.transport, shutdown.clone()));
                }
                let mut api = None;
                if let Some(addr) = job.inspect.filter(|_| http) {
                    let inspector = Inspector::default();
                    api = inspect::serve(addr, inspector.clone(), shutdown.clone()).await;
                    if api.is_some() {
                        agent = agent.with_inspector(inspector);
                    }
                }
                let result = run_agent(agent, shutdown.clone()).await;
                if let Some(api) = api {
                    // The agent may have stopped on its own (a rejected token).
                    shutdown.cancel();
                    let _ = api.await;
                }
                result
            }
            JobKind::Forward {
                local,
                url,
                endpoint,
            } => {
                let listener = tokio::net::TcpListener::bind(&local).await.map_err(|e| {
                    Failure::Runtime(format!(
                        "cannot listen on {local}: {e}; choose a free local address"
                    ))
                })?;
                if let Ok(addr) = listener.local_addr() {
                    println!("forwarding {addr} → endpoint {endpoint}");
                }
                forward_tcp_via(listener, url, endpoint, token, connector, shutdown)
                    .await
                    .map_err(|e| Failure::Usage(e.to_string()))
            }
        }
    })
}

/// A transport config error, naming the flag beside the YAML key
/// (`connect.tls.root_cas (--connect.tls.root-cas): cannot read ...`).
fn setting_error(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { key, message } if key.starts_with("connect.") => {
            format!("{key} (--{}): {message}", key.replace('_', "-"))
        }
        e => e.to_string(),
    }
}

/// The token for `server_url`: `--connect.token`, else `PIKO_TOKEN`, else the stored one.
/// Logs where it came from, never the token. A store that cannot be read is a warning: the
/// server says whether a token was needed.
fn token_for(flag: Option<String>, server_url: &str) -> Option<Secret> {
    let env = std::env::var(TOKEN_ENV).ok();
    match resolve_token(flag, env, server_url, default_store) {
        Ok((token, TokenSource::None)) => {
            info!("no token for {server_url}: connecting without one (`piko login --server {server_url}` stores one)");
            token
        }
        Ok((token, source)) => {
            info!("using the token from {source}");
            token
        }
        // The agent reports a bad URL itself, with the flag to fix.
        Err(CredentialError::InvalidServer { .. }) => None,
        Err(e) => {
            warn!("cannot read the stored token: {e}; connecting without one");
            None
        }
    }
}

struct Job {
    kind: JobKind,
    transport: TransportConfig,
    /// `--connect.token`, if given.
    token: Option<String>,
    /// For `agent start`: how to read the config file again when it changes.
    reload: Option<reload::Spec>,
    /// Where to serve the request inspector (agents only; `None`: off).
    inspect: Option<std::net::SocketAddr>,
}

enum JobKind {
    Agent(AgentConfig),
    Forward {
        local: String,
        url: String,
        endpoint: EndpointId,
    },
}

impl JobKind {
    fn server_url(&self) -> &str {
        match self {
            JobKind::Agent(c) => &c.connect.url,
            JobKind::Forward { url, .. } => url,
        }
    }
}

fn expose_job(a: ExposeArgs, protocol: Protocol) -> Result<Job, Failure> {
    let ExposeArgs {
        endpoint,
        addr,
        url,
        token,
        transport,
        connect_timeout,
        timeout,
        grace_period,
        access_log,
        inspect,
    } = a;
    let ep = EndpointConfig::parse(&endpoint, &addr, protocol, timeout).map_err(|e| match e {
        ConfigError::Addr { .. } => Failure::Usage(format!("endpoint {endpoint}: {e}")),
        e => Failure::Usage(e.to_string()),
    })?;
    let ep = EndpointConfig {
        access_log: access_log.access_log()?,
        ..ep
    };
    let config = AgentConfig {
        connect: ConnectConfig {
            url,
            token: None,
            timeout: connect_timeout,
        },
        endpoints: vec![ep],
        grace_period,
    };
    Ok(Job {
        kind: JobKind::Agent(config),
        transport: transport.over(TransportConfig::default()),
        token: token.token,
        reload: None,
        inspect: inspect.addr()?,
    })
}

async fn run_agent(agent: Agent, shutdown: CancellationToken) -> Result<(), Failure> {
    let mut events = agent.subscribe();
    let printer = tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok(ev) => {
                    use std::io::Write;
                    // Not println!: a closed stdout (piped into `head`) must not panic.
                    let _ = writeln!(std::io::stdout(), "{ev}");
                }
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
            "{e}; check --connect.token, PIKO_TOKEN or `piko login`"
        ))),
        Err(
            e @ (AgentError::InvalidToken
            | AgentError::NoEndpoints
            | AgentError::Unusable { .. }
            | AgentError::Config(_)),
        ) => Err(Failure::Usage(e.to_string())),
        Err(e) => Err(Failure::Runtime(e.to_string())),
    }
}

/// Cancel `shutdown` on Ctrl-C or SIGTERM; a second signal exits at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    wait_for_signal().await;
    // Cancel first: if stderr is gone (a closed pipe), logging must not stand in the way.
    shutdown.cancel();
    tracing::info!("shutting down; press Ctrl-C again to exit now");
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
        let job = expose_job(a, Protocol::Http).ok().unwrap();
        assert_eq!(job.transport, TransportConfig::default());
        assert_eq!(job.token, None);
        let JobKind::Agent(c) = job.kind else {
            panic!()
        };
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
