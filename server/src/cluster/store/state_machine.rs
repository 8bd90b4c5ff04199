//! The Raft state machine holding the replicated [`ClusterState`], and its snapshots (in
//! memory, or in `snapshot.json` in the data directory).

use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{create_dir, Entry, StoreError, SNAPSHOT_FILE, SNAPSHOT_TMP_FILE};
use crate::cluster::types::{ClusterState, CommandResponse, Member, NodeId, TypeConfig};

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
