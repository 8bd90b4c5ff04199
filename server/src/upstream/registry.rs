//! The local endpoint registry: which upstream sessions serve which endpoint on this node.
//!
//! Routing reads it on every request, so selection is a read lock and an atomic increment.
//! Changes are reported to a [`RegistryObserver`], the seam through which the cluster
//! replicates this node's endpoint counts to other nodes and tells which endpoints other
//! nodes hold for another tenant.
//!
//! Endpoint ids do not cross tenants: an endpoint belongs to the tenant of the upstreams
//! registered for it (here or, as the observer says, on another node) until they have all
//! left; another tenant's registration is refused with [`Refusal::OtherTenant`].

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
    /// The tenant whose keys verified its token (`None`: the default keys, or no auth).
    pub tenant: Option<String>,
    /// Its session; streams are opened on it.
    pub session: Session,
    /// Its network address.
    pub remote: SocketAddr,
    /// It negotiated stream reuse at registration: several HTTP requests per stream, idle
    /// streams kept in [`pool`](Self::pool). Otherwise each request has a stream of its own
    /// with `Connection: close` and canonical header names, as from the original server.
    pub keep_alive: bool,
    /// Idle keep-alive HTTP connections to it.
    pub pool: super::pool::ConnPool,
}

impl crate::http::PoolReturn for Upstream {
    fn put_back(&self, sender: hyper::client::conn::http1::SendRequest<crate::http::RequestBody>) {
        self.pool.put(sender);
    }
}

/// Told when this node's upstream count for an endpoint changes; asked whether another node
/// holds an endpoint.
pub trait RegistryObserver: Send + Sync {
    /// `endpoint` now has `count` local upstreams (0: none).
    fn local_count_changed(&self, endpoint: &EndpointId, count: usize);

    /// Whether another node holds `endpoint` for a tenant other than `tenant`.
    fn held_by_other_tenant(&self, _endpoint: &EndpointId, _tenant: Option<&str>) -> bool {
        false
    }
}

/// An observer for a single node: nothing to replicate.
pub struct Standalone;

impl RegistryObserver for Standalone {
    fn local_count_changed(&self, _endpoint: &EndpointId, _count: usize) {}
}

/// Why an upstream was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Upstreams of another tenant hold the endpoint, on this node or another.
    #[error("endpoint registered by another tenant")]
    OtherTenant,
    /// The endpoint has `upstream.max_upstreams_per_endpoint` upstreams on this node.
    #[error("endpoint {endpoint} has its limit of {limit} upstreams on this node")]
    Full {
        /// The endpoint.
        endpoint: EndpointId,
        /// The limit.
        limit: usize,
    },
}

/// The upstreams of one endpoint; never empty while in the map, all of one tenant.
#[derive(Default)]
struct Entry {
    upstreams: Vec<Arc<Upstream>>,
    next: AtomicUsize,
}

impl Entry {
    fn tenant(&self) -> Option<Option<&str>> {
        self.upstreams.first().map(|u| u.tenant.as_deref())
    }
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

    /// Register `u` for its endpoint, with no limit on its number of upstreams.
    pub fn add(&self, u: Arc<Upstream>) -> Result<(), Refusal> {
        self.try_add(u, None)
    }

    /// Whether an upstream of `tenant` would be registered for `endpoint` now (`limit`: the
    /// most upstreams an endpoint may have here), to answer before a WebSocket upgrade.
    pub fn check(
        &self,
        endpoint: &EndpointId,
        tenant: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(), Refusal> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        self.admits(map.get(endpoint), endpoint, tenant, limit)
    }

