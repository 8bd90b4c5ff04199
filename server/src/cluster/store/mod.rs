//! Raft storage: the log ([`LogStore`]) and the state machine ([`StateMachine`]).
//!
//! Both come in two flavours behind one type each:
//! - in memory ([`LogStore::memory`], [`StateMachine::memory`]), for tests and single-node setups
//!   that may forget everything on restart;
//! - persistent in a data directory ([`LogStore::open`], [`StateMachine::open`]): the log, the
//!   vote and the committed/purged pointers in a redb database `raft.redb`, the latest snapshot
//!   in `snapshot.json`.
//!
//! The state machine is not written on every `apply`: it is rebuilt on start from the snapshot
//! plus the committed entries still in the log (openraft re-applies everything up to the saved
//! `committed` log id). That is why the log store saves `committed` and why a snapshot is durable
//! before openraft is told about it (openraft then purges the log up to it).
//!
//! Routing code reads the replicated state through [`StateMachine::state`], a watch channel
//! holding an immutable `Arc<ClusterState>`, so it never locks the state machine.
//!
//! Layout: `log` holds the log store, `state_machine` the state machine and its snapshots;
//! this file the data directory's layout and errors they share.

mod log;
mod state_machine;

use std::path::{Path, PathBuf};

use redb::TableDefinition;

pub use log::LogStore;
pub use state_machine::StateMachine;

use super::types::TypeConfig;

/// A log entry of this cluster.
type Entry = openraft::Entry<TypeConfig>;

/// File name of the raft log database inside the data directory.
const LOG_FILE: &str = "raft.redb";
/// File name of the latest snapshot inside the data directory.
const SNAPSHOT_FILE: &str = "snapshot.json";
/// Where a snapshot is written before it is renamed over [`SNAPSHOT_FILE`].
const SNAPSHOT_TMP_FILE: &str = "snapshot.json.tmp";

/// Log index → serde_json of the [`Entry`].
const LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Key → serde_json of the value (see the `*_KEY` constants).
const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";

/// The raft log is small (it is purged after every snapshot), so a large page cache buys nothing;
/// redb's default is 1 GiB.
const LOG_CACHE_BYTES: usize = 16 << 20;

/// A data directory could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory does not exist and could not be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The raft log database could not be opened or read (missing permission, damaged file,
    /// another process has it open).
    #[error("cannot open raft log at {}: {source}", path.display())]
    OpenLog {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: redb::Error,
    },
    /// The raft log database holds a record that does not decode.
    #[error("cannot decode raft log at {}: {source}", path.display())]
    DecodeLog {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The snapshot file exists but could not be read.
    #[error("cannot read snapshot at {}: {source}", path.display())]
    ReadSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot file does not decode.
    #[error("cannot decode snapshot at {}: {source}", path.display())]
    DecodeSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
