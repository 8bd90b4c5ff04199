//! This node's part in the cluster: starting or joining the Raft group, proposing changes to
//! the leader, keeping its own endpoint entries in step with its upstreams, and, while it
//! leads, expiring the entries of nodes that stopped answering and promoting learners so the
//! group keeps 1, 3 or 5 voters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use piko_protocol::EndpointId;

use super::network::{
    NetworkFactory, PeerClient, PeerError, PeerLiveness, INFO_PATH, JOIN_PATH, LEAVE_PATH,
    WRITE_PATH,
};
use super::store::{LogStore, StateMachine};
use super::trust::{KnownPeers, PeerPolicy};
use super::types::{
    raft_id, ClusterState, Command, EndpointEntry, EndpointTable, Member, NodeId, TypeConfig,
};
use crate::upstream::{Registry, RegistryObserver};

/// How long a call to another node may take (a join waits for the new node to catch up).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long each cluster step of a shutdown (withdraw, leave) may take: a node cut off from
/// its quorum still exits promptly.
const SHUTDOWN_STEP: Duration = Duration::from_secs(4);
/// How often the background loops look again.
const TICK: Duration = Duration::from_millis(500);
/// How often at most this node asks other nodes who the members are (see
/// [`Cluster::refresh_vouched`]).
const VOUCH_INTERVAL: Duration = Duration::from_secs(2);
/// Most members taken from other nodes' answers: a membership is a handful of nodes.
const MAX_VOUCHED: usize = 1024;

/// What a node needs to take part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node as others see it.
    pub member: Member,
    /// Cluster addresses (or DNS names with many records) of nodes to join.
    pub join: Vec<String>,
    /// Where the Raft log and snapshots persist (`None`: in memory).
    pub data_dir: Option<PathBuf>,
    /// TLS for calls to other nodes (`None`: plain HTTP).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// A node that has not answered the leader for this long loses its endpoint entries.
    pub node_lease: Duration,
    /// The shared token every node sends and requires on the cluster port.
    pub token: Option<crate::config::SecretString>,
    /// Which peers the cluster port admits.
    pub peers: PeerPolicy,
}

/// The cluster could not be started or a change could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The Raft log or state could not be opened.
    #[error("cluster.data_dir: {0}")]
    Store(String),
    /// openraft refused to start.
    #[error("cannot start raft: {0}")]
    Raft(String),
    /// There is no leader to take the change (election under way, or no quorum).
    #[error("no cluster leader is known; try again")]
    NoLeader,
    /// The leader could not be reached.
    #[error("{0}")]
    Peer(#[from] PeerError),
    /// The change was refused.
    #[error("{0}")]
    Refused(String),
    /// The change was not committed in time (no quorum, or a leader cut off from it).
    #[error("the cluster did not commit the change within {0:?}")]
    TimedOut(Duration),
}

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
            if super::validate_member(m).is_ok() {
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

/// This node's handle on the cluster.
pub struct Cluster {
    id: NodeId,
    member: Member,
    raft: Raft<TypeConfig>,
    client: PeerClient,
    liveness: Arc<PeerLiveness>,
    state: watch::Receiver<Arc<ClusterState>>,
    settings: ClusterSettings,
    local_changed: Notify,
    /// The term this node leads in and since when.
    leader_since: Mutex<Option<(u64, Instant)>>,
    /// Members other trusted nodes named (the nodes behind `cluster.join`, and members): a
    /// node joining, or one that missed membership changes, accepts Raft RPC from these too.
    vouched: Mutex<KnownPeers>,
    /// When this node last asked for [`Self::vouched`].
    vouched_at: Mutex<Option<Instant>>,
}

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

fn raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "piko".into(),
        // openraft gives each AppendEntries the heartbeat interval to answer, which must
        // cover a fresh TCP and TLS handshake on a busy node.
        heartbeat_interval: 500,
        election_timeout_min: 1500,
        election_timeout_max: 3000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 200,
        // Chunks travel as JSON (about 3.5 bytes per byte): small ones, time enough for each.
        snapshot_max_chunk_size: 256 * 1024,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
}

