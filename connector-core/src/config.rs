//! Connector configuration: endpoints, the server to connect to, and the original Go agent's
//! YAML file format.
//!
//! Input is deserialized once (unknown keys denied, errors naming the key) and converted into
//! types that cannot be wrong: [`EndpointId`], [`Target`], [`Duration`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use piko_protocol::access_log::{AccessLog, AccessLogConfig};
use piko_protocol::{EndpointId, EndpointIdError};
use serde::{Deserialize, Serialize};

pub use self::forward::{local_listen_addr, ForwardFile, PortConfig};
pub use self::listener::{HttpClientConfig, MetricsServerConfig, DEFAULT_METRICS_ADDR};
pub use crate::credentials::Secret;
pub use piko_protocol::expand::expand_env;

mod forward;
mod listener;
mod load;

/// Default server URL the agent registers with (the upstream port).
pub const DEFAULT_CONNECT_URL: &str = "http://localhost:8001";
/// Default time allowed to connect to the server (`connect.timeout`), and the tray app's
/// per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default per-request timeout to the local target of `piko agent` and of agent files
/// (`--timeout`, `listeners[].timeout`): 10 s, as the original Go agent's `--timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time to wait for in-flight requests on shutdown: 1 m, as the original Go agent.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(60);

/// Environment variable naming the connector's config directory (overrides the OS's).
pub const CONFIG_DIR_ENV: &str = "PIKO_CONFIG_DIR";

/// The connector's config directory: `$PIKO_CONFIG_DIR`, else the OS's (`~/.config/piko` on
/// Linux, `~/Library/Application Support/piko` on macOS, `%APPDATA%\piko\config` on Windows).
pub fn config_dir() -> Result<PathBuf, ConfigError> {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "piko")
        .map(|d| d.config_dir().to_path_buf())
        .ok_or_else(|| ConfigError::Invalid {
            key: CONFIG_DIR_ENV.to_string(),
            message: "no home directory found to keep the config in; set PIKO_CONFIG_DIR".into(),
        })
}

/// What an endpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 requests (with upgrades such as WebSocket).
    Http,
    /// Raw TCP connections.
    Tcp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        })
    }
}

/// The local service an endpoint forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An HTTP service: scheme and authority (and an optional base path) of the local server.
    Http(url::Url),
    /// A TCP service as `host:port`.
    Tcp(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `Url` always prints a path; `http://127.0.0.1:3000/` reads better without it.
            Target::Http(u) if u.path() == "/" && u.query().is_none() => {
                f.write_str(u.as_str().trim_end_matches('/'))
            }
            Target::Http(u) => f.write_str(u.as_str()),
            Target::Tcp(addr) => f.write_str(addr),
        }
    }
}

/// One endpoint to register and the local target behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The endpoint id registered with the server.
    pub id: EndpointId,
    /// Where proxied connections go.
    pub target: Target,
    /// HTTP or TCP.
    pub protocol: Protocol,
    /// Per-request timeout to the local target (HTTP response headers, TCP connect).
    pub timeout: Duration,
    /// What the access log records of this endpoint's requests (default: every request at info).
    pub access_log: AccessLog,
    /// TLS settings towards an `https://` target (`listeners[].tls`).
    pub tls: TlsConfig,
    /// Connection pool settings towards an HTTP target (`listeners[].http_client`).
    pub http_client: HttpClientConfig,
}

impl EndpointConfig {
    /// Build an endpoint from user input. `addr` is a port (`3000`, meaning `localhost:3000`,
    /// as the original Go agent), `host:port`, or for HTTP a URL `http[s]://host:port[/base]`.
    pub fn parse(
        id: &str,
        addr: &str,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let id = EndpointId::new(id).map_err(|source| ConfigError::EndpointId {
            id: id.to_string(),
            source,
        })?;
        let target = parse_target(addr, protocol)?;
        Ok(Self {
            id,
            target,
            protocol,
            timeout,
            access_log: default_access_log(),
            tls: TlsConfig::default(),
            http_client: HttpClientConfig::default(),
        })
    }
}

/// The access log an endpoint gets when nothing says otherwise: every request at info.
pub fn default_access_log() -> AccessLog {
    AccessLog::new(&AccessLogConfig::default()).unwrap_or_else(|_| AccessLog::disabled())
}

