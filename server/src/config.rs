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

use piko_protocol::access_log::{AccessLog, AccessLogConfig};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};
use std::sync::Arc;

use crate::auth::{JwksLocation, JwksSource, PortAuth, Verifier, VerifierSettings};
use crate::tls::TlsFiles;

/// A configuration error; the message names the key and says what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {msg}"))
}

/// A duration written like `30s`, `1m30s` or `500ms`, at most [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// The longest duration any key takes: one year (`1y`). More is a typo, and deadlines are
/// `Instant::now() + d`, which panics on overflow (std's `Instant` holds i64 seconds:
/// `10000000000000000000s` made every proxy and admin connection panic). A year is far below
/// that on every platform and longer than any timeout, lease or grace period needs.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

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
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); use a value like 30s, 1m or 500ms"
            ))
        })?;
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "duration {s:?} is too long; the limit is {}",
                humantime::format_duration(MAX_DURATION)
            )));
        }
        Ok(Dur(d))
    }
}

/// The configuration file's shape (the original Piko's keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Proxy port settings.
    pub proxy: ProxyFile,
    /// Upstream port settings.
    pub upstream: UpstreamFile,
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
    /// Client token verification.
    pub auth: AuthFile,
    /// TLS.
    pub tls: TlsFile,
    /// One record per request (`proxy.access_log.*`, as in the original).
    pub access_log: AccessLogConfig,
    /// Addresses or CIDR networks of proxies in front of this node (load balancers) whose
    /// `X-Forwarded-*` headers are kept; every other client's are replaced.
    pub trusted_proxies: Vec<String>,
}

/// `proxy.http.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpFile {
    /// Time a client has to send a request head (408 after).
    pub read_header_timeout: Dur,
    /// How long a keep-alive connection waits for its next request.
    pub idle_timeout: Dur,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: u64,
}

/// `upstream.*`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFile {
    /// Listen address.
    pub bind_addr: String,
    /// Address other nodes use to reach this port.
    pub advertise_addr: String,
    /// Upstream token verification.
    pub auth: AuthFile,
    /// TLS.
    pub tls: TlsFile,
    /// Tenants, each with its own keys, selected by `x-piko-tenant-id` (file only).
    pub tenants: Vec<TenantFile>,
    /// Streams open at once on one upstream connection; more requests get 502.
    pub max_streams: u64,
    /// Upstreams one endpoint may have on this node (0: no limit); more registrations get 429.
    pub max_upstreams_per_endpoint: u64,
}

/// `admin.*`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortFile {
    /// Listen address.
    pub bind_addr: String,
    /// Address other nodes use to reach this port.
    pub advertise_addr: String,
    /// Token verification (`/health` and `/ready` stay open).
    pub auth: AuthFile,
    /// TLS.
    pub tls: TlsFile,
}

/// A string that never prints: `***` in Debug output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

/// `*.auth.*`: how a port verifies JWTs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthFile {
    /// HMAC secret (HS256/384/512).
    pub hmac_secret_key: SecretString,
    /// PEM RSA public key (RS*/PS*).
    pub rsa_public_key: String,
    /// PEM ECDSA public key (ES256/ES384).
    pub ecdsa_public_key: String,
    /// PEM Ed25519 public key (EdDSA).
    pub ed25519_public_key: String,
    /// Required `aud` claim.
    pub audience: String,
    /// Required `iss` claim.
    pub issuer: String,
    /// Keep connections open after their token expires.
    pub disable_disconnect_on_expiry: bool,
    /// Reject tokens without the `piko.endpoints` claim.
    pub require_endpoints: bool,
    /// A JSON Web Key Set instead of the keys above.
    pub jwks: JwksFile,
}

/// `*.auth.jwks.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwksFile {
    /// `file:///path` or `https://…`.
    pub endpoint: String,
    /// Reload interval.
    pub cache_ttl: Dur,
    /// Fetch timeout.
    pub timeout: Dur,
}

impl Default for JwksFile {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            cache_ttl: Dur(Duration::from_secs(3600)),
            timeout: Dur(Duration::from_secs(10)),
        }
    }
}

