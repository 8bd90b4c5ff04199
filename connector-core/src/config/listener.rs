//! The parts of an agent file beyond endpoints and the server: a listener's `http_client`
//! pool settings and the agent's own metrics port (`server.*`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{de_duration, ConfigError};

/// Where `server.enabled` serves metrics unless `server.bind_addr` says otherwise: every
/// interface, port 5000, as the original Go agent.
pub const DEFAULT_METRICS_ADDR: &str = ":5000";

/// Connection pool settings towards an HTTP target (`listeners[].http_client`,
/// `--http-client.*`), with the original Go agent's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpClientConfig {
    /// TCP keep-alive period of connections to the target (30 s).
    pub keep_alive_timeout: Duration,
    /// An idle pooled connection is closed after this long (90 s).
    pub idle_conn_timeout: Duration,
    /// Most idle connections kept (100); `None`: no limit (`-1` in the file).
    pub max_idle_conns: Option<usize>,
    /// Leave `Accept-Encoding` alone instead of asking the target for gzip when the client
    /// did not say (and then un-gzipping the answer).
    pub disable_compression: bool,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            keep_alive_timeout: Duration::from_secs(30),
            idle_conn_timeout: Duration::from_secs(90),
            max_idle_conns: Some(100),
            disable_compression: false,
        }
    }
}

impl HttpClientConfig {
    /// The pool size from the original agent's `max_idle_conns` (0: the default of 100,
    /// -1: no limit).
    pub fn max_idle_from(key: &str, n: i64) -> Result<Option<usize>, ConfigError> {
        match n {
            -1 => Ok(None),
            0 => Ok(HttpClientConfig::default().max_idle_conns),
            n if n > 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            _ => Err(ConfigError::Invalid {
                key: key.to_string(),
                message: format!(
                    "{n} is not a count; use a number of connections, or -1 for no limit"
                ),
            }),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttpClient {
    #[serde(default, deserialize_with = "de_duration")]
    keep_alive_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    idle_conn_timeout: Option<Duration>,
    max_idle_conns: Option<i64>,
    #[serde(default)]
    disable_compression: bool,
}

impl RawHttpClient {
    pub(crate) fn convert(self, key: &str) -> Result<HttpClientConfig, ConfigError> {
        let d = HttpClientConfig::default();
        // Zero means "the default" in the original agent's files.
        let or = |v: Option<Duration>, d: Duration| v.filter(|v| !v.is_zero()).unwrap_or(d);
        Ok(HttpClientConfig {
            keep_alive_timeout: or(self.keep_alive_timeout, d.keep_alive_timeout),
            idle_conn_timeout: or(self.idle_conn_timeout, d.idle_conn_timeout),
            max_idle_conns: match self.max_idle_conns {
                Some(n) => HttpClientConfig::max_idle_from(&format!("{key}.max_idle_conns"), n)?,
                None => d.max_idle_conns,
            },
            disable_compression: self.disable_compression,
        })
    }
}

/// The agent's own HTTP port serving `/metrics` (`server.enabled`, `server.bind_addr`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsServerConfig {
    /// Serve it at all (off by default, as the original agent).
    pub enabled: bool,
    /// `server.bind_addr` as written, if set.
    pub bind_addr: Option<String>,
}

impl MetricsServerConfig {
    /// Parse a bind address: `host:port`, `:port` or a bare port (every interface),
    /// `localhost:port` (127.0.0.1).
    pub fn parse_addr(addr: &str) -> Result<SocketAddr, ConfigError> {
        let a = addr.trim();
        let full = if a.bytes().all(|b| b.is_ascii_digit()) && !a.is_empty() {
            format!("0.0.0.0:{a}")
        } else if let Some(port) = a.strip_prefix(':') {
            format!("0.0.0.0:{port}")
        } else {
            a.replace("localhost:", "127.0.0.1:")
        };
        full.parse().map_err(|_| ConfigError::Addr {
            addr: a.to_string(),
            reason: "use host:port such as 127.0.0.1:5000, or :5000 for every interface".into(),
        })
    }

    /// Where to serve, if enabled: `bind_addr`, else [`DEFAULT_METRICS_ADDR`].
    pub fn addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let a = self.bind_addr.as_deref().unwrap_or(DEFAULT_METRICS_ADDR);
        Self::parse_addr(a).map(Some)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    #[serde(default)]
    enabled: bool,
    bind_addr: Option<String>,
}

impl RawServer {
    pub(crate) fn convert(self) -> Result<MetricsServerConfig, ConfigError> {
        let bind_addr = self.bind_addr.filter(|a| !a.trim().is_empty());
        if let Some(a) = &bind_addr {
            MetricsServerConfig::parse_addr(a).map_err(|e| ConfigError::Invalid {
                key: "server.bind_addr".into(),
                message: e.to_string(),
            })?;
        }
        Ok(MetricsServerConfig {
            enabled: self.enabled,
            bind_addr,
        })
    }
}