/// An access log from a listener's `access_log` value: `true`/`false` (older agent files) or the
/// original agent's section (`level`, `disable`, `request_headers`, `response_headers`).
fn access_log_of(key: &str, value: Option<serde_yaml_ng::Value>) -> Result<AccessLog, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.to_string(),
        message,
    };
    let config = match value {
        None | Some(serde_yaml_ng::Value::Null) => AccessLogConfig::default(),
        Some(serde_yaml_ng::Value::Bool(on)) => AccessLogConfig {
            disable: !on,
            ..AccessLogConfig::default()
        },
        Some(v @ serde_yaml_ng::Value::Mapping(_)) => {
            serde_yaml_ng::from_value(v).map_err(|e| invalid(e.to_string()))?
        }
        Some(_) => return Err(invalid("use true, false or a section with level, disable, request_headers and response_headers".into())),
    };
    AccessLog::new(&config).map_err(|e| match e.split_once(": ") {
        Some((sub, msg)) => ConfigError::Invalid {
            key: format!("{key}.{sub}"),
            message: msg.to_string(),
        },
        None => invalid(e),
    })
}

fn bad_addr(addr: &str, reason: &str) -> ConfigError {
    ConfigError::Addr {
        addr: addr.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_port(addr: &str, port: &str) -> Result<u16, ConfigError> {
    match port.parse::<u16>() {
        Ok(0) => Err(bad_addr(
            addr,
            "port 0 is not a service port; use the port the local service listens on",
        )),
        Ok(p) => Ok(p),
        Err(_) => Err(bad_addr(
            addr,
            "expected a port (3000), host:port (localhost:3000) or http://host:port",
        )),
    }
}

/// Split `host:port` (host may be a bracketed IPv6 literal; an empty host means 127.0.0.1).
fn parse_host_port(addr: &str) -> Result<(String, u16), ConfigError> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad_addr(
            addr,
            "expected a port (3000), host:port (localhost:3000) or http://host:port",
        ));
    };
    let port = parse_port(addr, port)?;
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    let valid = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.contains(['[', ']', '/', ' ', ':', '@'])
    };
    if !valid {
        return Err(bad_addr(
            addr,
            "the host is not a valid hostname or IP address",
        ));
    }
    Ok((host.to_string(), port))
}

fn parse_target(addr: &str, protocol: Protocol) -> Result<Target, ConfigError> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(bad_addr(
            addr,
            "the address is empty; give a port (3000), host:port or http://host:port",
        ));
    }
    let (host, port, base) = if addr.contains("://") {
        let url =
            url::Url::parse(addr).map_err(|e| bad_addr(addr, &format!("not a valid URL: {e}")))?;
        match (url.scheme(), protocol) {
            ("http" | "https", Protocol::Http) | ("tcp", Protocol::Tcp) => {}
            ("https", Protocol::Tcp) => {
                return Err(bad_addr(
                    addr,
                    "a TCP endpoint carries raw bytes; give host:port, or use `piko agent http` for an https:// service",
                ))
            }
            (other, _) => {
                return Err(bad_addr(
                    addr,
                    &format!("unsupported scheme {other:?}; use http:// or https://"),
                ))
            }
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            Some(h) => h.to_string(),
            None => return Err(bad_addr(addr, "the URL has no host")),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| bad_addr(addr, "the URL has no port"))?;
        (host, port, Some(url))
    } else if addr.bytes().all(|b| b.is_ascii_digit()) {
        // `localhost`, resolved on every connect, as the original Go agent: a service that
        // listens on ::1 only is reached where `localhost` names ::1 (docs/migrating.md).
        ("localhost".to_string(), parse_port(addr, addr)?, None)
    } else {
        let (h, p) = parse_host_port(addr)?;
        (h, p, None)
    };
    match protocol {
        Protocol::Tcp => Ok(Target::Tcp(format!("{host}:{port}"))),
        Protocol::Http => {
            let mut url = match base {
                Some(u) => u,
                None => url::Url::parse(&format!("http://{host}:{port}/"))
                    .map_err(|e| bad_addr(addr, &format!("not a valid address: {e}")))?,
            };
            url.set_fragment(None);
            Ok(Target::Http(url))
        }
    }
}

