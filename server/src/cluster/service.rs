//! The cluster port: Raft RPC, join/leave/write for the leader, and requests forwarded by
//! other nodes' proxies on [`FORWARD_PATH`]. Only exact routes are served; any other path is
//! `404`.
//!
//! Every call passes, in order: the peer policy (loopback only unless peers authenticate, see
//! [`PeerPolicy`](super::trust::PeerPolicy)), the cluster token, and then per route: Raft RPC
//! only from members (votes from voters) with believable terms, and under mutual TLS only
//! from a certificate that names the node the call speaks for.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, warn};

use super::error::ClusterError;
use super::network::{
    APPEND_PATH, CLUSTER_TOKEN_HEADER, FORWARD_PATH, FORWARD_TARGET_HEADER, INFO_PATH, JOIN_PATH,
    LEAVE_PATH, MAX_RPC_BYTES, MAX_SMALL_BYTES, MAX_WRITE_BYTES, SNAPSHOT_PATH, VOTE_PATH,
    WRITE_PATH,
};
use super::node::{Cluster, JoinRequest};
use super::trust::{
    certificate_is, host_of, term_acceptable, KnownPeers, RaftRequest, UNAUTHENTICATED_PEER,
};
use super::types::{raft_id, Command, Member};
use crate::http::{json_error, json_response, Body, ConnInfo, PeerCertificates};

/// A refused call is logged at `warn` at most this often; the others at `debug`.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves the cluster port; `F` serves the requests other nodes forward (the proxy, which
/// sits above the cluster and is handed in, so the cluster never names it).
pub struct ClusterPort<F> {
    cluster: Arc<Cluster>,
    forward: F,
    last_warning: Mutex<Option<Instant>>,
}

/// Who is calling, as far as mutual TLS says.
struct Peer {
    /// The port requires client certificates: each call is checked against the node it
    /// speaks for.
    mutual_tls: bool,
    certs: Option<PeerCertificates>,
}

impl Peer {
    /// Whether the peer may speak for `member` (always, without mutual TLS: the token or
    /// loopback is then all there is to know).
    fn is(&self, member: &Member) -> bool {
        !self.mutual_tls
            || self
                .certs
                .as_ref()
                .is_some_and(|c| certificate_is(&c.0, member))
    }

    /// Whether the peer is one of `known`'s members.
    fn is_member(&self, known: &KnownPeers) -> bool {
        !self.mutual_tls
            || self
                .certs
                .as_ref()
                .is_some_and(|c| known.named_by(&c.0).is_some())
    }
}

fn not_named(member: &Member) -> Response<Body> {
    json_error(
        StatusCode::FORBIDDEN,
        &format!(
            "the peer's certificate does not name {:?}, the host of node {}'s cluster address",
            host_of(&member.cluster_addr),
            member.name
        ),
    )
}

async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, Response<Body>> {
    let bytes = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {limit} bytes"),
            ))
        }
        Err(e) => {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read request body: {e}"),
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        json_error(
            StatusCode::BAD_REQUEST,
            &format!("invalid request body: {e}"),
        )
    })
}

