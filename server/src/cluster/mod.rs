//! The cluster: one Raft group (openraft) replicating membership and the endpoint registry.
//!
//! Layout:
//! - [`types`]: the Raft type configuration, commands and the replicated state.
//! - [`store`]: the Raft log (in memory, or persistent in `cluster.data_dir`) and the state machine.
//! - [`network`]: the client for other nodes' cluster ports (Raft RPC, forwarded requests), TLS.
//! - [`node`]: bootstrap and join, writes through the leader, endpoint sync, the leader's lease
//!   on nodes and voter promotion.
//! - [`service`]: the cluster port's routes.
//! - [`error`]: [`ClusterError`], typed.
//! - [`settings`]: the configured `cluster.*` section, [`Settings`].
//! - [`trust`]: what the cluster port trusts: peers, certificates naming nodes, Raft terms.
//! - [`voters`]: the leader's voter policy (promotions, replacing voters that stopped
//!   answering), a pure function.
//!
//! Every `openraft::` path of the server stays inside this module.

pub mod error;
pub mod network;
pub mod node;
pub mod service;
pub mod settings;
pub mod store;
pub mod trust;
pub mod types;
pub mod voters;

pub use error::ClusterError;
pub use network::PeerClient;
pub use node::{Cluster, ClusterSettings, NodeStatus};
pub use service::ClusterPort;
pub use settings::Settings;
pub use trust::PeerPolicy;
pub use types::{Member, NodeId};

/// The node id to run with: a configured one as is; a generated one is kept in
/// `data_dir/node_id`, so a restarted node finds its Raft log under the same name.
pub fn stable_node_id(
    data_dir: Option<&std::path::Path>,
    id: &str,
    generated: bool,
) -> Result<String, ClusterError> {
    let Some(dir) = data_dir.filter(|_| generated) else {
        return Ok(id.to_string());
    };
    let path = dir.join("node_id");
    let io = |source| ClusterError::NodeIdFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(saved) => {
            let saved = saved.trim().to_string();
            check_node_id(&saved).map_err(|reason| ClusterError::InvalidNodeIdFile {
                path: path.clone(),
                id: saved.clone(),
                reason,
            })?;
            Ok(saved)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::write(&path, format!("{id}\n")).map_err(io)?;
            Ok(id.to_string())
        }
        Err(e) => Err(io(e)),
    }
}

/// Check a node id (`cluster.node_id`, or one another node sends): what is wrong, if anything.
pub fn check_node_id(id: &str) -> Result<(), &'static str> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err("use up to 64 letters, digits, '-', '_' or '.'")
    }
}

/// Check a member sent by another node: a valid name and `host:port` addresses.
pub fn validate_member(m: &Member) -> Result<(), String> {
    check_node_id(&m.name).map_err(|e| format!("invalid node id {:?}: {e}", m.name))?;
    for (key, addr) in [
        ("proxy_addr", &m.proxy_addr),
        ("upstream_addr", &m.upstream_addr),
        ("admin_addr", &m.admin_addr),
        ("cluster_addr", &m.cluster_addr),
    ] {
        let ok = addr.len() <= 255
            && addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(format!("invalid {key} {addr:?}: use host:port"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_node_id_is_kept_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = Some(dir.path());
        assert_eq!(stable_node_id(d, "piko-1", true).unwrap(), "piko-1");
        assert_eq!(
            stable_node_id(d, "piko-2", true).unwrap(),
            "piko-1",
            "the first one stays"
        );
        assert_eq!(
            stable_node_id(d, "named", false).unwrap(),
            "named",
            "a configured id wins"
        );
        assert_eq!(stable_node_id(None, "piko-3", true).unwrap(), "piko-3");
        std::fs::write(dir.path().join("node_id"), "bad id!\n").unwrap();
        let e = stable_node_id(d, "piko-4", true).unwrap_err().to_string();
        assert!(
            e.contains("node_id") && e.contains("invalid node id"),
            "{e}"
        );
    }

    #[test]
    fn members_from_other_nodes_are_checked() {
        let good = Member {
            name: "node-1".into(),
            proxy_addr: "10.0.0.1:8000".into(),
            upstream_addr: "10.0.0.1:8001".into(),
            admin_addr: "[::1]:8002".into(),
            cluster_addr: "piko-0.piko:8003".into(),
        };
        assert_eq!(validate_member(&good), Ok(()));
        let bad_name = Member {
            name: "a b".into(),
            ..good.clone()
        };
        assert!(validate_member(&bad_name)
            .unwrap_err()
            .contains("invalid node id"));
        let bad_addr = Member {
            cluster_addr: "nohost".into(),
            ..good.clone()
        };
        assert_eq!(
            validate_member(&bad_addr).unwrap_err(),
            "invalid cluster_addr \"nohost\": use host:port"
        );
        let bad_port = Member {
            proxy_addr: "h:99999".into(),
            ..good
        };
        assert!(validate_member(&bad_port)
            .unwrap_err()
            .contains("proxy_addr"));
    }
}
