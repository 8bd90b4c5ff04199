//! Harness for the live connector core: [`TestCore`] (a [`Core`] with its settings in a
//! temporary directory and tokens in memory) and [`Relay`], a TCP relay that can black-hole
//! the link (stop forwarding bytes without closing anything), as a dead Wi-Fi does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use piko_connector_core::config::{Protocol, TlsConfig};
use piko_connector_core::core::{Core, CoreEvent, CoreOptions, EndpointView};
use piko_connector_core::credentials::MemoryStore;
use piko_connector_core::settings::{EndpointSettings, ServerSettings};
use piko_protocol::EndpointId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{init_logs, loopback_listener};

/// A live core on a temporary settings file, with an in-memory credential store.
pub struct TestCore {
    /// The core.
    pub core: Core,
    /// The directory of its settings file.
    pub dir: tempfile::TempDir,
    /// Its credential store.
    pub credentials: Arc<MemoryStore>,
    events: broadcast::Receiver<CoreEvent>,
    shutdown: CancellationToken,
}

impl TestCore {
    /// Start a core with default options (grace period cut to 1 s).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start a core after `tweak` adjusts its options.
    pub async fn start_with(tweak: impl FnOnce(&mut CoreOptions)) -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let credentials = Arc::new(MemoryStore::new());
        let mut options = CoreOptions::new(dir.path().join("settings.yaml"), credentials.clone());
        options.grace_period = Duration::from_secs(1);
        tweak(&mut options);
        let shutdown = CancellationToken::new();
        let core = Core::start(options, shutdown.clone()).await;
        let events = core.subscribe();
        Self {
            core,
            dir,
            credentials,
            events,
            shutdown,
        }
    }

    /// The settings file.
    pub fn settings_path(&self) -> PathBuf {
        self.core.settings_path()
    }

    /// Forget the events so far: a later [`TestCore::wait_for`] sees only what happens next.
    pub fn forget_events(&mut self) {
        self.events = self.core.subscribe();
    }

    /// Wait until endpoint `id`'s view matches `pred` (now or in a later event).
    pub async fn wait_for(
        &mut self,
        id: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&EndpointView) -> bool,
    ) -> EndpointView {
        if let Some(v) = self.core.snapshot().endpoint(id).filter(|v| pred(v)) {
            return v.clone();
        }
        let events = &mut self.events;
        let fut = async {
            loop {
                match events.recv().await {
                    Ok(CoreEvent::Endpoint(v)) if v.id.as_str() == id && pred(&v) => return v,
                    Ok(CoreEvent::Snapshot(s)) => {
                        if let Some(v) = s.endpoint(id).filter(|v| pred(v)) {
                            return v.clone();
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("core events closed while waiting until {what}: {e}"),
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting until {what}"))
    }

    /// Shut down and wait until every tunnel has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.core.closed())
            .await
            .expect("core stops in time");
    }
}

impl Drop for TestCore {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A server entry named `name` for the upstream port at `url`.
pub fn server_settings(name: &str, url: &str) -> ServerSettings {
    ServerSettings {
        name: name.into(),
        url: url.into(),
        public_url: None,
        tls: TlsConfig::default(),
        proxy_url: None,
    }
}

/// An enabled HTTP endpoint `id` on server `server` forwarding to `target`.
pub fn endpoint_settings(id: &str, server: &str, target: &str) -> EndpointSettings {
    EndpointSettings {
        id: EndpointId::new(id).expect("endpoint id"),
        server: server.into(),
        target: target.into(),
        protocol: Protocol::Http,
        enabled: true,
    }
}

/// A TCP relay in front of `target`. While [`Relay::black_hole`] is on, every connection
/// open then or accepted then is dead for good: bytes either way are read and dropped, and
/// nothing is closed, so neither end learns of it from the network.
pub struct Relay {
    /// The relay's address (give it to the connector instead of the target's).
    pub addr: SocketAddr,
    black_hole: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Start relaying to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = loopback_listener().await;
        let addr = listener.local_addr().expect("relay addr");
        let black_hole = Arc::new(AtomicBool::new(false));
        let hole = black_hole.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let hole = hole.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let dead = Arc::new(AtomicBool::new(hole.load(Ordering::SeqCst)));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, hole.clone(), dead.clone());
                    let down = pump(sr, cw, hole, dead);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self {
            addr,
            black_hole,
            task,
        }
    }

    /// `http://` URL of the relay.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Turn the black hole on or off. Off again, only new connections work.
    pub fn black_hole(&self, on: bool) {
        self.black_hole.store(on, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hole: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if hole.load(Ordering::SeqCst) {
            dead.store(true, Ordering::SeqCst);
        }
        if dead.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // A dead link says nothing: keep the other side open until the test ends.
    if dead.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let _ = to.shutdown().await;
}
