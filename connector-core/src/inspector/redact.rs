//! What the inspector shows of a stored entry: headers masked with the access log's rule (done
//! when read, so recording costs no formatting), bodies as text or base64, the list line.

use base64::Engine;
use http::header::{self, HeaderMap};
use piko_protocol::access_log::is_sensitive;

use super::exchange::{Body, BodyEncoding, Exchange, ExchangeKind, ExchangeSummary, Recorded};
use super::store::{Entry, Part};

/// What a credential's value is shown as.
pub const MASK: &str = "***";

/// `headers` in order, credential-like values (`authorization`, `cookie`, `x-api-key`, ...)
/// replaced by `***`, other values as (lossy) text.
pub(crate) fn headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let shown = if is_sensitive(name) {
                MASK.to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_string(), shown)
        })
        .collect()
}

/// Whether the headers say the body is not text: a compressed encoding or a binary type.
fn binary_by_headers(headers: Option<&HeaderMap>) -> bool {
    let Some(h) = headers else { return false };
    let encoded = h
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
    let binary_type = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|t| {
            ["image/", "audio/", "video/", "font/"]
                .iter()
                .any(|p| t.starts_with(p))
                || [
                    "application/octet-stream",
                    "application/zip",
                    "application/gzip",
                    "application/pdf",
                    "application/protobuf",
                    "application/x-protobuf",
                    "application/grpc",
                    "application/wasm",
                ]
                .iter()
                .any(|p| t.starts_with(p))
        });
    encoded || binary_type
}

/// Whether `data` reads as text: UTF-8 (a sequence cut by truncation at the end is fine) with
/// no control characters but whitespace.
fn is_text(data: &[u8], truncated: bool) -> bool {
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        // `error_len() == None`: the bytes end inside a character, as a cut body may.
        Err(e) if truncated && e.error_len().is_none() => {
            // Safe to index: valid up to here by the error's own report.
            match std::str::from_utf8(&data[..e.valid_up_to()]) {
                Ok(t) => t,
                Err(_) => return false,
            }
        }
        Err(_) => return false,
    };
    !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// The captured start of a body as shown.
pub(crate) fn body(data: &[u8], size: u64, truncated: bool, headers: Option<&HeaderMap>) -> Body {
    let binary = !data.is_empty() && (binary_by_headers(headers) || !is_text(data, truncated));
    let (encoding, data_str) = if binary {
        (
            BodyEncoding::Base64,
            base64::engine::general_purpose::STANDARD.encode(data),
        )
    } else {
        (
            BodyEncoding::Text,
            String::from_utf8_lossy(data).into_owned(),
        )
    };
    Body {
        size,
        captured: data.len(),
        truncated,
        binary,
        encoding,
        data: data_str,
    }
}

/// The list line of `e`.
pub(crate) fn summary(e: &Entry) -> ExchangeSummary {
    let since_epoch = e
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let duration = match &e.ws {
        Some(ws) => ws.duration(),
        None => e.duration,
    };
    ExchangeSummary {
        id: e.id,
        endpoint: e.endpoint.clone(),
        started_at: humantime::format_rfc3339_millis(e.started).to_string(),
        started_at_ms: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
        method: e.method.as_str().to_string(),
        path: e
            .uri
            .path_and_query()
            .map_or_else(|| e.uri.path().to_string(), |pq| pq.as_str().to_string()),
        status: e.status,
        duration_ms: duration.map(|d| d.as_secs_f64() * 1000.0),
        request_size: e.request.body.size,
        response_size: e.response.as_ref().map_or(0, |r| r.body.size),
        kind: if e.ws.is_some() {
            ExchangeKind::WebSocket
        } else {
            ExchangeKind::Http
        },
        replay_of: e.replay_of,
        error: e.error.clone(),
    }
}

fn recorded(p: &Part) -> Recorded {
    let h = p.headers.map.as_ref();
    Recorded {
        headers: h.map(headers).unwrap_or_default(),
        headers_dropped: h.is_none(),
        body: body(&p.body.data, p.body.size, p.body.truncated, h),
    }
}

/// All of `e` as shown.
pub(crate) fn exchange(e: &Entry) -> Exchange {
    Exchange {
        summary: summary(e),
        request: recorded(&e.request),
        response: e.response.as_ref().map(recorded),
        websocket: e.ws.as_ref().map(|ws| ws.snapshot()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credential_like_headers_are_masked_and_others_kept_in_order() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer secret-1"),
            ("cookie", "sid=secret-2"),
            ("x-api-key", "secret-3"),
            ("x-piko-authorization", "Bearer secret-4"),
            ("accept", "text/html"),
            ("x-request-id", "r1"),
        ] {
            h.append(
                http::HeaderName::from_static(k),
                HeaderValue::from_static(v),
            );
        }
        let shown = headers(&h);
        let text = format!("{shown:?}");
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(shown[0], ("authorization".into(), "***".into()));
        assert_eq!(shown[2], ("x-api-key".into(), "***".into()));
        assert!(shown.contains(&("accept".into(), "text/html".into())));
        assert!(shown.contains(&("x-request-id".into(), "r1".into())));
    }

    #[test]
    fn bodies_are_text_or_base64() {
        let t = body(b"hello\n", 6, false, None);
        assert_eq!(
            (t.binary, t.encoding, t.data.as_str()),
            (false, BodyEncoding::Text, "hello\n")
        );
        let b = body(&[0, 159, 146, 150], 4, false, None);
        assert!(b.binary);
        assert_eq!(b.encoding, BodyEncoding::Base64);
        assert_eq!(b.data, "AJ+Slg==");
        // "é" cut in half by truncation is still text; the same bytes untruncated are not.
        assert!(!body(&[b'a', 0xc3], 9, true, None).binary);
        assert!(body(&[b'a', 0xc3], 2, false, None).binary);
        let mut png = HeaderMap::new();
        png.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        assert!(body(b"looks like text", 15, false, Some(&png)).binary);
        let mut gz = HeaderMap::new();
        gz.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(body(b"abc", 3, false, Some(&gz)).binary);
        let empty = body(b"", 0, false, Some(&png));
        assert!(!empty.binary && empty.data.is_empty());
    }
}
