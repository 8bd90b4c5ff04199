//! From the file's shape to the typed [`Config`]: every value checked once, every error naming
//! its key.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use piko_protocol::access_log::AccessLog;

use super::file::{
    AuthFile, ClientTlsFile, ClusterTlsFile, FileConfig, LogFile, TenantFile, TlsFile,
};
use super::{err, Config, ConfigError};
use crate::auth::{JwksLocation, JwksSource, PortAuth, Verifier, VerifierSettings};
use crate::http::HttpLimits;
use crate::secret::SecretString;
use crate::tls::{ClientTlsFiles, PeerTls, TlsFiles};
use crate::upstream::UpstreamLimits;
use crate::{admin, cluster, proxy, upstream};

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
        let mut warnings = Vec::new();
        let node_id = if self.cluster.node_id.is_empty() {
            let id = match self.cluster.node_id_prefix.as_str() {
                "" => format!("piko-{:08x}", rand_u32()),
                prefix => format!("{prefix}{:08x}", rand_u32()),
            };
            crate::cluster::check_node_id(&id).map_err(|e| {
                err(
                    "cluster.node_id_prefix",
                    format!("{e} (with the 8 characters added, at most 56 here)"),
                )
            })?;
            id
        } else {
            let id = self.cluster.node_id.clone();
            crate::cluster::check_node_id(&id).map_err(|e| err("cluster.node_id", e))?;
            id
        };
        let gossip = &self.cluster.gossip;
        let cluster_bind = pick_cluster_addr(
            ("cluster.bind_addr", &self.cluster.bind_addr, ":8003"),
            ("cluster.gossip.bind_addr", &gossip.bind_addr),
        )?;
        let cluster_advertise = pick_cluster_addr(
            ("cluster.advertise_addr", &self.cluster.advertise_addr, ""),
            ("cluster.gossip.advertise_addr", &gossip.advertise_addr),
        )?;
        let tuning: Vec<&str> = [
            ("cluster.gossip.interval", !gossip.interval.0.is_zero()),
            ("cluster.gossip.max_packet_size", gossip.max_packet_size > 0),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if !tuning.is_empty() {
            warnings.push(err(
                &tuning.join(", "),
                "gossip tuning has no meaning here (membership is Raft over the cluster port); ignored",
            ));
        }
        let cluster_bind_addr = parse_bind_addr("cluster.bind_addr", &cluster_bind)?;
        let join = join_with_ports(&self.cluster.join, cluster_bind_addr.port())?;
        if self.cluster.join_timeout.0.is_zero() {
            return Err(err("cluster.join_timeout", "must be greater than zero"));
        }
        let rb = &self.upstream.rebalance;
        if rb.threshold < 0.0 || rb.threshold.is_nan() {
            return Err(err("upstream.rebalance.threshold", "cannot be negative"));
        }
        if !(0.0..=1.0).contains(&rb.shed_rate) {
            return Err(err(
                "upstream.rebalance.shed_rate",
                "must be between 0 and 1",
            ));
        }
        if rb.threshold > 0.0 {
            warnings.push(err(
                "upstream.rebalance.threshold",
                "connection rebalancing is not implemented in this server: upstream connections stay on the node they reached (rebalance.* has no effect)",
            ));
        }
        // Sections with no call to govern here: checked, then named once.
        for (key, t, why) in [
            (
                "proxy.tls.client",
                &self.proxy.tls.client,
                "no node calls another node's proxy port here (the original forwards requests to it): forwarded requests go to the other node's cluster port, whose client side is cluster.tls (cert, key, root_cas), plain HTTP without it; set cluster.tls on every node instead. This section has no effect",
            ),
            (
                "upstream.tls.client",
                &self.upstream.tls.client,
                "no node calls another node's upstream port (nor does the original, which checks this section and never uses it); this section has no effect",
            ),
        ] {
            if client_tls(key, t)?.is_some() {
                warnings.push(err(key, why));
            }
        }
        let http = HttpLimits {
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
            // 0: no limit, as in the original.
            read_timeout: Some(self.proxy.http.read_timeout.0).filter(|d| !d.is_zero()),
            write_timeout: Some(self.proxy.http.write_timeout.0).filter(|d| !d.is_zero()),
        };
        let proxy = proxy::Settings {
            bind_addr: parse_bind_addr("proxy.bind_addr", &self.proxy.bind_addr)?,
            advertise_addr: opt(self.proxy.advertise_addr),
            timeout: self.proxy.timeout.0,
            http,
            trusted_proxies: trusted_proxies(&self.proxy.trusted_proxies)?,
            access_log: AccessLog::new(&self.proxy.access_log).map_err(|e| access_log_error(&e))?,
            auth: port_auth("proxy.auth", &self.proxy.auth, &[])?,
            tls: tls_files("proxy.tls", &self.proxy.tls, &[b"h2", b"http/1.1"])?,
        };
        let upstream = upstream::Settings {
            bind_addr: parse_bind_addr("upstream.bind_addr", &self.upstream.bind_addr)?,
            advertise_addr: opt(self.upstream.advertise_addr),
            auth: port_auth("upstream.auth", &self.upstream.auth, &self.upstream.tenants)?,
            tls: tls_files("upstream.tls", &self.upstream.tls, &[b"http/1.1"])?,
            limits: UpstreamLimits {
                max_streams: match self.upstream.max_streams {
                    0 => return Err(err("upstream.max_streams", "must be at least 1")),
                    n => n.min(1 << 20) as usize,
                },
                max_per_endpoint: (self.upstream.max_upstreams_per_endpoint > 0)
                    .then_some(self.upstream.max_upstreams_per_endpoint as usize),
            },
        };
        let admin_tls = tls_files("admin.tls", &self.admin.tls, &[b"http/1.1"])?;
        let forward_tls = match (
            client_tls("admin.tls.client", &self.admin.tls.client)?,
            &admin_tls,
        ) {
            (Some(tls), Some(_)) => Some(tls),
            (None, Some(_)) => Some(
                PeerTls::load(&ClientTlsFiles::default())
                    .map_err(|e| err("admin.tls.client", e))?,
            ),
            (Some(_), None) => {
                warnings.push(err(
                    "admin.tls.client",
                    "this node's admin port has no TLS (admin.tls), so ?forward= asks other nodes' admin ports over plain HTTP and this section has no effect; set admin.tls.cert and admin.tls.key on every node",
                ));
                None
            }
            (None, None) => None,
        };
        let admin = admin::Settings {
            bind_addr: parse_bind_addr("admin.bind_addr", &self.admin.bind_addr)?,
            advertise_addr: opt(self.admin.advertise_addr),
            auth: port_auth("admin.auth", &self.admin.auth, &[])?,
            tls: admin_tls,
            forward: admin::ForwardSettings {
                tls: forward_tls,
                ..admin::ForwardSettings::default()
            },
        };
        let cluster = cluster::Settings {
            bind_addr: cluster_bind_addr,
            advertise_addr: opt(cluster_advertise),
            node_id_generated: self.cluster.node_id.is_empty(),
            node_id,
            join,
            join_timeout: self.cluster.join_timeout.0,
            abort_if_join_fails: self.cluster.abort_if_join_fails,
            data_dir: opt(self.cluster.data_dir).map(PathBuf::from),
            node_lease: match self.cluster.node_lease.0 {
                d if d < Duration::from_secs(1) => {
                    return Err(err("cluster.node_lease", "must be at least 1s"))
                }
                d => d,
            },
            client_tls: cluster_client_tls(&self.cluster.tls)?,
            token: match self.cluster.token.0.trim() {
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
            allow_unauthenticated_peers: self.cluster.allow_unauthenticated_peers,
            tls: tls_files(
                "cluster.tls",
                &TlsFile {
                    cert: self.cluster.tls.cert.clone(),
                    key: self.cluster.tls.key.clone(),
                    client_cas: self.cluster.tls.client_cas.clone(),
                    client: ClientTlsFile::default(),
                },
                &[b"http/1.1"],
            )?,
        };
        Ok(Config {
            proxy,
            upstream,
            admin,
            cluster,
            log: LogFile { level, ..self.log },
            grace_period: self.grace_period.0,
            warnings,
        })
    }
}

