//! Server configuration: defaults < YAML file < `PIKO_*` environment < dotted flags.
//!
//! Every key of the file is also a flag (`proxy.bind_addr` is `--proxy.bind-addr`) and an
//! environment variable (`PIKO_PROXY_BIND_ADDR`). The merged tree is deserialized once
//! (unknown keys rejected) and converted into [`Config`], whose fields cannot be wrong; every
//! error names the key.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

/// A configuration error; the message names the key and says what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {msg}"))
}

/// A duration written like `30s`, `1m30s` or `500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &humantime::format_duration(self.0)
                .to_string()
                .replace(' ', ""),
        )
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); use a value like 30s, 1m or 500ms"
            ))
        })
    }
}

/// The configuration file's shape (the original Piko's keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Proxy port settings.
    pub proxy: ProxyFile,
    /// Upstream port settings.
    pub upstream: PortFile,
    /// Admin port settings.
    pub admin: PortFile,
    /// Cluster settings.
    pub cluster: ClusterFile,
    /// Logging.
    pub log: LogFile,
    /// How long in-flight requests may take to finish on shutdown.
    pub grace_period: Dur,
}

/// `proxy.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyFile {
    /// Listen address.
    pub bind_addr: String,
    /// Address other nodes use to reach this port.
    pub advertise_addr: String,
    /// Time an upstream has to start its response.
    pub timeout: Dur,
    /// HTTP server limits.
    pub http: HttpFile,
}

/// `proxy.http.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpFile {
    /// Time a client has to send a request head; also how long an idle keep-alive
    /// connection waits for its next request.
    pub read_header_timeout: Dur,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: u64,
}

/// `upstream.*` and `admin.*`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortFile {
    /// Listen address.
    pub bind_addr: String,
    /// Address other nodes use to reach this port.
    pub advertise_addr: String,
}

/// `cluster.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterFile {
    /// This node's id (generated when empty).
    pub node_id: String,
    /// Listen address of the node-to-node port.
    pub bind_addr: String,
    /// Address other nodes use to reach this node.
    pub advertise_addr: String,
    /// Addresses of nodes to join.
    pub join: Vec<String>,
    /// Where Raft log and snapshots persist.
    pub data_dir: String,
}

/// `log.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogFile {
    /// Minimum level: error, warn, info, debug, trace.
    pub level: String,
    /// Subsystems logged at debug level whatever the level (e.g. `proxy`, `upstream`).
    pub subsystems: Vec<String>,
    /// `text` or `json`.
    pub format: String,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            proxy: ProxyFile::default(),
            upstream: PortFile {
                bind_addr: ":8001".into(),
                advertise_addr: String::new(),
            },
            admin: PortFile {
                bind_addr: ":8002".into(),
                advertise_addr: String::new(),
            },
            cluster: ClusterFile::default(),
            log: LogFile::default(),
            grace_period: Dur(Duration::from_secs(60)),
        }
    }
}

impl Default for ProxyFile {
    fn default() -> Self {
        Self {
            bind_addr: ":8000".into(),
            advertise_addr: String::new(),
            timeout: Dur(Duration::from_secs(30)),
            http: HttpFile::default(),
        }
    }
}

impl Default for HttpFile {
    fn default() -> Self {
        Self {
            read_header_timeout: Dur(Duration::from_secs(10)),
            max_header_bytes: 1 << 20,
        }
    }
}

impl Default for ClusterFile {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            bind_addr: ":8003".into(),
            advertise_addr: String::new(),
            join: vec![],
            data_dir: String::new(),
        }
    }
}

impl Default for LogFile {
    fn default() -> Self {
        Self {
            level: "info".into(),
            subsystems: vec![],
            format: "text".into(),
        }
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
    /// Largest request head, bytes.
    pub max_header_bytes: usize,
    /// This node's id.
    pub node_id: String,
    /// Nodes to join.
    pub join: Vec<String>,
    /// Raft data directory (empty: in memory).
    pub data_dir: Option<PathBuf>,
    /// Logging settings.
    pub log: LogFile,
    /// Shutdown grace period.
    pub grace_period: Duration,
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

/// Parse a listen address: `host:port`, `:port` (all interfaces) or `[v6]:port`.
pub fn parse_bind_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(err(
            key,
            "missing address; use host:port such as 127.0.0.1:8000",
        ));
    }
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    if let Ok(a) = full.parse() {
        return Ok(a);
    }
    match full.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| err(key, format!("{s:?} resolves to no address"))),
        Err(_) => Err(err(
            key,
            format!("invalid address {s:?}; use host:port such as 127.0.0.1:8000"),
        )),
    }
}

/// Every leaf key of the configuration tree with its default value, in dotted form.
pub fn leaf_keys() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let tree = serde_yaml_ng::to_value(FileConfig::default()).unwrap_or(Value::Null);
    walk(&tree, String::new(), &mut out);
    out
}

fn walk(v: &Value, prefix: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                let k = k.as_str().unwrap_or_default();
                let key = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(child, key, out);
            }
        }
        other => {
            out.insert(prefix, other.clone());
        }
    }
}

