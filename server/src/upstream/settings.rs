//! The upstream port's configured settings (`upstream.*`), validated by `config`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Registry, UpstreamLimits, UpstreamServer};
use crate::auth::PortAuth;
use crate::tls::TlsFiles;

/// `upstream.*`: the port, its tokens (and tenants') and the bounds on upstreams.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address (`upstream.bind_addr`).
    pub bind_addr: SocketAddr,
    /// Address announced to other nodes (`None`: the bound one).
    pub advertise_addr: Option<String>,
    /// Upstream token verification, tenants included.
    pub auth: PortAuth,
    /// TLS of the port.
    pub tls: Option<TlsFiles>,
    /// Streams per connection and upstreams per endpoint.
    pub limits: UpstreamLimits,
}

impl UpstreamServer {
    /// An upstream port with `settings`, registering into `registry`; sessions end at
    /// `shutdown` after `grace`.
    pub fn with_settings(
        registry: Arc<Registry>,
        settings: &Settings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        grace: Duration,
    ) -> Self {
        UpstreamServer::new(
            registry,
            settings.auth.clone(),
            settings.limits,
            shutdown,
            tasks,
            grace,
        )
    }
}