/// The cluster port's address from `cluster.*` or the original's `cluster.gossip.*` (the
/// same port role): the gossip key fills a cluster key left at its default; two different
/// addresses are refused, since either choice would lose one.
fn pick_cluster_addr(
    (key, value, default): (&str, &str, &str),
    (gossip_key, gossip): (&str, &str),
) -> Result<String, ConfigError> {
    let (value, gossip) = (value.trim(), gossip.trim());
    if gossip.is_empty() || gossip == value {
        return Ok(value.to_string());
    }
    if value == default {
        return Ok(gossip.to_string());
    }
    Err(err(
        gossip_key,
        format!(
            "{gossip:?} differs from {key} {value:?}; this server has no gossip port, its cluster port plays that role: set only {key}"
        ),
    ))
}

/// `cluster.join` entries, each with a port: an entry without one (`piko`, `10.0.0.1`,
/// `[fd00::1]`) takes the cluster port's.
fn join_with_ports(join: &[String], port: u16) -> Result<Vec<String>, ConfigError> {
    join.iter()
        .map(|entry| {
            let e = entry.trim();
            let has_port = if let Some(rest) = e.strip_prefix('[') {
                rest.contains("]:")
            } else {
                // One colon: host:port; more: a bare IPv6 address.
                e.matches(':').count() == 1
            };
            if has_port {
                return Ok(e.to_string());
            }
            if port == 0 {
                return Err(err(
                    "cluster.join",
                    format!("{e:?} has no port and cluster.bind_addr's port is 0; write it as host:port"),
                ));
            }
            Ok(match e.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => format!("[{ip}]:{port}"),
                Err(_) => format!("{e}:{port}"),
            })
        })
        .collect()
}

/// A `*.tls.client` section, loaded (a certificate needs its key, files must load, the
/// server name must be one a certificate can carry); `None` when it sets nothing.
fn client_tls(key: &str, t: &ClientTlsFile) -> Result<Option<PeerTls>, ConfigError> {
    let (cert, tkey, roots, name) = (
        opt(&t.cert),
        opt(&t.key),
        opt(&t.root_cas),
        opt(&t.server_name),
    );
    let identity = match (cert, tkey) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (Some(_), None) => {
            return Err(err(
                &format!("{key}.key"),
                "missing; a client certificate needs its key",
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                &format!("{key}.cert"),
                "missing; a client key needs its certificate",
            ))
        }
        (None, None) => None,
    };
    if identity.is_none() && roots.is_none() && name.is_none() && !t.insecure_skip_verify {
        return Ok(None);
    }
    if let Some(n) = &name {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            return Err(err(
                &format!("{key}.server_name"),
                format!("invalid server name {n:?}; use a DNS name or an IP address"),
            ));
        }
    }
    let files = ClientTlsFiles {
        root_cas: roots.map(PathBuf::from),
        identity,
        insecure_skip_verify: t.insecure_skip_verify,
        server_name: name,
    };
    PeerTls::load(&files).map(Some).map_err(|e| err(key, e))
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