/// The flag name of a key: `proxy.bind_addr` → `proxy.bind-addr`.
pub fn flag_name(key: &str) -> String {
    key.replace('_', "-")
}

/// The environment variable of a key: `proxy.bind_addr` → `PIKO_PROXY_BIND_ADDR`.
pub fn env_name(key: &str) -> String {
    format!("PIKO_{}", key.replace('.', "_").to_uppercase())
}

/// Expand `${VAR}` and `${VAR:default}` in `s` from `env`.
pub fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        out.push_str(
            &env(name)
                .or_else(|| default.map(str::to_string))
                .unwrap_or_default(),
        );
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Turn a flag or environment string into a value of the same kind as the key's default.
fn typed_value(default: &Value, raw: &[String]) -> Value {
    match default {
        Value::Sequence(_) => Value::Sequence(
            raw.iter()
                .flat_map(|r| r.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        Value::Bool(_) => match raw.last().map(String::as_str) {
            Some("true") => Value::Bool(true),
            Some("false") => Value::Bool(false),
            other => Value::String(other.unwrap_or_default().to_string()),
        },
        Value::Number(_) => {
            let s = raw.last().cloned().unwrap_or_default();
            s.parse::<u64>()
                .map(Value::from)
                .unwrap_or(Value::String(s))
        }
        _ => Value::String(raw.last().cloned().unwrap_or_default()),
    }
}

fn set_path(tree: &mut Value, key: &str, v: Value) {
    let mut cur = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !matches!(cur, Value::Mapping(_)) {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else { return };
        let k = Value::String((*p).to_string());
        if i + 1 == parts.len() {
            m.insert(k, v);
            return;
        }
        cur = m.entry(k).or_insert(Value::Mapping(Mapping::new()));
    }
}

/// Where configuration comes from, besides the defaults.
#[derive(Debug, Default)]
pub struct Sources {
    /// The YAML file's text, if any, and its path for messages.
    pub file: Option<(String, String)>,
    /// Expand `${VAR}` in the file.
    pub expand_env: bool,
    /// Environment variables (`PIKO_*` are read).
    pub env: BTreeMap<String, String>,
    /// Dotted flags given on the command line: key → values.
    pub flags: BTreeMap<String, Vec<String>>,
}

/// Load the configuration from its sources.
pub fn load(src: &Sources) -> Result<Config, ConfigError> {
    let keys = leaf_keys();
    let mut tree = Value::Mapping(Mapping::new());
    if let Some((path, text)) = &src.file {
        let text = if src.expand_env {
            expand_env(text, &|n| src.env.get(n).cloned())
        } else {
            text.clone()
        };
        let v: Value = serde_yaml_ng::from_str(&text)
            .map_err(|e| ConfigError(format!("config file {path}: {e}")))?;
        match v {
            Value::Null => {}
            Value::Mapping(_) => tree = v,
            _ => {
                return Err(ConfigError(format!(
                    "config file {path}: expected a mapping of keys at the top level"
                )))
            }
        }
    }
    for (key, default) in &keys {
        if let Some(v) = src.env.get(&env_name(key)) {
            set_path(
                &mut tree,
                key,
                typed_value(default, std::slice::from_ref(v)),
            );
        }
    }
    for (key, vals) in &src.flags {
        let default = keys.get(key).ok_or_else(|| err(key, "unknown flag"))?;
        set_path(&mut tree, key, typed_value(default, vals));
    }
    let file: FileConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_yaml_ng appends " at line N column M" for file input; keep the message short.
        ConfigError(format!(
            "{}: {}",
            if path == "." { "config".into() } else { path },
            inner
        ))
    })?;
    file.into_config()
}

