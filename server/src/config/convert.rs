//! From the file's shape to the typed [`Config`]: every value checked once, every error naming
//! its key.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use piko_protocol::access_log::AccessLog;

use super::file::{AuthFile, ClusterTlsFile, FileConfig, LogFile, TenantFile, TlsFile};
use super::{err, Advertise, Config, ConfigError};
use crate::auth::{JwksLocation, JwksSource, PortAuth, Verifier, VerifierSettings};
use crate::secret::SecretString;
use crate::tls::TlsFiles;

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
                .map_err(|e| access_log_error(&e))?,
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

/// An `AccessLog` error (`level: invalid level "loud"`) under its key: the part before `: `
/// names the key inside `proxy.access_log`.
fn access_log_error(e: &str) -> ConfigError {
    match e.split_once(": ") {
        Some((sub, message)) => err(&format!("proxy.access_log.{sub}"), message),
        None => err("proxy.access_log", e),
    }
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
