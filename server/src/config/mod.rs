//! Server configuration: defaults < YAML file < `PIKO_*` environment < dotted flags.
//!
//! Every key of the file is also a flag (`proxy.bind_addr` is `--proxy.bind-addr`) and an
//! environment variable (`PIKO_PROXY_BIND_ADDR`). The merged tree is deserialized once
//! (unknown keys rejected) and converted into [`Config`], whose fields cannot be wrong; every
//! error names the key.
//!
//! Layout: [`file`](mod@file) holds the file's shape and defaults, [`layering`] the merge of the layers
//! and [`load`], [`env`](mod@env) the `${VAR}` expansion, `convert` the conversion into [`Config`].

mod convert;
pub mod env;
pub mod file;
pub mod layering;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use piko_protocol::access_log::AccessLog;

pub use convert::parse_bind_addr;
pub use env::expand_env;
pub use file::*;
pub use layering::{env_name, flag_name, leaf_keys, load, Sources};

use crate::auth::PortAuth;
pub use crate::secret::SecretString;
use crate::tls::TlsFiles;

/// A configuration error: the key it is about and what is wrong with it (shown as
/// `key: message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The dotted key (`proxy.timeout`), `config` for the tree as a whole, or `config file
    /// PATH` for a file that is not YAML.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn err(key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: msg.to_string(),
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listen address.
    pub proxy_addr: SocketAddr,
    /// Upstream listen address.
    pub upstream_addr: SocketAddr,
    /// Admin listen address.
    pub admin_addr: SocketAddr,
    /// Cluster listen address.
    pub cluster_addr: SocketAddr,
    /// Advertised addresses (empty: derived from the bind address).
    pub advertise: Advertise,
    /// Time an upstream has to start its response.
    pub proxy_timeout: Duration,
    /// Time a client has to send the request headers.
    pub read_header_timeout: Duration,
    /// Time a keep-alive client connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Largest request head, bytes.
    pub max_header_bytes: usize,
    /// Peers whose `X-Forwarded-*` headers the proxy keeps.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// This node's id.
    pub node_id: String,
    /// Whether `node_id` was made up because none was configured (a node with a data dir
    /// then keeps the first one it made there).
    pub node_id_generated: bool,
    /// Nodes to join.
    pub join: Vec<String>,
    /// Raft data directory (empty: in memory).
    pub data_dir: Option<PathBuf>,
    /// A node unheard by the leader for this long loses its endpoint entries.
    pub node_lease: Duration,
    /// TLS of the cluster port.
    pub cluster_tls: Option<TlsFiles>,
    /// TLS for calls to other nodes (set with `cluster_tls`).
    pub cluster_client_tls: Option<Arc<rustls::ClientConfig>>,
    /// The cluster's shared token (`None`: not required).
    pub cluster_token: Option<SecretString>,
    /// `cluster.allow_unauthenticated_peers`: without a token or mutual TLS, peers from any
    /// address are accepted (otherwise loopback ones only).
    pub cluster_allow_unauthenticated_peers: bool,
    /// Logging settings.
    pub log: LogFile,
    /// Shutdown grace period.
    pub grace_period: Duration,
    /// Streams open at once per upstream connection.
    pub max_streams_per_upstream: usize,
    /// Upstreams per endpoint on this node (`None`: no limit).
    pub max_upstreams_per_endpoint: Option<usize>,
    /// The proxy's access log.
    pub proxy_access_log: AccessLog,
    /// Token verification of the proxy port.
    pub proxy_auth: PortAuth,
    /// Token verification of the upstream port.
    pub upstream_auth: PortAuth,
    /// Token verification of the admin port.
    pub admin_auth: PortAuth,
    /// TLS of the proxy port.
    pub proxy_tls: Option<TlsFiles>,
    /// TLS of the upstream port.
    pub upstream_tls: Option<TlsFiles>,
    /// TLS of the admin port.
    pub admin_tls: Option<TlsFiles>,
}

/// Addresses announced to other nodes.
#[derive(Debug, Clone, Default)]
pub struct Advertise {
    /// Proxy port.
    pub proxy: Option<String>,
    /// Upstream port.
    pub upstream: Option<String>,
    /// Admin port.
    pub admin: Option<String>,
    /// Cluster port.
    pub cluster: Option<String>,
}

impl Config {
    /// Defaults with every port on 127.0.0.1 port 0: for tests and embedding.
    pub fn loopback_ephemeral() -> Self {
        let mut src = Sources::default();
        for k in [
            "proxy.bind_addr",
            "upstream.bind_addr",
            "admin.bind_addr",
            "cluster.bind_addr",
        ] {
            src.flags.insert(k.into(), vec!["127.0.0.1:0".into()]);
        }
        load(&src).unwrap_or_else(|e| unreachable!("built-in configuration is valid: {e}"))
    }
}

#[cfg(test)]
mod tests;
