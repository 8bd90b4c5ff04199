//! Membership: bootstrap, join and rejoin, leave, and which members this node knows (its
//! Raft state and what trusted nodes vouch for).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::error::{write_error, ClusterError};
use crate::cluster::network::{INFO_PATH, JOIN_PATH, LEAVE_PATH};
use crate::cluster::trust::KnownPeers;
use crate::cluster::types::{raft_id, Command, Member, NodeId};

use super::{Cluster, CALL_TIMEOUT, MAX_VOUCHED, SHUTDOWN_STEP, VOUCH_INTERVAL};

/// Who a node is, as answered on [`INFO_PATH`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeAnswer {
    /// This node.
    pub member: Member,
    /// Whether it belongs to a cluster yet.
    pub initialized: bool,
    /// The leader it knows, if any.
    pub leader: Option<String>,
    /// The members it knows (empty from a node not in a cluster, or of an older version).
    #[serde(default)]
    pub members: Vec<Member>,
    /// The names of the voters among them.
    #[serde(default)]
    pub voters: Vec<String>,
}

impl NodeAnswer {
    /// The members this answer names: its list, and the answering node itself when it is in a
    /// cluster.
    fn known_peers(&self) -> KnownPeers {
        let mut known = KnownPeers::default();
        if !self.initialized {
            return known;
        }
        for m in self.members.iter().chain([&self.member]) {
            if crate::cluster::validate_member(m).is_ok() {
                known.members.insert(raft_id(&m.name), m.clone());
            }
        }
        known.voters.extend(self.voters.iter().map(|v| raft_id(v)));
        known
    }
}

/// A request to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The node.
    pub member: Member,
    /// The node starts with an empty Raft state (no data dir, or a new one). If it was a voter
    /// before, it has forgotten its votes and must not vote again until it has caught up: it
    /// rejoins as a learner and is promoted again later.
    #[serde(default)]
    pub fresh: bool,
}

