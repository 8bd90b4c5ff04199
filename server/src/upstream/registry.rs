//! The local endpoint registry: which upstream sessions serve which endpoint on this node.
//!
//! Routing reads it on every request, so selection is a read lock and an atomic increment.
//! Changes are reported to a [`RegistryObserver`], the seam through which the cluster
//! replicates this node's endpoint counts to other nodes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use piko_protocol::mux::Session;
use piko_protocol::EndpointId;

/// One connected upstream: a yamux session registered for an endpoint.
pub struct Upstream {
    /// Unique id on this node.
    pub id: u64,
    /// The endpoint it serves.
    pub endpoint: EndpointId,
    /// Its session; streams are opened on it.
    pub session: Session,
    /// Its network address.
    pub remote: SocketAddr,
    /// Idle keep-alive HTTP connections to it.
    pub pool: crate::proxy::pool::ConnPool,
}

/// Told when this node's upstream count for an endpoint changes.
pub trait RegistryObserver: Send + Sync {
    /// `endpoint` now has `count` local upstreams (0: none).
    fn local_count_changed(&self, endpoint: &EndpointId, count: usize);
}

/// An observer for a single node: nothing to replicate.
pub struct Standalone;

impl RegistryObserver for Standalone {
    fn local_count_changed(&self, _endpoint: &EndpointId, _count: usize) {}
}

#[derive(Default)]
struct Entry {
    upstreams: Vec<Arc<Upstream>>,
    next: AtomicUsize,
}

/// The upstreams connected to this node, by endpoint.
pub struct Registry {
    entries: RwLock<HashMap<EndpointId, Entry>>,
    next_id: AtomicU64,
    observer: Arc<dyn RegistryObserver>,
}

impl Registry {
    /// An empty registry reporting changes to `observer`.
    pub fn new(observer: Arc<dyn RegistryObserver>) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            observer,
        }
    }

    /// A fresh upstream id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Register `u` for its endpoint.
    pub fn add(&self, u: Arc<Upstream>) {
        self.try_add(u, None);
    }

    /// Register `u` unless its endpoint already has `limit` upstreams; returns whether it was.
    pub fn try_add(&self, u: Arc<Upstream>, limit: Option<usize>) -> bool {
        let count = {
            let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
            let e = map.entry(u.endpoint.clone()).or_default();
            if limit.is_some_and(|l| e.upstreams.len() >= l) {
                return false;
            }
            e.upstreams.push(u.clone());
            e.upstreams.len()
        };
        self.observer.local_count_changed(&u.endpoint, count);
        true
    }

    /// Number of upstreams of `endpoint`.
    pub fn count(&self, endpoint: &EndpointId) -> usize {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.get(endpoint).map_or(0, |e| e.upstreams.len())
    }

    /// Unregister the upstream with `id` from `endpoint`; returns whether it was registered.
    pub fn remove(&self, endpoint: &EndpointId, id: u64) -> bool {
        let (removed, count) = {
            let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
            let Some(e) = map.get_mut(endpoint) else {
                return false;
            };
            let before = e.upstreams.len();
            e.upstreams.retain(|u| u.id != id);
            let count = e.upstreams.len();
            if count == 0 {
                map.remove(endpoint);
            }
            (before != count, count)
        };
        if removed {
            self.observer.local_count_changed(endpoint, count);
        }
        removed
    }

    /// Pick an upstream for `endpoint`, round-robin, skipping sessions that are going away.
    pub fn select(&self, endpoint: &EndpointId) -> Option<Arc<Upstream>> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let e = map.get(endpoint)?;
        let n = e.upstreams.len();
        let start = e.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &e.upstreams[(start + i) % n])
            .find(|u| !u.session.is_gone_away() && !u.session.is_closed())
            .cloned()
    }

    /// Endpoint → number of local upstreams.
    pub fn endpoints(&self) -> BTreeMap<String, usize> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(k, v)| (k.to_string(), v.upstreams.len()))
            .collect()
    }

    /// Every registered upstream.
    pub fn all(&self) -> Vec<Arc<Upstream>> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .flat_map(|e| e.upstreams.iter().cloned())
            .collect()
    }

    /// Number of registered upstreams.
    pub fn upstream_count(&self) -> usize {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.values().map(|e| e.upstreams.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use piko_protocol::mux::{Config, Mode};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, usize)>>);
    impl RegistryObserver for Recorder {
        fn local_count_changed(&self, e: &EndpointId, c: usize) {
            self.0.lock().unwrap().push((e.to_string(), c));
        }
    }

    fn upstream_with_peer(reg: &Registry, ep: &str) -> (Arc<Upstream>, tokio::io::DuplexStream) {
        let (a, peer) = tokio::io::duplex(64);
        let (session, driver) = Session::new(a, Mode::Server, Config::default());
        tokio::spawn(driver);
        let u = Upstream {
            id: reg.next_id(),
            endpoint: EndpointId::new(ep).unwrap(),
            session,
            remote: "127.0.0.1:1".parse().unwrap(),
            pool: Default::default(),
        };
        (Arc::new(u), peer)
    }

    fn upstream(reg: &Registry, ep: &str) -> Arc<Upstream> {
        let (u, peer) = upstream_with_peer(reg, ep);
        std::mem::forget(peer); // keep the session open for the test's life
        u
    }

    #[tokio::test]
    async fn round_robin_and_counts() {
        let rec = Arc::new(Recorder::default());
        let reg = Registry::new(rec.clone());
        let (a, b, c) = (
            upstream(&reg, "shop"),
            upstream(&reg, "shop"),
            upstream(&reg, "blog"),
        );
        for u in [&a, &b, &c] {
            reg.add(u.clone());
        }
        let shop = EndpointId::new("shop").unwrap();
        let picks: Vec<u64> = (0..4).map(|_| reg.select(&shop).unwrap().id).collect();
        assert_eq!(picks, vec![a.id, b.id, a.id, b.id]);
        assert_eq!(
            reg.endpoints(),
            BTreeMap::from([("blog".into(), 1), ("shop".into(), 2)])
        );
        assert!(reg.remove(&shop, a.id));
        assert!(!reg.remove(&shop, a.id), "second removal is a no-op");
        assert_eq!(reg.select(&shop).unwrap().id, b.id);
        assert!(reg.remove(&shop, b.id));
        assert!(reg.select(&shop).is_none());
        assert_eq!(reg.upstream_count(), 1);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                ("shop".into(), 1),
                ("shop".into(), 2),
                ("blog".into(), 1),
                ("shop".into(), 1),
                ("shop".into(), 0)
            ]
        );
    }

    #[tokio::test]
    async fn skips_upstreams_going_away() {
        let reg = Registry::new(Arc::new(Standalone));
        let (a, a_peer) = upstream_with_peer(&reg, "shop");
        let b = upstream(&reg, "shop");
        reg.add(a.clone());
        reg.add(b.clone());
        drop(a_peer);
        a.session.closed().await;
        let shop = EndpointId::new("shop").unwrap();
        for _ in 0..4 {
            assert_eq!(
                reg.select(&shop).unwrap().id,
                b.id,
                "a closed session is never picked"
            );
        }
    }
}
