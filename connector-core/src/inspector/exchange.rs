//! What the inspector shows of an exchange: the serializable types the JSON API, the CLI and
//! the tray app's page share.

use std::fmt;
use std::str::FromStr;

use piko_protocol::EndpointId;
use serde::{Deserialize, Serialize};

/// The id of one recorded exchange: unique within an [`Inspector`](super::Inspector), growing
/// with time (a later exchange has a larger id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExchangeId(pub u64);

impl fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a string is not an exchange id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request id {0:?}: ids are the numbers `piko inspect` lists")]
pub struct BadExchangeId(pub String);

impl FromStr for ExchangeId {
    type Err = BadExchangeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u64>()
            .map(ExchangeId)
            .map_err(|_| BadExchangeId(s.chars().take(64).collect()))
    }
}

/// Plain HTTP, or an upgrade to a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// A request and its response.
    Http,
    /// A `101 Switching Protocols` upgrade, recorded as one entry for the whole session.
    #[serde(rename = "websocket")]
    WebSocket,
}

/// One line of the request list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeSummary {
    /// The exchange's id.
    pub id: ExchangeId,
    /// The endpoint that served it.
    #[serde(with = "endpoint_id")]
    pub endpoint: EndpointId,
    /// When the request arrived, RFC 3339 in UTC with milliseconds.
    pub started_at: String,
    /// When the request arrived, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// Response status; `None` when no response head was sent (the client went away first).
    pub status: Option<u16>,
    /// Milliseconds from the request to the last byte of the response body (for a WebSocket,
    /// to the end of the session); `None` while it is still open.
    pub duration_ms: Option<f64>,
    /// Request body bytes seen (all of them, not only the captured part).
    pub request_size: u64,
    /// Response body bytes seen.
    pub response_size: u64,
    /// HTTP or WebSocket.
    pub kind: ExchangeKind,
    /// The exchange this one replayed, if it is a replay.
    pub replay_of: Option<ExchangeId>,
    /// What went wrong, one line (`upstream unreachable`, `client went away`).
    pub error: Option<String>,
}

/// One recorded exchange in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// The list line.
    #[serde(flatten)]
    pub summary: ExchangeSummary,
    /// The request as the local target received it.
    pub request: Recorded,
    /// The response as the client received it (`None` before a response head).
    pub response: Option<Recorded>,
    /// Frame and byte counts of an upgraded connection.
    pub websocket: Option<WebSocketStats>,
}

/// Headers and the start of the body of one request or response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// Headers in order, credential-like values shown as `***` (the access log's rule).
    pub headers: Vec<(String, String)>,
    /// Whether the headers were dropped because the inspector's memory was full.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headers_dropped: bool,
    /// The captured start of the body.
    pub body: Body,
}

/// How a captured body is written in [`Body::data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    /// UTF-8 text as it was sent.
    Text,
    /// Base64 (standard alphabet, padded) of the bytes: for binary bodies.
    Base64,
}

/// The captured start of a body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    /// Body bytes seen in all.
    pub size: u64,
    /// Bytes captured (at most the inspector's body limit).
    pub captured: usize,
    /// Whether the body went on past what was captured.
    pub truncated: bool,
    /// Whether the body is binary (not UTF-8 text, compressed, or a binary content type).
    pub binary: bool,
    /// How `data` is written.
    pub encoding: BodyEncoding,
    /// The captured bytes.
    pub data: String,
}

/// Counts of an upgraded connection, each way. "in" is from the client (through the server) to
/// the local service; "out" is from the local service to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WebSocketStats {
    /// WebSocket frames from the client (every opcode, control frames included).
    pub frames_in: u64,
    /// WebSocket frames to the client.
    pub frames_out: u64,
    /// Bytes from the client, frame headers included.
    pub bytes_in: u64,
    /// Bytes to the client, frame headers included.
    pub bytes_out: u64,
    /// Whether the session has ended.
    pub closed: bool,
}

/// Changes to a recorded request before it is sent again; unset fields keep the recorded value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayEdit {
    /// Another method (`POST`).
    #[serde(default)]
    pub method: Option<String>,
    /// Another path and query (`/orders?id=7`).
    #[serde(default)]
    pub path: Option<String>,
    /// The headers to send instead of the recorded ones. A credential header whose value is
    /// `***` (as the inspector shows it) keeps the recorded value, so a page can send the list
    /// it was shown.
    #[serde(default)]
    pub headers: Option<Vec<(String, String)>>,
    /// Another body, as text.
    #[serde(default)]
    pub body: Option<String>,
    /// Another body, as base64 (for binary bodies); wins over `body`.
    #[serde(default)]
    pub body_base64: Option<String>,
}

/// `EndpointId` as a plain string (the protocol crate keeps its types free of serde).
mod endpoint_id {
    use super::EndpointId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &EndpointId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(id.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EndpointId, D::Error> {
        let s = String::deserialize(d)?;
        EndpointId::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_ids_parse_from_numbers_only() {
        assert_eq!("42".parse::<ExchangeId>(), Ok(ExchangeId(42)));
        let e = "abc".parse::<ExchangeId>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid request id \"abc\": ids are the numbers `piko inspect` lists"
        );
        assert!("-1".parse::<ExchangeId>().is_err());
        assert!("".parse::<ExchangeId>().is_err());
    }

    #[test]
    fn a_summary_round_trips_through_json() {
        let s = ExchangeSummary {
            id: ExchangeId(7),
            endpoint: EndpointId::new("shop").unwrap(),
            started_at: "2026-01-01T00:00:00.000Z".into(),
            started_at_ms: 1_767_225_600_000,
            method: "GET".into(),
            path: "/a?b=1".into(),
            status: Some(200),
            duration_ms: Some(1.5),
            request_size: 0,
            response_size: 5,
            kind: ExchangeKind::WebSocket,
            replay_of: Some(ExchangeId(3)),
            error: None,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""kind":"websocket""#), "{json}");
        assert!(json.contains(r#""endpoint":"shop""#), "{json}");
        let back: ExchangeSummary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn replay_edits_reject_unknown_fields() {
        let e = serde_json::from_str::<ReplayEdit>(r#"{"methd":"POST"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `methd`"), "{e}");
        let ok: ReplayEdit = serde_json::from_str(r#"{"headers":[["a","b"]]}"#).unwrap();
        assert_eq!(ok.headers, Some(vec![("a".into(), "b".into())]));
    }
}