impl Cluster {
    /// Become part of a cluster: a node already in one (its data dir says so) rejoins by
    /// itself; with no `join` addresses the node starts a cluster of its own; otherwise it
    /// asks the nodes at `join` until one takes it. Returns when the node is a member, or
    /// when `shutdown` is cancelled.
    pub async fn start(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<(), ClusterError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(ClusterError::raft)?;
        if initialized {
            info!(node_id = %self.member.name, "rejoining the cluster from the raft log");
            if !self.settings.join.is_empty() {
                // Addresses may have changed; the leader updates our entry if so.
                let me = self.clone();
                // Not tracked: one call, bounded by CALL_TIMEOUT, whose result only refreshes
                // addresses; a shutdown need not wait for it.
                tokio::spawn(async move {
                    if let Err(e) = me.ask_to_join().await {
                        debug!(error = %e, "refreshing this node's membership entry failed");
                    }
                });
            }
            return Ok(());
        }
        if self.settings.join.is_empty() {
            return self.bootstrap().await;
        }
        let mut last_log = Instant::now() - Duration::from_secs(60);
        loop {
            match self.try_join().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if last_log.elapsed() > Duration::from_secs(5) => {
                    warn!(error = %e, join = ?self.settings.join, "cannot join the cluster yet; retrying");
                    last_log = Instant::now();
                }
                Err(e) => debug!(error = %e, "join attempt failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn bootstrap(&self) -> Result<(), ClusterError> {
        info!(node_id = %self.member.name, "starting a new cluster");
        let members = BTreeMap::from([(self.id, self.member.clone())]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Initialized meanwhile (a leader reached us first): nothing to do.
            Err(RaftError::APIError(e)) => {
                debug!(error = %e, "cluster already initialized");
                Ok(())
            }
            Err(e) => Err(ClusterError::raft(e)),
        }
    }

    /// One round of joining: `Ok(true)` once a member.
    ///
    /// A node joins the first cluster it finds behind `join`. When no node there is in a
    /// cluster yet, one must start it, and exactly one: the node with the smallest id, and
    /// only once every address has answered, so two nodes that each see part of the list
    /// can never both start one.
    async fn try_join(&self) -> Result<bool, ClusterError> {
        let mut peers = Vec::new();
        let mut saw_me = false;
        let mut last_error = None;
        for addr in resolve(&self.settings.join).await {
            match self
                .client
                .call::<(), NodeAnswer>(&addr, INFO_PATH, None, Duration::from_secs(2))
                .await
            {
                Ok(a) if a.member.name == self.member.name => saw_me = true,
                Ok(a) => peers.push((addr, a)),
                Err(e) => last_error = Some(e),
            }
        }
        // The leader's first appends reach this node before it has any membership of its
        // own: it takes them from the members the nodes behind `cluster.join` named.
        let mut vouched = KnownPeers::default();
        for (_, a) in &peers {
            vouched.extend(&a.known_peers());
        }
        self.set_vouched(vouched);
        if self.raft.is_initialized().await.unwrap_or(false) {
            return Ok(true);
        }
        if let Some((addr, _)) = peers.iter().find(|(_, a)| a.initialized) {
            self.client
                .call::<_, Member>(
                    addr,
                    JOIN_PATH,
                    Some(&JoinRequest {
                        member: self.member.clone(),
                        fresh: true,
                    }),
                    CALL_TIMEOUT,
                )
                .await?;
            info!(via = %addr, "joined the cluster");
            return Ok(true);
        }
        if let Some(e) = last_error {
            return Err(e.into());
        }
        let smallest = peers.iter().all(|(_, a)| self.member.name < a.member.name);
        if (saw_me || !peers.is_empty()) && smallest {
            self.bootstrap().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Ask the leader (through any known node) to add or update this node.
    async fn ask_to_join(&self) -> Result<(), ClusterError> {
        let req = JoinRequest {
            member: self.member.clone(),
            fresh: false,
        };
        self.to_leader(JOIN_PATH, &req).await.map(|_: Member| ())
    }

    /// Send `body` to the leader's `path`: the leader's own handler if this node leads.
    async fn to_leader<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, ClusterError> {
        let leader = self
            .raft
            .current_leader()
            .await
            .ok_or(ClusterError::NoLeader)?;
        let addr = self
            .member_of(leader)
            .map(|m| m.cluster_addr)
            .ok_or(ClusterError::NoLeader)?;
        Ok(self
            .client
            .call(&addr, path, Some(body), CALL_TIMEOUT)
            .await?)
    }

    /// Add `member` (on the leader), or update its addresses; forwards to the leader otherwise.
    pub async fn join(&self, member: Member, fresh: bool) -> Result<Member, ClusterError> {
        let id = raft_id(&member.name);
        if !self.is_leader() {
            return self
                .to_leader(JOIN_PATH, &JoinRequest { member, fresh })
                .await;
        }
        let voters: BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if fresh && voters.contains(&id) && voters.len() > 1 {
            info!(node = %member, "a voter came back without its raft state; it rejoins as a learner");
            self.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
                .await?;
        }
        let change = match self.member_of(id) {
            Some(m) if m == member => return Ok(self.member.clone()),
            Some(_) => ChangeMembers::SetNodes(BTreeMap::from([(id, member.clone())])),
            None => ChangeMembers::AddNodes(BTreeMap::from([(id, member.clone())])),
        };
        info!(node = %member, "adding node to the cluster");
        self.change_membership(change, true).await?;
        Ok(self.member.clone())
    }

    /// Remove `name` from the cluster (on the leader; forwards otherwise).
    pub async fn leave_member(&self, name: &str) -> Result<(), ClusterError> {
        if !self.is_leader() {
            let req = JoinRequest {
                member: Member {
                    name: name.to_string(),
                    ..Member::default()
                },
                fresh: false,
            };
            return self
                .to_leader(LEAVE_PATH, &req)
                .await
                .map(|_: serde_json::Value| ());
        }
        let id = raft_id(name);
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ClusterError::Refused(
                    "the last voter cannot leave the cluster".into(),
                ));
            }
            self.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await?;
        } else if membership.get_node(&id).is_some() {
            self.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await?;
        }
        if self.is_leader() {
            self.raft
                .client_write(Command::ExpireNode { node: id })
                .await
                .map_err(write_error)?;
        }
        info!(node_id = %name, "node left the cluster");
        Ok(())
    }

    /// Change the membership, waiting (up to [`CALL_TIMEOUT`]) for a change under way, such
    /// as a promotion, to finish first: only one can be in flight.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, Member>,
        retain: bool,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let attempt = tokio::time::timeout(
                CALL_TIMEOUT,
                self.raft.change_membership(change.clone(), retain),
            )
            .await
            .map_err(|_| ClusterError::TimedOut(CALL_TIMEOUT))?;
            match attempt {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) => {
                    return Err(ClusterError::Refused(
                        "another membership change is still under way; try again".into(),
                    ))
                }
                Err(e) => return Err(write_error(e)),
            }
        }
    }

    /// Leave the cluster on shutdown: the leader removes this node (handing over leadership
    /// if this node leads) and its endpoint entries.
    pub async fn leave(&self) {
        if self.node_count() <= 1 {
            return; // a cluster of one ends with its node
        }
        let name = self.member.name.clone();
        match tokio::time::timeout(SHUTDOWN_STEP, self.leave_member(&name)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not leave the cluster cleanly"),
            Err(_) => warn!("leaving the cluster timed out"),
        }
    }

    /// The members this node knows: from its Raft state (the committed membership and the
    /// effective one, which may be newer and not committed yet: a leader that removes itself
    /// replicates until the change commits), then from what trusted nodes named.
    pub async fn known_peers(&self) -> Result<KnownPeers, ClusterError> {
        let mut known = self
            .raft
            .with_raft_state(|st| {
                let mut known = KnownPeers::default();
                let ms = &st.membership_state;
                for em in [ms.committed(), ms.effective()] {
                    let m = em.membership();
                    known.voters.extend(m.voter_ids());
                    for (id, node) in m.nodes() {
                        known.members.insert(*id, node.clone());
                    }
                }
                known
            })
            .await
            .map_err(ClusterError::raft)?;
        known.extend(&self.vouched.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(known)
    }

    fn set_vouched(&self, mut vouched: KnownPeers) {
        if vouched.members.len() > MAX_VOUCHED {
            vouched.members = vouched.members.into_iter().take(MAX_VOUCHED).collect();
        }
        vouched.voters.retain(|v| vouched.members.contains_key(v));
        *self.vouched.lock().unwrap_or_else(|e| e.into_inner()) = vouched;
    }

    /// Ask the members this node knows and the nodes behind `cluster.join` who the members
    /// are, in the background and at most every `VOUCH_INTERVAL`: a node that missed
    /// membership changes (it was away while a node joined and became leader) would refuse
    /// that leader's appends forever otherwise. Called when a Raft call from an unknown node
    /// is refused; the sender's retry gets in once a trusted node names it.
    pub fn refresh_vouched(self: &Arc<Self>) {
        {
            let mut at = self.vouched_at.lock().unwrap_or_else(|e| e.into_inner());
            if at.is_some_and(|t| t.elapsed() < VOUCH_INTERVAL) {
                return;
            }
            *at = Some(Instant::now());
        }
        let me = self.clone();
        // Not tracked: a few info calls of 2 s each, started from a request handler; a
        // shutdown need not wait for them.
        tokio::spawn(async move {
            let mut addrs: BTreeSet<String> =
                resolve(&me.settings.join).await.into_iter().collect();
            let raft_members = me
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != me.id)
                .map(|(_, m)| m.cluster_addr.clone())
                .collect::<Vec<_>>();
            addrs.extend(raft_members);
            addrs.remove(&me.member.cluster_addr);
            let mut vouched = KnownPeers::default();
            for addr in addrs {
                match me
                    .client
                    .call::<(), NodeAnswer>(&addr, INFO_PATH, None, Duration::from_secs(2))
                    .await
                {
                    Ok(a) if a.member.name != me.member.name => vouched.extend(&a.known_peers()),
                    Ok(_) => {}
                    Err(e) => debug!(%addr, error = %e, "asking a node for the members failed"),
                }
            }
            me.set_vouched(vouched);
        });
    }

    /// What this node answers on [`INFO_PATH`].
    pub async fn answer(&self) -> NodeAnswer {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        NodeAnswer {
            member: self.member.clone(),
            initialized: self.raft.is_initialized().await.unwrap_or(false),
            leader: metrics
                .current_leader
                .and_then(|l| membership.get_node(&l))
                .map(|m| m.name.clone()),
            members: membership.nodes().map(|(_, m)| m.clone()).collect(),
            voters: membership
                .voter_ids()
                .filter_map(|v| membership.get_node(&v))
                .map(|m| m.name.clone())
                .collect(),
        }
    }
}

/// Every address behind `join`: each entry is `host:port`, and a DNS name may stand for many
/// nodes (a Kubernetes headless service).
async fn resolve(join: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in join {
        match tokio::net::lookup_host(entry.as_str()).await {
            Ok(addrs) => {
                let addrs: BTreeSet<String> = addrs.map(|a| a.to_string()).collect();
                if addrs.len() > 1 {
                    out.extend(addrs);
                } else {
                    // One address: keep the name, so TLS verifies the name in the certificate.
                    out.push(entry.clone());
                }
            }
            Err(e) => debug!(addr = %entry, error = %e, "cannot resolve join address"),
        }
    }
    out
}
