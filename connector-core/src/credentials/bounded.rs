//! [`BoundedStore`]: a credential store whose every call answers within a time limit.
//!
//! A keychain may block for as long as it likes: with gnome-keyring locked, the Secret
//! Service waits on an unlock prompt, and on a session nobody looks at, that prompt is never
//! answered. The wrapper runs the calls on a worker thread of its own, one at a time and in
//! order (the keyring crate serializes them behind one lock anyway), and the caller waits at
//! most the limit, then gets [`CredentialError::Timeout`], which says why and what to do.
//!
//! A call that timed out cannot be taken back: it finishes on the worker if the keychain
//! ever answers (the user typed their password into the unlock prompt after all). Such a
//! late answer goes to the hook set with [`BoundedStore::on_late_answer`], so the owner can
//! show the change that did happen (the live core re-reads the token and reconnects). While
//! a call hangs, later calls fail at once instead of queueing behind it, and a call still
//! queued when its caller gave up is skipped, so a change the user was told had failed does
//! not happen later unless that one hung call lands.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{CredentialError, CredentialStore, Secret, ServerKey};

/// The time limit the live core gives each keychain call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One call for the worker.
type Job = Box<dyn FnOnce(&dyn CredentialStore) + Send>;

/// What the owner is told of a late answer.
type LateHook = Arc<dyn Fn(LateAnswer) + Send + Sync>;

/// A call's progress, shared by its caller and the worker; whoever moves it off
/// [`WAITING`] first decides whether the answer is on time or late.
const WAITING: u8 = 0;
/// The worker answered before the caller gave up.
const ANSWERED: u8 = 1;
/// The caller gave up first: a queued call is skipped, a running one answers late.
const GAVE_UP: u8 = 2;

/// Which call answered late.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LateCall {
    /// A token read.
    Get(ServerKey),
    /// A token stored.
    Set(ServerKey),
    /// A token removed.
    Delete(ServerKey),
    /// The list of servers with a token.
    Servers,
}

/// A call that finished after its caller had been told it timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateAnswer {
    /// The call.
    pub call: LateCall,
    /// Whether it succeeded (for a [`LateCall::Set`]: the token is stored after all).
    pub ok: bool,
}

/// A [`CredentialStore`] that answers within a time limit (see the module docs).
pub struct BoundedStore {
    describe: String,
    timeout: Duration,
    jobs: mpsc::Sender<Job>,
    /// The call running on the worker, if one is: its progress (see [`WAITING`]).
    running: Arc<Mutex<Option<Arc<AtomicU8>>>>,
    /// Told of every late answer, when set.
    late: Option<LateHook>,
}

impl BoundedStore {
    /// Wrap `inner`: each call waits at most `timeout` for it.
    pub fn new(inner: Arc<dyn CredentialStore>, timeout: Duration) -> Self {
        let describe = inner.describe();
        let (jobs, queue) = mpsc::channel::<Job>();
        // Ends when the store is dropped (the queue closes), or never if a call hangs for
        // good; either way it holds nothing the process must wait for at exit.
        let spawned = std::thread::Builder::new()
            .name("piko-credentials".into())
            .spawn(move || {
                for job in queue {
                    job(inner.as_ref());
                }
            });
        if let Err(e) = spawned {
            // Calls then fail with `worker_gone`, which says so.
            tracing::warn!(error = %e, "cannot start the credential store's thread");
        }
        Self {
            describe,
            timeout,
            jobs,
            running: Arc::new(Mutex::new(None)),
            late: None,
        }
    }

    /// Call `hook` (on the worker thread) with each call that finishes after its caller gave
    /// up; it should be quick, e.g. a channel send.
    pub fn on_late_answer(mut self, hook: impl Fn(LateAnswer) + Send + Sync + 'static) -> Self {
        self.late = Some(Arc::new(hook));
        self
    }

    fn timed_out(&self) -> CredentialError {
        CredentialError::Timeout {
            store: self.describe.clone(),
            after: self.timeout,
        }
    }

    fn worker_gone(&self) -> CredentialError {
        CredentialError::Store {
            store: self.describe.clone(),
            message: "its worker thread is gone; restart the app".into(),
        }
    }

