//! Endpoints: this node's replicated endpoint entries kept in step with its upstreams,
//! writes through the leader, and routing a request to another node that holds an endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use piko_protocol::EndpointId;

use crate::cluster::error::{write_error, ClusterError};
use crate::cluster::network::WRITE_PATH;
use crate::cluster::types::{Command, EndpointEntry, EndpointTable, Member, NodeId};
use crate::upstream::{Registry, RegistryObserver};

use super::{Cluster, CALL_TIMEOUT, SHUTDOWN_STEP, TICK};

impl RegistryObserver for Cluster {
    fn local_count_changed(&self, _endpoint: &EndpointId, _count: usize) {
        self.local_changed.notify_one();
    }

    fn held_by_other_tenant(&self, endpoint: &EndpointId, tenant: Option<&str>) -> bool {
        self.state
            .borrow()
            .held_by_other_tenant(endpoint.as_str(), tenant, self.id)
    }
}

impl Cluster {
    /// Stop other nodes from forwarding here (at the start of a shutdown): this node's
    /// endpoint entries are cleared while its upstreams drain.
    pub async fn withdraw(&self) {
        if self.node_count() <= 1 {
            return;
        }
        let cmd = Command::ReplaceEndpoints {
            node: self.id,
            counts: BTreeMap::new(),
        };
        match tokio::time::timeout(SHUTDOWN_STEP, self.write(cmd)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not withdraw this node's endpoints; other nodes may forward here while it drains"),
            Err(_) => warn!("withdrawing this node's endpoints timed out; other nodes may forward here while it drains"),
        }
    }

    /// Apply `cmd` through the leader.
    pub async fn write(&self, cmd: Command) -> Result<(), ClusterError> {
        // A leader cut off from its quorum never commits; give up rather than wait forever.
        let written = tokio::time::timeout(CALL_TIMEOUT, self.raft.client_write(cmd.clone()))
            .await
            .map_err(|_| ClusterError::TimedOut(CALL_TIMEOUT))?;
        match written {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let addr = f
                    .leader_node
                    .map(|n| n.cluster_addr)
                    .ok_or(ClusterError::NoLeader)?;
                self.client
                    .call::<_, serde_json::Value>(&addr, WRITE_PATH, Some(&cmd), CALL_TIMEOUT)
                    .await?;
                Ok(())
            }
            Err(e) => Err(write_error(e)),
        }
    }

    /// Wait (up to `timeout`) until this node has applied every entry it has received, so
    /// that right after joining it routes with the cluster's current table.
    pub async fn caught_up(&self, timeout: Duration) {
        let mut metrics = self.raft.metrics();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let applied = m.last_applied.map(|l| l.index);
                    if m.current_leader.is_some()
                        && applied.is_some()
                        && applied == m.last_log_index
                    {
                        return;
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Another node holding upstreams for `endpoint`, picked at random weighted by how many
    /// it has, skipping `exclude` (nodes already tried).
    pub fn route(&self, endpoint: &str, exclude: &[NodeId]) -> Option<(NodeId, Member)> {
        let state = self.state.borrow().clone();
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let candidates: Vec<(NodeId, u32, &Member)> = state
            .endpoints
            .iter()
            .filter(|(n, _)| **n != self.id && !exclude.contains(n))
            .filter_map(|(n, table)| {
                let count = table.get(endpoint)?.count;
                Some((*n, count, membership.get_node(n)?))
            })
            .collect();
        let total: u64 = candidates.iter().map(|(_, c, _)| u64::from(*c)).sum();
        if total == 0 {
            return None;
        }
        let mut pick = rand::random_range(0..total);
        for (n, c, m) in candidates {
            if pick < u64::from(c) {
                return Some((n, m.clone()));
            }
            pick -= u64::from(c);
        }
        None
    }

    /// Keep this node's replicated endpoint entries equal to `registry`'s local upstreams,
    /// until `shutdown`.
    ///
    /// Local upstreams of an endpoint the replicated state gives to another tenant's upstreams
    /// on another node are closed: their registration lost a race (the state machine keeps the
    /// first tenant, see [`ClusterState::apply`](crate::cluster::types::ClusterState::apply)) or came in before this replica learnt of the
    /// owner.
    pub async fn sync_endpoints(
        self: Arc<Self>,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) {
        let mut replica = self.state.clone();
        loop {
            tokio::select! {
                // At shutdown `withdraw` clears this node's entries; no late write may undo it.
                biased;
                _ = shutdown.cancelled() => return,
                _ = self.local_changed.notified() => {}
                r = replica.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(TICK * 2) => {}
            }
            if shutdown.is_cancelled() {
                return;
            }
            let state = replica.borrow_and_update().clone();
            let mut local = EndpointTable::new();
            for (endpoint, (count, tenant)) in registry.tenants() {
                if state.held_by_other_tenant(endpoint.as_str(), tenant.as_deref(), self.id) {
                    let closed = registry.evict(&endpoint, tenant.as_deref());
                    warn!(endpoint = %endpoint, tenant = ?tenant, closed, "another node holds the endpoint for another tenant; closing its upstreams here");
                    continue;
                }
                let count = u32::try_from(count).unwrap_or(u32::MAX);
                local.insert(endpoint.to_string(), EndpointEntry { count, tenant });
            }
            let replicated = state.endpoints.get(&self.id).cloned().unwrap_or_default();
            let mut diff: EndpointTable = local
                .iter()
                .filter(|(e, c)| replicated.get(*e) != Some(c))
                .map(|(e, c)| (e.clone(), c.clone()))
                .collect();
            for e in replicated.keys() {
                if !local.contains_key(e) {
                    diff.insert(e.clone(), EndpointEntry::default());
                }
            }
            if diff.is_empty() {
                continue;
            }
            let cmd = Command::SetEndpoints {
                node: self.id,
                counts: diff,
            };
            if let Err(e) = self.write(cmd).await {
                debug!(error = %e, "replicating this node's endpoints failed; retrying");
                tokio::time::sleep(TICK).await;
                self.local_changed.notify_one();
            }
        }
    }
}
