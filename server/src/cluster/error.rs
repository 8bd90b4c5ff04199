//! Why the cluster could not start or a change could not be made. Typed, with the cause as
//! the source: the cluster port and the admin routes map each kind to a status.

use std::path::PathBuf;
use std::time::Duration;

use openraft::error::RaftError;

use super::network::PeerError;
use super::store::StoreError;
use super::types::NodeId;

/// An error of openraft's, kept as the source (its types are generic over this crate's Raft
/// types, so they are boxed here rather than named).
pub type RaftFailure = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The cluster could not be started or a change could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The Raft log or state could not be opened.
    #[error("cluster.data_dir: {0}")]
    Store(#[from] StoreError),
    /// The file that keeps a generated node id could not be read or written.
    #[error("cluster.data_dir: {}: {source}", path.display())]
    NodeIdFile {
        /// `data_dir/node_id`.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file that keeps a generated node id holds an invalid one.
    #[error(
        "cluster.data_dir: {}: invalid node id {id:?}: {reason}; delete the file or set cluster.node_id",
        path.display()
    )]
    InvalidNodeIdFile {
        /// `data_dir/node_id`.
        path: PathBuf,
        /// What the file holds.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// openraft refused to start, or stopped.
    #[error("cannot start raft: {0}")]
    Raft(#[source] RaftFailure),
    /// There is no leader to take the change (election under way, or no quorum).
    #[error("no cluster leader is known; try again")]
    NoLeader,
    /// The leader could not be reached.
    #[error("{0}")]
    Peer(#[from] PeerError),
    /// The change was refused by this cluster's rules (the last voter cannot leave, ...).
    #[error("{0}")]
    Refused(String),
    /// Raft refused the change (the leader moved, the membership changed meanwhile, ...).
    #[error("{0}")]
    Rejected(#[source] RaftFailure),
    /// The change was not committed in time (no quorum, or a leader cut off from it).
    #[error("the cluster did not commit the change within {0:?}")]
    TimedOut(Duration),
}

impl ClusterError {
    /// openraft failed: `e` becomes the source.
    pub fn raft(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Raft(Box::new(e))
    }

    /// Whether the cluster said no to the change (rather than could not be asked): the
    /// caller should not retry as is.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::Rejected(_))
    }
}

/// A failed write or membership change: refused by Raft, or Raft itself failed.
pub(super) fn write_error<E>(e: RaftError<NodeId, E>) -> ClusterError
where
    E: std::error::Error + Send + Sync + 'static,
{
    match e {
        RaftError::APIError(e) => ClusterError::Rejected(Box::new(e)),
        RaftError::Fatal(e) => ClusterError::raft(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_key_or_the_cause() {
        let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let table: Vec<(ClusterError, &str)> = vec![
            (
                ClusterError::NodeIdFile {
                    path: "/d/node_id".into(),
                    source: io(),
                },
                "cluster.data_dir: /d/node_id: denied",
            ),
            (
                ClusterError::InvalidNodeIdFile {
                    path: "/d/node_id".into(),
                    id: "a b".into(),
                    reason: "bad",
                },
                "cluster.data_dir: /d/node_id: invalid node id \"a b\": bad; delete the file or set cluster.node_id",
            ),
            (ClusterError::raft(io()), "cannot start raft: denied"),
            (ClusterError::Rejected(Box::new(io())), "denied"),
            (ClusterError::Refused("no".into()), "no"),
            (
                ClusterError::TimedOut(Duration::from_secs(10)),
                "the cluster did not commit the change within 10s",
            ),
        ];
        for (e, want) in table {
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn raft_errors_keep_their_cause_as_the_source() {
        let e = ClusterError::raft(std::io::Error::other("disk gone"));
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "disk gone");
        assert!(ClusterError::Rejected(Box::new(std::io::Error::other("x"))).is_refusal());
        assert!(!ClusterError::NoLeader.is_refusal());
    }
}
