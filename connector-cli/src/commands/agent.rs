//! `piko agent http|tcp|start`: register endpoints and forward their traffic, print each
//! status change on stdout, serve the request inspector, and (for `start`) follow the file.

use std::net::SocketAddr;
use std::time::Duration;

use piko_connector_core::config::{
    AgentConfig, ConfigError, ConfigFile, EndpointConfig, HttpClientConfig, InspectAddr,
    MetricsServerConfig, Protocol, TransportConfig,
};
use piko_connector_core::credentials::{
    default_store, resolve_token, CredentialError, SelectedStore, TokenSource, DEFAULT_TIMEOUT,
    TOKEN_ENV,
};
use piko_connector_core::metrics::AgentMetrics;
use piko_connector_core::{Agent, AgentError, Connector, Inspector, Secret};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{init_logging, inspect, reload, runtime, stop_on_signals};
use crate::cli::{AgentFlags, ExposeArgs, HttpClientArgs, StartArgs};
use crate::exit::Failure;

/// An agent to run: its config and how it connects, reloads and is inspected.
pub(crate) struct AgentJob {
    config: AgentConfig,
    transport: TransportConfig,
    /// `--connect.token`, if given.
    token: Option<String>,
    /// For `agent start`: how to read the config file again when it changes.
    reload: Option<reload::Spec>,
    /// Where to serve the request inspector.
    inspect: InspectAddr,
    /// `log.level` of the config file, used unless `--log.level` is given.
    file_level: Option<String>,
    /// `log.subsystems` of the config file, used unless `--log.subsystems` is given.
    file_subsystems: Vec<String>,
    /// Where to serve the agent's metrics, if at all.
    metrics: Option<SocketAddr>,
    /// Warnings from reading the config file, logged once logging is up.
    warnings: Vec<String>,
}

/// A config file's error as a usage failure naming the flag to check.
fn file_error(e: ConfigError) -> Failure {
    match e {
        ConfigError::Read { .. } => Failure::Usage(format!("{e}; check --config.path")),
        e => Failure::Usage(e.to_string()),
    }
}

/// The flags of every agent command over the file's settings: connect, grace period,
/// metrics server.
fn apply_flags(
    file: &mut ConfigFile,
    url: Option<String>,
    flags: &AgentFlags,
) -> Result<Option<SocketAddr>, Failure> {
    let connect = &mut file.agent.connect;
    if let Some(url) = url {
        connect.url = url;
    }
    if let Some(t) = flags.connect_timeout {
        connect.timeout = t;
    }
    if let Some(t) = &flags.tenant_id {
        connect.tenant_id = Some(t.clone()).filter(|t| !t.trim().is_empty());
    }
    if let Some(g) = flags.grace_period {
        file.agent.grace_period = g;
    }
    if let Some(on) = flags.server_enabled {
        file.server.enabled = on;
    }
    if let Some(a) = &flags.server_bind_addr {
        MetricsServerConfig::parse_addr(a)
            .map_err(|e| Failure::Usage(format!("--server.bind-addr: {e}")))?;
        file.server.bind_addr = Some(a.clone());
    }
    file.server
        .addr()
        .map_err(|e| Failure::Usage(format!("server.bind_addr: {e}")))
}

/// `piko agent http|tcp ENDPOINT ADDR`: one endpoint from the flags; a `--config.path`
/// file gives the rest (its listeners are ignored, as the original agent does).
pub(crate) fn expose(
    a: ExposeArgs,
    protocol: Protocol,
    http_client: Option<HttpClientArgs>,
) -> Result<AgentJob, Failure> {
    let ExposeArgs {
        endpoint,
        addr,
        url,
        token,
        transport,
        agent,
        file: file_args,
        timeout,
        access_log,
        inspect,
    } = a;
    let mut file = match &file_args.config_path {
        Some(p) => ConfigFile::load(p, file_args.expand_env).map_err(file_error)?,
        None => ConfigFile::from_yaml_str("").map_err(file_error)?,
    };
    let mut ep =
        EndpointConfig::parse(&endpoint, &addr, protocol, timeout).map_err(|e| match e {
            ConfigError::Addr { .. } => Failure::Usage(format!("endpoint {endpoint}: {e}")),
            e => Failure::Usage(e.to_string()),
        })?;
    ep.access_log = access_log.access_log()?;
    if let Some(h) = http_client {
        ep.http_client = HttpClientConfig {
            keep_alive_timeout: h.keep_alive_timeout,
            idle_conn_timeout: h.idle_conn_timeout,
            max_idle_conns: HttpClientConfig::max_idle_from(
                "--http-client.max-idle-conns",
                h.max_idle_conns,
            )
            .map_err(|e| Failure::Usage(e.to_string()))?,
            disable_compression: h.disable_compression,
        };
    }
    let metrics = apply_flags(&mut file, url, &agent)?;
    file.agent.endpoints = vec![ep];
    Ok(AgentJob {
        config: file.agent,
        transport: transport.over(file.transport),
        token: token.token,
        reload: None,
        inspect: inspect.resolve(file.inspect)?,
        file_level: file.log_level,
        file_subsystems: file.log_subsystems,
        metrics,
        warnings: file.warnings,
    })
}

