//! `piko forward tcp LOCAL ENDPOINT`: listen locally and carry each connection to a TCP
//! endpoint through the Piko proxy.

use piko_connector_core::config::{ForwardFile, PortConfig};
use piko_connector_core::forward::forward_tcp_within;
use piko_connector_core::Connector;
use piko_protocol::EndpointId;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::agent::{setting_error, token_for};
use super::{init_logging, runtime, stop_on_signals};
use crate::cli::{ForwardArgs, ForwardConnectArgs, ForwardStartArgs};
use crate::exit::Failure;

/// `piko forward tcp LOCAL ENDPOINT`: one port from the arguments; a `--config.path` file
/// gives the connect and log settings (its ports are ignored, as the original does).
pub(crate) fn run(
    a: ForwardArgs,
    log_level: Option<String>,
    subsystems: Vec<String>,
) -> Result<(), Failure> {
    let endpoint = EndpointId::new(&a.endpoint)
        .map_err(|e| Failure::Usage(format!("invalid endpoint id {:?}: {e}", a.endpoint)))?;
    let mut file = match &a.file.config_path {
        Some(p) => ForwardFile::load(p, a.file.expand_env).map_err(file_error)?,
        None => ForwardFile::default(),
    };
    file.ports = vec![PortConfig {
        addr: piko_connector_core::config::local_listen_addr(&a.local_addr),
        endpoint,
    }];
    forward(file, a.connect, log_level, subsystems)
}

/// `piko forward start --config.path FILE`: every port of the file.
pub(crate) fn start(
    a: ForwardStartArgs,
    log_level: Option<String>,
    subsystems: Vec<String>,
) -> Result<(), Failure> {
    let file = ForwardFile::load(&a.config_path, a.expand_env).map_err(file_error)?;
    if file.ports.is_empty() {
        return Err(Failure::Usage(format!(
            "ports: {} lists no ports; add `ports: [{{addr: 5432, endpoint_id: db}}]`",
            a.config_path.display()
        )));
    }
    forward(file, a.connect, log_level, subsystems)
}

fn file_error(e: piko_connector_core::ConfigError) -> Failure {
    match e {
        piko_connector_core::ConfigError::Read { .. } => {
            Failure::Usage(format!("{e}; check --config.path"))
        }
        e => Failure::Usage(e.to_string()),
    }
}

/// Listen on every port of `file` (flags over the file) until a stop signal.
fn forward(
    mut file: ForwardFile,
    flags: ForwardConnectArgs,
    log_level: Option<String>,
    subsystems: Vec<String>,
) -> Result<(), Failure> {
    if let Some(url) = flags.url {
        file.url = url;
    }
    if let Some(t) = flags.timeout {
        file.timeout = t;
    }
    let level = log_level
        .or(file.log_level.take())
        .unwrap_or_else(|| "info".into());
    let subsystems = if subsystems.is_empty() {
        std::mem::take(&mut file.log_subsystems)
    } else {
        subsystems
    };
    init_logging(&level, &subsystems)?;
    for w in &file.warnings {
        warn!("{w}");
    }
    let transport = flags.transport.over(file.transport.clone());
    let connector = Connector::new(&transport).map_err(|e| Failure::Usage(setting_error(e)))?;
    let token = match (flags.token.token, file.token.take()) {
        (None, Some(t)) => {
            tracing::info!("using the token from the config file");
            Some(t)
        }
        (flag, _) => token_for(flag, &file.url),
    };
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        stop_on_signals(&shutdown);
        let mut ports = tokio::task::JoinSet::new();
        for port in file.ports {
            let listener = tokio::net::TcpListener::bind(&port.addr)
                .await
                .map_err(|e| {
                    Failure::Runtime(format!(
                        "cannot listen on {}: {e}; choose a free local address",
                        port.addr
                    ))
                })?;
            if let Ok(addr) = listener.local_addr() {
                println!("forwarding {addr} → endpoint {}", port.endpoint);
            }
            ports.spawn(forward_tcp_within(
                listener,
                file.url.clone(),
                port.endpoint,
                token.clone(),
                connector.clone(),
                file.timeout,
                shutdown.clone(),
            ));
        }
        let mut result = Ok(());
        while let Some(done) = ports.join_next().await {
            if let Ok(Err(e)) = done {
                if result.is_ok() {
                    result = Err(Failure::Usage(e.to_string()));
                    shutdown.cancel();
                }
            }
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command, ForwardCommand};

    #[test]
    fn forward_defaults_to_the_proxy_port() {
        let cli = Cli::try_parse_from(["piko", "forward", "tcp", "5432", "db"]).unwrap();
        let Command::Forward(ForwardCommand::Tcp(a)) = cli.command else {
            panic!()
        };
        assert_eq!(a.connect.url, None);
        assert_eq!(
            piko_connector_core::config::ForwardFile::default().url,
            "http://localhost:8000"
        );
    }
}