/// How to reach the Piko server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectConfig {
    /// Server URL of the upstream port (`http://localhost:8001`).
    pub url: String,
    /// Token sent as `Authorization: Bearer`, if any.
    pub token: Option<Secret>,
    /// Time allowed to open the WebSocket to the server; `piko agent` also gives up when the
    /// first registration has not succeeded within it.
    pub timeout: Duration,
    /// The tenant the endpoints belong to, sent as `x-piko-tenant-id` (`connect.tenant_id`).
    pub tenant_id: Option<String>,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_CONNECT_URL.to_string(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
            tenant_id: None,
        }
    }
}

/// TLS settings for the connection to the server (`connect.tls.*`, `--connect.tls.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// A PEM file of extra CA certificates trusted besides the OS trust store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_cas: Option<PathBuf>,
    /// A PEM client certificate (chain) presented for mTLS; needs `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The PEM private key of `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Accept any server certificate. Only for testing: anyone on the path can read the traffic.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// How connections to the server travel: TLS settings and an HTTP proxy.
///
/// Kept apart from [`ConnectConfig`] because it is turned once into a
/// [`Connector`](crate::transport::Connector) (files read, trust store loaded) before an agent
/// or a forwarder starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportConfig {
    /// TLS settings for `https://`/`wss://` server URLs.
    pub tls: TlsConfig,
    /// An HTTP proxy (`http://[user:pass@]host:port`) to tunnel through with `CONNECT`.
    /// `None` means the `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` environment decides.
    pub proxy_url: Option<String>,
}

/// Everything an [`Agent`](crate::tunnel::Agent) runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The server to register with.
    pub connect: ConnectConfig,
    /// The endpoints to register.
    pub endpoints: Vec<EndpointConfig>,
    /// Time to let in-flight requests finish on shutdown.
    pub grace_period: Duration,
}

/// A config file: the agent config plus the settings the binary applies itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// The agent config.
    pub agent: AgentConfig,
    /// `log.level`, if set.
    pub log_level: Option<String>,
    /// `connect.tls.*` and `connect.proxy_url`.
    pub transport: TransportConfig,
    /// `inspect.addr`, if set: where the agent serves its request inspector.
    pub inspect: Option<InspectAddr>,
    /// `log.subsystems`: the original agent's subsystem names to log at every level.
    pub log_subsystems: Vec<String>,
    /// `server.*`: the agent's own metrics port.
    pub server: MetricsServerConfig,
    /// Things worth a warning that do not stop the agent (a readable token), to be logged
    /// once logging is set up.
    pub warnings: Vec<String>,
}

/// Where agents serve the request inspector unless told otherwise (ngrok users expect 4040).
pub const DEFAULT_INSPECT_ADDR: &str = "127.0.0.1:4040";

/// Where an agent serves its request inspector's JSON API (`inspect.addr`, `--inspect.addr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InspectAddr {
    /// `""`: no inspector, nothing recorded.
    Off,
    /// Serve on this address (keep it on loopback: it shows bodies and replays requests).
    At(SocketAddr),
}

impl Default for InspectAddr {
    fn default() -> Self {
        InspectAddr::At(SocketAddr::from(([127, 0, 0, 1], 4040)))
    }
}

impl InspectAddr {
    /// `host:port`, a bare port or `localhost:port` (both on 127.0.0.1), or `""` for off.
    pub fn parse(addr: &str) -> Result<Self, ConfigError> {
        let a = addr.trim();
        if a.is_empty() {
            return Ok(InspectAddr::Off);
        }
        let with_host = if a.bytes().all(|b| b.is_ascii_digit()) {
            format!("127.0.0.1:{a}")
        } else {
            a.replace("localhost:", "127.0.0.1:")
        };
        with_host
            .parse()
            .map(InspectAddr::At)
            .map_err(|_| ConfigError::Addr {
                addr: a.to_string(),
                reason: format!(
                    "use host:port such as {DEFAULT_INSPECT_ADDR}, or \"\" to turn the inspector off"
                ),
            })
    }
}

