//! The command line: every subcommand and flag of `piko`, as clap types, and what a flag
//! means for the config it overrides. Nothing here runs anything ([`crate::commands`] does).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use piko_connector_core::config::{InspectAddr, TransportConfig, DEFAULT_INSPECT_ADDR};
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

    /// Log these subsystems at every level, by the original Go agent's names (proxy.http,
    /// proxy.http.access, proxy.tcp, proxy.tcp.access, client, server, forwarder, main);
    /// comma-separated or repeated. Overrides `log.subsystems` of the config file.
    #[arg(long = "log.subsystems", global = true, value_delimiter = ',')]
    pub(crate) log_subsystems: Vec<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

// Parsed once at start and moved into the command that runs: the size does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Run `piko agent start` as an OS service: systemd (Linux), launchd (macOS), Windows.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Run a Piko server node, or ask one for its status: the same command as `piko-server`
    /// (see `piko server --help`).
    Server(ServerArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum ServiceCommand {
    /// Install the service, then start it now and at every boot (as root / administrator).
    Install(ServiceInstallArgs),
    /// Stop the service and remove it.
    Uninstall(ServiceUninstallArgs),
    /// What the Windows service manager runs; not for people.
    #[command(hide = true)]
    Run(ServiceRunArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ServiceInstallArgs {
    /// The agent's config file (default /etc/piko/agent.yaml; on macOS
    /// /Library/Application Support/piko/agent.yaml; on Windows %ProgramData%\piko\agent.yaml).
    /// Keep the token out of it (PIKO_TOKEN in /etc/piko/agent.env on Linux).
    #[arg(long = "config.path")]
    pub(crate) config_path: Option<PathBuf>,
    /// Write the unit or plist into this folder instead of the system's
    /// (/etc/systemd/system, /Library/LaunchDaemons); implies nothing about starting.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Only write the definition; do not ask systemctl / launchctl / the SCM to start it.
    #[arg(long = "no-start")]
    pub(crate) no_start: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ServiceUninstallArgs {
    /// The folder the unit or plist was installed into (default: the system's).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Only remove the definition; do not ask the service manager to stop it first.
    #[arg(long = "no-stop")]
    pub(crate) no_stop: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ServiceRunArgs {
    /// The agent's config file.
    #[arg(long = "config.path")]
    pub(crate) config_path: PathBuf,
}

/// `piko server`'s arguments, which `main` hands to the server's own command line before
/// this parser sees them; parsed here only when a flag of `piko` came before `server`.
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub(crate) struct ServerArgs {
    /// Flags and subcommands of `piko server`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) args: Vec<String>,
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
    Http(HttpArgs),
    /// Expose a local TCP service: `piko agent tcp db localhost:5432`.
    Tcp(ExposeArgs),
    /// Run every endpoint of a config file (the original agent's YAML format).
    Start(StartArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum ForwardCommand {
    /// Forward local TCP connections to a TCP endpoint: `piko forward tcp 5432 db`.
    Tcp(ForwardArgs),
    /// Open every port of a config file (`ports[]`, the original forwarder's YAML format).
    Start(ForwardStartArgs),
}

/// `--config.path` and `--config.expand-env`.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct FileArgs {
    /// YAML config file (the original Go Piko's format). For `http`/`tcp` its connect, log,
    /// server and grace-period settings apply and its listeners are ignored; flags win.
    #[arg(long = "config.path", value_name = "FILE")]
    pub(crate) config_path: Option<PathBuf>,
    /// Replace ${VAR}, $VAR and ${VAR:default} in the config file with environment
    /// variables first (`token: ${PIKO_TOKEN}`).
    #[arg(
        long = "config.expand-env",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        action = clap::ArgAction::Set
    )]
    pub(crate) expand_env: bool,
}

/// The agent's connect and server flags beyond the URL, token and transport.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct AgentFlags {
    /// Register as this tenant (sent as x-piko-tenant-id), for servers with upstream tenants.
    #[arg(long = "connect.tenant-id", value_name = "ID")]
    pub(crate) tenant_id: Option<String>,
    /// Time allowed to connect to the server; the agent exits 1 when its first registration
    /// has not succeeded within it (after that it reconnects for ever). [default: 30s]
    #[arg(long = "connect.timeout", value_parser = humantime::parse_duration)]
    pub(crate) connect_timeout: Option<Duration>,
    /// Serve the agent's Prometheus metrics on --server.bind-addr (/metrics).
    #[arg(
        long = "server.enabled",
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub(crate) server_enabled: Option<bool>,
    /// Where --server.enabled listens (:5000 = every interface). [default: :5000]
    #[arg(long = "server.bind-addr", value_name = "ADDR")]
    pub(crate) server_bind_addr: Option<String>,
    /// On shutdown, time to let in-flight requests finish; overrides `grace_period` of the
    /// file. [default: 1m]
    #[arg(long = "grace-period", value_parser = humantime::parse_duration)]
    pub(crate) grace_period: Option<Duration>,
}

/// `--http-client.*` of `agent http`: the connection pool towards the local service.
#[derive(Args, Debug, Clone)]
pub(crate) struct HttpClientArgs {
    /// TCP keep-alive period of connections to the local service.
    #[arg(long = "http-client.keep-alive-timeout", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) keep_alive_timeout: Duration,
    /// Close a pooled connection to the local service after this long idle.
    #[arg(long = "http-client.idle-conn-timeout", default_value = "90s", value_parser = humantime::parse_duration)]
    pub(crate) idle_conn_timeout: Duration,
    /// Most idle connections kept to the local service (-1: no limit).
    #[arg(
        long = "http-client.max-idle-conns",
        default_value_t = 100,
        allow_negative_numbers = true
    )]
    pub(crate) max_idle_conns: i64,
    /// Pass Accept-Encoding through as the client sent it.
    #[arg(
        long = "http-client.disable-compression",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        action = clap::ArgAction::Set
    )]
    pub(crate) disable_compression: bool,
}

