//! HTTP proxying rules both sides of the tunnel apply: hop-by-hop headers and upgrades.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Whether header `name` lists `token` (comma-separated, case-insensitive).
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a request asks to switch protocols (`Connection: upgrade` with an `Upgrade` header).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, header::CONNECTION, "upgrade") && headers.contains_key(header::UPGRADE)
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not the next
/// (hyper frames bodies itself). An upgrade keeps `Connection: upgrade` and `Upgrade`, which
/// the next hop needs to see.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Pass a response head on to the client: a `101` answering a client that waits to upgrade
/// gets both connections spliced (returns `true`); any other response loses its hop-by-hop
/// headers, which were about the hop it came over.
pub fn relay_response_head<B>(
    resp: &mut http::Response<B>,
    client_upgrade: Option<OnUpgrade>,
) -> bool {
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            splice_upgrade(client, hyper::upgrade::on(resp));
            return true;
        }
    }
    // Transfer codings other than `chunked` (`gzip, chunked`) are part of the body's bytes,
    // which pass through still coded: the next hop must be told of them, and re-chunks itself.
    let codings = applied_transfer_codings(resp.headers());
    strip_hop_by_hop(resp.headers_mut(), false);
    if let Some(codings) = codings {
        resp.headers_mut()
            .insert(header::TRANSFER_ENCODING, codings);
    }
    false
}

/// The transfer codings of a message other than `chunked` (hyper undoes only that one), as
/// one header value, or `None` when there are none.
fn applied_transfer_codings(headers: &HeaderMap) -> Option<HeaderValue> {
    let codings: Vec<&str> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("chunked"))
        .collect();
    if codings.is_empty() {
        return None;
    }
    HeaderValue::from_str(&codings.join(", ")).ok()
}

/// Once both sides of an upgrade (`101 Switching Protocols`) are ready, copy bytes between
/// them until either closes. Spawned: returns at once. Upgraded connections (WebSockets) are
/// many and chatty, so they keep tokio's small copy buffers rather than [`crate::relay`]'s.
pub fn splice_upgrade(client: OnUpgrade, target: OnUpgrade) {
    tokio::spawn(join_upgrades(client, target));
}

/// Join the client and target sides of an upgrade and copy between them until either ends.
/// For a caller that runs the relay in a task of its own (tracked, in its span).
pub async fn join_upgrades(client: OnUpgrade, target: OnUpgrade) {
    match tokio::try_join!(client, target) {
        Ok((client, target)) => {
            let (mut client, mut target) = (TokioIo::new(client), TokioIo::new(target));
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut target).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::try_from(*k).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("authorization", "Bearer kept"),
            ("x-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["authorization", "x-end"]);
    }

    #[test]
    fn a_response_keeps_its_transfer_codings_other_than_chunked() {
        type Head<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Head, Option<&str>)] = &[
            (&[("transfer-encoding", "gzip, chunked")], Some("gzip")),
            (
                &[
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ],
                Some("gzip"),
            ),
            (
                &[("transfer-encoding", "x-custom, gzip, Chunked")],
                Some("x-custom, gzip"),
            ),
            (&[("transfer-encoding", "chunked")], None),
            (&[("content-length", "3")], None),
        ];
        for (head, want) in cases {
            let mut resp = http::Response::new(());
            *resp.headers_mut() = headers(head);
            assert!(!relay_response_head(&mut resp, None));
            let got = resp
                .headers()
                .get(header::TRANSFER_ENCODING)
                .map(|v| v.to_str().unwrap());
            assert_eq!(got, *want, "for {head:?}");
        }
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("host", "x"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(
            !is_upgrade(&headers(&[("upgrade", "websocket")])),
            "Connection must list upgrade"
        );
        assert!(has_token(
            &headers(&[("connection", "close, Upgrade")]),
            header::CONNECTION,
            "upgrade"
        ));
    }
}
