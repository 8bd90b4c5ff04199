//! [`CoreEvent`]: the changes the core pushes to its subscribers.

use serde::Serialize;

use super::view::{EndpointView, Snapshot};

/// A change in the core. Serialized as `{"type": "snapshot" | "endpoint", "data": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CoreEvent {
    /// The settings changed (an endpoint or server added, edited, removed; a sign-in; new
    /// preferences): the whole new state.
    Snapshot(Snapshot),
    /// One endpoint's live state changed.
    Endpoint(EndpointView),
}
