//! Status: whether Raft runs, and the nodes and Raft state for the admin routes and metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::ServerState;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::cluster::types::NodeId;

use super::Cluster;

/// A node of the cluster, for status pages.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// `cluster.node_id`.
    pub id: String,
    /// `active`, or `unreachable` when the leader's lease on it ran out.
    pub status: &'static str,
    /// `leader`, `voter` or `learner`.
    pub role: &'static str,
    /// Proxy address.
    pub proxy_addr: String,
    /// Upstream address.
    pub upstream_addr: String,
    /// Admin address.
    pub admin_addr: String,
    /// Cluster address.
    pub cluster_addr: String,
    /// Endpoint → upstreams on that node, as replicated.
    pub endpoints: BTreeMap<String, u32>,
    /// Upstreams on that node.
    pub upstreams: u64,
}

impl Cluster {
    /// Whether Raft runs. It stops for good on a storage failure (`running_state`), and its
    /// task may end on a panic, which drops the metrics channel without saying why.
    pub fn is_healthy(&self) -> bool {
        let metrics = self.raft.metrics();
        metrics.has_changed().is_ok() && metrics.borrow().running_state.is_ok()
    }

    /// Log an error, once, when Raft stops while the node runs (`/ready` fails from then on:
    /// see [`Self::is_healthy`]); returns then, or at `shutdown`.
    pub async fn watch_raft(self: Arc<Self>, shutdown: CancellationToken) {
        let mut metrics = self.raft.metrics();
        loop {
            let stopped = match &metrics.borrow_and_update().running_state {
                Err(e) => Some(e.to_string()),
                Ok(()) => None,
            };
            if let Some(reason) = stopped {
                return error!(error = %reason, "raft stopped: this node no longer takes part in the cluster and is not ready; restart it");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() {
                    if !shutdown.is_cancelled() {
                        error!("raft stopped (its task ended, most likely on a panic: see above): this node no longer takes part in the cluster and is not ready; restart it");
                    }
                    return;
                }
            }
        }
    }

    /// Every node of the cluster with its replicated endpoints.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let state = self.state.borrow().clone();
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let lease = self.settings.node_lease;
        membership
            .nodes()
            .map(|(id, m)| {
                let endpoints = state.counts(*id);
                let reachable = *id == self.id
                    || metrics.current_leader != Some(self.id)
                    || self
                        .liveness
                        .last_ok(*id)
                        .is_some_and(|t| t.elapsed() < lease);
                NodeStatus {
                    id: m.name.clone(),
                    status: if reachable { "active" } else { "unreachable" },
                    role: if metrics.current_leader == Some(*id) {
                        "leader"
                    } else if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    },
                    proxy_addr: m.proxy_addr.clone(),
                    upstream_addr: m.upstream_addr.clone(),
                    admin_addr: m.admin_addr.clone(),
                    cluster_addr: m.cluster_addr.clone(),
                    upstreams: endpoints.values().map(|c| u64::from(*c)).sum(),
                    endpoints,
                }
            })
            .collect()
    }

    /// Number of nodes in the membership.
    pub fn node_count(&self) -> usize {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .count()
    }

    /// The Raft state as JSON, for `/status/cluster/raft`.
    pub fn raft_status(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let name = |id: NodeId| {
            self.member_of(id)
                .map(|m| m.name)
                .unwrap_or_else(|| id.to_string())
        };
        serde_json::json!({
            "node_id": self.member.name,
            "raft_id": self.id,
            "state": format!("{:?}", m.state).to_lowercase(),
            "term": m.current_term,
            "leader": m.current_leader.map(name),
            "last_log_index": m.last_log_index,
            "last_applied_index": m.last_applied.map(|l| l.index),
            "snapshot_index": m.snapshot.map(|l| l.index),
            "voters": membership.voter_ids().map(name).collect::<Vec<_>>(),
            "learners": membership.learner_ids().map(name).collect::<Vec<_>>(),
            "millis_since_quorum_ack": m.millis_since_quorum_ack,
        })
    }

    /// Raft figures for `/metrics`: term, whether this node leads, last log and applied index.
    pub fn raft_figures(&self) -> (u64, bool, u64, u64) {
        let m = self.raft.metrics().borrow().clone();
        (
            m.current_term,
            m.state == ServerState::Leader,
            m.last_log_index.unwrap_or(0),
            m.last_applied.map_or(0, |l| l.index),
        )
    }
}
