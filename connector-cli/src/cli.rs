//! The command line: every subcommand and flag of `piko`, as clap types, and what a flag
//! means for the config it overrides. Nothing here runs anything ([`crate::commands`] does).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use piko_connector_core::config::{
    InspectAddr, TransportConfig, DEFAULT_CONNECT_URL, DEFAULT_INSPECT_ADDR,
};
use piko_connector_core::forward::DEFAULT_PROXY_URL;
use piko_protocol::access_log::{AccessLog, AccessLogConfig, HeaderListConfig};

use crate::exit::{self, Failure};

#[derive(Parser, Debug)]
#[command(
    name = "piko",
    version,
    about = "Expose local services through a Piko server",
    after_help = exit::TABLE
)]
pub(crate) struct Cli {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long = "log.level", global = true, env = "PIKO_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ServerArg {
    /// The server URL the token is for, as given to --connect.url (https://piko.example.com).
    #[arg(long)]
    pub(crate) server: String,
}

#[derive(Args, Debug)]
pub(crate) struct LoginArgs {
    #[command(flatten)]
    pub(crate) server: ServerArg,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Only this server.
    #[arg(long)]
    pub(crate) server: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AgentCommand {
    /// Expose a local HTTP service: `piko agent http shop 3000`.
    Http(ExposeArgs),
    /// Expose a local TCP service: `piko agent tcp db localhost:5432`.
    Tcp(ExposeArgs),
    /// Run every endpoint of a config file (the original agent's YAML format).
    Start(StartArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum ForwardCommand {
    /// Forward local TCP connections to a TCP endpoint: `piko forward tcp 5432 db`.
    Tcp(ForwardArgs),
}

#[derive(Args, Debug)]
pub(crate) struct TokenArg {
    /// Token sent to the server as `Authorization: Bearer`; else PIKO_TOKEN, else the token
    /// `piko login` stored for the server.
    #[arg(long = "connect.token")]
    pub(crate) token: Option<String>,
}

#[derive(Args, Debug, Default, Clone)]
pub(crate) struct TransportArgs {
    /// PEM file of CA certificates to trust besides the OS trust store.
    #[arg(long = "connect.tls.root-cas", value_name = "FILE")]
    pub(crate) root_cas: Option<PathBuf>,
    /// PEM client certificate to present to the server (mTLS); needs --connect.tls.key.
    #[arg(long = "connect.tls.cert", value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key of --connect.tls.cert.
    #[arg(long = "connect.tls.key", value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Do not verify the server's certificate. Only for testing: the connection can be intercepted.
    #[arg(long = "connect.tls.insecure-skip-verify")]
    pub(crate) insecure_skip_verify: bool,
    /// HTTP proxy to tunnel through with CONNECT (http://[user:pass@]host:port); by default
    /// HTTPS_PROXY/HTTP_PROXY and NO_PROXY decide.
    #[arg(long = "connect.proxy-url", value_name = "URL")]
    pub(crate) proxy_url: Option<String>,
}

impl TransportArgs {
    /// Flags override the file's values.
    pub(crate) fn over(self, mut base: TransportConfig) -> TransportConfig {
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
pub(crate) struct ExposeArgs {
    /// The endpoint id to register.
    pub(crate) endpoint: String,
    /// The local target: a port (3000), host:port, or http://host:port.
    pub(crate) addr: String,
    /// Piko server URL (its upstream port).
    #[arg(long = "connect.url", default_value = DEFAULT_CONNECT_URL)]
    pub(crate) url: String,
    #[command(flatten)]
    pub(crate) token: TokenArg,
    #[command(flatten)]
    pub(crate) transport: TransportArgs,
    /// Time allowed to open the connection to the server.
    #[arg(long = "connect.timeout", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) connect_timeout: Duration,
    /// Per-request timeout to the local target.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
    /// On shutdown, time to let in-flight requests finish.
    #[arg(long = "grace-period", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) grace_period: Duration,
    #[command(flatten)]
    pub(crate) access_log: AccessLogArgs,
    #[command(flatten)]
    pub(crate) inspect: ServeArgs,
}

/// The access log of an exposed endpoint, as the original agent's `--access-log.*` flags.
#[derive(Args, Debug)]
pub(crate) struct AccessLogArgs {
    /// Level of access-log records: debug, info, warn or error (5xx answers at warn at least).
    #[arg(long = "access-log.level", default_value = "info")]
    pub(crate) level: String,
    /// Record no request (connections of TCP endpoints then log at debug). Also takes
    /// `=true`/`=false`, as the original agent's flag does.
    #[arg(
        long = "access-log.disable",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        action = clap::ArgAction::Set
    )]
    pub(crate) disable: bool,
    /// Log only these request headers (comma-separated). Credentials always show as ***.
    #[arg(long = "access-log.request-headers.allow-list", value_delimiter = ',')]
    pub(crate) request_allow: Vec<String>,
    /// Log every request header but these (comma-separated).
    #[arg(long = "access-log.request-headers.block-list", value_delimiter = ',')]
    pub(crate) request_block: Vec<String>,
    /// Log only these response headers (comma-separated).
    #[arg(long = "access-log.response-headers.allow-list", value_delimiter = ',')]
    pub(crate) response_allow: Vec<String>,
    /// Log every response header but these (comma-separated).
    #[arg(long = "access-log.response-headers.block-list", value_delimiter = ',')]
    pub(crate) response_block: Vec<String>,
}

impl AccessLogArgs {
    pub(crate) fn access_log(self) -> Result<AccessLog, Failure> {
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
pub(crate) struct StartArgs {
    /// The YAML config file.
    #[arg(long = "config.path")]
    pub(crate) config_path: PathBuf,
    /// Piko server URL; overrides `connect.url` of the file.
    #[arg(long = "connect.url")]
    pub(crate) url: Option<String>,
    #[command(flatten)]
    pub(crate) token: TokenArg,
    #[command(flatten)]
    pub(crate) transport: TransportArgs,
    /// On shutdown, time to let in-flight requests finish; overrides `grace_period` of the file.
    #[arg(long = "grace-period", value_parser = humantime::parse_duration)]
    pub(crate) grace_period: Option<Duration>,
    #[command(flatten)]
    pub(crate) inspect: ServeArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ForwardArgs {
    /// Local address to listen on: a port (5432) or host:port.
    pub(crate) local_addr: String,
    /// The TCP endpoint to connect to.
    pub(crate) endpoint: String,
    /// Piko proxy URL (its proxy port).
    #[arg(long = "connect.url", default_value = DEFAULT_PROXY_URL)]
    pub(crate) url: String,
    #[command(flatten)]
    pub(crate) token: TokenArg,
    #[command(flatten)]
    pub(crate) transport: TransportArgs,
}

/// `--inspect.addr` of the agent commands.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct ServeArgs {
    /// Serve the request inspector's JSON API here (for `piko inspect`); "" turns the
    /// inspector off. Keep it on loopback: it shows request bodies and replays requests.
    /// Overrides `inspect.addr` of the config file. [default: 127.0.0.1:4040]
    #[arg(long = "inspect.addr", id = "inspect_addr", value_name = "ADDR")]
    pub(crate) addr: Option<String>,
}

impl ServeArgs {
    /// Where to serve the inspector: the flag, else the config file's `inspect.addr`, else
    /// [`DEFAULT_INSPECT_ADDR`].
    pub(crate) fn resolve(&self, file: Option<InspectAddr>) -> Result<InspectAddr, Failure> {
        match &self.addr {
            Some(a) => parse_inspect_addr(a),
            None => Ok(file.unwrap_or_default()),
        }
    }
}

/// An `--inspect.addr` value (`127.0.0.1:4040`, `4041`, `localhost:4041`, `""` for off).
pub(crate) fn parse_inspect_addr(a: &str) -> Result<InspectAddr, Failure> {
    InspectAddr::parse(a).map_err(|_| {
        Failure::Usage(format!(
            "--inspect.addr {:?} is not an address; use host:port such as {DEFAULT_INSPECT_ADDR}, or \"\" to turn the inspector off",
            a.trim()
        ))
    })
}

/// `--inspect.addr` of `piko inspect`.
#[derive(Args, Debug, Clone)]
pub(crate) struct AddrArg {
    /// The agent's inspector address (its --inspect.addr).
    #[arg(long = "inspect.addr", id = "inspect_addr", default_value = DEFAULT_INSPECT_ADDR, value_name = "ADDR")]
    pub(crate) addr: String,
}

/// `piko inspect`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct InspectArgs {
    #[command(subcommand)]
    pub(crate) command: Option<InspectCommand>,
    /// Only this endpoint's requests.
    pub(crate) endpoint: Option<String>,
    /// Keep printing new requests as they arrive.
    #[arg(long, short)]
    pub(crate) follow: bool,
    /// How many recent requests to print.
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) addr: AddrArg,
}

#[derive(Subcommand, Debug)]
pub(crate) enum InspectCommand {
    /// Print one request and its response: headers (credentials as ***) and bodies.
    Show {
        /// The request id (the first column of `piko inspect`).
        id: String,
        /// Print the exchange as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Send a recorded request to the local target again, maybe changed first.
    Replay {
        /// The request id.
        id: String,
        /// Another method.
        #[arg(long = "method")]
        method: Option<String>,
        /// Another path and query (/orders?id=7).
        #[arg(long = "path")]
        path: Option<String>,
        /// Send these headers instead of the recorded ones ("Name: value", repeatable); a
        /// credential given as *** keeps its recorded value.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Another body (text).
        #[arg(long = "body", conflicts_with = "body_file")]
        body: Option<String>,
        /// Another body, read from a file.
        #[arg(long = "body-file", value_name = "FILE")]
        body_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        addr: AddrArg,
    },
}
