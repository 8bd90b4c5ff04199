//! Endpoint ids: the names upstreams register and clients address.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest endpoint id accepted, in bytes.
pub const MAX_ENDPOINT_ID_LEN: usize = 128;

/// A validated endpoint id: 1 to 128 ASCII letters, digits, `-`, `_` or `.`.
///
/// Cheap to clone (shared string), so the routing table and every request can hold one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(Arc<str>);

/// Why a string is not an endpoint id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointIdError {
    /// The id is empty.
    #[error("endpoint id is empty")]
    Empty,
    /// The id is longer than [`MAX_ENDPOINT_ID_LEN`].
    #[error("endpoint id is {0} bytes long; the limit is {MAX_ENDPOINT_ID_LEN}")]
    TooLong(usize),
    /// The id holds a character outside `[A-Za-z0-9._-]`.
    #[error(
        "endpoint id has invalid character {0:?} at byte {1}; use letters, digits, '-', '_' or '.'"
    )]
    InvalidChar(char, usize),
}

impl EndpointId {
    /// Validate `s` as an endpoint id.
    pub fn new(s: &str) -> Result<Self, EndpointIdError> {
        if s.is_empty() {
            return Err(EndpointIdError::Empty);
        }
        if s.len() > MAX_ENDPOINT_ID_LEN {
            return Err(EndpointIdError::TooLong(s.len()));
        }
        if let Some((i, c)) = s
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(EndpointIdError::InvalidChar(c, i));
        }
        Ok(Self(Arc::from(s)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The endpoint a proxied request names: the `x-piko-endpoint` header if present, else the
    /// first DNS label of the `Host` when the host (port stripped) contains a dot and is not an
    /// IP address. `Ok(None)` means the request names no endpoint.
    pub fn from_request_parts(
        header: Option<&str>,
        host: Option<&str>,
    ) -> Result<Option<Self>, EndpointIdError> {
        if let Some(h) = header {
            return Self::new(h.trim()).map(Some);
        }
        let Some(host) = host else { return Ok(None) };
        let host = strip_port(host);
        if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() || !host.contains('.') {
            return Ok(None);
        }
        let label = host.split('.').next().unwrap_or_default();
        Self::new(label).map(Some)
    }
}

/// Strip a `:port` suffix from a `Host` value, keeping bracketed IPv6 literals whole.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // "[::1]:8000" -> "::1"
        return rest.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl FromStr for EndpointId {
    type Err = EndpointIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointId({:?})", &*self.0)
    }
}

impl AsRef<str> for EndpointId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for EndpointId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for EndpointId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_ids() {
        for ok in ["a", "shop", "my-endpoint_2", "v1.api", &"x".repeat(128)] {
            assert_eq!(
                EndpointId::new(ok).map(|e| e.to_string()),
                Ok(ok.to_string())
            );
        }
        let cases: [(&str, EndpointIdError); 5] = [
            ("", EndpointIdError::Empty),
            (&"x".repeat(129), EndpointIdError::TooLong(129)),
            ("a/b", EndpointIdError::InvalidChar('/', 1)),
            ("sp ace", EndpointIdError::InvalidChar(' ', 2)),
            ("ünicode", EndpointIdError::InvalidChar('ü', 0)),
        ];
        for (input, want) in cases {
            assert_eq!(EndpointId::new(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn endpoint_from_request() {
        let id = |s: &str| Some(EndpointId::new(s).unwrap());
        let cases: [(Option<&str>, Option<&str>, Option<EndpointId>); 9] = [
            (Some("shop"), Some("other.example.com"), id("shop")),
            (None, Some("shop.piko.example.com"), id("shop")),
            (None, Some("shop.piko.example.com:8000"), id("shop")),
            (None, Some("localhost:8000"), None),
            (None, Some("localhost"), None),
            (None, Some("127.0.0.1:8000"), None),
            (None, Some("[::1]:8000"), None),
            (None, Some("10.1.2.3"), None),
            (None, None, None),
        ];
        for (header, host, want) in cases {
            assert_eq!(
                EndpointId::from_request_parts(header, host),
                Ok(want),
                "{header:?} {host:?}"
            );
        }
        assert_eq!(
            EndpointId::from_request_parts(Some("bad id"), None),
            Err(EndpointIdError::InvalidChar(' ', 3))
        );
        assert_eq!(
            EndpointId::from_request_parts(None, Some("b@d.example.com")),
            Err(EndpointIdError::InvalidChar('@', 1))
        );
    }
}