impl AgentConfig {
    /// Read the original agent's YAML format from a file.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        ConfigFile::from_yaml_file(path).map(|f| f.agent)
    }

    /// Parse the original agent's YAML format.
    pub fn from_yaml_str(s: &str) -> Result<Self, ConfigError> {
        ConfigFile::from_yaml_str(s).map(|f| f.agent)
    }
}

impl ConfigFile {
    /// Read a YAML config file (no environment expansion).
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        Self::load(path, false)
    }

    /// Read a YAML config file; with `expand_env`, `${VAR}`, `$VAR` and `${VAR:default}`
    /// are replaced from the environment first (`--config.expand-env`).
    pub fn load(path: &Path, expand_env: bool) -> Result<Self, ConfigError> {
        let source = load::Source::read(path, expand_env)?;
        let raw: RawFile = load::parse(&source.text)?;
        let mut warnings = Vec::new();
        let token = source.token(raw.connect.token.clone(), &mut warnings)?;
        let mut file = raw.convert()?;
        file.agent.connect.token = token;
        file.warnings = warnings;
        Ok(file)
    }

    /// Parse a YAML config.
    pub fn from_yaml_str(s: &str) -> Result<Self, ConfigError> {
        let source = load::Source::text(s);
        let raw: RawFile = load::parse(&source.text)?;
        let mut warnings = Vec::new();
        let token = source.token(raw.connect.token.clone(), &mut warnings)?;
        let mut file = raw.convert()?;
        file.agent.connect.token = token;
        file.warnings = warnings;
        Ok(file)
    }
}

/// serde_yaml_ng prefixes its messages with its own (coarser) path, `connect: ...`; the key
/// comes from serde_path_to_error instead, so drop that prefix and keep the message and line.
pub(crate) fn yaml_message(msg: &str) -> String {
    if let Some((prefix, rest)) = msg.split_once(": ") {
        let is_path = !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'));
        if is_path {
            return rest.to_string();
        }
    }
    msg.to_string()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    connect: RawConnect,
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    log: RawLog,
    #[serde(default, deserialize_with = "de_duration")]
    grace_period: Option<Duration>,
    #[serde(default)]
    inspect: RawInspect,
    #[serde(default)]
    server: listener::RawServer,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInspect {
    addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnect {
    url: Option<String>,
    token: Option<String>,
    tenant_id: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    tls: RawTls,
    proxy_url: Option<String>,
}

/// `tls` sections (`connect.tls`, `listeners[].tls`). An empty path means unset, as in the
/// original Go agent (a file that lists every key, or is rendered from a template).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    root_cas: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

impl RawTls {
    pub(crate) fn convert(self) -> TlsConfig {
        let path = |p: Option<String>| p.filter(|p| !p.trim().is_empty()).map(PathBuf::from);
        TlsConfig {
            root_cas: path(self.root_cas),
            cert: path(self.cert),
            key: path(self.key),
            insecure_skip_verify: self.insecure_skip_verify,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    endpoint_id: String,
    addr: String,
    #[serde(default)]
    protocol: Option<Protocol>,
    /// `true`/`false` or the original agent's `access_log` section.
    #[serde(default)]
    access_log: Option<serde_yaml_ng::Value>,
    #[serde(default, deserialize_with = "de_duration")]
    timeout: Option<Duration>,
    /// TLS towards an `https://` target.
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    http_client: listener::RawHttpClient,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) level: Option<String>,
    /// The original agent's subsystem names to log at every level.
    #[serde(default)]
    pub(crate) subsystems: Option<Vec<String>>,
}

pub(crate) fn de_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}); use values like 30s or 1m"
        ))
    })
}