/// `piko agent http`.
#[derive(Args, Debug)]
pub(crate) struct HttpArgs {
    #[command(flatten)]
    pub(crate) expose: ExposeArgs,
    #[command(flatten)]
    pub(crate) http_client: HttpClientArgs,
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
    #[arg(long = "connect.tls.root-cas", value_name = "FILE", value_parser = path_or_empty)]
    pub(crate) root_cas: Option<PathBuf>,
    /// PEM client certificate to present to the server (mTLS); needs --connect.tls.key.
    #[arg(long = "connect.tls.cert", value_name = "FILE", value_parser = path_or_empty)]
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key of --connect.tls.cert.
    #[arg(long = "connect.tls.key", value_name = "FILE", value_parser = path_or_empty)]
    pub(crate) key: Option<PathBuf>,
    /// Do not verify the server's certificate. Only for testing: the connection can be intercepted.
    #[arg(
        long = "connect.tls.insecure-skip-verify",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        action = clap::ArgAction::Set
    )]
    pub(crate) insecure_skip_verify: bool,
    /// HTTP proxy to tunnel through with CONNECT (http://[user:pass@]host:port); by default
    /// HTTPS_PROXY/HTTP_PROXY and NO_PROXY decide.
    #[arg(long = "connect.proxy-url", value_name = "URL")]
    pub(crate) proxy_url: Option<String>,
}

