//! The configuration file's shape (the original Piko's keys), with the defaults every layer
//! starts from. Each key is also a flag and an environment variable (see [`super::leaf_keys`]).

use std::time::Duration;

use piko_protocol::access_log::AccessLogConfig;
use serde::{Deserialize, Serialize};

use crate::secret::SecretString;

/// A duration written like `30s`, `1m30s` or `500ms`, at most [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Default for Dur {
    fn default() -> Self {
        Dur(Duration::ZERO)
    }
}

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

/// A duration as YAML gives it: a string, or a bare number (`write_timeout: 0`, which the
/// original's files use to turn a limit off).
struct DurVisitor;

impl serde::de::Visitor<'_> for DurVisitor {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration like 30s, 1m or 500ms")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        match v {
            0 => Ok("0".into()),
            // The original would read a bare number as nanoseconds: surely not meant.
            n => Err(E::custom(format!(
                "invalid duration {n} (a number without a unit); use a value like 30s, 1m or 500ms"
            ))),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!(
                "invalid duration {v}; it cannot be negative"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = d.deserialize_any(DurVisitor)?;
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
    /// Time a proxied request, body included, has to arrive, counted from its head (408, or
    /// the connection closed once the response has started; 0: no limit, the default here).
    pub read_timeout: Dur,
    /// Time a proxied response has to be sent, counted from the request head (504 before
    /// it starts, else the connection closed; 0: no limit, the default here). Upgrades are
    /// exempt once switched.
    pub write_timeout: Dur,
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
    /// The original's connection rebalancing (off at threshold 0).
    pub rebalance: RebalanceFile,
}

/// `upstream.rebalance.*`: shedding upstream connections from a node that holds more than
/// its share (the original's keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RebalanceFile {
    /// How far above the cluster's average a node may be before it sheds (0: never).
    pub threshold: f64,
    /// The fraction of connections shed per second, 0 to 1.
    pub shed_rate: f64,
    /// Below this many connections a node never sheds.
    pub min_conns: u64,
}

impl Default for RebalanceFile {
    fn default() -> Self {
        Self {
            threshold: 0.0,
            shed_rate: 0.005,
            min_conns: 50,
        }
    }
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
    /// The client side of calls to other nodes (the original's keys).
    pub client: ClientTlsFile,
}

/// `*.tls.client.*`: the TLS client settings of the original's node-to-node calls. Here
/// `admin.tls.client` is the client side of `?forward=`; the proxy's and upstream's have no
/// call to govern and are named in a warning when set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsFile {
    /// PEM certificate presented to the other node.
    pub cert: String,
    /// Its PEM private key.
    pub key: String,
    /// PEM CA file the other node's certificate is verified against.
    pub root_cas: String,
    /// Skip verifying the other node's certificate.
    pub insecure_skip_verify: bool,
    /// The name the other node's certificate is verified against.
    pub server_name: String,
}

/// `cluster.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterFile {
    /// This node's id (generated when empty).
    pub node_id: String,
    /// Prefix of a generated node id (`node_id` empty).
    pub node_id_prefix: String,
    /// Listen address of the node-to-node port.
    pub bind_addr: String,
    /// Address other nodes use to reach this node.
    pub advertise_addr: String,
    /// Addresses of nodes to join (the cluster port when an entry has none).
    pub join: Vec<String>,
    /// How long a node that is not yet a member may try to join.
    pub join_timeout: Dur,
    /// Stop the node when it is not a member after `join_timeout` (else keep trying).
    pub abort_if_join_fails: bool,
    /// The original's gossip port: its addresses are the cluster port's.
    pub gossip: GossipFile,
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

/// `cluster.gossip.*`: the original's gossip port (its role is the cluster port's here) and
/// gossip tuning, which has no meaning here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipFile {
    /// Listen address (empty: `cluster.bind_addr`).
    pub bind_addr: String,
    /// Advertised address (empty: `cluster.advertise_addr`).
    pub advertise_addr: String,
    /// Gossip round interval (0: unset).
    pub interval: Dur,
    /// Largest gossip packet (0: unset).
    pub max_packet_size: u64,
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
            read_timeout: Dur(Duration::ZERO),
            write_timeout: Dur(Duration::ZERO),
        }
    }
}

impl Default for ClusterFile {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            node_id_prefix: String::new(),
            bind_addr: ":8003".into(),
            advertise_addr: String::new(),
            join: vec![],
            join_timeout: Dur(Duration::from_secs(60)),
            abort_if_join_fails: true,
            gossip: GossipFile::default(),
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
