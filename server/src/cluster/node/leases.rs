//! What the leader does each tick: expire the endpoint entries of nodes whose lease ran out,
//! and promote or replace voters as [`voter_change`] says.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use openraft::{ChangeMembers, ServerState};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::types::{Command, NodeId};
use crate::cluster::voters::{voter_change, VoterChange};

use super::{Cluster, CALL_TIMEOUT, TICK};

impl Cluster {
    /// While this node leads: expire the endpoint entries of nodes whose lease ran out, and
    /// promote learners so that the group has 3 or 5 voters when enough nodes are up.
    pub async fn lead(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            // Each round is bounded (every call has a timeout) and dropped at shutdown.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.lead_once() => {}
            }
        }
    }

    async fn lead_once(&self) {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            *self.leader_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return;
        }
        // The lease counts from when this node became leader in this term, or from a node's
        // last answer, whichever is later: a new leader has heard from nobody yet.
        let since = {
            let mut guard = self.leader_since.lock().unwrap_or_else(|e| e.into_inner());
            match *guard {
                Some((term, at)) if term == metrics.current_term => at,
                _ => {
                    let now = Instant::now();
                    *guard = Some((metrics.current_term, now));
                    now
                }
            }
        };
        let alive = |id: NodeId| {
            id == self.id
                || self
                    .liveness
                    .last_ok(id)
                    .map_or(since, |t| t.max(since))
                    .elapsed()
                    < self.settings.node_lease
        };
        let membership = metrics.membership_config.membership();
        let holders: Vec<NodeId> = self.state.borrow().endpoints.keys().copied().collect();
        for node in holders {
            let gone = membership.get_node(&node).is_none();
            if !gone && alive(node) {
                continue;
            }
            // Written here only, never forwarded: a leader that lost its quorum must not
            // hand its stale view of who is alive to the new leader.
            if !self.is_leader() {
                return;
            }
            let name = membership
                .get_node(&node)
                .map_or_else(|| node.to_string(), |m| m.name.clone());
            warn!(node = %name, "node stopped answering; removing its endpoints");
            let cmd = Command::ExpireNode { node };
            match tokio::time::timeout(CALL_TIMEOUT, self.raft.client_write(cmd)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return debug!(error = %e, "expiring a node failed"),
                Err(_) => return debug!("expiring a node timed out"),
            }
        }
        if membership.get_joint_config().len() > 1 {
            return;
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().filter(|l| alive(*l)).collect();
        let recent = |id: NodeId| {
            id == self.id
                || self
                    .liveness
                    .last_ok(id)
                    .is_some_and(|t| t.elapsed() < self.settings.node_lease / 2)
        };
        let change = match voter_change(&voters, &learners, alive, recent) {
            None => return,
            Some(VoterChange::Promote { add, voters }) => {
                info!(voters, "promoting learners to voters");
                ChangeMembers::AddVoterIds(add)
            }
            Some(VoterChange::Replace { next, out }) => {
                let name = |id: &NodeId| {
                    membership
                        .get_node(id)
                        .map_or_else(|| id.to_string(), |m| m.name.clone())
                };
                info!(
                    out = ?out.iter().map(name).collect::<Vec<_>>(),
                    "replacing voters that stopped answering with learners"
                );
                ChangeMembers::ReplaceAllVoters(next)
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, self.raft.change_membership(change, true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(error = %e, "changing voters failed"),
            Err(_) => debug!("changing voters timed out"),
        }
    }
}