impl FileConfig {
    /// Validate and convert into the typed [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let level = self.log.level.to_lowercase();
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            return Err(err(
                "log.level",
                format!(
                    "invalid level {:?}; use error, warn, info, debug or trace",
                    self.log.level
                ),
            ));
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(err(
                "log.format",
                format!("invalid format {:?}; use text or json", self.log.format),
            ));
        }
        if self.proxy.timeout.0.is_zero() {
            return Err(err("proxy.timeout", "must be greater than zero"));
        }
        if self.proxy.http.max_header_bytes < 8192 || self.proxy.http.max_header_bytes > 64 << 20 {
            return Err(err(
                "proxy.http.max_header_bytes",
                "must be between 8192 and 67108864",
            ));
        }
        let opt = |s: String| if s.trim().is_empty() { None } else { Some(s) };
        let node_id = if self.cluster.node_id.is_empty() {
            format!("piko-{:08x}", rand_u32())
        } else {
            let id = self.cluster.node_id.clone();
            if !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                || id.len() > 64
            {
                return Err(err(
                    "cluster.node_id",
                    "use up to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            id
        };
        Ok(Config {
            proxy_addr: parse_bind_addr("proxy.bind_addr", &self.proxy.bind_addr)?,
            upstream_addr: parse_bind_addr("upstream.bind_addr", &self.upstream.bind_addr)?,
            admin_addr: parse_bind_addr("admin.bind_addr", &self.admin.bind_addr)?,
            cluster_addr: parse_bind_addr("cluster.bind_addr", &self.cluster.bind_addr)?,
            advertise: Advertise {
                proxy: opt(self.proxy.advertise_addr),
                upstream: opt(self.upstream.advertise_addr),
                admin: opt(self.admin.advertise_addr),
                cluster: opt(self.cluster.advertise_addr),
            },
            proxy_timeout: self.proxy.timeout.0,
            read_header_timeout: self.proxy.http.read_header_timeout.0,
            max_header_bytes: self.proxy.http.max_header_bytes as usize,
            node_id,
            join: self.cluster.join,
            data_dir: opt(self.cluster.data_dir).map(PathBuf::from),
            log: LogFile { level, ..self.log },
            grace_period: self.grace_period.0,
        })
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
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
mod tests {
    use super::*;

    fn src(file: Option<&str>, env: &[(&str, &str)], flags: &[(&str, &str)]) -> Sources {
        Sources {
            file: file.map(|f| ("piko.yaml".to_string(), f.to_string())),
            expand_env: true,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags: flags
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
        }
    }

    #[test]
    fn defaults_are_the_original_ports() {
        let c = load(&Sources::default()).unwrap();
        assert_eq!(c.proxy_addr, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(c.upstream_addr, "0.0.0.0:8001".parse().unwrap());
        assert_eq!(c.admin_addr, "0.0.0.0:8002".parse().unwrap());
        assert_eq!(c.cluster_addr, "0.0.0.0:8003".parse().unwrap());
        assert_eq!(c.proxy_timeout, Duration::from_secs(30));
        assert_eq!(c.grace_period, Duration::from_secs(60));
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let file = "proxy:\n  bind_addr: 127.0.0.1:1000\n  timeout: 5s\nupstream:\n  bind_addr: 127.0.0.1:1001\n";
        let c = load(&src(
            Some(file),
            &[
                ("PIKO_PROXY_BIND_ADDR", "127.0.0.1:2000"),
                ("PIKO_PROXY_TIMEOUT", "7s"),
            ],
            &[("proxy.bind_addr", "127.0.0.1:3000")],
        ))
        .unwrap();
        assert_eq!(c.proxy_addr.port(), 3000, "flag wins");
        assert_eq!(c.proxy_timeout, Duration::from_secs(7), "env beats file");
        assert_eq!(c.upstream_addr.port(), 1001, "file beats default");
    }

    #[test]
    fn expands_env_in_file() {
        let file = "proxy:\n  bind_addr: ${ADDR}\n  timeout: ${TIMEOUT:12s}\n";
        let c = load(&src(Some(file), &[("ADDR", "127.0.0.1:4000")], &[])).unwrap();
        assert_eq!(
            (c.proxy_addr.port(), c.proxy_timeout),
            (4000, Duration::from_secs(12))
        );
        assert_eq!(
            expand_env("a${X}b${Y:z}c${", &|n| (n == "X").then(|| "1".into())),
            "a1bzc${"
        );
    }

    #[test]
    fn list_values_from_flags_and_env() {
        let c = load(&src(None, &[("PIKO_CLUSTER_JOIN", "a:8003,b:8003")], &[])).unwrap();
        assert_eq!(c.join, vec!["a:8003", "b:8003"]);
        let c = load(&src(None, &[], &[("cluster.join", "c:8003")])).unwrap();
        assert_eq!(c.join, vec!["c:8003"]);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: [(Sources, &str); 8] = [
            (
                src(Some("proxy:\n  bind_adr: x\n"), &[], &[]),
                "proxy.bind_adr: unknown field `bind_adr`",
            ),
            (src(Some("nope: 1\n"), &[], &[]), "unknown field `nope`"),
            (
                src(Some("proxy:\n  timeout: soon\n"), &[], &[]),
                "proxy.timeout: invalid duration \"soon\"",
            ),
            (
                src(None, &[("PIKO_PROXY_TIMEOUT", "10 parsecs")], &[]),
                "proxy.timeout: invalid duration",
            ),
            (
                src(None, &[], &[("upstream.bind_addr", "nowhere")]),
                "upstream.bind_addr: invalid address",
            ),
            (
                src(None, &[], &[("log.level", "loud")]),
                "log.level: invalid level",
            ),
            (
                src(None, &[], &[("proxy.http.max_header_bytes", "lots")]),
                "proxy.http.max_header_bytes: invalid type",
            ),
            (
                src(Some("proxy: [1, 2]\n"), &[], &[]),
                "proxy: invalid type",
            ),
        ];
        for (s, want) in cases {
            let e = load(&s).unwrap_err().to_string();
            assert!(e.contains(want), "error {e:?} should contain {want:?}");
        }
    }

    #[test]
    fn keys_flags_and_env_names() {
        let keys = leaf_keys();
        assert!(keys.contains_key("proxy.http.read_header_timeout"));
        assert!(keys.contains_key("cluster.join"));
        assert_eq!(
            flag_name("proxy.http.read_header_timeout"),
            "proxy.http.read-header-timeout"
        );
        assert_eq!(env_name("cluster.node_id"), "PIKO_CLUSTER_NODE_ID");
    }
}