/// `upstream.tenants[]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantFile {
    /// Tenant id, sent by upstreams in `x-piko-tenant-id`.
    pub id: String,
    /// The tenant's keys.
    pub auth: AuthFile,
}

/// `*.tls.*`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFile {
    /// PEM certificate chain file (enables TLS).
    pub cert: String,
    /// PEM private key file.
    pub key: String,
    /// PEM CA file that client certificates must chain to (enables mTLS).
    pub client_cas: String,
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
    /// How long a node may go unheard by the leader before its endpoints are removed.
    pub node_lease: Dur,
    /// TLS between nodes.
    pub tls: ClusterTlsFile,
    /// A secret every node sends on the cluster port; calls without it are refused (empty:
    /// none required).
    pub token: SecretString,
    /// Accept cluster peers from any address without `token` or mutual TLS (a private
    /// network only). Off: without either, the cluster port answers loopback peers only.
    pub allow_unauthenticated_peers: bool,
}

/// `cluster.tls.*`: the cluster port's certificate (also presented to other nodes as a
/// client certificate), the CAs peers' client certificates must chain to, and the CAs that
/// other nodes' certificates are verified against.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTlsFile {
    /// PEM certificate chain file (enables TLS between nodes).
    pub cert: String,
    /// PEM private key file.
    pub key: String,
    /// PEM CA file that other nodes' client certificates must chain to (enables mTLS).
    pub client_cas: String,
    /// PEM CA file other nodes' certificates are verified against (empty: the OS trust store).
    pub root_cas: String,
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
            upstream: UpstreamFile {
                bind_addr: ":8001".into(),
                max_streams: 65_536,
                ..UpstreamFile::default()
            },
            admin: PortFile {
                bind_addr: ":8002".into(),
                ..PortFile::default()
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
            auth: AuthFile::default(),
            tls: TlsFile::default(),
            access_log: AccessLogConfig::default(),
            trusted_proxies: vec![],
        }
    }
}

impl Default for HttpFile {
    fn default() -> Self {
        Self {
            read_header_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(300)),
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
            node_lease: Dur(Duration::from_secs(10)),
            tls: ClusterTlsFile::default(),
            token: SecretString::default(),
            allow_unauthenticated_peers: false,
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
        // Lists of sections (upstream.tenants) are set in the file only.
        Value::Sequence(_) if prefix.ends_with("tenants") => {}
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

/// Merge `over` into `base`: mappings key by key, anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
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
    // Start from the defaults and merge the file over them, so a partial section keeps the
    // defaults of the keys it does not set.
    let mut tree =
        serde_yaml_ng::to_value(FileConfig::default()).unwrap_or(Value::Mapping(Mapping::new()));
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
            Value::Mapping(_) => merge(&mut tree, v),
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
            crate::cluster::check_node_id(&id).map_err(|e| err("cluster.node_id", e))?;
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
            read_header_timeout: match self.proxy.http.read_header_timeout.0 {
                d if d.is_zero() => {
                    return Err(err(
                        "proxy.http.read_header_timeout",
                        "must be greater than zero",
                    ))
                }
                d => d,
            },
            idle_timeout: match self.proxy.http.idle_timeout.0 {
                d if d.is_zero() => {
                    return Err(err("proxy.http.idle_timeout", "must be greater than zero"))
                }
                d => d,
            },
            max_header_bytes: self.proxy.http.max_header_bytes as usize,
            trusted_proxies: trusted_proxies(&self.proxy.trusted_proxies)?,
            node_id_generated: self.cluster.node_id.is_empty(),
            node_id,
            join: self.cluster.join,
            data_dir: opt(self.cluster.data_dir).map(PathBuf::from),
            node_lease: match self.cluster.node_lease.0 {
                d if d < Duration::from_secs(1) => {
                    return Err(err("cluster.node_lease", "must be at least 1s"))
                }
                d => d,
            },
            cluster_client_tls: cluster_client_tls(&self.cluster.tls)?,
            cluster_token: match self.cluster.token.0.trim() {
                "" => None,
                t if t.len() < 16 => {
                    return Err(err(
                        "cluster.token",
                        "too short; use at least 16 random characters",
                    ))
                }
                t if !t.bytes().all(|b| b.is_ascii_graphic()) => {
                    return Err(err(
                        "cluster.token",
                        "use printable characters without spaces",
                    ))
                }
                t => Some(SecretString(t.to_string())),
            },
            cluster_allow_unauthenticated_peers: self.cluster.allow_unauthenticated_peers,
            cluster_tls: tls_files(
                "cluster.tls",
                &TlsFile {
                    cert: self.cluster.tls.cert.clone(),
                    key: self.cluster.tls.key.clone(),
                    client_cas: self.cluster.tls.client_cas.clone(),
                },
                &[b"http/1.1"],
            )?,
            log: LogFile { level, ..self.log },
            grace_period: self.grace_period.0,
            max_streams_per_upstream: match self.upstream.max_streams {
                0 => return Err(err("upstream.max_streams", "must be at least 1")),
                n => n.min(1 << 20) as usize,
            },
            max_upstreams_per_endpoint: (self.upstream.max_upstreams_per_endpoint > 0)
                .then_some(self.upstream.max_upstreams_per_endpoint as usize),
            proxy_access_log: AccessLog::new(&self.proxy.access_log)
                .map_err(|e| ConfigError(format!("proxy.access_log.{e}")))?,
            proxy_auth: port_auth("proxy.auth", &self.proxy.auth, &[])?,
            upstream_auth: port_auth("upstream.auth", &self.upstream.auth, &self.upstream.tenants)?,
            admin_auth: port_auth("admin.auth", &self.admin.auth, &[])?,
            proxy_tls: tls_files("proxy.tls", &self.proxy.tls, &[b"h2", b"http/1.1"])?,
            upstream_tls: tls_files("upstream.tls", &self.upstream.tls, &[b"http/1.1"])?,
            admin_tls: tls_files("admin.tls", &self.admin.tls, &[b"http/1.1"])?,
        })
    }
}

