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

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::types::{ClusterState, CommandResponse, Member, NodeId, TypeConfig};

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

// ---------------------------------------------------------------------------------------------
// Log store
// ---------------------------------------------------------------------------------------------

/// The Raft log and vote, in memory or in a redb database; clones share the same log.
#[derive(Clone)]
pub struct LogStore {
    backend: LogBackend,
}

#[derive(Clone)]
enum LogBackend {
    Memory(Arc<Mutex<MemLog>>),
    Redb(Arc<RedbLog>),
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            LogBackend::Memory(_) => f.write_str("LogStore(memory)"),
            LogBackend::Redb(db) => write!(f, "LogStore({})", db.path.display()),
        }
    }
}

impl LogStore {
    /// An empty log kept in memory only.
    pub fn memory() -> LogStore {
        LogStore {
            backend: LogBackend::Memory(Arc::new(Mutex::new(MemLog::default()))),
        }
    }

    /// Open (or create) the persistent log in `dir/raft.redb`, creating `dir` if needed.
    pub fn open(dir: &Path) -> Result<LogStore, StoreError> {
        create_dir(dir)?;
        let path = dir.join(LOG_FILE);
        // A plain open trusts the file and may panic on one damaged outside redb; checking it on
        // open turns that into an error, and the file is small enough to read whole.
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .set_cache_size(LOG_CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::OpenLog {
                path: path.clone(),
                source: e.into(),
            })?;
        let log = RedbLog { db, path };
        log.create_tables().map_err(|e| log.open_error(e))?;
        // Decode what get_log_state and the start-up reads will need, so that a damaged record
        // stops the node here with the file named rather than later inside openraft.
        log.log_state().map_err(|e| log.open_error(e))?;
        log.read_meta::<Vote<NodeId>>(VOTE_KEY)
            .map_err(|e| log.open_error(e))?;
        log.read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)
            .map_err(|e| log.open_error(e))?;
        Ok(LogStore {
            backend: LogBackend::Redb(Arc::new(log)),
        })
    }
}

/// The in-memory log.
#[derive(Default)]
struct MemLog {
    log: BTreeMap<u64, Entry>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

impl MemLog {
    fn entries(&self, start: u64, end: Option<u64>) -> Vec<Entry> {
        let range = match end {
            Some(end) => self.log.range(start..end),
            None => self.log.range(start..),
        };
        range.map(|(_, e)| e.clone()).collect()
    }

    fn log_state(&self) -> LogState<TypeConfig> {
        let last = self.log.values().next_back().map(|e| e.log_id);
        LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: last.or(self.last_purged),
        }
    }
}

fn lock_log(log: &Mutex<MemLog>) -> Result<MutexGuard<'_, MemLog>, AnyError> {
    // Poisoned only if a panic hit the middle of an update: the log can no longer be trusted.
    log.lock()
        .map_err(|_| AnyError::error("in-memory raft log lock poisoned"))
}

