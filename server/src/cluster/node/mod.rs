//! This node's part in the cluster: starting or joining the Raft group, proposing changes to
//! the leader, keeping its own endpoint entries in step with its upstreams, and, while it
//! leads, expiring the entries of nodes that stopped answering and promoting learners so the
//! group keeps 1, 3 or 5 voters.
//!
//! Layout, by concept: `membership` (start, join, leave, who the members are),
//! `endpoints` (this node's endpoint entries and routing to other nodes), `leases` (what
//! the leader does: expire nodes, promote and replace voters), `status` (health and the
//! status pages). This file holds the handle itself and what all of them share.

mod endpoints;
mod leases;
mod membership;
mod status;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};
use tokio::sync::{watch, Notify};
use tracing::debug;

use super::error::ClusterError;
use super::network::{NetworkFactory, PeerClient, PeerLiveness};
use super::store::{LogStore, StateMachine};
use super::trust::{KnownPeers, PeerPolicy};
use super::types::{raft_id, ClusterState, Member, NodeId, TypeConfig};

pub use membership::{JoinRequest, NodeAnswer};
pub use status::NodeStatus;

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
    pub token: Option<crate::secret::SecretString>,
    /// Which peers the cluster port admits.
    pub peers: PeerPolicy,
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
            Some(dir) => (LogStore::open(dir)?, StateMachine::open(dir)?),
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
        let config = raft_config().validate().map_err(ClusterError::raft)?;
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(ClusterError::raft)?;
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

    /// Which peers the cluster port admits.
    pub fn peer_policy(&self) -> PeerPolicy {
        self.settings.peers
    }

    /// This node's current Raft term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
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

    /// Stop Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            debug!(error = %e, "raft did not stop cleanly");
        }
    }
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