/// `proxy.trusted_proxies`: each entry a network (`10.0.0.0/8`, `fd00::/8`) or one address.
fn trusted_proxies(list: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    err(
                        "proxy.trusted_proxies",
                        format!("invalid CIDR {s:?}; use a network such as 10.0.0.0/8 or fd00::/8, or one address"),
                    )
                })
        })
        .collect()
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The verifier of one `auth` section, or `None` when it sets no key.
fn verifier(key: &str, a: &AuthFile) -> Result<Option<Arc<Verifier>>, ConfigError> {
    let jwks = match opt(&a.jwks.endpoint) {
        Some(ep) => Some(JwksSource {
            location: JwksLocation::parse(&ep)
                .map_err(|e| err(&format!("{key}.jwks.endpoint"), e))?,
            cache_ttl: a.jwks.cache_ttl.0.max(Duration::from_secs(1)),
            timeout: a.jwks.timeout.0.max(Duration::from_millis(100)),
        }),
        None => None,
    };
    let settings = VerifierSettings {
        hmac_secret: opt(&a.hmac_secret_key.0).map(String::into_bytes),
        rsa_public_key: opt(&a.rsa_public_key),
        ecdsa_public_key: opt(&a.ecdsa_public_key),
        ed25519_public_key: opt(&a.ed25519_public_key),
        jwks,
        audience: opt(&a.audience),
        issuer: opt(&a.issuer),
        disable_disconnect_on_expiry: a.disable_disconnect_on_expiry,
        require_endpoints: a.require_endpoints,
    };
    let any_key = settings.hmac_secret.is_some()
        || settings.rsa_public_key.is_some()
        || settings.ecdsa_public_key.is_some()
        || settings.ed25519_public_key.is_some()
        || settings.jwks.is_some();
    if !any_key {
        return Ok(None);
    }
    Verifier::new(settings)
        .map(|v| Some(Arc::new(v)))
        .map_err(|e| err(&format!("{key}.{}", e.field), e.message))
}