    fn admits(
        &self,
        entry: Option<&Entry>,
        endpoint: &EndpointId,
        tenant: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(), Refusal> {
        let here = entry.and_then(Entry::tenant);
        if here.is_some_and(|t| t != tenant) {
            return Err(Refusal::OtherTenant);
        }
        // Other nodes matter only while this one has none: the cluster never lets a node hold
        // an endpoint for another tenant than the nodes already holding it.
        if here.is_none() && self.observer.held_by_other_tenant(endpoint, tenant) {
            return Err(Refusal::OtherTenant);
        }
        let count = entry.map_or(0, |e| e.upstreams.len());
        match limit {
            Some(limit) if count >= limit => Err(Refusal::Full {
                endpoint: endpoint.clone(),
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// Register `u` unless its endpoint belongs to another tenant or already has `limit`
    /// upstreams here.
    pub fn try_add(&self, u: Arc<Upstream>, limit: Option<usize>) -> Result<(), Refusal> {
        let count = {
            let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
            self.admits(
                map.get(&u.endpoint),
                &u.endpoint,
                u.tenant.as_deref(),
                limit,
            )?;
            let e = map.entry(u.endpoint.clone()).or_default();
            e.upstreams.push(u.clone());
            e.upstreams.len()
        };
        self.observer.local_count_changed(&u.endpoint, count);
        Ok(())
    }

    /// Number of upstreams of `endpoint`.
    pub fn count(&self, endpoint: &EndpointId) -> usize {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.get(endpoint).map_or(0, |e| e.upstreams.len())
    }

    /// Unregister the upstream with `id` from `endpoint`; returns whether it was registered.
    pub fn remove(&self, endpoint: &EndpointId, id: u64) -> bool {
        self.remove_where(endpoint, |u| u.id == id) > 0
    }

    /// Unregister and close every upstream of `tenant` for `endpoint`: the cluster gave the
    /// endpoint to another tenant's upstreams on another node. Returns how many there were.
    pub fn evict(&self, endpoint: &EndpointId, tenant: Option<&str>) -> usize {
        let mut evicted = Vec::new();
        self.remove_where(endpoint, |u| {
            let hit = u.tenant.as_deref() == tenant;
            if hit {
                evicted.push(u.clone());
            }
            hit
        });
        for u in &evicted {
            u.session.close();
        }
        evicted.len()
    }

    fn remove_where(
        &self,
        endpoint: &EndpointId,
        mut pred: impl FnMut(&Arc<Upstream>) -> bool,
    ) -> usize {
        let (removed, count) = {
            let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
            let Some(e) = map.get_mut(endpoint) else {
                return 0;
            };
            let before = e.upstreams.len();
            e.upstreams.retain(|u| !pred(u));
            let count = e.upstreams.len();
            if count == 0 {
                map.remove(endpoint);
            }
            (before - count, count)
        };
        if removed > 0 {
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

    /// Endpoint → number of local upstreams and their tenant.
    pub fn tenants(&self) -> BTreeMap<EndpointId, (usize, Option<String>)> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(k, v)| {
                let tenant = v.tenant().flatten().map(str::to_string);
                (k.clone(), (v.upstreams.len(), tenant))
            })
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
        upstream_of(reg, ep, None)
    }

    fn upstream_of(
        reg: &Registry,
        ep: &str,
        tenant: Option<&str>,
    ) -> (Arc<Upstream>, tokio::io::DuplexStream) {
        let (a, peer) = tokio::io::duplex(64);
        let (session, driver) = Session::new(a, Mode::Server, Config::default());
        tokio::spawn(driver);
        let u = Upstream {
            id: reg.next_id(),
            endpoint: EndpointId::new(ep).unwrap(),
            tenant: tenant.map(str::to_string),
            session,
            remote: "127.0.0.1:1".parse().unwrap(),
            keep_alive: true,
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
            reg.add(u.clone()).unwrap();
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
        reg.add(a.clone()).unwrap();
        reg.add(b.clone()).unwrap();
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

    fn tenant_upstream(reg: &Registry, ep: &str, tenant: Option<&str>) -> Arc<Upstream> {
        let (u, peer) = upstream_of(reg, ep, tenant);
        std::mem::forget(peer);
        u
    }

    #[tokio::test]
    async fn an_endpoint_belongs_to_one_tenant_at_a_time() {
        let reg = Registry::new(Arc::new(Standalone));
        let shop = EndpointId::new("shop").unwrap();
        let acme = tenant_upstream(&reg, "shop", Some("acme"));
        reg.add(acme.clone()).unwrap();
        // (who, want)
        let cases: &[(Option<&str>, Result<(), Refusal>)] = &[
            (Some("acme"), Ok(())),
            (Some("rival"), Err(Refusal::OtherTenant)),
            (None, Err(Refusal::OtherTenant)),
        ];
        for (tenant, want) in cases {
            assert_eq!(&reg.check(&shop, *tenant, None), want, "{tenant:?}");
            let u = tenant_upstream(&reg, "shop", *tenant);
            assert_eq!(&reg.add(u), want, "{tenant:?}");
        }
        assert_eq!(reg.count(&shop), 2, "acme's two upstreams");
        assert_eq!(
            reg.check(&shop, Some("acme"), Some(2)),
            Err(Refusal::Full {
                endpoint: shop.clone(),
                limit: 2
            })
        );
        // Another tenant may hold another id; the default tenant is a tenant like the others.
        let blog = tenant_upstream(&reg, "blog", None);
        reg.add(blog).unwrap();
        assert_eq!(
            reg.add(tenant_upstream(&reg, "blog", Some("acme"))),
            Err(Refusal::OtherTenant)
        );
        assert_eq!(
            reg.tenants().get(&shop),
            Some(&(2, Some("acme".to_string())))
        );
        // Once acme's upstreams have left, anyone may register it.
        for u in reg.all().into_iter().filter(|u| u.endpoint == shop) {
            assert!(reg.remove(&shop, u.id));
        }
        assert_eq!(reg.check(&shop, None, None), Ok(()));
        reg.add(tenant_upstream(&reg, "shop", None)).unwrap();
    }

    /// Says every endpoint is held elsewhere by `owner`'s tenant.
    struct HeldElsewhere {
        owner: Option<&'static str>,
    }
    impl RegistryObserver for HeldElsewhere {
        fn local_count_changed(&self, _: &EndpointId, _: usize) {}
        fn held_by_other_tenant(&self, _: &EndpointId, tenant: Option<&str>) -> bool {
            tenant != self.owner
        }
    }

    #[tokio::test]
    async fn an_endpoint_held_on_another_node_is_refused_to_other_tenants() {
        let reg = Registry::new(Arc::new(HeldElsewhere {
            owner: Some("acme"),
        }));
        let shop = EndpointId::new("shop").unwrap();
        assert_eq!(
            reg.check(&shop, Some("rival"), None),
            Err(Refusal::OtherTenant)
        );
        assert_eq!(reg.check(&shop, None, None), Err(Refusal::OtherTenant));
        assert_eq!(
            reg.add(tenant_upstream(&reg, "shop", Some("rival"))),
            Err(Refusal::OtherTenant)
        );
        assert_eq!(reg.count(&shop), 0, "a refusal leaves no empty entry");
        assert!(reg.endpoints().is_empty());
        reg.add(tenant_upstream(&reg, "shop", Some("acme")))
            .unwrap();
    }

    #[tokio::test]
    async fn evicting_closes_the_upstreams_of_one_tenant() {
        let rec = Arc::new(Recorder::default());
        let reg = Registry::new(rec.clone());
        let shop = EndpointId::new("shop").unwrap();
        let (a, b) = (
            tenant_upstream(&reg, "shop", Some("rival")),
            tenant_upstream(&reg, "shop", Some("rival")),
        );
        reg.add(a.clone()).unwrap();
        reg.add(b.clone()).unwrap();
        assert_eq!(reg.evict(&shop, Some("acme")), 0, "not acme's");
        assert_eq!(reg.evict(&shop, Some("rival")), 2);
        assert_eq!(reg.count(&shop), 0);
        for u in [&a, &b] {
            tokio::time::timeout(std::time::Duration::from_secs(5), u.session.closed())
                .await
                .expect("an evicted session is closed");
        }
        assert_eq!(
            rec.0.lock().unwrap().last(),
            Some(&("shop".to_string(), 0)),
            "the cluster is told"
        );
    }
}