impl RawFile {
    fn convert(self) -> Result<ConfigFile, ConfigError> {
        let mut endpoints = Vec::with_capacity(self.listeners.len());
        for (i, l) in self.listeners.into_iter().enumerate() {
            let protocol = l.protocol.unwrap_or(Protocol::Http);
            let timeout = l.timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
            let ep =
                EndpointConfig::parse(&l.endpoint_id, &l.addr, protocol, timeout).map_err(|e| {
                    let field = if matches!(e, ConfigError::EndpointId { .. }) {
                        "endpoint_id"
                    } else {
                        "addr"
                    };
                    ConfigError::Invalid {
                        key: format!("listeners[{i}].{field}"),
                        message: e.to_string(),
                    }
                })?;
            let ep = EndpointConfig {
                access_log: access_log_of(&format!("listeners[{i}].access_log"), l.access_log)?,
                tls: l.tls.convert(),
                http_client: l
                    .http_client
                    .convert(&format!("listeners[{i}].http_client"))?,
                ..ep
            };
            if endpoints.iter().any(|o: &EndpointConfig| o.id == ep.id) {
                return Err(ConfigError::Invalid {
                    key: format!("listeners[{i}].endpoint_id"),
                    message: format!(
                        "endpoint {} is listed twice; give each listener its own endpoint_id",
                        ep.id
                    ),
                });
            }
            endpoints.push(ep);
        }
        let transport = TransportConfig {
            tls: self.connect.tls.convert(),
            proxy_url: self.connect.proxy_url.filter(|u| !u.trim().is_empty()),
        };
        let connect = ConnectConfig {
            url: self
                .connect
                .url
                .unwrap_or_else(|| DEFAULT_CONNECT_URL.to_string()),
            token: None,
            timeout: self.connect.timeout.unwrap_or(DEFAULT_TIMEOUT),
            tenant_id: self.connect.tenant_id.filter(|t| !t.trim().is_empty()),
        };
        let inspect = match self.inspect.addr {
            Some(a) => Some(InspectAddr::parse(&a).map_err(|e| ConfigError::Invalid {
                key: "inspect.addr".into(),
                message: e.to_string(),
            })?),
            None => None,
        };
        Ok(ConfigFile {
            agent: AgentConfig {
                connect,
                endpoints,
                grace_period: self.grace_period.unwrap_or(DEFAULT_GRACE_PERIOD),
            },
            log_level: self.log.level,
            transport,
            inspect,
            log_subsystems: self.log.subsystems.unwrap_or_default(),
            server: self.server.convert()?,
            warnings: Vec::new(),
        })
    }
}