impl Cluster {
    /// Open the Raft log and state (in `settings.data_dir` or in memory) and start Raft. The
    /// node is not in a cluster yet: call [`Cluster::start`].
    pub async fn new(settings: ClusterSettings) -> Result<Arc<Self>, ClusterError> {
        let id = raft_id(&settings.member.name);
        let (log, sm) = match &settings.data_dir {
            Some(dir) => (
                LogStore::open(dir).map_err(|e| ClusterError::Store(e.to_string()))?,
                StateMachine::open(dir).map_err(|e| ClusterError::Store(e.to_string()))?,
            ),
            None => (LogStore::memory(), StateMachine::memory()),
        };
        let state = sm.state();
        let client = PeerClient::new(
            settings.tls.clone(),
            settings.token.as_ref().map(|t| t.0.as_str()),
        );
        let liveness = Arc::new(PeerLiveness::default());
        let network = NetworkFactory {
            client: client.clone(),
            liveness: liveness.clone(),
        };
        let config = raft_config()
            .validate()
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        Ok(Arc::new(Self {
            id,
            member: settings.member.clone(),
            raft,
            client,
            liveness,
            state,
            settings,
            local_changed: Notify::new(),
            leader_since: Mutex::new(None),
            vouched: Mutex::new(KnownPeers::default()),
            vouched_at: Mutex::new(None),
        }))
    }

    /// This node's Raft id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The Raft handle, for the cluster port's RPC routes.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The client for other nodes' cluster ports.
    pub fn client(&self) -> &PeerClient {
        &self.client
    }