/// `piko agent start --config.path FILE`: the file's endpoints, flags over the file.
pub(crate) fn start(a: StartArgs) -> Result<AgentJob, Failure> {
    let mut file = ConfigFile::load(&a.config_path, a.expand_env).map_err(file_error)?;
    let metrics = apply_flags(&mut file, a.url.clone(), &a.agent)?;
    let reload = reload::Spec {
        path: a.config_path.clone(),
        expand_env: a.expand_env,
        url: a.url.clone(),
        agent: a.agent.clone(),
        transport: a.transport.clone(),
        token: a.token.token.clone(),
        inspect: file.inspect,
        server: file.server.clone(),
    };
    Ok(AgentJob {
        config: file.agent,
        transport: a.transport.over(file.transport),
        token: a.token.token,
        reload: Some(reload),
        inspect: a.inspect.resolve(file.inspect)?,
        file_level: file.log_level,
        file_subsystems: file.log_subsystems,
        metrics,
        warnings: file.warnings,
    })
}

/// Run the agent until a stop signal, or until the server rejects it.
pub(crate) fn run(
    job: AgentJob,
    log_level: Option<String>,
    subsystems: Vec<String>,
) -> Result<(), Failure> {
    run_until(job, log_level, subsystems, None)
}

/// Run the agent until `stop` is cancelled (a service manager's stop) or, without one, until
/// a stop signal; or until the server rejects it.
pub(crate) fn run_until(
    job: AgentJob,
    log_level: Option<String>,
    subsystems: Vec<String>,
    stop: Option<CancellationToken>,
) -> Result<(), Failure> {
    let level = log_level
        .or(job.file_level)
        .unwrap_or_else(|| "info".to_string());
    let subsystems = if subsystems.is_empty() {
        job.file_subsystems
    } else {
        subsystems
    };
    init_logging(&level, &subsystems)?;
    for w in &job.warnings {
        warn!("{w}");
    }

    // Read the TLS files and settle the proxy before anything runs: mistakes there are
    // config errors (exit 2) naming the setting.
    let connector = Connector::new(&job.transport).map_err(|e| Failure::Usage(setting_error(e)))?;
    let mut config = job.config;
    config.connect.token = match (job.token, config.connect.token.take()) {
        (None, Some(file)) => {
            info!("using the token from the config file");
            Some(file)
        }
        (flag, _) => token_for(flag, &config.connect.url),
    };
    let metrics_addr = job.metrics;

    runtime()?.block_on(async move {
        let shutdown = match stop {
            Some(token) => token,
            None => {
                let token = CancellationToken::new();
                stop_on_signals(&token);
                token
            }
        };
        let mut agent = Agent::new(config)
            .with_connector(connector)
            .exit_if_first_connect_fails();
        if let Some(addr) = metrics_addr {
            let metrics = AgentMetrics::default();
            super::metrics::serve(addr, metrics.clone(), shutdown.clone()).await?;
            agent = agent.with_metrics(metrics);
        }
        if let Some(spec) = job.reload {
            agent = agent.with_updates(reload::watch(spec, job.transport, shutdown.clone()));
        }
        // Served whatever the endpoints are (an idle inspector costs a listener): a reload
        // may add HTTP endpoints to an agent that started with TCP ones only.
        let mut api = None;
        if let InspectAddr::At(addr) = job.inspect {
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
            | AgentError::InvalidTenant(_)
            | AgentError::NoEndpoints
            | AgentError::Unusable { .. }
            | AgentError::Config(_)),
        ) => Err(Failure::Usage(e.to_string())),
        Err(e) => Err(Failure::Runtime(e.to_string())),
    }
}

