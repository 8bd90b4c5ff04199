//! Server configuration: defaults < YAML file < `PIKO_*` environment < dotted flags.
//!
//! Every key of the file is also a flag (`proxy.bind_addr` is `--proxy.bind-addr`) and an
//! environment variable (`PIKO_PROXY_BIND_ADDR`). The merged tree is deserialized once
//! (unknown keys rejected) and converted into [`Config`], whose fields cannot be wrong; every
//! error names the key.
//!
//! Layout: [`file`](mod@file) holds the file's shape and defaults, [`layering`] the merge of the layers
//! and [`load`], [`expand_env`] the `${VAR}` expansion (from `piko_protocol::expand`), `convert` the conversion into [`Config`].

mod convert;
pub mod file;
pub mod layering;

use std::time::Duration;

pub use convert::parse_bind_addr;
pub use file::*;
pub use layering::{env_name, flag_name, leaf_keys, load, Sources};
pub use piko_protocol::expand::expand_env;

pub use crate::secret::SecretString;
use crate::{admin, cluster, proxy, upstream};

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

/// The validated configuration the server runs with: one section per subsystem, each of
/// that subsystem's own settings type, handed to it as is by [`crate::run`].
#[derive(Debug, Clone)]
pub struct Config {
    /// `proxy.*`.
    pub proxy: proxy::Settings,
    /// `upstream.*`.
    pub upstream: upstream::Settings,
    /// `admin.*`.
    pub admin: admin::Settings,
    /// `cluster.*`.
    pub cluster: cluster::Settings,
    /// `log.*` (read by the binary, which sets up logging).
    pub log: LogFile,
    /// How long in-flight requests may take to finish on shutdown.
    pub grace_period: Duration,
    /// Keys that were accepted but change nothing here (the original's settings without a
    /// meaning in this server), each with the reason; [`crate::run`] logs them at start.
    pub warnings: Vec<ConfigError>,
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
