//! The cluster's configured settings (`cluster.*`), validated by `config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{ClusterSettings, Member, PeerPolicy};
use crate::secret::SecretString;
use crate::tls::TlsFiles;

/// `cluster.*`: who this node is, whom it joins, and how nodes trust each other.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address of the cluster port (`cluster.bind_addr`).
    pub bind_addr: SocketAddr,
    /// Address announced to other nodes (`None`: the bound one).
    pub advertise_addr: Option<String>,
    /// This node's id.
    pub node_id: String,
    /// Whether `node_id` was made up because none was configured (a node with a data dir
    /// then keeps the first one it made there).
    pub node_id_generated: bool,
    /// Cluster addresses (or DNS names) of nodes to join, each with a port.
    pub join: Vec<String>,
    /// How long a node that is not yet a member may try to join.
    pub join_timeout: Duration,
    /// Whether the node stops when it is not a member after `join_timeout` (otherwise it
    /// warns and keeps trying, not ready).
    pub abort_if_join_fails: bool,
    /// Raft data directory (`None`: in memory).
    pub data_dir: Option<PathBuf>,
    /// A node unheard by the leader for this long loses its endpoint entries.
    pub node_lease: Duration,
    /// TLS of the cluster port.
    pub tls: Option<TlsFiles>,
    /// TLS for calls to other nodes (set with `tls`).
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    /// The cluster's shared token (`None`: not required).
    pub token: Option<SecretString>,
    /// Without a token or mutual TLS, peers from any address are accepted (otherwise
    /// loopback ones only).
    pub allow_unauthenticated_peers: bool,
}

impl Settings {
    /// What [`super::Cluster::new`] needs: these settings with the node as others see it
    /// and the peers its port admits.
    pub fn for_node(&self, member: Member, peers: PeerPolicy) -> ClusterSettings {
        ClusterSettings {
            member,
            join: self.join.clone(),
            data_dir: self.data_dir.clone(),
            tls: self.client_tls.clone(),
            node_lease: self.node_lease,
            token: self.token.clone(),
            peers,
        }
    }
}
