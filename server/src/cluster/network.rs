//! Node-to-node traffic on the cluster port: Raft RPC as JSON over HTTP/1.1, and forwarded
//! proxy requests on a route of their own ([`FORWARD_PATH`]), both over one client that
//! speaks TLS (and presents the node's certificate for mTLS) when `cluster.tls` is set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::trust::{RaftAnswer, MAX_TERM};
use super::types::{Member, NodeId, TypeConfig};
pub use piko_protocol::paths::CLUSTER_TOKEN_HEADER;

/// A client request forwarded by another node's proxy. The client's own path and query travel
/// as data in [`FORWARD_TARGET_HEADER`], so no client path can ever name a cluster route.
pub const FORWARD_PATH: &str = "/piko/cluster/v1/forward";
/// Header of a forwarded request carrying the client's path and query (origin form).
pub const FORWARD_TARGET_HEADER: &str = "x-piko-forward-target";
/// Raft AppendEntries.
pub const APPEND_PATH: &str = "/piko/cluster/v1/raft/append";
/// Raft RequestVote.
pub const VOTE_PATH: &str = "/piko/cluster/v1/raft/vote";
/// Raft InstallSnapshot (one chunk).
pub const SNAPSHOT_PATH: &str = "/piko/cluster/v1/raft/snapshot";
/// A node asks to join.
pub const JOIN_PATH: &str = "/piko/cluster/v1/join";
/// A node asks to leave.
pub const LEAVE_PATH: &str = "/piko/cluster/v1/leave";
/// A command for the leader.
pub const WRITE_PATH: &str = "/piko/cluster/v1/write";
/// Who a node is and whether it belongs to a cluster.
pub const INFO_PATH: &str = "/piko/cluster/v1/info";

/// Largest RPC body accepted or read back (AppendEntries batches, snapshot chunks).
pub const MAX_RPC_BYTES: usize = 64 << 20;
/// Largest body of the small routes (vote, join, leave).
pub const MAX_SMALL_BYTES: usize = 64 << 10;
/// Largest command a node may send to the leader (a full endpoint table).
pub const MAX_WRITE_BYTES: usize = 8 << 20;

/// The body of requests sent to other nodes (a forwarded client body may fail with the
/// client's error or at its deadline).
pub type ClientBody = BoxBody<Bytes, crate::http::BoxError>;

/// A body from bytes.
pub fn full(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Why a call to another node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The node could not be reached (connect, TLS handshake).
    #[error("cannot reach node at {addr}: {source}")]
    Unreachable {
        /// The node's cluster address.
        addr: String,
        /// The cause.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// No answer in time.
    #[error("node at {addr} did not answer within {timeout:?}")]
    Timeout {
        /// The node's cluster address.
        addr: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// The node answered with an error status.
    #[error("node at {addr} answered {status}: {message}")]
    Status {
        /// The node's cluster address.
        addr: String,
        /// The HTTP status.
        status: StatusCode,
        /// The error it gave.
        message: String,
    },
    /// The answer could not be read or decoded.
    #[error("bad answer from node at {addr}: {message}")]
    BadAnswer {
        /// The node's cluster address.
        addr: String,
        /// What was wrong.
        message: String,
    },
    /// The address is not `host:port`.
    #[error("invalid node address {0:?}")]
    BadAddress(String),
}

impl PeerError {
    /// Whether the peer never got the request (safe to try elsewhere).
    pub fn is_connect(&self) -> bool {
        matches!(self, PeerError::Unreachable { source, .. } if source.is_connect())
    }
}

/// A client for the cluster ports of other nodes, over plain HTTP or TLS.
#[derive(Clone)]
pub struct PeerClient {
    http: Client<HttpsConnector<HttpConnector>, ClientBody>,
    scheme: &'static str,
    token: Option<http::HeaderValue>,
}

impl PeerClient {
    /// A client; with `tls`, every node is reached over TLS with that configuration; with
    /// `token`, every call carries the cluster's shared token.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, token: Option<&str>) -> Self {
        let token = token
            .and_then(|t| http::HeaderValue::from_str(t).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        crate::tls::install_crypto_provider();
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let config = tls.map(|c| (*c).clone()).unwrap_or_else(|| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        // Header names in canonical case (`X-Piko-Forward`, `Content-Type`), as the original
        // server writes a forwarded request: the node behind passes the client's names on
        // to upstreams that did not negotiate keep-alive, and services may match them
        // case-sensitively.
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http1_title_case_headers(true)
            .build(https);
        Self {
            http,
            scheme,
            token,
        }
    }

    /// The URI of `path` on the node whose cluster port is `addr`.
    pub fn uri(&self, addr: &str, path_and_query: &str) -> Result<Uri, PeerError> {
        format!("{}://{addr}{path_and_query}", self.scheme)
            .parse()
            .map_err(|_| PeerError::BadAddress(addr.to_string()))
    }

    /// Send `req` (a forwarded proxy request, already addressed to [`FORWARD_PATH`]) and
    /// return the response head.
    pub async fn send(
        &self,
        mut req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, PeerError> {
        match &self.token {
            Some(t) => req.headers_mut().insert(CLUSTER_TOKEN_HEADER, t.clone()),
            None => req.headers_mut().remove(CLUSTER_TOKEN_HEADER),
        };
        let addr = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        self.http
            .request(req)
            .await
            .map_err(|source| PeerError::Unreachable { addr, source })
    }

    /// POST (or GET when `body` is `None`) a JSON call to `path` on `addr` and decode the answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: Option<&Req>,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let bad = |message: String| PeerError::BadAnswer {
            addr: addr.to_string(),
            message,
        };
        let uri = self.uri(addr, path)?;
        let req = match body {
            Some(b) => Request::builder()
                .method(Method::POST)
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(serde_json::to_vec(b).map_err(|e| bad(e.to_string()))?)),
            None => Request::builder().uri(uri).body(full(Bytes::new())),
        }
        .map_err(|e| bad(e.to_string()))?;
        let exchange = async {
            let resp = self.send(req).await?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RPC_BYTES)
                .collect()
                .await
                .map_err(|e| bad(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                return Err(PeerError::Status {
                    addr: addr.to_string(),
                    status,
                    message,
                });
            }
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Timeout {
                addr: addr.to_string(),
                timeout,
            }),
        }
    }
}

