//! HTTP paths and header names of the Piko v1 protocol.

/// Prefix of the upstream registration path: `GET /piko/v1/upstream/{endpoint}` on the upstream port.
pub const UPSTREAM_PATH_PREFIX: &str = "/piko/v1/upstream/";

/// Prefix of the TCP-over-WebSocket path: `GET /_piko/v1/tcp/{endpoint}` on the proxy port.
pub const TCP_PATH_PREFIX: &str = "/_piko/v1/tcp/";

/// Prefix reserved for Piko's own routes on the proxy port.
pub const RESERVED_PREFIX: &str = "/_piko/";

/// Header naming the endpoint a proxied request is for (wins over `Host`).
pub const ENDPOINT_HEADER: &str = "x-piko-endpoint";

/// Header marking a request forwarded by another Piko node (one hop at most).
pub const FORWARD_HEADER: &str = "x-piko-forward";

/// Header carrying a Piko token that wins over `Authorization`.
pub const AUTHORIZATION_HEADER: &str = "x-piko-authorization";

/// Header by which a client of the TCP route and the server agree, request and answer, to
/// carry half-close: an empty binary message then ends one direction (docs/protocol.md).
pub const HALF_CLOSE_HEADER: &str = "x-piko-half-close";

/// Header by which an upstream and the server agree, registration request and `101` answer, to
/// reuse streams: several HTTP/1.1 requests per stream, without `Connection: close`
/// (docs/protocol.md). Without it the server sends one request per stream, as the original.
pub const KEEP_ALIVE_HEADER: &str = "x-piko-keep-alive";

/// Header selecting the tenant whose keys verify an upstream's token.
pub const TENANT_HEADER: &str = "x-piko-tenant-id";

/// Build the upstream registration URL for `endpoint` from a server base URL
/// (`http(s)://` becomes `ws(s)://`; a trailing path on the base is kept).
pub fn upstream_url(base: &str, endpoint: &str) -> String {
    join_ws(base, UPSTREAM_PATH_PREFIX, endpoint)
}

/// Build the TCP-over-WebSocket URL for `endpoint` from a proxy base URL.
pub fn tcp_url(base: &str, endpoint: &str) -> String {
    join_ws(base, TCP_PATH_PREFIX, endpoint)
}

fn join_ws(base: &str, prefix: &str, endpoint: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        base.to_string()
    };
    format!("{base}{prefix}{endpoint}")
}

/// Header carrying the cluster's shared token on node-to-node calls (`cluster.token`).
pub const CLUSTER_TOKEN_HEADER: &str = "x-piko-cluster-token";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_ws_urls() {
        let cases = [
            (
                "http://localhost:8001",
                "ws://localhost:8001/piko/v1/upstream/shop",
            ),
            (
                "https://piko.example.com/",
                "wss://piko.example.com/piko/v1/upstream/shop",
            ),
            (
                "ws://10.0.0.1:8001/base",
                "ws://10.0.0.1:8001/base/piko/v1/upstream/shop",
            ),
        ];
        for (base, want) in cases {
            assert_eq!(upstream_url(base, "shop"), want);
        }
        assert_eq!(
            tcp_url("http://127.0.0.1:8000", "db"),
            "ws://127.0.0.1:8000/_piko/v1/tcp/db"
        );
    }
}
