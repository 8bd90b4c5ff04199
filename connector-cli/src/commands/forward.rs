//! `piko forward tcp LOCAL ENDPOINT`: listen locally and carry each connection to a TCP
//! endpoint through the Piko proxy.

use piko_connector_core::config::TransportConfig;
use piko_connector_core::forward::forward_tcp_via;
use piko_connector_core::Connector;
use piko_protocol::EndpointId;
use tokio_util::sync::CancellationToken;

use super::agent::{setting_error, token_for};
use super::{init_logging, runtime, stop_on_signals};
use crate::cli::ForwardArgs;
use crate::exit::Failure;

/// Forward until a stop signal.
pub(crate) fn run(a: ForwardArgs, log_level: Option<String>) -> Result<(), Failure> {
    let endpoint = EndpointId::new(&a.endpoint)
        .map_err(|e| Failure::Usage(format!("invalid endpoint id {:?}: {e}", a.endpoint)))?;
    let local = if a.local_addr.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{}", a.local_addr)
    } else {
        a.local_addr.clone()
    };
    init_logging(log_level.as_deref().unwrap_or("info"))?;
    let transport = a.transport.over(TransportConfig::default());
    let connector = Connector::new(&transport).map_err(|e| Failure::Usage(setting_error(e)))?;
    let token = token_for(a.token.token, &a.url);
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        stop_on_signals(&shutdown);
        let listener = tokio::net::TcpListener::bind(&local).await.map_err(|e| {
            Failure::Runtime(format!(
                "cannot listen on {local}: {e}; choose a free local address"
            ))
        })?;
        if let Ok(addr) = listener.local_addr() {
            println!("forwarding {addr} → endpoint {endpoint}");
        }
        forward_tcp_via(listener, a.url, endpoint, token, connector, shutdown)
            .await
            .map_err(|e| Failure::Usage(e.to_string()))
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
        assert_eq!(a.url, "http://localhost:8000");
    }
}