/// When each peer last answered a Raft RPC from this node (on the leader: its heartbeats).
#[derive(Debug, Default)]
pub struct PeerLiveness {
    last_ok: Mutex<HashMap<NodeId, Instant>>,
}

impl PeerLiveness {
    fn record(&self, node: NodeId) {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node, Instant::now());
    }

    /// When `node` last answered, if it ever did.
    pub fn last_ok(&self, node: NodeId) -> Option<Instant> {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
            .copied()
    }
}

/// Creates a [`PeerNetwork`] per target node for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    /// The client all connections share.
    pub client: PeerClient,
    /// Answers seen, for the leader's lease on nodes.
    pub liveness: Arc<PeerLiveness>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        PeerNetwork {
            client: self.client.clone(),
            liveness: self.liveness.clone(),
            target,
            addr: node.cluster_addr.clone(),
        }
    }
}

/// Raft RPC to one node.
pub struct PeerNetwork {
    client: PeerClient,
    liveness: Arc<PeerLiveness>,
    target: NodeId,
    addr: String,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl PeerNetwork {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned + RaftAnswer,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Result<Resp, RaftError<NodeId, E>>, PeerError> = self
            .client
            .call(&self.addr, path, Some(req), option.hard_ttl())
            .await;
        match answer {
            // A term no cluster reaches would overflow openraft's arithmetic: the answer is
            // dropped like a lost one.
            Ok(Ok(resp)) if resp.max_term() >= MAX_TERM => {
                let e = PeerError::BadAnswer {
                    addr: self.addr.clone(),
                    message: format!("raft term {} out of range", resp.max_term()),
                };
                tracing::warn!(error = %e, "refusing a raft answer");
                Err(RPCError::Network(NetworkError::new(&e)))
            }
            Ok(Ok(resp)) => {
                self.liveness.record(self.target);
                Ok(resp)
            }
            Ok(Err(e)) => {
                // A node whose Raft has stopped (a storage failure) still answers HTTP; it
                // is not alive as far as the cluster is concerned.
                if !matches!(e, RaftError::Fatal(_)) {
                    self.liveness.record(self.target);
                }
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Err(e) if e.is_connect() => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.rpc(APPEND_PATH, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.rpc(SNAPSHOT_PATH, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.rpc(VOTE_PATH, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What a forwarded request looks like on the wire to the next node.
    #[tokio::test]
    async fn forwarded_requests_carry_canonical_header_names() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let node = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "request head incomplete");
                head.extend_from_slice(&buf[..n]);
            }
            sock.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let client = PeerClient::new(None, Some("tok"));
        let mut req = Request::post(client.uri(&addr, FORWARD_PATH).unwrap())
            .body(full(""))
            .unwrap();
        let h = req.headers_mut();
        h.insert(
            piko_protocol::paths::FORWARD_HEADER,
            http::HeaderValue::from_static("true"),
        );
        h.insert("content-type", http::HeaderValue::from_static("text/plain"));
        let resp = client.send(req).await.unwrap();
        assert_eq!(resp.status(), 204);
        let head = node.await.unwrap();
        for line in [
            "\r\nX-Piko-Forward: true\r\n",
            "\r\nContent-Type: text/plain\r\n",
            "\r\nX-Piko-Cluster-Token: tok\r\n",
        ] {
            assert!(head.contains(line), "{line:?} missing from {head}");
        }
    }
}