    /// Become part of a cluster: a node already in one (its data dir says so) rejoins by
    /// itself; with no `join` addresses the node starts a cluster of its own; otherwise it
    /// asks the nodes at `join` until one takes it. Returns when the node is a member, or
    /// when `shutdown` is cancelled.
    pub async fn start(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<(), ClusterError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        if initialized {
            info!(node_id = %self.member.name, "rejoining the cluster from the raft log");
            if !self.settings.join.is_empty() {
                // Addresses may have changed; the leader updates our entry if so.
                let me = self.clone();
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
            Err(e) => Err(ClusterError::Raft(e.to_string())),
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

    /// Whether `given` (a request's cluster token header) is what this cluster requires.
    pub fn token_accepted(&self, given: Option<&[u8]>) -> bool {
        let Some(want) = &self.settings.token else {
            return true;
        };
        let (want, given) = (want.0.as_bytes(), given.unwrap_or_default());
        // Compared in time independent of where they differ.
        want.len() == given.len()
            && want
                .iter()
                .zip(given)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

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

    /// This node's current Raft term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Which peers the cluster port admits.
    pub fn peer_policy(&self) -> PeerPolicy {
        self.settings.peers
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
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
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
    /// are, in the background and at most every [`VOUCH_INTERVAL`]: a node that missed
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

    /// Whether this node leads (in its own view: a leader cut off from its quorum still does).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The member with Raft id `id`, if in the membership.
    pub fn member_of(&self, id: NodeId) -> Option<Member> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
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

    /// Keep this node's replicated endpoint entries equal to `registry`'s local upstreams,
    /// until `shutdown`.
    ///
    /// Local upstreams of an endpoint the replicated state gives to another tenant's upstreams
    /// on another node are closed: their registration lost a race (the state machine keeps the
    /// first tenant, see [`ClusterState::apply`]) or came in before this replica learnt of the
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
        let live_voters = voters.iter().filter(|v| alive(**v)).count();
        let up = live_voters + learners.len();
        let want = if up >= 5 {
            5
        } else if up >= 3 {
            3
        } else {
            1
        };
        let change = if voters.len() < want && voters.len() + learners.len() >= want {
            let add: BTreeSet<NodeId> = learners.into_iter().take(want - voters.len()).collect();
            info!(voters = want, "promoting learners to voters");
            ChangeMembers::AddVoterIds(add)
        } else {
            // A voter that stopped answering hands its seat to a live learner (it stays a
            // learner itself, and may be promoted again when it is back). Only while the live
            // voters are a quorum: without one no change can commit, and trying would leave
            // the group stuck in a joint configuration.
            let dead: Vec<NodeId> = voters.iter().copied().filter(|v| !alive(*v)).collect();
            // Live here means heard from within half a lease: voters that died together
            // run out of their leases a heartbeat or so apart, and the first to do so must
            // not find the others still counted alive.
            let recent = |id: NodeId| {
                id == self.id
                    || self
                        .liveness
                        .last_ok(id)
                        .is_some_and(|t| t.elapsed() < self.settings.node_lease / 2)
            };
            let quorum_alive = voters.iter().filter(|v| recent(**v)).count() * 2 > voters.len();
            if dead.is_empty() || learners.is_empty() || !quorum_alive {
                return;
            }
            let mut next = voters.clone();
            for (d, l) in dead.iter().zip(&learners) {
                next.remove(d);
                next.insert(*l);
            }
            let name = |id: &NodeId| {
                membership
                    .get_node(id)
                    .map_or_else(|| id.to_string(), |m| m.name.clone())
            };
            info!(
                out = ?dead.iter().take(learners.len()).map(name).collect::<Vec<_>>(),
                "replacing voters that stopped answering with learners"
            );
            ChangeMembers::ReplaceAllVoters(next)
        };
        match tokio::time::timeout(CALL_TIMEOUT, self.raft.change_membership(change, true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(error = %e, "changing voters failed"),
            Err(_) => debug!("changing voters timed out"),
        }
    }

    /// Stop Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            debug!(error = %e, "raft did not stop cleanly");
        }
    }
}

fn write_error<E: std::fmt::Display>(e: RaftError<NodeId, E>) -> ClusterError {
    match e {
        RaftError::APIError(e) => ClusterError::Refused(e.to_string()),
        RaftError::Fatal(e) => ClusterError::Raft(e.to_string()),
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

/// Clusters for the server's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use openraft::raft::AppendEntriesRequest;
    use openraft::Vote;
    use tokio_util::sync::CancellationToken;

    use super::{Cluster, ClusterSettings};
    use crate::cluster::types::{raft_id, Member};

    /// A cluster of one node, in memory, that leads.
    pub async fn single_node() -> Arc<Cluster> {
        let cluster = Cluster::new(ClusterSettings {
            member: Member {
                name: "solo".into(),
                proxy_addr: "127.0.0.1:1".into(),
                upstream_addr: "127.0.0.1:2".into(),
                admin_addr: "127.0.0.1:3".into(),
                cluster_addr: "127.0.0.1:4".into(),
            },
            join: vec![],
            data_dir: None,
            tls: None,
            node_lease: Duration::from_secs(10),
            token: None,
            peers: Default::default(),
        })
        .await
        .expect("cluster");
        cluster
            .start(&CancellationToken::new())
            .await
            .expect("bootstrap");
        tokio::time::timeout(Duration::from_secs(10), async {
            while !cluster.is_leader() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the node leads");
        cluster
    }

    /// Make the Raft core panic as a message with term `u64::MAX` did before the cluster port
    /// refused such terms: the node takes the sender as its leader at that term, and openraft
    /// (debug builds) overflows on the term of its next election.
    pub async fn panic_raft_core(cluster: &Cluster) {
        let other = raft_id("other");
        let _ = cluster
            .raft()
            .append_entries(AppendEntriesRequest {
                vote: Vote::new_committed(u64::MAX, other),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::testing;

    #[tokio::test]
    async fn a_raft_core_that_panicked_makes_the_node_unhealthy() {
        let cluster = testing::single_node().await;
        assert!(cluster.is_healthy());
        testing::panic_raft_core(&cluster).await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while cluster.is_healthy() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the node says it is unhealthy once its raft core is gone");
    }
}
