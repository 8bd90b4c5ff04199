//! The stores under openraft's conformance suite, and persistence across restarts.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;

use openraft::storage::RaftLogStorageExt;
use openraft::testing::{StoreBuilder, Suite};
use openraft::Membership;
use tempfile::TempDir;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{
    EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use redb::Database;

use super::log::index_range;
use super::*;
use crate::cluster::types::{ClusterState, CommandResponse, Member, NodeId, TypeConfig};
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
