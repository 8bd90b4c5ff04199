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
    strip_hop_by_hop(resp.headers_mut(), false);
    false
}

/// Once both sides of an upgrade (`101 Switching Protocols`) are ready, copy bytes between
/// them until either closes. Spawned: returns at once. Upgraded connections (WebSockets) are
/// many and chatty, so they keep tokio's small copy buffers rather than [`crate::relay`]'s.
pub fn splice_upgrade(client: OnUpgrade, target: OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(client, target) {
            Ok((client, target)) => {
                let (mut client, mut target) = (TokioIo::new(client), TokioIo::new(target));
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut target).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
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