    /// Run `f` on the worker; its answer, or [`CredentialError::Timeout`] after the limit.
    /// `call` names it for the late-answer hook.
    fn call<T: Send + 'static>(
        &self,
        call: LateCall,
        f: impl FnOnce(&dyn CredentialStore) -> Result<T, CredentialError> + Send + 'static,
    ) -> Result<T, CredentialError> {
        if lock(&self.running)
            .as_ref()
            .is_some_and(|state| state.load(Ordering::SeqCst) == GAVE_UP)
        {
            // A call whose caller gave up still hangs; this one would only wait behind it.
            return Err(self.timed_out());
        }
        let (answer, answered) = mpsc::sync_channel(1);
        let state = Arc::new(AtomicU8::new(WAITING));
        let job: Job = Box::new({
            let state = state.clone();
            let running = self.running.clone();
            let describe = self.describe.clone();
            let late = self.late.clone();
            move |store| {
                if state.load(Ordering::SeqCst) == GAVE_UP {
                    // Its caller was told it failed before it began: it must not happen.
                    return;
                }
                *lock(&running) = Some(state.clone());
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(store)))
                    .unwrap_or_else(|_| {
                        Err(CredentialError::Store {
                            store: describe.clone(),
                            message: "the call failed unexpectedly (a bug); see the log".into(),
                        })
                    });
                *lock(&running) = None;
                if state
                    .compare_exchange(WAITING, ANSWERED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    let _ = answer.send(result);
                    return;
                }
                // The caller was told it timed out, but it happened (or failed) after all.
                let ok = result.is_ok();
                tracing::info!(store = %describe, call = ?call, ok, "credential store answered late");
                if let Some(hook) = late {
                    hook(LateAnswer { call, ok });
                }
            }
        });
        if self.jobs.send(job).is_err() {
            return Err(self.worker_gone());
        }
        match answered.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                if state
                    .compare_exchange(WAITING, GAVE_UP, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    // The answer came in the same instant: take it rather than report a
                    // failure that did not happen.
                    return answered.recv().unwrap_or_else(|_| Err(self.worker_gone()));
                }
                tracing::warn!(store = %self.describe, timeout = ?self.timeout, "credential store did not answer");
                Err(self.timed_out())
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.worker_gone()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only an `Option` is behind it: a panic cannot leave it half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CredentialStore for BoundedStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn get(&self, server: &ServerKey) -> Result<Option<Secret>, CredentialError> {
        let server = server.clone();
        self.call(LateCall::Get(server.clone()), move |s| s.get(&server))
    }

    fn set(&self, server: &ServerKey, token: &Secret) -> Result<(), CredentialError> {
        let (server, token) = (server.clone(), token.clone());
        self.call(LateCall::Set(server.clone()), move |s| {
            s.set(&server, &token)
        })
    }

    fn delete(&self, server: &ServerKey) -> Result<bool, CredentialError> {
        let server = server.clone();
        self.call(LateCall::Delete(server.clone()), move |s| s.delete(&server))
    }

    fn servers(&self) -> Result<Vec<ServerKey>, CredentialError> {
        self.call(LateCall::Servers, |s| s.servers())
    }
}

/// A store that hangs until released, standing in for a locked keychain.
#[cfg(test)]
pub(crate) mod hanging {
    use std::sync::{Arc, Condvar, Mutex};

    use crate::credentials::{CredentialError, CredentialStore, MemoryStore, Secret, ServerKey};

    /// A [`MemoryStore`] whose calls block while it is held (as a locked keychain waiting on
    /// an unlock prompt does), and that records the calls that got through.
    #[derive(Default)]
    pub struct HangingStore {
        inner: MemoryStore,
        held: Mutex<bool>,
        released: Condvar,
        /// The calls that reached the store, in order: `set https://x`.
        pub done: Mutex<Vec<String>>,
    }

    impl HangingStore {
        /// A store that answers until [`HangingStore::hold`].
        pub fn new() -> Arc<Self> {
            Arc::new(Self::default())
        }

        /// A store that hangs from the start.
        pub fn held() -> Arc<Self> {
            let s = Self::new();
            s.hold();
            s
        }

        /// Make every call hang from now on (the keychain was locked).
        pub fn hold(&self) {
            *self.held.lock().unwrap() = true;
        }

        /// Let every call through (the keychain was unlocked).
        pub fn release(&self) {
            *self.held.lock().unwrap() = false;
            self.released.notify_all();
        }

        fn wait(&self, call: String) {
            let mut held = self.held.lock().unwrap();
            while *held {
                held = self.released.wait(held).unwrap();
            }
            self.done.lock().unwrap().push(call);
        }
    }