fn port_auth(key: &str, a: &AuthFile, tenants: &[TenantFile]) -> Result<PortAuth, ConfigError> {
    let mut auth = PortAuth {
        default: verifier(key, a)?,
        tenants: Default::default(),
    };
    for (i, t) in tenants.iter().enumerate() {
        let tkey = format!("upstream.tenants[{i}]");
        if t.id.trim().is_empty() {
            return Err(err(&format!("{tkey}.id"), "missing tenant id"));
        }
        let v = verifier(&format!("{tkey}.auth"), &t.auth)?
            .ok_or_else(|| err(&format!("{tkey}.auth"), "a tenant needs a verification key"))?;
        if auth.tenants.insert(t.id.clone(), v).is_some() {
            return Err(err(
                &format!("{tkey}.id"),
                format!("tenant {:?} is listed twice", t.id),
            ));
        }
    }
    Ok(auth)
}

fn tls_files(key: &str, t: &TlsFile, alpn: &[&[u8]]) -> Result<Option<TlsFiles>, ConfigError> {
    let (cert, tkey, cas) = (opt(&t.cert), opt(&t.key), opt(&t.client_cas));
    let files = match (cert, tkey) {
        (None, None) if cas.is_none() => return Ok(None),
        (Some(cert), Some(k)) => TlsFiles {
            cert: cert.into(),
            key: k.into(),
            client_cas: cas.map(Into::into),
        },
        (None, _) => {
            return Err(err(
                &format!("{key}.cert"),
                "missing; TLS needs a certificate and a key",
            ))
        }
        (Some(_), None) => {
            return Err(err(
                &format!("{key}.key"),
                "missing; TLS needs a certificate and a key",
            ))
        }
    };
    // Load once now so a bad file stops the server before it binds.
    crate::tls::load(&files, alpn).map_err(|e| err(key, e))?;
    Ok(Some(files))
}

