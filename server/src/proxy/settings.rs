//! The proxy port's configured settings (`proxy.*`), validated by `config`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use piko_protocol::access_log::AccessLog;

use super::Proxy;
use crate::auth::PortAuth;
use crate::http::HttpLimits;
use crate::metrics::Metrics;
use crate::tls::TlsFiles;
use crate::upstream::Registry;

/// `proxy.*`: the port, its limits, its tokens and its access log.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address (`proxy.bind_addr`).
    pub bind_addr: SocketAddr,
    /// Address announced to other nodes (`None`: the bound one).
    pub advertise_addr: Option<String>,
    /// Time an upstream has to start its response.
    pub timeout: Duration,
    /// `proxy.http.*`: the HTTP server's limits (applied to every port of the node).
    pub http: HttpLimits,
    /// Peers whose `X-Forwarded-*` headers the proxy keeps.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// One record per request.
    pub access_log: AccessLog,
    /// Client token verification.
    pub auth: PortAuth,
    /// TLS of the port.
    pub tls: Option<TlsFiles>,
}

impl Proxy {
    /// A proxy with `settings`, routing to `registry`'s upstreams.
    pub fn with_settings(
        registry: Arc<Registry>,
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Proxy::new(
            registry,
            settings.timeout,
            settings.auth.clone(),
            settings.access_log.clone(),
            metrics,
        )
        .with_trusted_proxies(settings.trusted_proxies.clone())
        .with_body_timeouts(settings.http.read_timeout, settings.http.write_timeout)
    }
}