    impl CredentialStore for HangingStore {
        fn describe(&self) -> String {
            "the test keychain".into()
        }
        fn get(&self, server: &ServerKey) -> Result<Option<Secret>, CredentialError> {
            self.wait(format!("get {server}"));
            self.inner.get(server)
        }
        fn set(&self, server: &ServerKey, token: &Secret) -> Result<(), CredentialError> {
            self.wait(format!("set {server}"));
            self.inner.set(server, token)
        }
        fn delete(&self, server: &ServerKey) -> Result<bool, CredentialError> {
            self.wait(format!("delete {server}"));
            self.inner.delete(server)
        }
        fn servers(&self) -> Result<Vec<ServerKey>, CredentialError> {
            self.wait("servers".into());
            self.inner.servers()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::hanging::HangingStore;
    use super::*;

    fn key(host: &str) -> ServerKey {
        ServerKey::parse(&format!("https://{host}")).unwrap()
    }

    /// Wait (bounded) until `cond` holds.
    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_contract_holds_through_the_wrapper() {
        let store = BoundedStore::new(
            Arc::new(crate::credentials::MemoryStore::new()),
            DEFAULT_TIMEOUT,
        );
        crate::credentials::tests::store_contract(&store);
        assert_eq!(store.describe(), "memory");
    }

    #[test]
    fn a_hanging_store_times_out_with_a_line_that_says_what_to_do() {
        let inner = HangingStore::held();
        let limit = Duration::from_millis(300);
        let late = Arc::new(Mutex::new(Vec::new()));
        let store = BoundedStore::new(inner.clone(), limit).on_late_answer({
            let late = late.clone();
            move |answer| late.lock().unwrap().push(answer)
        });
        let started = Instant::now();
        let err = store
            .set(&key("a.example.com"), &Secret::new("t".into()))
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= limit && took < limit + Duration::from_secs(2),
            "{took:?}"
        );
        assert!(matches!(err, CredentialError::Timeout { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the test keychain did not answer within 300 ms (is it locked?); unlock it and \
             try again, or set PIKO_CREDENTIALS_STORE=file to keep tokens in a file"
        );

        // While that call hangs, the next ones fail at once rather than queue behind it.
        let started = Instant::now();
        let err = store.get(&key("a.example.com")).unwrap_err();
        assert!(matches!(err, CredentialError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < limit, "{:?}", started.elapsed());

        // Unlocked: the hung call finishes, and calls answer again.
        inner.release();
        wait_until("the hung call finished", || lock(&store.running).is_none());
        assert_eq!(*inner.done.lock().unwrap(), ["set https://a.example.com"]);
        // The owner is told the token was stored after all; the read that failed at once
        // never ran, so it is not reported.
        wait_until("the late answer is reported", || {
            !late.lock().unwrap().is_empty()
        });
        assert_eq!(
            *late.lock().unwrap(),
            [LateAnswer {
                call: LateCall::Set(key("a.example.com")),
                ok: true
            }]
        );
        assert_eq!(
            store.get(&key("a.example.com")).unwrap().unwrap().expose(),
            "t"
        );
        assert_eq!(
            late.lock().unwrap().len(),
            1,
            "an answer on time is not late"
        );
    }

    #[test]
    fn a_call_whose_caller_gave_up_while_queued_never_runs() {
        let inner = HangingStore::held();
        let limit = Duration::from_millis(400);
        let late = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::new(BoundedStore::new(inner.clone(), limit).on_late_answer({
            let late = late.clone();
            move |answer| late.lock().unwrap().push(answer)
        }));
        // The first call hangs inside the store...
        let first = std::thread::spawn({
            let store = store.clone();
            move || store.set(&key("first.example.com"), &Secret::new("1".into()))
        });
        wait_until("the first call is running", || {
            lock(&store.running).is_some()
        });
        // ...the second queues behind it (the first's caller has not given up yet) and gives
        // up too.
        let second = store.set(&key("second.example.com"), &Secret::new("2".into()));
        assert!(
            matches!(second, Err(CredentialError::Timeout { .. })),
            "{second:?}"
        );
        assert!(matches!(
            first.join().unwrap(),
            Err(CredentialError::Timeout { .. })
        ));
        inner.release();
        wait_until("the worker is idle", || lock(&store.running).is_none());
        // A call made now is answered after the skipped one would have run: the worker
        // handles the queue in order.
        assert_eq!(store.servers().unwrap(), vec![key("first.example.com")]);
        assert_eq!(
            *inner.done.lock().unwrap(),
            ["set https://first.example.com", "servers"],
            "the second set was skipped"
        );
        // Only the call that ran is reported late; the skipped one never happened.
        assert_eq!(
            *late.lock().unwrap(),
            [LateAnswer {
                call: LateCall::Set(key("first.example.com")),
                ok: true
            }]
        );
    }
}