/// The client side of cluster TLS: trust `root_cas` (or the OS store), present the node's
/// own certificate so peers requiring mTLS accept it.
fn cluster_client_tls(
    t: &ClusterTlsFile,
) -> Result<Option<Arc<rustls::ClientConfig>>, ConfigError> {
    let (cert, key) = match (opt(&t.cert), opt(&t.key)) {
        (Some(c), Some(k)) => (PathBuf::from(c), PathBuf::from(k)),
        _ if opt(&t.root_cas).is_some() => return Err(err(
            "cluster.tls.root_cas",
            "set cluster.tls.cert and cluster.tls.key too; TLS between nodes needs a certificate",
        )),
        // A missing half is reported by the server side's check.
        _ => return Ok(None),
    };
    crate::tls::client_config_with(
        opt(&t.root_cas).map(PathBuf::from).as_deref(),
        Some((&cert, &key)),
    )
    .map(Some)
    .map_err(|e| err("cluster.tls", e))
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
    fn limits() {
        let c = load(&Sources::default()).unwrap();
        assert_eq!(
            (c.max_streams_per_upstream, c.max_upstreams_per_endpoint),
            (65_536, None)
        );
        let c = load(&src(
            None,
            &[("PIKO_UPSTREAM_MAX_UPSTREAMS_PER_ENDPOINT", "3")],
            &[("upstream.max_streams", "100")],
        ))
        .unwrap();
        assert_eq!(
            (c.max_streams_per_upstream, c.max_upstreams_per_endpoint),
            (100, Some(3))
        );
        let e = load(&src(None, &[], &[("upstream.max_streams", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstream.max_streams: must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn a_partial_section_keeps_the_other_defaults() {
        let c = load(&src(
            Some("upstream:\n  advertise_addr: node1:8001\nadmin: {}\n"),
            &[],
            &[],
        ))
        .unwrap();
        assert_eq!(c.upstream_addr.port(), 8001);
        assert_eq!(c.admin_addr.port(), 8002);
        assert_eq!(c.advertise.upstream.as_deref(), Some("node1:8001"));
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
        let cases: [(Sources, &str); 12] = [
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
            (
                src(None, &[], &[("proxy.access_log.level", "loud")]),
                "proxy.access_log.level: invalid level \"loud\"",
            ),
            (
                src(
                    Some("proxy:\n  access_log:\n    request_headers:\n      allow_list: [a]\n      block_list: [b]\n"),
                    &[],
                    &[],
                ),
                "proxy.access_log.request_headers: set allow_list or block_list, not both",
            ),
            (
                src(Some("proxy:\n  access_log:\n    lvl: info\n"), &[], &[]),
                "proxy.access_log.lvl: unknown field `lvl`",
            ),
            (
                src(None, &[("PIKO_PROXY_HTTP_IDLE_TIMEOUT", "0s")], &[]),
                "proxy.http.idle_timeout: must be greater than zero",
            ),
        ];
        for (s, want) in cases {
            let e = load(&s).unwrap_err().to_string();
            assert!(e.contains(want), "error {e:?} should contain {want:?}");
        }
    }

    #[test]
    fn out_of_range_durations_and_bad_trusted_proxies_name_the_key() {
        let absurd = "10000000000000000000s";
        let too_long = "duration \"10000000000000000000s\" is too long; the limit is 1year";
        let mut cases: Vec<(Sources, String)> = [
            "proxy.timeout",
            "proxy.http.read_header_timeout",
            "proxy.http.idle_timeout",
            "grace_period",
            "cluster.node_lease",
            "proxy.auth.jwks.cache_ttl",
            "upstream.auth.jwks.timeout",
            "admin.auth.jwks.timeout",
        ]
        .iter()
        .map(|k| (src(None, &[], &[(k, absurd)]), format!("{k}: {too_long}")))
        .collect();
        cases.extend([
            (
                src(None, &[("PIKO_GRACE_PERIOD", "366d")], &[]),
                "grace_period: duration \"366d\" is too long".to_string(),
            ),
            (
                src(
                    Some("upstream:\n  tenants:\n    - id: t1\n      auth:\n        hmac_secret_key: k\n        jwks:\n          cache_ttl: 2years\n"),
                    &[],
                    &[],
                ),
                "upstream.tenants[0].auth.jwks.cache_ttl: duration \"2years\" is too long".to_string(),
            ),
            (
                src(None, &[], &[("proxy.trusted_proxies", "10.0.0.0/33")]),
                "proxy.trusted_proxies: invalid CIDR \"10.0.0.0/33\"".to_string(),
            ),
            (
                src(None, &[("PIKO_PROXY_TRUSTED_PROXIES", "10.0.0.0/8,lb.internal")], &[]),
                "proxy.trusted_proxies: invalid CIDR \"lb.internal\"".to_string(),
            ),
            (
                src(Some("proxy:\n  trusted_proxies: 10.0.0.0/8\n"), &[], &[]),
                "proxy.trusted_proxies: invalid type".to_string(),
            ),
        ]);
        assert_eq!(cases.len(), 13);
        for (s, want) in cases {
            let e = load(&s).unwrap_err().to_string();
            assert!(e.contains(&want), "error {e:?} should contain {want:?}");
        }
        // The limit itself is accepted.
        let c = load(&src(None, &[], &[("grace_period", "1y")])).unwrap();
        assert_eq!(c.grace_period, MAX_DURATION);
    }

    #[test]
    fn trusted_proxies_from_file_env_and_flags() {
        let nets = |c: Config| -> Vec<String> {
            c.trusted_proxies.iter().map(|n| n.to_string()).collect()
        };
        assert!(load(&src(None, &[], &[]))
            .unwrap()
            .trusted_proxies
            .is_empty());
        let file = "proxy:\n  trusted_proxies: [10.0.0.0/8, 'fd00::/8', 192.0.2.1]\n";
        assert_eq!(
            nets(load(&src(Some(file), &[], &[])).unwrap()),
            vec!["10.0.0.0/8", "fd00::/8", "192.0.2.1/32"]
        );
        assert_eq!(
            nets(
                load(&src(
                    None,
                    &[("PIKO_PROXY_TRUSTED_PROXIES", "10.1.0.0/16, 10.2.0.0/16")],
                    &[]
                ))
                .unwrap()
            ),
            vec!["10.1.0.0/16", "10.2.0.0/16"]
        );
        // A repeated flag and a comma-separated one, flags over env.
        let mut s = src(None, &[("PIKO_PROXY_TRUSTED_PROXIES", "10.9.0.0/16")], &[]);
        s.flags.insert(
            "proxy.trusted_proxies".into(),
            vec!["10.3.0.0/16,10.4.0.0/16".into(), "::1".into()],
        );
        assert_eq!(
            nets(load(&s).unwrap()),
            vec!["10.3.0.0/16", "10.4.0.0/16", "::1/128"]
        );
    }

    #[test]
    fn keys_flags_and_env_names() {
        let keys = leaf_keys();
        assert!(keys.contains_key("proxy.http.read_header_timeout"));
        assert!(keys.contains_key("cluster.join"));
        assert!(keys.contains_key("proxy.access_log.request_headers.block_list"));
        assert_eq!(
            flag_name("proxy.access_log.request_headers.allow_list"),
            "proxy.access-log.request-headers.allow-list"
        );
        assert_eq!(
            flag_name("proxy.http.read_header_timeout"),
            "proxy.http.read-header-timeout"
        );
        assert_eq!(env_name("cluster.node_id"), "PIKO_CLUSTER_NODE_ID");
    }

    #[test]
    fn auth_and_tls_settings() {
        let c = load(&src(
            None,
            &[("PIKO_UPSTREAM_AUTH_HMAC_SECRET_KEY", "top-secret")],
            &[],
        ))
        .unwrap();
        assert!(c.upstream_auth.enabled());
        assert!(!c.proxy_auth.enabled() && !c.admin_auth.enabled());
        let file = load(&src(
            Some("upstream:\n  auth:\n    hmac_secret_key: top-secret\n"),
            &[],
            &[],
        ))
        .unwrap();
        assert!(file.upstream_auth.enabled());
        let shown = format!(
            "{:?}",
            FileConfig {
                upstream: UpstreamFile {
                    auth: AuthFile {
                        hmac_secret_key: SecretString("top-secret".into()),
                        ..AuthFile::default()
                    },
                    ..UpstreamFile::default()
                },
                ..FileConfig::default()
            }
        );
        assert!(
            !shown.contains("top-secret") && shown.contains("***"),
            "{shown}"
        );
        let tenants =
            "upstream:\n  tenants:\n    - id: t1\n      auth:\n        hmac_secret_key: k1\n";
        let c = load(&src(Some(tenants), &[], &[])).unwrap();
        assert_eq!(
            c.upstream_auth.tenants.keys().collect::<Vec<_>>(),
            vec!["t1"]
        );
        assert!(
            !leaf_keys().contains_key("upstream.tenants"),
            "tenants are file-only"
        );
    }

    #[test]
    fn cluster_settings() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node-1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let (c, k) = (c.to_str().unwrap(), k.to_str().unwrap());
        let yaml = format!(
            "cluster:\n  node_id: node-1\n  node_lease: 3s\n  join: [a:8003, b:8003]\n  data_dir: /var/lib/piko\n  tls:\n    cert: {c}\n    key: {k}\n    client_cas: {c}\n    root_cas: {c}\n"
        );
        let cfg = load(&src(Some(&yaml), &[], &[])).unwrap();
        assert_eq!(cfg.node_id, "node-1");
        assert!(!cfg.node_id_generated);
        assert_eq!(cfg.node_lease, Duration::from_secs(3));
        assert_eq!(cfg.join, vec!["a:8003".to_string(), "b:8003".to_string()]);
        assert_eq!(
            cfg.data_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/piko"))
        );
        let files = cfg.cluster_tls.expect("cluster TLS on");
        assert_eq!(files.client_cas.as_deref(), Some(std::path::Path::new(c)));
        assert!(
            cfg.cluster_client_tls.is_some(),
            "calls to other nodes use TLS too"
        );
        let with_token = load(&src(
            None,
            &[("PIKO_CLUSTER_TOKEN", "0123456789abcdef-secret")],
            &[],
        ))
        .unwrap();
        let shown = format!("{:?}", with_token.cluster_token);
        assert!(
            with_token.cluster_token.is_some() && !shown.contains("secret"),
            "{shown}"
        );
        let plain = load(&src(None, &[], &[])).unwrap();
        assert!(plain.cluster_token.is_none());
        assert!(plain.cluster_tls.is_none() && plain.cluster_client_tls.is_none());
        assert!(
            !plain.cluster_allow_unauthenticated_peers,
            "peers must authenticate unless the operator opts out"
        );
        for opt_out in [
            src(
                None,
                &[("PIKO_CLUSTER_ALLOW_UNAUTHENTICATED_PEERS", "true")],
                &[],
            ),
            src(
                None,
                &[],
                &[("cluster.allow_unauthenticated_peers", "true")],
            ),
            src(
                Some("cluster:\n  allow_unauthenticated_peers: true\n"),
                &[],
                &[],
            ),
        ] {
            assert!(load(&opt_out).unwrap().cluster_allow_unauthenticated_peers);
        }
        assert!(plain.node_id_generated && plain.node_id.starts_with("piko-"));
        assert_eq!(plain.node_lease, Duration::from_secs(10));
    }

    #[test]
    fn auth_and_tls_errors_name_the_key() {
        let cases: [(Sources, &str); 14] = [
            (
                src(None, &[], &[("proxy.auth.rsa_public_key", "nope")]),
                "proxy.auth.rsa_public_key: invalid key",
            ),
            (
                src(None, &[], &[("admin.auth.ecdsa_public_key", "nope")]),
                "admin.auth.ecdsa_public_key: invalid key",
            ),
            (
                src(None, &[], &[("upstream.auth.jwks.endpoint", "ftp://x")]),
                "upstream.auth.jwks.endpoint: unsupported JWKS endpoint",
            ),
            (
                src(Some("upstream:\n  tenants:\n    - id: t1\n"), &[], &[]),
                "upstream.tenants[0].auth: a tenant needs a verification key",
            ),
            (
                src(None, &[], &[("proxy.tls.cert", "/nonexistent.pem")]),
                "proxy.tls.key: missing",
            ),
            (
                src(
                    None,
                    &[],
                    &[
                        ("proxy.tls.cert", "/nonexistent.pem"),
                        ("proxy.tls.key", "/nonexistent.key"),
                    ],
                ),
                "proxy.tls: cannot read certificates from /nonexistent.pem",
            ),
            (
                src(None, &[], &[("upstream.tls.client_cas", "/ca.pem")]),
                "upstream.tls.cert: missing",
            ),
            (
                src(None, &[], &[("cluster.tls.cert", "/nonexistent.pem")]),
                "cluster.tls.key: missing",
            ),
            (
                src(None, &[], &[("cluster.tls.root_cas", "/ca.pem")]),
                "cluster.tls.root_cas: set cluster.tls.cert and cluster.tls.key too",
            ),
            (
                src(
                    None,
                    &[("PIKO_CLUSTER_TLS_CERT", "/nonexistent.pem")],
                    &[("cluster.tls.key", "/nonexistent.key")],
                ),
                "cluster.tls: cannot read certificates from /nonexistent.pem",
            ),
            (
                src(None, &[], &[("cluster.node_lease", "500ms")]),
                "cluster.node_lease: must be at least 1s",
            ),
            (
                src(None, &[], &[("cluster.node_id", "node 1")]),
                "cluster.node_id: use up to 64 letters, digits, '-', '_' or '.'",
            ),
            (
                src(None, &[("PIKO_CLUSTER_TOKEN", "short")], &[]),
                "cluster.token: too short; use at least 16 random characters",
            ),
            (
                src(Some("cluster:\n  tls:\n    ca: x\n"), &[], &[]),
                "cluster.tls.ca: unknown field `ca`",
            ),
        ];
        for (s, want) in cases {
            let e = load(&s).unwrap_err().to_string();
            assert!(e.contains(want), "error {e:?} should contain {want:?}");
        }
    }
}
