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

/// One node's upstreams for one endpoint, as replicated.
///
/// Written as a bare count for the default tenant (as before tenants were replicated, so older
/// logs and snapshots still read and older nodes read new ones), else as
/// `{"count": n, "tenant": "t"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EntryRepr", into = "EntryRepr")]
pub struct EndpointEntry {
    /// Number of upstreams (in a command, 0 removes the entry).
    pub count: u32,
    /// The tenant whose keys verified them (`None`: the port's default keys, or no auth).
    pub tenant: Option<String>,
}

impl EndpointEntry {
    /// `count` upstreams of `tenant`.
    pub fn new(count: u32, tenant: Option<&str>) -> Self {
        Self {
            count,
            tenant: tenant.map(str::to_string),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum EntryRepr {
    Count(u32),
    Tenant { count: u32, tenant: String },
}

impl From<EntryRepr> for EndpointEntry {
    fn from(r: EntryRepr) -> Self {
        match r {
            EntryRepr::Count(count) => Self {
                count,
                tenant: None,
            },
            EntryRepr::Tenant { count, tenant } => Self {
                count,
                tenant: Some(tenant),
            },
        }
    }
}

impl From<EndpointEntry> for EntryRepr {
    fn from(e: EndpointEntry) -> Self {
        match e.tenant {
            None => EntryRepr::Count(e.count),
            Some(tenant) => EntryRepr::Tenant {
                count: e.count,
                tenant,
            },
        }
    }
}

/// Endpoint id → one node's entry for it.
pub type EndpointTable = BTreeMap<String, EndpointEntry>;

/// A change to the replicated state, proposed to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `node`'s upstream counts for some endpoints; a count of 0 removes the entry. An
    /// entry whose endpoint another node holds for another tenant is refused (see
    /// [`ClusterState::apply`]).
    SetEndpoints {
        /// The node whose upstreams these are.
        node: NodeId,
        /// Endpoint id → upstreams on `node` and their tenant.
        counts: EndpointTable,
    },
    /// Replace every endpoint entry of `node` (a node's full resync after it was expired).
    ReplaceEndpoints {
        /// The node.
        node: NodeId,
        /// Its complete endpoint table.
        counts: EndpointTable,
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
    /// Node → endpoint id → its upstreams there. Nodes with no entry are absent. Every node
    /// holding an endpoint holds it for the same tenant.
    pub endpoints: BTreeMap<NodeId, EndpointTable>,
}

impl ClusterState {
    /// Apply one command.
    ///
    /// Endpoint ids do not cross tenants: an entry of `node` for an endpoint that another node
    /// holds for another tenant is refused, and `node`'s own entry for it removed (its
    /// upstreams of the owner's tenant, if it had any, are gone: a node holds one tenant per
    /// endpoint). Entries apply in log order on every node, so of two nodes racing for one id
    /// the first committed keeps it on every replica; the other sees its entry missing and
    /// closes its upstreams (see the cluster's endpoint sync).
    pub fn apply(&mut self, cmd: &Command) {
        match cmd {
            Command::SetEndpoints { node, counts } => {
                for (endpoint, entry) in counts {
                    self.set(*node, endpoint, entry);
                }
            }
            Command::ReplaceEndpoints { node, counts } => {
                self.endpoints.remove(node);
                for (endpoint, entry) in counts {
                    self.set(*node, endpoint, entry);
                }
            }
            Command::ExpireNode { node } => {
                self.endpoints.remove(node);
            }
        }
    }

    fn set(&mut self, node: NodeId, endpoint: &str, entry: &EndpointEntry) {
        let refused = self.held_by_other_tenant(endpoint, entry.tenant.as_deref(), node);
        let table = self.endpoints.entry(node).or_default();
        if entry.count == 0 || refused {
            table.remove(endpoint);
        } else {
            table.insert(endpoint.to_string(), entry.clone());
        }
        if table.is_empty() {
            self.endpoints.remove(&node);
        }
    }

    /// Whether a node other than `except` holds `endpoint` for a tenant other than `tenant`.
    pub fn held_by_other_tenant(
        &self,
        endpoint: &str,
        tenant: Option<&str>,
        except: NodeId,
    ) -> bool {
        self.endpoints
            .iter()
            .filter(|(n, _)| **n != except)
            .filter_map(|(_, table)| table.get(endpoint))
            .any(|e| e.tenant.as_deref() != tenant)
    }

    /// `node`'s upstream count per endpoint (empty when it holds none).
    pub fn counts(&self, node: NodeId) -> BTreeMap<String, u32> {
        self.endpoints
            .get(&node)
            .map(|t| t.iter().map(|(e, v)| (e.clone(), v.count)).collect())
            .unwrap_or_default()
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
        let counts = |v: &[(&str, u32)]| -> EndpointTable {
            v.iter()
                .map(|(e, c)| (e.to_string(), EndpointEntry::new(*c, None)))
                .collect()
        };
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

    fn table(v: &[(&str, u32, Option<&str>)]) -> EndpointTable {
        v.iter()
            .map(|(e, c, t)| (e.to_string(), EndpointEntry::new(*c, *t)))
            .collect()
    }

    fn set(node: NodeId, v: &[(&str, u32, Option<&str>)]) -> Command {
        Command::SetEndpoints {
            node,
            counts: table(v),
        }
    }

    #[test]
    fn an_endpoint_stays_with_the_first_tenant_until_it_leaves() {
        let mut s = ClusterState::default();
        s.apply(&set(1, &[("shop", 1, Some("acme"))]));
        // Another node: the same tenant joins, another one (or the default tenant) is refused.
        s.apply(&set(2, &[("shop", 2, Some("acme"))]));
        s.apply(&set(
            3,
            &[("shop", 1, Some("rival")), ("blog", 1, Some("rival"))],
        ));
        s.apply(&set(4, &[("shop", 1, None)]));
        s.apply(&Command::ReplaceEndpoints {
            node: 5,
            counts: table(&[("shop", 1, Some("rival"))]),
        });
        assert_eq!(s.endpoints[&1], table(&[("shop", 1, Some("acme"))]));
        assert_eq!(s.endpoints[&2], table(&[("shop", 2, Some("acme"))]));
        assert_eq!(
            s.endpoints[&3],
            table(&[("blog", 1, Some("rival"))]),
            "only the refused entry is dropped"
        );
        assert!(!s.endpoints.contains_key(&4));
        assert!(!s.endpoints.contains_key(&5));
        assert!(s.held_by_other_tenant("shop", Some("rival"), 9));
        assert!(s.held_by_other_tenant("shop", None, 9));
        assert!(!s.held_by_other_tenant("shop", Some("acme"), 9));
        assert!(!s.held_by_other_tenant("free", Some("rival"), 9));

        // A node whose owner-tenant upstreams left while another tenant's joined there loses
        // its entry while another node still holds the id for the owner.
        s.apply(&set(2, &[("shop", 1, Some("rival"))]));
        assert!(!s.endpoints.contains_key(&2));
        // A node holding the id alone may switch tenant: nobody else holds it.
        s.apply(&set(1, &[("shop", 1, Some("rival"))]));
        assert_eq!(s.endpoints[&1], table(&[("shop", 1, Some("rival"))]));
        // Once the owner is gone everywhere, anyone may take it.
        s.apply(&Command::ExpireNode { node: 1 });
        s.apply(&set(4, &[("shop", 1, None)]));
        assert_eq!(s.endpoints[&4], table(&[("shop", 1, None)]));
        assert_eq!(s.counts(4), BTreeMap::from([("shop".to_string(), 1)]));
        assert!(s.counts(1).is_empty());
    }

    #[test]
    fn entries_of_the_default_tenant_keep_the_format_older_nodes_read() {
        // A log entry and a state written before tenants were replicated.
        let old_cmd = r#"{"SetEndpoints":{"node":7,"counts":{"shop":2}}}"#;
        let cmd: Command = serde_json::from_str(old_cmd).unwrap();
        assert_eq!(cmd, set(7, &[("shop", 2, None)]));
        assert_eq!(serde_json::to_string(&cmd).unwrap(), old_cmd);
        let old_state = r#"{"endpoints":{"7":{"shop":2,"blog":1}}}"#;
        let state: ClusterState = serde_json::from_str(old_state).unwrap();
        assert_eq!(
            state.endpoints[&7],
            table(&[("blog", 1, None), ("shop", 2, None)])
        );

        let named = set(7, &[("shop", 1, Some("acme"))]);
        let text = serde_json::to_string(&named).unwrap();
        assert_eq!(
            text,
            r#"{"SetEndpoints":{"node":7,"counts":{"shop":{"count":1,"tenant":"acme"}}}}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), named);
        for bad in [
            r#"{"shop":"two"}"#,
            r#"{"shop":{"tenant":"acme"}}"#,
            r#"{"shop":-1}"#,
        ] {
            assert!(serde_json::from_str::<EndpointTable>(bad).is_err(), "{bad}");
        }
    }
}
