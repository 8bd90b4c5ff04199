//! The original Go forwarder's YAML file (`piko forward start --config.path`): `ports[]` to
//! listen on, each carried to a TCP endpoint, and how to reach the proxy.

use std::path::Path;
use std::time::Duration;

use piko_protocol::EndpointId;
use serde::Deserialize;

use super::load::{self, Source};
use super::{de_duration, ConfigError, RawLog, RawTls, Secret, TransportConfig, DEFAULT_TIMEOUT};
use crate::forward::DEFAULT_PROXY_URL;

/// One local port and the endpoint its connections go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// Where to listen: `host:port` (a bare port in the file means `localhost`, as the
    /// original forwarder, which binds 127.0.0.1).
    pub addr: String,
    /// The TCP endpoint.
    pub endpoint: EndpointId,
}

/// A forward config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardFile {
    /// The ports to open.
    pub ports: Vec<PortConfig>,
    /// The proxy URL (`connect.url`).
    pub url: String,
    /// `connect.token`, if the file has one.
    pub token: Option<Secret>,
    /// `connect.timeout`: time allowed to open each connection to the proxy.
    pub timeout: Duration,
    /// `connect.tls.*` and `connect.proxy_url`.
    pub transport: TransportConfig,
    /// `log.level`, if set.
    pub log_level: Option<String>,
    /// `log.subsystems`.
    pub log_subsystems: Vec<String>,
    /// Warnings to log once logging is set up (a token readable by other users).
    pub warnings: Vec<String>,
}

impl Default for ForwardFile {
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            url: DEFAULT_PROXY_URL.to_string(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
            transport: TransportConfig::default(),
            log_level: None,
            log_subsystems: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// A forward `addr`: a bare port listens on 127.0.0.1 (what the original's `localhost`
/// binds), else `host:port` as given.
pub fn local_listen_addr(addr: &str) -> String {
    let a = addr.trim();
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{a}")
    } else {
        a.to_string()
    }
}

impl ForwardFile {
    /// Read a forward file, expanding the environment first with `expand_env`.
    pub fn load(path: &Path, expand_env: bool) -> Result<Self, ConfigError> {
        Self::from_source(&Source::read(path, expand_env)?)
    }

    /// Parse a forward file's text.
    pub fn from_yaml_str(s: &str) -> Result<Self, ConfigError> {
        Self::from_source(&Source::text(s))
    }

    fn from_source(source: &Source) -> Result<Self, ConfigError> {
        let raw: RawForward = load::parse(&source.text)?;
        let mut warnings = Vec::new();
        let token = source.token(raw.connect.token, &mut warnings)?;
        let mut ports = Vec::with_capacity(raw.ports.len());
        for (i, p) in raw.ports.into_iter().enumerate() {
            let invalid = |field: &str, message: String| ConfigError::Invalid {
                key: format!("ports[{i}].{field}"),
                message,
            };
            let endpoint = EndpointId::new(&p.endpoint_id).map_err(|e| {
                invalid(
                    "endpoint_id",
                    format!("invalid endpoint id {:?}: {e}", p.endpoint_id),
                )
            })?;
            let addr = local_listen_addr(&p.addr);
            if addr
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
            {
                return Err(invalid(
                    "addr",
                    format!(
                        "invalid address {:?}: use a port (5432) or host:port (127.0.0.1:5432)",
                        p.addr
                    ),
                ));
            }
            ports.push(PortConfig { addr, endpoint });
        }
        Ok(Self {
            ports,
            url: raw
                .connect
                .url
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_PROXY_URL.to_string()),
            token,
            timeout: raw.connect.timeout.unwrap_or(DEFAULT_TIMEOUT),
            transport: TransportConfig {
                tls: raw.connect.tls.convert(),
                proxy_url: raw.connect.proxy_url.filter(|u| !u.trim().is_empty()),
            },
            log_level: raw.log.level,
            log_subsystems: raw.log.subsystems.unwrap_or_default(),
            warnings,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    connect: RawForwardConnect,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    addr: String,
    endpoint_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwardConnect {
    url: Option<String>,
    token: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    tls: RawTls,
    proxy_url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_forward_file() {
        let f = ForwardFile::from_yaml_str(
            "ports:\n  - addr: '5432'\n    endpoint_id: db\n  - addr: 0.0.0.0:6379\n    endpoint_id: cache\nconnect:\n  url: http://piko:8000\n  timeout: 5s\n  tls:\n    root_cas: ''\nlog:\n  level: debug\n  subsystems: [forwarder]\n",
        )
        .unwrap();
        assert_eq!(f.ports.len(), 2);
        assert_eq!(f.ports[0].addr, "127.0.0.1:5432");
        assert_eq!(f.ports[0].endpoint.as_str(), "db");
        assert_eq!(f.ports[1].addr, "0.0.0.0:6379");
        assert_eq!(f.url, "http://piko:8000");
        assert_eq!(f.timeout, Duration::from_secs(5));
        assert_eq!(f.transport, TransportConfig::default());
        assert_eq!(f.log_level.as_deref(), Some("debug"));
        assert_eq!(f.log_subsystems, ["forwarder"]);
        let d = ForwardFile::from_yaml_str("").unwrap();
        assert_eq!(d, ForwardFile::default());
    }

    #[test]
    fn forward_file_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "ports:\n  - addr: nowhere\n    endpoint_id: db\n",
                "ports[0].addr: invalid address \"nowhere\"",
            ),
            (
                "ports:\n  - addr: '1'\n    endpoint_id: a/b\n",
                "ports[0].endpoint_id: invalid endpoint id",
            ),
            (
                "ports:\n  - addr: '1'\n",
                "ports[0]: missing field `endpoint_id`",
            ),
            ("listeners: []\n", "listeners: unknown field `listeners`"),
            (
                "connect:\n  timeout: soon\n",
                "connect.timeout: invalid duration",
            ),
        ];
        for (yaml, want) in cases {
            let err = ForwardFile::from_yaml_str(yaml).unwrap_err().to_string();
            assert!(err.starts_with(want), "{yaml:?}\n got: {err}\nwant: {want}");
        }
    }
}
