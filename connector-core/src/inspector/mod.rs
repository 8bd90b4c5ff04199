//! The request inspector: the last requests each endpoint served, with headers (credentials
//! masked) and the start of each body, replayable to the local target.
//!
//! One [`Inspector`] is shared by all tunnels of an agent. Each HTTP forwarder records through
//! a [`Recorder`] for its endpoint; the tray app reads the inspector in-process, a CLI agent
//! serves it with [`api::serve`] for `piko inspect`.
//!
//! Layout: this file ([`Inspector`] and its settings), `exchange` (the serializable types),
//! `store` (the rings and the memory budget), `record` (recording on the data path),
//! `redact` (what is shown: masking, bodies as text or base64), `websocket` (counting an
//! upgraded connection), `replay`, `api` (the JSON API on loopback).

pub mod api;
mod exchange;
mod record;
mod redact;
mod replay;
mod store;
mod websocket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use piko_protocol::EndpointId;
use tokio::sync::broadcast;

pub use self::exchange::{
    BadExchangeId, Body, BodyEncoding, Exchange, ExchangeId, ExchangeKind, ExchangeSummary,
    Recorded, ReplayEdit, WebSocketStats,
};
pub use self::record::{Recorder, Recording, Tap};
pub use self::redact::MASK;
pub use self::replay::ReplayError;
use self::replay::ReplayTarget;
use self::store::{Entry, Store};

/// Capacity of the live stream; a subscriber that falls further behind skips entries.
const EVENTS_CAPACITY: usize = 256;

/// How much the inspector keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InspectorConfig {
    /// Exchanges kept per endpoint (default 200); older ones are dropped.
    pub capacity: usize,
    /// Bytes captured from the start of each request and response body (default 64 KiB).
    pub body_limit: usize,
    /// Bytes of captured headers and bodies, over all endpoints, in flight and stored
    /// (default 32 MiB): the hard bound of the inspector's memory. The oldest exchanges are
    /// dropped to make room; when in-flight ones alone fill it, bodies are cut short.
    pub memory_limit: usize,
}

impl Default for InspectorConfig {
    fn default() -> Self {
        Self {
            capacity: 200,
            body_limit: 64 * 1024,
            memory_limit: 32 * 1024 * 1024,
        }
    }
}

/// The request inspector. Cheap to clone: clones share the recorded exchanges.
#[derive(Clone)]
pub struct Inspector {
    shared: Arc<Shared>,
}

/// What the inspector's handles share.
pub(crate) struct Shared {
    body_limit: usize,
    store: Store,
    events: broadcast::Sender<ExchangeSummary>,
    targets: Mutex<HashMap<EndpointId, Arc<ReplayTarget>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Shared {
    /// Store `entry` and tell subscribers.
    fn commit(&self, entry: Entry) -> Arc<Entry> {
        let stored = self.store.insert(entry);
        self.publish(&stored);
        stored
    }

    fn publish(&self, e: &Entry) {
        // No summary is built when no one listens (the usual case for a CLI agent).
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(redact::summary(e));
        }
    }

    /// Tell subscribers that entry `id` changed (a WebSocket session ended).
    fn publish_id(&self, id: ExchangeId) {
        if let Some(e) = self.store.get(id) {
            self.publish(&e);
        }
    }

    fn target(&self, endpoint: &EndpointId) -> Option<Arc<ReplayTarget>> {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
            .cloned()
    }
}

impl Inspector {
    /// An empty inspector keeping what `config` says.
    pub fn new(config: InspectorConfig) -> Self {
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        Self {
            shared: Arc::new(Shared {
                body_limit: config.body_limit,
                store: Store::new(config.capacity.max(1), config.memory_limit),
                events,
                targets: Mutex::new(HashMap::new()),
                client: replay::client(),
            }),
        }
    }

    /// The recorder of `endpoint`'s requests, whose local target (an `http://` URL, for
    /// replays) is `target` with a per-request `timeout`. Calling it again for the same
    /// endpoint (its target edited) points replays at the new target.
    pub fn recorder(
        &self,
        endpoint: &EndpointId,
        target: &url::Url,
        timeout: Duration,
    ) -> Recorder {
        if let Some(t) = ReplayTarget::new(target, timeout) {
            self.shared
                .targets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(endpoint.clone(), Arc::new(t));
        }
        Recorder::new(self.shared.clone(), endpoint.clone())
    }

    /// The recorded exchanges, newest first, of one endpoint or of all.
    pub fn list(&self, endpoint: Option<&EndpointId>) -> Vec<ExchangeSummary> {
        self.list_limited(endpoint, usize::MAX)
    }

    /// At most `limit` of the newest recorded exchanges, newest first.
    pub fn list_limited(
        &self,
        endpoint: Option<&EndpointId>,
        limit: usize,
    ) -> Vec<ExchangeSummary> {
        self.shared
            .store
            .list(endpoint, limit)
            .iter()
            .map(|e| redact::summary(e))
            .collect()
    }

    /// One exchange in full, if it is still kept.
    pub fn get(&self, id: ExchangeId) -> Option<Exchange> {
        self.shared.store.get(id).map(|e| redact::exchange(&e))
    }

    /// Every exchange stored from now on, and WebSocket entries again when they end.
    pub fn subscribe(&self) -> broadcast::Receiver<ExchangeSummary> {
        self.shared.events.subscribe()
    }

    /// Send exchange `id` again to its endpoint's local target, changed by `edit`, and return
    /// the new exchange (its `replay_of` is `id`). A target that fails gives an exchange with
    /// the error and a 502/504, as tunnelled requests do. A request whose body was truncated
    /// is refused unless the edit gives a body: sending the captured part would be a
    /// different request.
    pub async fn replay(
        &self,
        id: ExchangeId,
        edit: Option<ReplayEdit>,
    ) -> Result<Exchange, ReplayError> {
        replay::replay(&self.shared, id, edit).await
    }

    /// Bytes of captured headers and bodies held now (in flight and stored).
    pub fn memory_used(&self) -> usize {
        self.shared.store.budget.used()
    }
}

impl Default for Inspector {
    fn default() -> Self {
        Self::new(InspectorConfig::default())
    }
}

#[cfg(test)]
mod tests;