fn answer<T: Serialize>(v: &T) -> Response<Body> {
    match serde_json::to_value(v) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn cluster_error(e: ClusterError) -> Response<Body> {
    let status = match e {
        ClusterError::NoLeader | ClusterError::Peer(_) | ClusterError::TimedOut(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ClusterError::Refused(_) | ClusterError::Rejected(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_error(status, &e.to_string())
}

impl<F, Fut> ClusterPort<F>
where
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send,
{
    /// The cluster port of `cluster`, handing forwarded requests to `forward` (the proxy's
    /// `handle_forwarded`).
    pub fn new(cluster: Arc<Cluster>, forward: F) -> Self {
        Self {
            cluster,
            forward,
            last_warning: Mutex::new(None),
        }
    }

    /// Log a refused call: at `warn` now and then, so that a peer retrying every heartbeat
    /// cannot flood the log.
    fn refused(&self, conn: &ConnInfo, path: &str, why: &str) {
        let loud = {
            let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
            let loud = last.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL);
            if loud {
                *last = Some(Instant::now());
            }
            loud
        };
        if loud {
            warn!(peer = %conn.remote, path, reason = why, "cluster port refused a call");
        } else {
            debug!(peer = %conn.remote, path, reason = why, "cluster port refused a call");
        }
    }

    /// Handle one request on the cluster port.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<Body> {
        let policy = self.cluster.peer_policy();
        if !policy.admits(conn.remote) {
            self.refused(&conn, req.uri().path(), UNAUTHENTICATED_PEER);
            return json_error(StatusCode::FORBIDDEN, UNAUTHENTICATED_PEER);
        }
        let token = req.headers_mut().remove(CLUSTER_TOKEN_HEADER);
        if !self
            .cluster
            .token_accepted(token.as_ref().map(|t| t.as_bytes()))
        {
            let msg = if token.is_some() {
                "invalid cluster token"
            } else {
                "missing cluster token"
            };
            self.refused(&conn, req.uri().path(), msg);
            return json_error(StatusCode::UNAUTHORIZED, msg);
        }
        let path = req.uri().path().to_string();
        if path == FORWARD_PATH {
            return self.forwarded(req, conn).await;
        }
        let peer = Peer {
            mutual_tls: policy.mutual_tls,
            certs: req.extensions().get::<PeerCertificates>().cloned(),
        };
        match self.route(req, &path, &peer).await {
            Ok(resp) => resp,
            Err(resp) => {
                if resp.status() == StatusCode::FORBIDDEN
                    || resp.status() == StatusCode::BAD_REQUEST
                {
                    self.refused(&conn, &path, resp.status().as_str());
                }
                resp
            }
        }
    }

    /// A client request forwarded by another node's proxy: its path and query come back from
    /// [`FORWARD_TARGET_HEADER`], then the proxy serves it from a local upstream
    /// (`forward`).
    async fn forwarded(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<Body> {
        let target = req
            .headers_mut()
            .remove(FORWARD_TARGET_HEADER)
            .and_then(|t| t.to_str().ok()?.parse::<PathAndQuery>().ok())
            .filter(|pq| pq.as_str().starts_with('/'));
        let Some(target) = target else {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("a forwarded request needs {FORWARD_TARGET_HEADER}: the client's path"),
            );
        };
        *req.uri_mut() = Uri::from(target);
        (self.forward)(req, conn).await
    }

    /// Read a Raft request and check it before openraft sees it: a believable term, a sender
    /// this node knows as a member (a voter, for votes), and under mutual TLS a certificate
    /// that names the sender.
    async fn raft_request<R: RaftRequest + DeserializeOwned>(
        &self,
        req: Request<Incoming>,
        limit: usize,
        peer: &Peer,
    ) -> Result<R, Response<Body>> {
        let rpc: R = read_json(req, limit).await?;
        let (sender, term, local) = (rpc.sender(), rpc.max_term(), self.cluster.term());
        if !term_acceptable(term, local) {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                &format!("raft term {term} is out of range (this node is at term {local})"),
            ));
        }
        let known = self.cluster.known_peers().await.map_err(cluster_error)?;
        let member = known.members.get(&sender);
        let known_sender = if R::VOTERS_ONLY {
            known.voters.contains(&sender)
        } else {
            member.is_some()
        };
        let Some(member) = member.filter(|_| known_sender) else {
            // It may be a member this node has not heard of yet: ask the others.
            self.cluster.refresh_vouched();
            let role = if R::VOTERS_ONLY { "voter" } else { "member" };
            return Err(json_error(
                StatusCode::FORBIDDEN,
                &format!("raft node {sender} is not a {role} of this cluster"),
            ));
        };
        if !peer.is(member) {
            return Err(not_named(member));
        }
        Ok(rpc)
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        path: &str,
        peer: &Peer,
    ) -> Result<Response<Body>, Response<Body>> {
        let raft = self.cluster.raft();
        Ok(match (req.method().clone(), path) {
            (Method::GET, INFO_PATH) => answer(&self.cluster.answer().await),
            (Method::POST, APPEND_PATH) => {
                let rpc = self.raft_request(req, MAX_RPC_BYTES, peer).await?;
                answer(&raft.append_entries(rpc).await)
            }
            (Method::POST, VOTE_PATH) => {
                let rpc = self.raft_request(req, MAX_SMALL_BYTES, peer).await?;
                answer(&raft.vote(rpc).await)
            }
            (Method::POST, SNAPSHOT_PATH) => {
                let rpc = self.raft_request(req, MAX_RPC_BYTES, peer).await?;
                answer(&raft.install_snapshot(rpc).await)
            }
            (Method::POST, JOIN_PATH) => {
                let j = read_json::<JoinRequest>(req, MAX_SMALL_BYTES).await?;
                super::validate_member(&j.member)
                    .map_err(|msg| json_error(StatusCode::BAD_REQUEST, &msg))?;
                if peer.mutual_tls {
                    // The joining node's certificate names the host it claims (and the one
                    // it had, when it changes an entry); or a member forwards the join.
                    let known = self.cluster.known_peers().await.map_err(cluster_error)?;
                    let previous = known.members.get(&raft_id(&j.member.name));
                    let itself = peer.is(&j.member) && previous.is_none_or(|m| peer.is(m));
                    if !itself && !peer.is_member(&known) {
                        return Err(not_named(previous.unwrap_or(&j.member)));
                    }
                }
                match self.cluster.join(j.member, j.fresh).await {
                    Ok(leader) => answer(&leader),
                    Err(e) => cluster_error(e),
                }
            }
            (Method::POST, LEAVE_PATH) => {
                let j = read_json::<JoinRequest>(req, MAX_SMALL_BYTES).await?;
                // Any member may take a node out (the admin API of any node does).
                if peer.mutual_tls {
                    let known = self.cluster.known_peers().await.map_err(cluster_error)?;
                    if !peer.is_member(&known) {
                        return Err(json_error(
                            StatusCode::FORBIDDEN,
                            "the peer's certificate names no member of this cluster",
                        ));
                    }
                }
                match self.cluster.leave_member(&j.member.name).await {
                    Ok(()) => answer(&serde_json::json!({})),
                    Err(e) => cluster_error(e),
                }
            }
            (Method::POST, WRITE_PATH) => {
                let cmd = read_json::<Command>(req, MAX_WRITE_BYTES).await?;
                if !self.cluster.is_leader() {
                    return Ok(cluster_error(ClusterError::NoLeader));
                }
                // Nodes send their own endpoint tables; expiring is the leader's alone.
                let node = match &cmd {
                    Command::SetEndpoints { node, .. } | Command::ReplaceEndpoints { node, .. } => {
                        *node
                    }
                    Command::ExpireNode { .. } => {
                        return Err(json_error(
                            StatusCode::FORBIDDEN,
                            "only the leader expires nodes",
                        ))
                    }
                };
                let Some(member) = self.cluster.member_of(node) else {
                    return Ok(json_error(
                        StatusCode::CONFLICT,
                        "the node is not a member of the cluster; it must join again",
                    ));
                };
                if !peer.is(&member) {
                    return Err(not_named(&member));
                }
                match self.cluster.write(cmd).await {
                    Ok(()) => answer(&serde_json::json!({})),
                    Err(e) => {
                        debug!(error = %e, "forwarded write failed");
                        cluster_error(e)
                    }
                }
            }
            (
                _,
                INFO_PATH | APPEND_PATH | VOTE_PATH | SNAPSHOT_PATH | JOIN_PATH | LEAVE_PATH
                | WRITE_PATH,
            ) => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => json_error(StatusCode::NOT_FOUND, "not found"),
        })
    }
}