/// A transport config error, naming the flag beside the YAML key
/// (`connect.tls.root_cas (--connect.tls.root-cas): cannot read ...`).
pub(crate) fn setting_error(e: ConfigError) -> String {
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
pub(crate) fn token_for(flag: Option<String>, server_url: &str) -> Option<Secret> {
    token_from(flag, server_url, default_store, DEFAULT_TIMEOUT)
}

/// [`token_for`] with the store `open` gives, every call bounded by `timeout`: a locked
/// keychain delays the agent's start by at most that, then it connects without a token.
fn token_from(
    flag: Option<String>,
    server_url: &str,
    open: impl FnOnce() -> Result<SelectedStore, CredentialError>,
    timeout: Duration,
) -> Option<Secret> {
    let env = std::env::var(TOKEN_ENV).ok();
    let open = || open().map(|s| s.bounded(timeout));
    match resolve_token(flag, env, server_url, open) {
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use clap::Parser;

    use super::*;
    use crate::commands::locked::Locked;

    #[test]
    fn a_locked_keychain_delays_the_agent_by_the_bound_then_it_connects_without_a_token() {
        let (done, result) = std::sync::mpsc::channel();
        let began = Instant::now();
        std::thread::spawn(move || {
            let locked = || {
                Ok(SelectedStore {
                    store: Box::new(Locked),
                    fallback: None,
                })
            };
            let token = token_from(
                None,
                "http://127.0.0.1:8001",
                locked,
                Duration::from_millis(200),
            );
            let _ = done.send(token.is_none());
        });
        let none = result
            .recv_timeout(Duration::from_secs(5))
            .expect("the agent hung on a locked keychain");
        assert!(none);
        assert!(began.elapsed() < Duration::from_secs(3));
    }
    use crate::cli::{AgentCommand, Cli, Command};

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(args).unwrap().command
    }

    #[test]
    fn parses_agent_http() {
        let Command::Agent(AgentCommand::Http(a)) = parse(&[
            "piko",
            "agent",
            "http",
            "shop",
            "3000",
            "--connect.url",
            "http://10.0.0.1:8001",
            "--timeout",
            "5s",
        ]) else {
            panic!("not agent http")
        };
        let job = expose(a.expose, Protocol::Http, Some(a.http_client)).unwrap();
        assert_eq!(job.transport, TransportConfig::default());
        assert_eq!(job.token, None);
        assert_eq!(job.inspect, InspectAddr::default());
        let c = job.config;
        assert_eq!(c.connect.url, "http://10.0.0.1:8001");
        assert_eq!(c.endpoints[0].timeout, Duration::from_secs(5));
        assert_eq!(c.endpoints[0].target.to_string(), "http://localhost:3000");
        assert_eq!(c.grace_period, Duration::from_secs(60), "the original's 1m");
        assert_eq!(c.connect.timeout, Duration::from_secs(30));
        assert_eq!(c.endpoints[0].http_client, HttpClientConfig::default());
    }

    /// `agent start` with `inspect` in `yaml` and `flags` after the path.
    fn start_inspect(yaml: &str, flags: &[&str]) -> Result<InspectAddr, Failure> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, yaml).unwrap();
        let path = path.display().to_string();
        let mut args = vec!["piko", "agent", "start", "--config.path", &path];
        args.extend_from_slice(flags);
        let Command::Agent(AgentCommand::Start(a)) = parse(&args) else {
            panic!("not agent start")
        };
        start(a).map(|job| job.inspect)
    }

    #[test]
    fn the_inspect_flag_beats_the_file_which_beats_the_default() {
        let at = |port: u16| InspectAddr::At(([127, 0, 0, 1], port).into());
        let file = "inspect:\n  addr: 127.0.0.1:4141\n";
        let off = "inspect:\n  addr: \"\"\n";
        let cases: &[(&str, &[&str], InspectAddr)] = &[
            ("", &[], InspectAddr::default()),
            (file, &[], at(4141)),
            (off, &[], InspectAddr::Off),
            (file, &["--inspect.addr", "4242"], at(4242)),
            (file, &["--inspect.addr", ""], InspectAddr::Off),
            (off, &["--inspect.addr", "127.0.0.1:4343"], at(4343)),
        ];
        for (yaml, flags, want) in cases {
            let got =
                start_inspect(yaml, flags).unwrap_or_else(|e| panic!("{yaml:?} {flags:?}: {e:?}"));
            assert_eq!(got, *want, "{yaml:?} {flags:?}");
        }
    }

    #[test]
    fn a_bad_inspect_addr_is_a_usage_error_naming_the_flag_or_key() {
        let Err(Failure::Usage(e)) = start_inspect("", &["--inspect.addr", "nowhere"]) else {
            panic!("a bad flag is a usage error")
        };
        assert!(
            e.starts_with("--inspect.addr \"nowhere\" is not an address"),
            "{e}"
        );
        let Err(Failure::Usage(e)) = start_inspect("inspect:\n  addr: nowhere\n", &[]) else {
            panic!("a bad key is a usage error")
        };
        assert!(
            e.starts_with("inspect.addr: invalid address \"nowhere\""),
            "{e}"
        );
    }
}
