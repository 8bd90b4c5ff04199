//! [`BoundedStore`]: a credential store whose every call answers within a time limit.
//!
//! A keychain may block for as long as it likes: with gnome-keyring locked, the Secret
//! Service waits on an unlock prompt, and on a session nobody looks at, that prompt is never
//! answered. The wrapper runs the calls on a worker thread of its own, one at a time and in
//! order (the keyring crate serializes them behind one lock anyway), and the caller waits at
//! most the limit, then gets [`CredentialError::Timeout`], which says why and what to do.
//!
//! A call that timed out cannot be taken back: it finishes on the worker if the keychain
//! ever answers. While it hangs, later calls fail at once instead of queueing behind it, and
//! a call still queued when its caller gave up is skipped, so a change the user was told had
//! failed does not happen later behind their back.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{CredentialError, CredentialStore, Secret, ServerKey};

/// The time limit the live core gives each keychain call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One call for the worker.
type Job = Box<dyn FnOnce(&dyn CredentialStore) + Send>;

/// A [`CredentialStore`] that answers within a time limit (see the module docs).
pub struct BoundedStore {
    describe: String,
    timeout: Duration,
    jobs: mpsc::Sender<Job>,
    /// The call running on the worker, if one is: the flag its caller sets on giving up.
    running: Arc<Mutex<Option<Arc<AtomicBool>>>>,
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
        }
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
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn CredentialStore) -> Result<T, CredentialError> + Send + 'static,
    ) -> Result<T, CredentialError> {
        if lock(&self.running)
            .as_ref()
            .is_some_and(|gave_up| gave_up.load(Ordering::SeqCst))
        {
            // A call whose caller gave up still hangs; this one would only wait behind it.
            return Err(self.timed_out());
        }
        let (answer, answered) = mpsc::sync_channel(1);
        let abandoned = Arc::new(AtomicBool::new(false));
        let job: Job = Box::new({
            let abandoned = abandoned.clone();
            let running = self.running.clone();
            let describe = self.describe.clone();
            move |store| {
                if abandoned.load(Ordering::SeqCst) {
                    return;
                }
                *lock(&running) = Some(abandoned.clone());
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(store)))
                    .unwrap_or_else(|_| {
                        Err(CredentialError::Store {
                            store: describe,
                            message: "the call failed unexpectedly (a bug); see the log".into(),
                        })
                    });
                *lock(&running) = None;
                // The caller may have given up: then nobody needs the answer.
                let _ = answer.send(result);
            }
        });
        if self.jobs.send(job).is_err() {
            return Err(self.worker_gone());
        }
        match answered.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                abandoned.store(true, Ordering::SeqCst);
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
        self.call(move |s| s.get(&server))
    }

    fn set(&self, server: &ServerKey, token: &Secret) -> Result<(), CredentialError> {
        let (server, token) = (server.clone(), token.clone());
        self.call(move |s| s.set(&server, &token))
    }

    fn delete(&self, server: &ServerKey) -> Result<bool, CredentialError> {
        let server = server.clone();
        self.call(move |s| s.delete(&server))
    }

    fn servers(&self) -> Result<Vec<ServerKey>, CredentialError> {
        self.call(|s| s.servers())
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
        let store = BoundedStore::new(inner.clone(), limit);
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
        assert_eq!(
            store.get(&key("a.example.com")).unwrap().unwrap().expose(),
            "t"
        );
    }

    #[test]
    fn a_call_whose_caller_gave_up_while_queued_never_runs() {
        let inner = HangingStore::held();
        let limit = Duration::from_millis(400);
        let store = Arc::new(BoundedStore::new(inner.clone(), limit));
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
    }
}