/// A failure inside the redb backend; the trait methods wrap it into openraft's error.
#[derive(Debug, thiserror::Error)]
enum LogDbError {
    // No `{0}` in the messages: openraft's `AnyError` prints the source chain itself.
    #[error("raft log database error")]
    Db(#[from] redb::Error),
    #[error("cannot encode a raft log record")]
    Encode(#[source] serde_json::Error),
    #[error("cannot decode a raft log record")]
    Decode(#[source] serde_json::Error),
}

// `?` converts once, so each redb error type needs its own way into `LogDbError`.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for LogDbError {
            fn from(e: $t) -> Self {
                LogDbError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The persistent log: a redb database with a log table and a meta table.
struct RedbLog {
    db: Database,
    path: PathBuf,
}

impl RedbLog {
    fn open_error(&self, e: LogDbError) -> StoreError {
        let path = self.path.clone();
        match e {
            LogDbError::Db(source) => StoreError::OpenLog { path, source },
            LogDbError::Encode(source) | LogDbError::Decode(source) => {
                StoreError::DecodeLog { path, source }
            }
        }
    }

    /// Create both tables, so that read transactions never meet a missing table.
    fn create_tables(&self) -> Result<(), LogDbError> {
        let txn = self.db.begin_write()?;
        txn.open_table(LOG_TABLE)?;
        txn.open_table(META_TABLE)?;
        txn.commit()?;
        Ok(())
    }

    fn read_entries(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, LogDbError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG_TABLE)?;
        let range = match end {
            Some(end) => table.range(start..end)?,
            None => table.range(start..)?,
        };
        range
            .map(|item| {
                let (_, value) = item?;
                serde_json::from_slice(value.value()).map_err(LogDbError::Decode)
            })
            .collect()
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LogDbError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META_TABLE)?;
        let Some(value) = table.get(key)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(LogDbError::Decode)
    }

    /// Write one meta record and commit it (redb commits are durable by default).
    fn write_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), LogDbError> {
        let bytes = serde_json::to_vec(value).map_err(LogDbError::Encode)?;
        let txn = self.db.begin_write()?;
        txn.open_table(META_TABLE)?.insert(key, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, LogDbError> {
        let txn = self.db.begin_read()?;
        let last = match txn.open_table(LOG_TABLE)?.last()? {
            Some((_, value)) => {
                let entry: Entry =
                    serde_json::from_slice(value.value()).map_err(LogDbError::Decode)?;
                Some(entry.log_id)
            }
            None => None,
        };
        let last_purged = match txn.open_table(META_TABLE)?.get(LAST_PURGED_KEY)? {
            Some(value) => serde_json::from_slice::<Option<LogId<NodeId>>>(value.value())
                .map_err(LogDbError::Decode)?,
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    fn append(&self, entries: &[Entry]) -> Result<(), LogDbError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(LOG_TABLE)?;
            for entry in entries {
                let bytes = serde_json::to_vec(entry).map_err(LogDbError::Encode)?;
                table.insert(entry.log_id.index, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn truncate(&self, since: u64) -> Result<(), LogDbError> {
        let txn = self.db.begin_write()?;
        txn.open_table(LOG_TABLE)?
            .retain_in(since.., |_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// Record `upto` as purged and delete the entries up to it, in one transaction so that a
    /// crash never leaves entries missing without the pointer that explains it.
    fn purge(&self, upto: LogId<NodeId>) -> Result<(), LogDbError> {
        let bytes = serde_json::to_vec(&Some(upto)).map_err(LogDbError::Encode)?;
        let txn = self.db.begin_write()?;
        txn.open_table(META_TABLE)?
            .insert(LAST_PURGED_KEY, bytes.as_slice())?;
        txn.open_table(LOG_TABLE)?
            .retain_in(..=upto.index, |_, _| false)?;
        txn.commit()?;
        Ok(())
    }
}

/// Run `op` on tokio's blocking pool.
///
/// Every redb call goes there, reads included: a durable commit waits for an fsync, which takes
/// milliseconds and far more on a busy disk, and doing that on a runtime worker would stall the
/// proxy tasks scheduled on it. openraft awaits each storage call before issuing the next, so the
/// writes stay in order as `RaftLogStorage` requires.
async fn blocking<T, F>(db: &Arc<RedbLog>, op: F) -> Result<T, AnyError>
where
    T: Send + 'static,
    F: FnOnce(&RedbLog) -> Result<T, LogDbError> + Send + 'static,
{
    let shared = Arc::clone(db);
    let context = || format!("raft log at {}", db.path.display());
    match tokio::task::spawn_blocking(move || op(&shared)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(AnyError::new(&e).add_context(context)),
        Err(e) => Err(AnyError::new(&e).add_context(context)),
    }
}

/// `[start, end)` of `range` with `end == None` for unbounded, or `None` if it is empty (a
/// `BTreeMap` range panics when inverted).
fn index_range(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end <= start => None,
        _ => Some((start, end)),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let Some((start, end)) = index_range(&range) else {
            return Ok(Vec::new());
        };
        let entries = match &self.backend {
            LogBackend::Memory(log) => lock_log(log).map(|log| log.entries(start, end)),
            LogBackend::Redb(db) => blocking(db, move |db| db.read_entries(start, end)).await,
        };
        Ok(entries.map_err(StorageIOError::read_logs)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let state = match &self.backend {
            LogBackend::Memory(log) => lock_log(log).map(|log| log.log_state()),
            LogBackend::Redb(db) => blocking(db, |db| db.log_state()).await,
        };
        Ok(state.map_err(StorageIOError::read_logs)?)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        let done = match &self.backend {
            LogBackend::Memory(log) => lock_log(log).map(|mut log| log.vote = Some(vote)),
            LogBackend::Redb(db) => blocking(db, move |db| db.write_meta(VOTE_KEY, &vote)).await,
        };
        Ok(done.map_err(StorageIOError::write_vote)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let vote = match &self.backend {
            LogBackend::Memory(log) => lock_log(log).map(|log| log.vote),
            LogBackend::Redb(db) => blocking(db, |db| db.read_meta(VOTE_KEY)).await,
        };
        Ok(vote.map_err(StorageIOError::read_vote)?)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let done = match &self.backend {
            LogBackend::Memory(log) => lock_log(log).map(|mut log| log.committed = committed),
            LogBackend::Redb(db) => {
                blocking(db, move |db| db.write_meta(COMMITTED_KEY, &committed)).await
            }
        };
        Ok(done.map_err(StorageIOError::write)?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed = match &self.backend {
            LogBackend::Memory(log) => lock_log(log).map(|log| log.committed),
            LogBackend::Redb(db) => blocking(db, |db| {
                db.read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)
            })
            .await
            .map(Option::flatten),
        };
        Ok(committed.map_err(StorageIOError::read)?)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let done = match &self.backend {
            LogBackend::Memory(log) => lock_log(log).map(|mut log| {
                for entry in entries {
                    log.log.insert(entry.log_id.index, entry);
                }
            }),
            LogBackend::Redb(db) => {
                let entries: Vec<Entry> = entries.into_iter().collect();
                blocking(db, move |db| db.append(&entries)).await
            }
        };
        // The entries are durable (or failed) by now, so the callback is called before returning;
        // openraft allows either order. On failure both it and the caller hear about it.
        match done {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let since = log_id.index;
        let done = match &self.backend {
            LogBackend::Memory(log) => lock_log(log).map(|mut log| {
                log.log.split_off(&since);
            }),
            LogBackend::Redb(db) => blocking(db, move |db| db.truncate(since)).await,
        };
        Ok(done.map_err(StorageIOError::write_logs)?)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let done = match &self.backend {
            LogBackend::Memory(log) => lock_log(log).map(|mut log| {
                log.last_purged = Some(log_id);
                match log_id.index.checked_add(1) {
                    Some(keep_from) => log.log = log.log.split_off(&keep_from),
                    None => log.log.clear(),
                }
            }),
            LogBackend::Redb(db) => blocking(db, move |db| db.purge(log_id)).await,
        };
        Ok(done.map_err(StorageIOError::write_logs)?)
    }
}

// ---------------------------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------------------------

/// A snapshot's bytes, both as sent to followers and as kept in `snapshot.json`: serde_json of
/// this. Generic so that it serializes from borrows and deserializes into owned values.
#[derive(Serialize, Deserialize)]
struct SnapshotData<M, S> {
    meta: M,
    state: S,
}

type Meta = SnapshotMeta<NodeId, Member>;

fn encode_snapshot(meta: &Meta, state: &ClusterState) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&SnapshotData { meta, state })
}

fn decode_snapshot(bytes: &[u8]) -> Result<(Meta, ClusterState), serde_json::Error> {
    let data: SnapshotData<Meta, ClusterState> = serde_json::from_slice(bytes)?;
    Ok((data.meta, data.state))
}

/// The current snapshot: its meta and its bytes (see [`SnapshotData`]).
#[derive(Clone)]
struct CurrentSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

/// The Raft state machine holding the replicated [`ClusterState`]; clones share the same state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<SmShared>,
}

struct SmShared {
    data: Mutex<SmData>,
    /// Serializes snapshot writes (a build racing an install) so that an older snapshot never
    /// replaces a newer one, on disk or in memory.
    snapshot_io: tokio::sync::Mutex<()>,
    /// The data directory of a persistent state machine.
    dir: Option<PathBuf>,
    /// Publishes the state after every change; readers hold an immutable `Arc`, never a lock.
    state_tx: watch::Sender<Arc<ClusterState>>,
    /// Tells apart snapshots built at the same log id.
    snapshot_seq: AtomicU64,
}

struct SmData {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, Member>,
    /// Copy-on-write: `apply` clones it once per batch while readers still hold the old one.
    state: Arc<ClusterState>,
    snapshot: Option<CurrentSnapshot>,
}

impl Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.shared.dir {
            None => f.write_str("StateMachine(memory)"),
            Some(dir) => write!(f, "StateMachine({})", dir.display()),
        }
    }
}

impl StateMachine {
    /// An empty state machine whose snapshots live in memory only.
    pub fn memory() -> StateMachine {
        StateMachine::new(None, None)
    }

    /// A state machine that keeps its latest snapshot in `dir/snapshot.json` and restores state,
    /// last applied log id and membership from it; creates `dir` if needed.
    pub fn open(dir: &Path) -> Result<StateMachine, StoreError> {
        create_dir(dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let restored = match std::fs::read(&path) {
            Ok(data) => {
                let (meta, state) = decode_snapshot(&data)
                    .map_err(|source| StoreError::DecodeSnapshot { path, source })?;
                tracing::info!(snapshot = %meta, "restored the raft state machine from its snapshot");
                Some((CurrentSnapshot { meta, data }, state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(StoreError::ReadSnapshot { path, source }),
        };
        Ok(StateMachine::new(Some(dir.to_path_buf()), restored))
    }

    fn new(
        dir: Option<PathBuf>,
        restored: Option<(CurrentSnapshot, ClusterState)>,
    ) -> StateMachine {
        let (snapshot, state) = match restored {
            Some((snapshot, state)) => (Some(snapshot), Arc::new(state)),
            None => (None, Arc::new(ClusterState::default())),
        };
        let data = SmData {
            last_applied: snapshot.as_ref().and_then(|s| s.meta.last_log_id),
            last_membership: snapshot
                .as_ref()
                .map(|s| s.meta.last_membership.clone())
                .unwrap_or_default(),
            state: Arc::clone(&state),
            snapshot,
        };
        let (state_tx, _) = watch::channel(state);
        StateMachine {
            shared: Arc::new(SmShared {
                data: Mutex::new(data),
                snapshot_io: tokio::sync::Mutex::new(()),
                dir,
                state_tx,
                snapshot_seq: AtomicU64::new(0),
            }),
        }
    }

    /// The replicated state, published after every applied batch and installed snapshot.
    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.shared.state_tx.subscribe()
    }

    fn lock(&self) -> Result<MutexGuard<'_, SmData>, Poisoned> {
        self.shared.data.lock().map_err(|_| Poisoned)
    }

    /// Make `snapshot` the current one, durable first for a persistent state machine. With
    /// `only_if_newer`, a snapshot older than the current one is dropped instead: a build that
    /// lost a race with an install must not bring back state the log no longer covers.
    async fn store_snapshot(
        &self,
        snapshot: CurrentSnapshot,
        only_if_newer: bool,
    ) -> Result<(), StorageError<NodeId>> {
        let _writing = self.shared.snapshot_io.lock().await;
        if only_if_newer {
            let current = self.lock()?.snapshot.as_ref().map(|s| s.meta.last_log_id);
            if current.is_some_and(|current| current > snapshot.meta.last_log_id) {
                return Ok(());
            }
        }
        let snapshot = match &self.shared.dir {
            None => snapshot,
            Some(dir) => {
                let signature = snapshot.meta.signature();
                let path = dir.join(SNAPSHOT_FILE);
                let dir = dir.clone();
                // Off the runtime: the write ends with two fsyncs.
                let (snapshot, written) = tokio::task::spawn_blocking(move || {
                    let written = write_snapshot_file(&dir, &snapshot.data);
                    (snapshot, written)
                })
                .await
                .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?;
                written.map_err(|e| {
                    let e =
                        AnyError::new(&e).add_context(|| format!("snapshot at {}", path.display()));
                    StorageIOError::write_snapshot(Some(signature), e)
                })?;
                snapshot
            }
        };
        self.lock()?.snapshot = Some(snapshot);
        Ok(())
    }
}

/// A panic hit the middle of a state machine update, so the state can't be trusted any more.
#[derive(Debug, thiserror::Error)]
#[error("state machine lock poisoned")]
struct Poisoned;

impl From<Poisoned> for StorageError<NodeId> {
    fn from(e: Poisoned) -> Self {
        StorageIOError::read_state_machine(&e).into()
    }
}

/// Replace `dir/snapshot.json` atomically: write a temporary file, fsync it, rename it over the
/// old one, and fsync the directory so that the rename itself survives a crash.
fn write_snapshot_file(dir: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    // Directories can be opened and synced only on Unix; elsewhere the rename is left to the OS.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Taken together so that meta and data describe the same point in the log; the state is
        // an `Arc`, so the lock is held for a few pointer copies and serializing happens outside.
        let (last_applied, last_membership, state) = {
            let data = self.lock()?;
            (
                data.last_applied,
                data.last_membership.clone(),
                Arc::clone(&data.state),
            )
        };
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
            None => format!("none-{seq}"),
        };
        let meta = Meta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        let data = encode_snapshot(&meta, &state)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let snapshot = CurrentSnapshot { meta, data };
        self.store_snapshot(snapshot.clone(), true).await?;
        Ok(Snapshot {
            meta: snapshot.meta,
            snapshot: Box::new(Cursor::new(snapshot.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let data = self.lock()?;
        Ok((data.last_applied, data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries = entries.into_iter();
        let mut responses = Vec::with_capacity(entries.size_hint().0);
        let mut data = self.lock()?;
        let mut changed = false;
        for entry in entries {
            data.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(cmd) => {
                    Arc::make_mut(&mut data.state).apply(&cmd);
                    changed = true;
                }
                EntryPayload::Membership(membership) => {
                    data.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            responses.push(CommandResponse::default());
        }
        // Once per batch, and under the lock so that publications follow the order of changes.
        // Blank and membership entries leave the state as it was: no need to wake readers.
        if changed {
            self.shared.state_tx.send_replace(Arc::clone(&data.state));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let read_err =
            |e: &serde_json::Error| StorageIOError::read_snapshot(Some(meta.signature()), e);
        let received = snapshot.into_inner();
        let (sent_meta, state) = decode_snapshot(&received).map_err(|e| read_err(&e))?;
        // openraft's meta is the authority; the copy inside the bytes is the same when they come
        // from a leader running this code, and is rewritten otherwise.
        let data = if sent_meta == *meta {
            received
        } else {
            encode_snapshot(meta, &state)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?
        };
        // Durable first: once this returns, openraft may purge the log the snapshot replaces.
        let snapshot = CurrentSnapshot {
            meta: meta.clone(),
            data,
        };
        self.store_snapshot(snapshot, false).await?;
        let state = Arc::new(state);
        let mut data = self.lock()?;
        data.last_applied = meta.last_log_id;
        data.last_membership = meta.last_membership.clone();
        data.state = Arc::clone(&state);
        self.shared.state_tx.send_replace(state);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let current = self.lock()?.snapshot.clone();
        Ok(current.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicUsize;

    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::Membership;
    use tempfile::TempDir;

    use super::*;
    use crate::cluster::types::{Command, EndpointEntry};

    /// Fresh in-memory stores, counting how many the suite asked for.
    struct MemoryBuilder(Arc<AtomicUsize>);

    impl StoreBuilder<TypeConfig, LogStore, StateMachine> for MemoryBuilder {
        async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<NodeId>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(((), LogStore::memory(), StateMachine::memory()))
        }
    }

    /// Fresh persistent stores, each in its own temporary directory (removed with the guard).
    struct RedbBuilder(Arc<AtomicUsize>);

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
            let log = LogStore::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
            let sm = StateMachine::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
            Ok((dir, log, sm))
        }
    }

    /// The suite has 35 cases; one of them builds two stores.
    const SUITE_BUILDS: usize = 36;

    // The suite runs every case in a runtime of its own, so these are plain #[test]s: under
    // #[tokio::test] it would panic trying to start a runtime inside a runtime.
    #[test]
    fn memory_store_passes_openraft_suite() {
        let builds = Arc::new(AtomicUsize::new(0));
        Suite::test_all(MemoryBuilder(builds.clone())).unwrap();
        assert_eq!(builds.load(Ordering::Relaxed), SUITE_BUILDS);
    }

    #[test]
    fn redb_store_passes_openraft_suite() {
        let builds = Arc::new(AtomicUsize::new(0));
        Suite::test_all(RedbBuilder(builds.clone())).unwrap();
        assert_eq!(builds.load(Ordering::Relaxed), SUITE_BUILDS);
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        openraft::testing::log_id(term, 1, index)
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    fn set(term: u64, index: u64, node: NodeId, endpoint: &str, count: u32) -> Entry {
        set_for(term, index, node, endpoint, count, None)
    }

    fn set_for(
        term: u64,
        index: u64,
        node: NodeId,
        endpoint: &str,
        count: u32,
        tenant: Option<&str>,
    ) -> Entry {
        let counts = BTreeMap::from([(endpoint.to_string(), EndpointEntry::new(count, tenant))]);
        command(term, index, Command::SetEndpoints { node, counts })
    }

    fn command(term: u64, index: u64, cmd: Command) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    fn member(name: &str) -> Member {
        Member {
            name: name.to_string(),
            cluster_addr: format!("{name}.test:8003"),
            ..Member::default()
        }
    }

    fn two_nodes() -> Membership<NodeId, Member> {
        Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([(1, member("a")), (2, member("b"))]),
        )
    }

    fn membership(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Membership(two_nodes()),
        }
    }

    fn endpoints(tables: &[(NodeId, &[(&str, u32)])]) -> ClusterState {
        let endpoints = tables
            .iter()
            .map(|(node, table)| {
                let table = table
                    .iter()
                    .map(|(e, c)| (e.to_string(), EndpointEntry::new(*c, None)))
                    .collect();
                (*node, table)
            })
            .collect();
        ClusterState { endpoints }
    }

    #[test]
    fn index_ranges_are_half_open_and_never_inverted() {
        // (name, range, want)
        type Case = (
            &'static str,
            (Bound<u64>, Bound<u64>),
            Option<(u64, Option<u64>)>,
        );
        let cases: &[Case] = &[
            (
                "full",
                (Bound::Unbounded, Bound::Unbounded),
                Some((0, None)),
            ),
            (
                "a..b",
                (Bound::Included(3), Bound::Excluded(7)),
                Some((3, Some(7))),
            ),
            (
                "a..=b",
                (Bound::Included(3), Bound::Included(7)),
                Some((3, Some(8))),
            ),
            (
                "excluded start",
                (Bound::Excluded(3), Bound::Unbounded),
                Some((4, None)),
            ),
            ("empty", (Bound::Included(3), Bound::Excluded(3)), None),
            ("inverted", (Bound::Included(7), Bound::Excluded(3)), None),
            (
                "..=MAX",
                (Bound::Included(5), Bound::Included(u64::MAX)),
                Some((5, None)),
            ),
            (
                "past MAX",
                (Bound::Excluded(u64::MAX), Bound::Unbounded),
                None,
            ),
        ];
        for (name, range, want) in cases {
            assert_eq!(index_range(range), *want, "{name}");
        }
    }

    #[tokio::test]
    async fn redb_log_survives_reopen() {
        let dir = TempDir::new().unwrap();
        let entries = vec![
            blank(1, 1),
            membership(1, 2),
            set(1, 3, 1, "api", 2),
            set(1, 4, 2, "web", 1),
            blank(2, 5),
        ];
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            let mut reader = store.get_log_reader().await;
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
            // blocking_append hands append() a real LogFlushed and waits for it to be called.
            store.blocking_append(entries.clone()).await.unwrap();
            store.save_committed(Some(log_id(1, 4))).await.unwrap();
            assert_eq!(
                reader.try_get_log_entries(3..5).await.unwrap(),
                entries[2..4]
            );
        }

        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 4)));
        assert_eq!(
            store.get_log_state().await.unwrap(),
            LogState {
                last_purged_log_id: None,
                last_log_id: Some(log_id(2, 5)),
            }
        );
        assert_eq!(store.try_get_log_entries(..).await.unwrap(), entries);

        // Purge the head, replace the tail with an entry of a later term.
        store.purge(log_id(1, 2)).await.unwrap();
        store.truncate(log_id(2, 5)).await.unwrap();
        store.blocking_append([blank(3, 5)]).await.unwrap();
        drop(store);

        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get_log_state().await.unwrap(),
            LogState {
                last_purged_log_id: Some(log_id(1, 2)),
                last_log_id: Some(log_id(3, 5)),
            }
        );
        let want = vec![entries[2].clone(), entries[3].clone(), blank(3, 5)];
        assert_eq!(store.try_get_log_entries(0..100).await.unwrap(), want);
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));

        // Purging everything keeps the pointer, which then also stands for the last log id.
        store.purge(log_id(3, 5)).await.unwrap();
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get_log_state().await.unwrap(),
            LogState {
                last_purged_log_id: Some(log_id(3, 5)),
                last_log_id: Some(log_id(3, 5)),
            }
        );
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap(),
            Vec::<Entry>::new()
        );
    }

    #[tokio::test]
    async fn snapshot_restores_state_after_reopen() {
        let dir = TempDir::new().unwrap();
        let mut want_state = endpoints(&[(1, &[("api", 2), ("docs", 3)]), (2, &[("web", 1)])]);
        // A named tenant's entry is kept with its tenant.
        want_state
            .endpoints
            .get_mut(&1)
            .unwrap()
            .insert("docs".into(), EndpointEntry::new(3, Some("acme")));
        let want_membership = StoredMembership::new(Some(log_id(1, 1)), two_nodes());
        let built = {
            let mut sm = StateMachine::open(dir.path()).unwrap();
            let mut state = sm.state();
            let responses = sm
                .apply(vec![
                    membership(1, 1),
                    set(1, 2, 1, "api", 2),
                    set(1, 3, 2, "web", 1),
                    set_for(1, 4, 1, "docs", 3, Some("acme")),
                    blank(1, 5),
                ])
                .await
                .unwrap();
            assert_eq!(responses, vec![CommandResponse::default(); 5]);
            assert!(
                state.has_changed().unwrap(),
                "apply publishes the new state"
            );
            assert_eq!(**state.borrow_and_update(), want_state);

            let snapshot = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 5)));
            assert_eq!(snapshot.meta.last_membership, want_membership);
            assert!(dir.path().join(SNAPSHOT_FILE).is_file());
            assert!(!dir.path().join(SNAPSHOT_TMP_FILE).exists());

            // Applied after the snapshot: not on disk. On a real restart openraft re-applies it
            // from the log, up to the committed log id the log store saved.
            sm.apply([command(1, 6, Command::ExpireNode { node: 2 })])
                .await
                .unwrap();
            assert!(!state.borrow().endpoints.contains_key(&2));
            snapshot
        };

        let mut sm = StateMachine::open(dir.path()).unwrap();
        assert_eq!(
            sm.applied_state().await.unwrap(),
            (Some(log_id(1, 5)), want_membership)
        );
        assert_eq!(**sm.state().borrow(), want_state);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.into_inner(), built.snapshot.into_inner());
    }

    #[tokio::test]
    async fn installed_snapshot_replaces_state_and_survives_reopen() {
        let mut leader = StateMachine::memory();
        leader
            .apply(vec![
                membership(1, 1),
                set(1, 2, 1, "api", 2),
                set(2, 3, 2, "web", 4),
            ])
            .await
            .unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let want_state = endpoints(&[(1, &[("api", 2)]), (2, &[("web", 4)])]);

        let dir = TempDir::new().unwrap();
        {
            let mut follower = StateMachine::open(dir.path()).unwrap();
            follower.apply([set(1, 1, 9, "stale", 1)]).await.unwrap();
            let mut state = follower.state();
            state.mark_unchanged();

            let mut received = follower.begin_receiving_snapshot().await.unwrap();
            received
                .get_mut()
                .extend_from_slice(snapshot.snapshot.get_ref());
            follower
                .install_snapshot(&snapshot.meta, received)
                .await
                .unwrap();

            assert!(
                state.has_changed().unwrap(),
                "install publishes the new state"
            );
            assert_eq!(**state.borrow(), want_state);
            assert_eq!(
                follower.applied_state().await.unwrap(),
                (
                    Some(log_id(2, 3)),
                    StoredMembership::new(Some(log_id(1, 1)), two_nodes())
                )
            );
            let current = follower.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(current.meta, snapshot.meta);
        }

        let mut follower = StateMachine::open(dir.path()).unwrap();
        assert_eq!(**follower.state().borrow(), want_state);
        assert_eq!(
            follower.applied_state().await.unwrap().0,
            Some(log_id(2, 3))
        );
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
    }

    #[test]
    fn garbage_log_file_is_an_error_naming_it() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(LOG_FILE);
        let garbage: Vec<u8> = (0..16_384u32).map(|i| (i * 7 + 13) as u8).collect();
        std::fs::write(&path, garbage).unwrap();

        let err = LogStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::OpenLog { .. }), "{err:?}");
        let prefix = format!("cannot open raft log at {}: ", path.display());
        assert!(err.to_string().starts_with(&prefix), "{err}");
    }

    #[test]
    fn undecodable_log_record_is_an_error_naming_the_file() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(LOG_FILE);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META_TABLE)
                .unwrap()
                .insert(VOTE_KEY, b"{not a vote".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }

        let err = LogStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::DecodeLog { .. }), "{err:?}");
        let prefix = format!("cannot decode raft log at {}: ", path.display());
        assert!(err.to_string().starts_with(&prefix), "{err}");
    }

    #[test]
    fn garbage_snapshot_file_is_an_error_naming_it() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        std::fs::write(&path, b"{\"meta\": 42, \"state\": [").unwrap();

        let err = StateMachine::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::DecodeSnapshot { .. }), "{err:?}");
        let prefix = format!("cannot decode snapshot at {}: ", path.display());
        assert!(err.to_string().starts_with(&prefix), "{err}");
    }

    #[test]
    fn open_creates_the_data_directory() {
        let dir = TempDir::new().unwrap();
        let data_dir = dir.path().join("a").join("b");
        LogStore::open(&data_dir).unwrap();
        StateMachine::open(&data_dir).unwrap();
        assert!(data_dir.join(LOG_FILE).is_file());
        assert!(
            !data_dir.join(SNAPSHOT_FILE).exists(),
            "no snapshot until one is built"
        );
    }
}