/// Why a configuration is not usable. Messages name the key or value and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key has a bad value, or is unknown.
    #[error("{}{message}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
    Invalid {
        /// Dotted path of the key (`listeners[0].timeout`); empty for the document itself.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An endpoint id is not valid.
    #[error("invalid endpoint id {id:?}: {source}")]
    EndpointId {
        /// The id given.
        id: String,
        /// Why it is invalid.
        #[source]
        source: EndpointIdError,
    },
    /// A target address is not valid.
    #[error("invalid address {addr:?}: {reason}")]
    Addr {
        /// The address given.
        addr: String,
        /// Why it is invalid and what to give instead.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn parses_addresses() {
        let cases: &[(&str, Protocol, &str)] = &[
            ("3000", Protocol::Http, "http://localhost:3000"),
            ("localhost:3000", Protocol::Http, "http://localhost:3000"),
            ("10.0.0.5:80", Protocol::Http, "http://10.0.0.5"),
            (":8080", Protocol::Http, "http://127.0.0.1:8080"),
            ("[::1]:3000", Protocol::Http, "http://[::1]:3000"),
            (
                "http://127.0.0.1:3000",
                Protocol::Http,
                "http://127.0.0.1:3000",
            ),
            (
                "http://127.0.0.1:3000/",
                Protocol::Http,
                "http://127.0.0.1:3000",
            ),
            (
                "http://svc.local:3000/api",
                Protocol::Http,
                "http://svc.local:3000/api",
            ),
            ("http://svc.local", Protocol::Http, "http://svc.local"),
            ("5432", Protocol::Tcp, "localhost:5432"),
            (
                "https://svc.local:8443",
                Protocol::Http,
                "https://svc.local:8443",
            ),
            ("db.local:5432", Protocol::Tcp, "db.local:5432"),
            ("[::1]:22", Protocol::Tcp, "[::1]:22"),
            ("tcp://db.local:5432", Protocol::Tcp, "db.local:5432"),
        ];
        assert!(!cases.is_empty());
        for (addr, proto, want) in cases {
            let ep = EndpointConfig::parse("shop", addr, *proto, T)
                .unwrap_or_else(|e| panic!("{addr}: {e}"));
            assert_eq!(ep.target.to_string(), *want, "addr {addr:?}");
            assert_eq!(ep.protocol, *proto);
            assert_eq!(ep.id.as_str(), "shop");
            assert_eq!(ep.timeout, T);
        }
    }

    #[test]
    fn rejects_bad_addresses() {
        let cases: &[(&str, Protocol, &str)] = &[
            ("", Protocol::Http, "empty"),
            ("abc", Protocol::Http, "expected a port"),
            ("host:", Protocol::Http, "expected a port"),
            ("host:99999", Protocol::Http, "expected a port"),
            ("0", Protocol::Tcp, "port 0"),
            (
                "https://127.0.0.1:3000",
                Protocol::Tcp,
                "a TCP endpoint carries raw bytes",
            ),
            ("ftp://x:21", Protocol::Http, "unsupported scheme"),
            ("bad host:80", Protocol::Tcp, "not a valid hostname"),
            ("http://", Protocol::Http, "not a valid URL"),
        ];
        for (addr, proto, want) in cases {
            let err = EndpointConfig::parse("shop", addr, *proto, T)
                .expect_err(addr)
                .to_string();
            assert!(err.contains(want), "addr {addr:?}: {err}");
            assert!(
                err.contains(&format!("{addr:?}")),
                "error names the address: {err}"
            );
        }
        let err = EndpointConfig::parse("bad id", "3000", Protocol::Http, T)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid endpoint id \"bad id\""), "{err}");
    }

    #[test]
    fn parses_go_agent_yaml() {
        let yaml = r#"
connect:
  url: http://piko.example.com:8001
  timeout: 10s
listeners:
  - endpoint_id: shop
    addr: "3000"
    protocol: http
    access_log: true
    timeout: 1m
  - endpoint_id: db
    addr: db.local:5432
    protocol: tcp
log:
  level: debug
grace_period: 1m
"#;
        let f = ConfigFile::from_yaml_str(yaml).unwrap();
        assert_eq!(f.log_level.as_deref(), Some("debug"));
        let c = f.agent;
        assert_eq!(c.connect.url, "http://piko.example.com:8001");
        assert_eq!(c.connect.timeout, Duration::from_secs(10));
        assert_eq!(c.connect.token, None);
        assert_eq!(c.grace_period, Duration::from_secs(60));
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[0].target.to_string(), "http://localhost:3000");
        assert_eq!(c.endpoints[0].timeout, Duration::from_secs(60));
        assert_eq!(c.endpoints[1].target, Target::Tcp("db.local:5432".into()));
        assert_eq!(c.endpoints[1].timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(
            DEFAULT_REQUEST_TIMEOUT,
            Duration::from_secs(10),
            "the original's"
        );
        assert_eq!(
            DEFAULT_GRACE_PERIOD,
            Duration::from_secs(60),
            "the original's"
        );
        assert_eq!(c.endpoints[0].access_log, default_access_log());
        assert_eq!(c.endpoints[1].access_log, default_access_log());

        // The original agent's access_log section, and `false` for none.
        let a = AgentConfig::from_yaml_str(
            "listeners:\n  - endpoint_id: a\n    addr: '80'\n    access_log:\n      level: debug\n      request_headers:\n        block_list: [user-agent]\n  - endpoint_id: b\n    addr: '81'\n    access_log: false\n",
        )
        .unwrap();
        assert_eq!(
            a.endpoints[0].access_log.level(),
            Some(tracing::Level::DEBUG)
        );
        assert_eq!(a.endpoints[1].access_log.level(), None);

        let d =
            AgentConfig::from_yaml_str("listeners:\n  - endpoint_id: a\n    addr: '80'\n").unwrap();
        assert_eq!(d.connect.url, DEFAULT_CONNECT_URL);
        assert_eq!(d.grace_period, DEFAULT_GRACE_PERIOD);
        assert_eq!(d.endpoints[0].protocol, Protocol::Http);
    }

    /// Every key of the original Go agent's file (v0.9), empty TLS paths included.
    #[test]
    fn parses_every_key_of_the_original_agent_file() {
        let yaml = r#"
listeners:
  - endpoint_id: shop
    addr: https://localhost:8443
    protocol: http
    access_log:
      level: info
      disable: false
      request_headers: {block_list: [], allow_list: []}
      response_headers: {block_list: [], allow_list: []}
    timeout: 15s
    http_client:
      keep_alive_timeout: 10s
      idle_conn_timeout: 0s
      max_idle_conns: -1
      disable_compression: true
    tls:
      cert: ""
      key: ""
      root_cas: /etc/piko/local-ca.pem
      insecure_skip_verify: true
connect:
  url: http://piko:8001
  token: abc.def
  tenant_id: acme
  timeout: 5s
  tls: {cert: "", key: "", root_cas: "", insecure_skip_verify: false}
  proxy_url: ""
server:
  enabled: true
  bind_addr: 127.0.0.1:5001
log:
  level: debug
  subsystems: [proxy.http.access]
grace_period: 2m
"#;
        let f = ConfigFile::from_yaml_str(yaml).unwrap();
        let c = &f.agent.connect;
        assert_eq!(c.tenant_id.as_deref(), Some("acme"));
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("abc.def"));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(
            f.transport,
            TransportConfig::default(),
            "empty paths are unset"
        );
        let ep = &f.agent.endpoints[0];
        assert_eq!(ep.target.to_string(), "https://localhost:8443");
        assert_eq!(ep.timeout, Duration::from_secs(15));
        assert_eq!(
            ep.tls,
            TlsConfig {
                root_cas: Some("/etc/piko/local-ca.pem".into()),
                insecure_skip_verify: true,
                ..TlsConfig::default()
            }
        );
        assert_eq!(
            ep.http_client,
            HttpClientConfig {
                keep_alive_timeout: Duration::from_secs(10),
                idle_conn_timeout: Duration::from_secs(90),
                max_idle_conns: None,
                disable_compression: true,
            }
        );
        assert_eq!(
            f.server.addr().unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 5001)))
        );
        assert_eq!(f.log_subsystems, ["proxy.http.access"]);
        assert_eq!(f.agent.grace_period, Duration::from_secs(120));
        let d = ConfigFile::from_yaml_str("server:\n  enabled: true\n").unwrap();
        assert_eq!(
            d.server.addr().unwrap(),
            Some(SocketAddr::from(([0, 0, 0, 0], 5000))),
            "the original's :5000"
        );
        assert_eq!(
            ConfigFile::from_yaml_str("")
                .unwrap()
                .server
                .addr()
                .unwrap(),
            None
        );
    }

    #[test]
    fn parses_tls_and_proxy_keys() {
        let yaml = r#"
connect:
  url: https://piko.example.com
  proxy_url: http://proxy.corp:3128
  tls:
    root_cas: /etc/piko/ca.pem
    cert: /etc/piko/client.pem
    key: /etc/piko/client.key
    insecure_skip_verify: true
"#;
        let f = ConfigFile::from_yaml_str(yaml).unwrap();
        assert_eq!(
            f.transport,
            TransportConfig {
                tls: TlsConfig {
                    root_cas: Some("/etc/piko/ca.pem".into()),
                    cert: Some("/etc/piko/client.pem".into()),
                    key: Some("/etc/piko/client.key".into()),
                    insecure_skip_verify: true,
                },
                proxy_url: Some("http://proxy.corp:3128".into()),
            }
        );
        let d = ConfigFile::from_yaml_str("connect:\n  url: http://x\n").unwrap();
        assert_eq!(d.transport, TransportConfig::default());
        assert!(!d.transport.tls.insecure_skip_verify);
    }

    #[test]
    fn yaml_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("connect:\n  url: x\n  token: ${PIKO_TOKEN}\n", "connect.token: the value refers to an environment variable; pass --config.expand-env"),
            ("connect:\n  tenant: x\n", "connect.tenant: unknown field `tenant`"),
            ("server:\n  bind_addr: nowhere\n", "server.bind_addr: invalid address \"nowhere\""),
            ("listeners:\n  - endpoint_id: a\n    addr: '1'\n    http_client:\n      max_idle_conns: -5\n", "listeners[0].http_client.max_idle_conns: -5 is not a count"),
            ("listeners:\n  - endpoint_id: a\n    addr: '1'\n    tls:\n      ca: x\n", "listeners[0].tls.ca: unknown field `ca`"),
            ("connect:\n  tls:\n    ca: x\n", "connect.tls.ca: unknown field `ca`"),
            ("connect:\n  tls:\n    insecure_skip_verify: maybe\n", "connect.tls.insecure_skip_verify: invalid type"),
            ("connect:\n  urll: x\n", "connect.urll: unknown field `urll`"),
            ("bogus: 1\n", "bogus: unknown field `bogus`"),
            ("connect:\n  timeout: soon\n", "connect.timeout: invalid duration \"soon\""),
            ("grace_period: 5 parsecs\n", "grace_period: invalid duration"),
            ("listeners:\n  - endpoint_id: a\n    addr: '1'\n    timeout: x\n", "listeners[0].timeout: invalid duration"),
            ("listeners:\n  - endpoint_id: a\n    addr: '1'\n    protocol: udp\n", "listeners[0].protocol: unknown variant `udp`"),
            ("listeners:\n  - endpoint_id: a\n    addr: '1'\n    colour: red\n", "listeners[0].colour: unknown field `colour`"),
            ("listeners:\n  - endpoint_id: a\n", "listeners[0]: missing field `addr`"),
            ("listeners:\n  - endpoint_id: a\n    addr: nope\n", "listeners[0].addr: invalid address \"nope\""),
            ("listeners:\n  - endpoint_id: a/b\n    addr: '1'\n", "listeners[0].endpoint_id: invalid endpoint id"),
            ("listeners:\n  - endpoint_id: a\n    addr: '1'\n  - endpoint_id: a\n    addr: '2'\n", "listeners[1].endpoint_id: endpoint a is listed twice"),
            ("listeners:\n  - endpoint_id: a\n    addr: '1'\n    access_log: 3\n", "listeners[0].access_log: use true, false or a section"),
            ("listeners:\n  - endpoint_id: a\n    addr: '1'\n    access_log:\n      lvl: info\n", "listeners[0].access_log: unknown field `lvl`"),
            ("listeners:\n  - endpoint_id: a\n    addr: '1'\n    access_log:\n      level: loud\n", "listeners[0].access_log.level: invalid level \"loud\""),
            ("inspect:\n  addr: nowhere\n", "inspect.addr: invalid address \"nowhere\": use host:port such as 127.0.0.1:4040, or \"\" to turn the inspector off"),
            ("inspect:\n  port: 4040\n", "inspect.port: unknown field `port`"),
            ("listeners:\n  - endpoint_id: a\n    addr: '1'\n    access_log:\n      response_headers:\n        allow_list: [a]\n        block_list: [b]\n", "listeners[0].access_log.response_headers: set allow_list or block_list, not both"),
        ];
        for (yaml, want) in cases {
            let err = AgentConfig::from_yaml_str(yaml)
                .expect_err(yaml)
                .to_string();
            assert!(
                err.starts_with(want),
                "yaml {yaml:?}\n got: {err}\nwant: {want}"
            );
        }
    }

    #[test]
    fn inspect_addr_is_read_from_the_file_and_empty_turns_it_off() {
        let cases: &[(&str, Option<InspectAddr>)] = &[
            ("", None),
            ("inspect: {}\n", None),
            (
                "inspect:\n  addr: 127.0.0.1:4141\n",
                Some(InspectAddr::At(([127, 0, 0, 1], 4141).into())),
            ),
            (
                "inspect:\n  addr: '4242'\n",
                Some(InspectAddr::At(([127, 0, 0, 1], 4242).into())),
            ),
            (
                "inspect:\n  addr: localhost:0\n",
                Some(InspectAddr::At(([127, 0, 0, 1], 0).into())),
            ),
            ("inspect:\n  addr: ''\n", Some(InspectAddr::Off)),
        ];
        for (yaml, want) in cases {
            let f = ConfigFile::from_yaml_str(yaml).unwrap_or_else(|e| panic!("{yaml:?}: {e}"));
            assert_eq!(f.inspect, *want, "{yaml:?}");
        }
        assert_eq!(
            InspectAddr::parse(DEFAULT_INSPECT_ADDR).unwrap(),
            InspectAddr::default()
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = AgentConfig::from_yaml_file(Path::new("/nonexistent/piko.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read config file /nonexistent/piko.yaml: "),
            "{err}"
        );
    }
}
