//! The Raft log and vote: in memory, or in a redb database in the data directory.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    create_dir, Entry, StoreError, COMMITTED_KEY, LAST_PURGED_KEY, LOG_CACHE_BYTES, LOG_FILE,
    LOG_TABLE, META_TABLE, VOTE_KEY,
};
use crate::cluster::types::{NodeId, TypeConfig};

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
pub(super) fn index_range(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
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