/// A path flag that may be `""` (unset, as in the original agent).
fn path_or_empty(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

impl TransportArgs {
    /// Flags override the file's values; an empty path (`--connect.tls.root-cas ""`) means
    /// unset, as in the original Go agent.
    pub(crate) fn over(self, mut base: TransportConfig) -> TransportConfig {
        let given = |p: &Option<PathBuf>| p.as_ref().map(|p| !p.as_os_str().is_empty());
        match given(&self.root_cas) {
            Some(true) => base.tls.root_cas = self.root_cas,
            Some(false) => base.tls.root_cas = None,
            None => {}
        }
        match given(&self.cert) {
            Some(true) => base.tls.cert = self.cert,
            Some(false) => base.tls.cert = None,
            None => {}
        }
        match given(&self.key) {
            Some(true) => base.tls.key = self.key,
            Some(false) => base.tls.key = None,
            None => {}
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
    /// Piko server URL (its upstream port). [default: http://localhost:8001]
    #[arg(long = "connect.url")]
    pub(crate) url: Option<String>,
    #[command(flatten)]
    pub(crate) token: TokenArg,
    #[command(flatten)]
    pub(crate) transport: TransportArgs,
    #[command(flatten)]
    pub(crate) agent: AgentFlags,
    #[command(flatten)]
    pub(crate) file: FileArgs,
    /// Per-request timeout to the local target (for TCP: connecting to it).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
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
    #[command(flatten)]
    pub(crate) agent: AgentFlags,
    /// Replace ${VAR}, $VAR and ${VAR:default} in the config file with environment
    /// variables first (`token: ${PIKO_TOKEN}`).
    #[arg(
        long = "config.expand-env",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        action = clap::ArgAction::Set
    )]
    pub(crate) expand_env: bool,
    #[command(flatten)]
    pub(crate) inspect: ServeArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ForwardArgs {
    /// Local address to listen on: a port (5432) or host:port.
    pub(crate) local_addr: String,
    /// The TCP endpoint to connect to.
    pub(crate) endpoint: String,
    #[command(flatten)]
    pub(crate) connect: ForwardConnectArgs,
    #[command(flatten)]
    pub(crate) file: FileArgs,
}

/// How `piko forward` reaches the proxy.
#[derive(Args, Debug)]
pub(crate) struct ForwardConnectArgs {
    /// Piko proxy URL (its proxy port). [default: http://localhost:8000]
    #[arg(long = "connect.url")]
    pub(crate) url: Option<String>,
    #[command(flatten)]
    pub(crate) token: TokenArg,
    #[command(flatten)]
    pub(crate) transport: TransportArgs,
    /// Time allowed to open each connection to the proxy. [default: 30s]
    #[arg(long = "connect.timeout", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Option<Duration>,
}

/// `piko forward start --config.path FILE`.
#[derive(Args, Debug)]
pub(crate) struct ForwardStartArgs {
    /// The YAML config file with `ports[]`.
    #[arg(long = "config.path", value_name = "FILE")]
    pub(crate) config_path: PathBuf,
    /// Replace ${VAR}, $VAR and ${VAR:default} in the config file first.
    #[arg(
        long = "config.expand-env",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        action = clap::ArgAction::Set
    )]
    pub(crate) expand_env: bool,
    #[command(flatten)]
    pub(crate) connect: ForwardConnectArgs,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// Flags every command of the original Go agent and forwarder registers (v0.9: the
    /// agent's connect, server, log, grace-period and config flags; the forwarder's connect,
    /// log and config flags), each with a value.
    const AGENT_FLAGS: &[(&str, Option<&str>)] = &[
        ("--connect.url", Some("http://127.0.0.1:8001")),
        ("--connect.token", Some("abc.def")),
        ("--connect.tenant-id", Some("acme")),
        ("--connect.timeout", Some("5s")),
        ("--connect.tls.cert", Some("")),
        ("--connect.tls.key", Some("")),
        ("--connect.tls.root-cas", Some("")),
        ("--connect.tls.insecure-skip-verify", None),
        ("--connect.tls.insecure-skip-verify=true", None),
        ("--connect.proxy-url", Some("http://proxy:3128")),
        ("--server.enabled", None),
        ("--server.enabled=false", None),
        ("--server.bind-addr", Some(":5000")),
        ("--log.level", Some("debug")),
        ("--log.subsystems", Some("proxy.http,client")),
        ("--grace-period", Some("1m")),
        ("--config.expand-env", None),
        ("--config.expand-env=true", None),
    ];
    const HTTP_FLAGS: &[(&str, Option<&str>)] = &[
        ("--access-log.level", Some("warn")),
        ("--access-log.request-headers.block-list", Some("cookie")),
        (
            "--access-log.response-headers.allow-list",
            Some("content-type"),
        ),
        ("--access-log.disable", None),
        ("--timeout", Some("10s")),
        ("--http-client.keep-alive-timeout", Some("30s")),
        ("--http-client.idle-conn-timeout", Some("90s")),
        ("--http-client.max-idle-conns", Some("-1")),
        ("--http-client.disable-compression", None),
    ];
    const TCP_FLAGS: &[(&str, Option<&str>)] = &[
        ("--access-log.level", Some("warn")),
        ("--access-log.disable=true", None),
        ("--timeout", Some("10s")),
    ];
    const FORWARD_FLAGS: &[(&str, Option<&str>)] = &[
        ("--connect.url", Some("http://127.0.0.1:8000")),
        ("--connect.token", Some("abc.def")),
        ("--connect.timeout", Some("5s")),
        ("--connect.tls.cert", Some("")),
        ("--connect.tls.key", Some("")),
        ("--connect.tls.root-cas", Some("")),
        ("--connect.tls.insecure-skip-verify", None),
        ("--log.level", Some("info")),
        ("--log.subsystems", Some("forwarder")),
        ("--config.expand-env", None),
    ];

    fn accepts(base: &[&str], flags: &[(&str, Option<&str>)]) {
        assert!(!flags.is_empty());
        for (flag, value) in flags {
            let mut args = base.to_vec();
            args.push(flag);
            args.extend(value.iter());
            if let Err(e) = Cli::try_parse_from(&args) {
                panic!("{args:?} is refused: {e}");
            }
        }
    }

    #[test]
    fn every_flag_of_the_original_agent_and_forward_commands_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.yaml");
        let file = file.to_str().unwrap();
        let http = ["piko", "agent", "http", "shop", "3000"];
        let tcp = ["piko", "agent", "tcp", "db", "5432"];
        let start = ["piko", "agent", "start", "--config.path", file];
        let fwd_tcp = ["piko", "forward", "tcp", "5432", "db"];
        let fwd_start = ["piko", "forward", "start", "--config.path", file];
        for base in [&http[..], &tcp, &start] {
            accepts(base, AGENT_FLAGS);
        }
        accepts(&http, HTTP_FLAGS);
        accepts(&tcp, TCP_FLAGS);
        accepts(&http, &[("--config.path", Some(file))]);
        accepts(&tcp, &[("--config.path", Some(file))]);
        for base in [&fwd_tcp[..], &fwd_start] {
            accepts(base, FORWARD_FLAGS);
        }
        accepts(&fwd_tcp, &[("--config.path", Some(file))]);
    }
}
