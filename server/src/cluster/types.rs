//! The Raft types: what the replicated log carries and what the state machine holds.

use std::collections::BTreeMap;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node's Raft id: a stable 64-bit hash of its `cluster.node_id` (see [`raft_id`]).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The cluster's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft id of the node named `name`: FNV-1a, so it is the same on every node and every
/// build (the std hasher is not stable across releases).
pub fn raft_id(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A cluster member as every node sees it: its name and the addresses of its four ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `cluster.node_id`.
    pub name: String,
    /// Proxy port, as advertised.
    pub proxy_addr: String,
    /// Upstream port, as advertised.
    pub upstream_addr: String,
    /// Admin port, as advertised.
    pub admin_addr: String,
    /// Cluster port, as advertised.
    pub cluster_addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.cluster_addr)
    }
}

/// A change to the replicated state, proposed to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `node`'s upstream counts for some endpoints; a count of 0 removes the entry.
    SetEndpoints {
        /// The node whose upstreams these are.
        node: NodeId,
        /// Endpoint id → number of upstreams on `node`.
        counts: BTreeMap<String, u32>,
    },
    /// Replace every endpoint entry of `node` (a node's full resync after it was expired).
    ReplaceEndpoints {
        /// The node.
        node: NodeId,
        /// Its complete endpoint table.
        counts: BTreeMap<String, u32>,
    },
    /// Drop every endpoint entry of `node`: the leader stopped hearing from it.
    ExpireNode {
        /// The node.
        node: NodeId,
    },
}

/// The answer to a [`Command`] once applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {}

/// The replicated state (besides membership, which openraft keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Node → endpoint id → number of upstreams. Nodes with no entry are absent.
    pub endpoints: BTreeMap<NodeId, BTreeMap<String, u32>>,
}

impl ClusterState {
    /// Apply one command.
    pub fn apply(&mut self, cmd: &Command) {
        match cmd {
            Command::SetEndpoints { node, counts } => {
                let table = self.endpoints.entry(*node).or_default();
                for (endpoint, count) in counts {
                    if *count == 0 {
                        table.remove(endpoint);
                    } else {
                        table.insert(endpoint.clone(), *count);
                    }
                }
                if table.is_empty() {
                    self.endpoints.remove(node);
                }
            }
            Command::ReplaceEndpoints { node, counts } => {
                let table: BTreeMap<String, u32> = counts
                    .iter()
                    .filter(|(_, c)| **c > 0)
                    .map(|(e, c)| (e.clone(), *c))
                    .collect();
                if table.is_empty() {
                    self.endpoints.remove(node);
                } else {
                    self.endpoints.insert(*node, table);
                }
            }
            Command::ExpireNode { node } => {
                self.endpoints.remove(node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_stable() {
        assert_eq!(raft_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raft_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(raft_id("node-1"), raft_id("node-2"));
    }

    #[test]
    fn commands_set_replace_and_expire() {
        let mut s = ClusterState::default();
        let counts = |v: &[(&str, u32)]| v.iter().map(|(e, c)| (e.to_string(), *c)).collect();
        s.apply(&Command::SetEndpoints {
            node: 1,
            counts: counts(&[("a", 2), ("b", 1)]),
        });
        s.apply(&Command::SetEndpoints {
            node: 2,
            counts: counts(&[("a", 1)]),
        });
        s.apply(&Command::SetEndpoints {
            node: 1,
            counts: counts(&[("b", 0)]),
        });
        assert_eq!(s.endpoints[&1], counts(&[("a", 2)]));
        s.apply(&Command::ReplaceEndpoints {
            node: 1,
            counts: counts(&[("c", 3), ("d", 0)]),
        });
        assert_eq!(s.endpoints[&1], counts(&[("c", 3)]));
        s.apply(&Command::SetEndpoints {
            node: 1,
            counts: counts(&[("c", 0)]),
        });
        assert!(!s.endpoints.contains_key(&1), "an empty table is removed");
        s.apply(&Command::ExpireNode { node: 2 });
        assert!(s.endpoints.is_empty());
    }
}
