//! The ring of recorded exchanges and the byte budget that bounds the inspector's memory.
//!
//! Every captured byte (body starts and headers, of exchanges in flight and stored) is reserved
//! from one [`Budget`] before it is copied and given back when the entry holding it is dropped,
//! so the inspector's memory stays under `memory_limit` whatever the traffic: a reservation that
//! does not fit evicts the oldest stored entries first, and if it still does not fit, nothing
//! more is captured (the body is marked truncated, the headers dropped).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Uri};
use piko_protocol::EndpointId;

use super::exchange::ExchangeId;
use super::websocket::WsStats;

/// Bytes of captured data, counted against a limit.
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Take `n` bytes if they fit.
    fn try_reserve(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes reserved now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes held from the budget, given back on drop. It holds the budget, not the store, so
/// stored entries do not keep their own store alive.
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Reservation {
    pub(crate) fn empty(store: &Store) -> Self {
        Self {
            budget: store.budget.clone(),
            bytes: 0,
        }
    }

    /// Reserve `n` more bytes, evicting stored entries if needed; `false` if they cannot fit.
    pub(crate) fn grow(&mut self, store: &Store, n: usize) -> bool {
        if store.reserve(n) {
            self.bytes += n;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

/// The captured start of one body.
pub(crate) struct Capture {
    /// The captured bytes (at most `limit`).
    pub(crate) data: Vec<u8>,
    /// Body bytes seen in all.
    pub(crate) size: u64,
    /// Whether bytes were seen that are not in `data`.
    pub(crate) truncated: bool,
    limit: usize,
    reservation: Reservation,
}

impl Capture {
    /// An empty capture keeping at most `limit` bytes.
    pub(crate) fn new(store: &Store, limit: usize) -> Self {
        Self {
            data: Vec::new(),
            size: 0,
            truncated: false,
            limit,
            reservation: Reservation::empty(store),
        }
    }

    /// Account `chunk` and copy what fits. Copied, not kept as `Bytes`: a slice of hyper's
    /// read buffer would keep the whole buffer alive and the budget would lie.
    pub(crate) fn observe(&mut self, store: &Store, chunk: &[u8]) {
        self.size += chunk.len() as u64;
        let take = chunk.len().min(self.limit - self.data.len());
        if take < chunk.len() {
            self.truncated = true;
        }
        if take == 0 {
            return;
        }
        if !self.reservation.grow(store, take) {
            // Memory full: keep what we have and stop capturing this body.
            self.truncated = true;
            self.limit = self.data.len();
            return;
        }
        // Exact growth, so the allocation is what the budget counts.
        self.data.reserve_exact(take);
        self.data.extend_from_slice(&chunk[..take]);
    }
}

/// Approximate heap bytes of a header map: names, values and a per-entry overhead.
pub(crate) fn header_bytes(h: &HeaderMap) -> usize {
    h.iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 48)
        .sum::<usize>()
        + 64
}

/// Headers kept for an entry (and their reservation), or `None` when memory was full.
pub(crate) struct KeptHeaders {
    pub(crate) map: Option<HeaderMap>,
    _reservation: Reservation,
}

impl KeptHeaders {
    /// Keep a copy of `h` if its bytes fit in the budget.
    pub(crate) fn keep(store: &Store, h: &HeaderMap) -> Self {
        let mut reservation = Reservation::empty(store);
        let map = reservation.grow(store, header_bytes(h)).then(|| h.clone());
        Self {
            map,
            _reservation: reservation,
        }
    }
}

/// One side of a stored exchange.
pub(crate) struct Part {
    /// The headers, `None` if they were dropped for memory.
    pub(crate) headers: KeptHeaders,
    pub(crate) body: Capture,
}

/// A recorded exchange as stored: raw headers (redacted when read), captured body starts.
pub(crate) struct Entry {
    pub(crate) id: ExchangeId,
    pub(crate) endpoint: EndpointId,
    pub(crate) replay_of: Option<ExchangeId>,
    pub(crate) started: SystemTime,
    pub(crate) duration: Option<Duration>,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<String>,
    pub(crate) request: Part,
    pub(crate) response: Option<Part>,
    pub(crate) ws: Option<Arc<WsStats>>,
}

/// The rings of all endpoints and the budget they share.
pub(crate) struct Store {
    pub(crate) budget: Arc<Budget>,
    capacity: usize,
    inner: Mutex<Rings>,
}

#[derive(Default)]
struct Rings {
    next_id: u64,
    by_endpoint: HashMap<EndpointId, VecDeque<Arc<Entry>>>,
}

impl Store {
    /// A store keeping `capacity` entries per endpoint and `memory_limit` captured bytes.
    pub(crate) fn new(capacity: usize, memory_limit: usize) -> Self {
        Self {
            budget: Arc::new(Budget::new(memory_limit)),
            capacity,
            inner: Mutex::new(Rings {
                next_id: 1,
                ..Rings::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rings> {
        // A panic elsewhere leaves the rings consistent (each change is one push or pop).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserve `n` bytes, evicting the oldest entries of any endpoint until they fit.
    fn reserve(&self, n: usize) -> bool {
        loop {
            if self.budget.try_reserve(n) {
                return true;
            }
            // Dropped after the lock is released: an entry gives its bytes back on drop.
            let evicted = {
                let mut rings = self.lock();
                let oldest = rings
                    .by_endpoint
                    .values()
                    .filter_map(|r| r.front().map(|e| e.id))
                    .min();
                match oldest {
                    Some(id) => rings
                        .by_endpoint
                        .values_mut()
                        .find(|r| r.front().is_some_and(|e| e.id == id))
                        .and_then(VecDeque::pop_front),
                    None => None,
                }
            };
            if evicted.is_none() {
                return false;
            }
        }
    }

    /// Store `entry` under the next id (ids grow in insertion order), dropping the endpoint's
    /// oldest entry past the capacity.
    pub(crate) fn insert(&self, mut entry: Entry) -> Arc<Entry> {
        let mut evicted = None;
        let stored = {
            let mut rings = self.lock();
            entry.id = ExchangeId(rings.next_id);
            rings.next_id += 1;
            if let Some(ws) = &entry.ws {
                ws.set_id(entry.id);
            }
            let stored = Arc::new(entry);
            let ring = rings
                .by_endpoint
                .entry(stored.endpoint.clone())
                .or_default();
            ring.push_back(stored.clone());
            if ring.len() > self.capacity {
                evicted = ring.pop_front();
            }
            stored
        };
        drop(evicted);
        stored
    }

    /// Entries newest first, of one endpoint or all, at most `limit`.
    pub(crate) fn list(&self, endpoint: Option<&EndpointId>, limit: usize) -> Vec<Arc<Entry>> {
        let rings = self.lock();
        let mut out: Vec<Arc<Entry>> = match endpoint {
            Some(ep) => rings
                .by_endpoint
                .get(ep)
                .map(|r| r.iter().rev().take(limit).cloned().collect())
                .unwrap_or_default(),
            None => rings
                .by_endpoint
                .values()
                .flat_map(|r| r.iter().rev().take(limit).cloned())
                .collect(),
        };
        drop(rings);
        out.sort_unstable_by_key(|e| std::cmp::Reverse(e.id));
        out.truncate(limit);
        out
    }

    /// The entry with `id`, if still stored.
    pub(crate) fn get(&self, id: ExchangeId) -> Option<Arc<Entry>> {
        let rings = self.lock();
        rings.by_endpoint.values().find_map(|r| {
            // Ids grow in insertion order, so each ring is sorted.
            r.binary_search_by(|e| e.id.cmp(&id))
                .ok()
                .map(|i| r[i].clone())
        })
    }

    /// Entries stored now, over all endpoints.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().by_endpoint.values().map(VecDeque::len).sum()
    }
}
