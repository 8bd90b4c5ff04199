//! The cluster port: Raft RPC, join/leave/write for the leader, and requests forwarded by
//! other nodes' proxies (everything outside [`CLUSTER_PATH_PREFIX`]).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::debug;

use super::network::{
    APPEND_PATH, CLUSTER_PATH_PREFIX, CLUSTER_TOKEN_HEADER, INFO_PATH, JOIN_PATH, LEAVE_PATH,
    MAX_RPC_BYTES, MAX_SMALL_BYTES, MAX_WRITE_BYTES, SNAPSHOT_PATH, VOTE_PATH, WRITE_PATH,
};
use super::node::{Cluster, ClusterError, JoinRequest};
use super::types::Command;
use crate::http::{json_error, json_response, Body, ConnInfo};
use crate::proxy::Proxy;

/// Serves the cluster port.
pub struct ClusterPort {
    cluster: Arc<Cluster>,
    proxy: Arc<Proxy>,
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
        ClusterError::Refused(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_error(status, &e.to_string())
}

impl ClusterPort {
    /// The cluster port of `cluster`, handing forwarded requests to `proxy`.
    pub fn new(cluster: Arc<Cluster>, proxy: Arc<Proxy>) -> Self {
        Self { cluster, proxy }
    }

    /// Handle one request on the cluster port.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<Body> {
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
            return json_error(StatusCode::UNAUTHORIZED, msg);
        }
        let path = req.uri().path();
        if !path.starts_with(CLUSTER_PATH_PREFIX) {
            return self.proxy.clone().handle_forwarded(req, conn).await;
        }
        let path = path.to_string();
        let raft = self.cluster.raft();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, INFO_PATH) => answer(&self.cluster.answer().await),
            (Method::POST, APPEND_PATH) => match read_json(req, MAX_RPC_BYTES).await {
                Ok(rpc) => answer(&raft.append_entries(rpc).await),
                Err(resp) => resp,
            },
            (Method::POST, VOTE_PATH) => match read_json(req, MAX_SMALL_BYTES).await {
                Ok(rpc) => answer(&raft.vote(rpc).await),
                Err(resp) => resp,
            },
            (Method::POST, SNAPSHOT_PATH) => match read_json(req, MAX_RPC_BYTES).await {
                Ok(rpc) => answer(&raft.install_snapshot(rpc).await),
                Err(resp) => resp,
            },
            (Method::POST, JOIN_PATH) => match read_json::<JoinRequest>(req, MAX_SMALL_BYTES).await
            {
                Ok(j) => match super::validate_member(&j.member) {
                    Err(msg) => json_error(StatusCode::BAD_REQUEST, &msg),
                    Ok(()) => match self.cluster.join(j.member, j.fresh).await {
                        Ok(leader) => answer(&leader),
                        Err(e) => cluster_error(e),
                    },
                },
                Err(resp) => resp,
            },
            (Method::POST, LEAVE_PATH) => {
                match read_json::<JoinRequest>(req, MAX_SMALL_BYTES).await {
                    Ok(j) => match self.cluster.leave_member(&j.member.name).await {
                        Ok(()) => answer(&serde_json::json!({})),
                        Err(e) => cluster_error(e),
                    },
                    Err(resp) => resp,
                }
            }
            (Method::POST, WRITE_PATH) => match read_json::<Command>(req, MAX_WRITE_BYTES).await {
                Ok(cmd) => {
                    if !self.cluster.is_leader() {
                        return cluster_error(ClusterError::NoLeader);
                    }
                    // Nodes send their own endpoint tables; expiring is the leader's alone.
                    let node = match &cmd {
                        Command::SetEndpoints { node, .. }
                        | Command::ReplaceEndpoints { node, .. } => *node,
                        Command::ExpireNode { .. } => {
                            return json_error(
                                StatusCode::FORBIDDEN,
                                "only the leader expires nodes",
                            )
                        }
                    };
                    if self.cluster.member_of(node).is_none() {
                        return json_error(
                            StatusCode::CONFLICT,
                            "the node is not a member of the cluster; it must join again",
                        );
                    }
                    match self.cluster.write(cmd).await {
                        Ok(()) => answer(&serde_json::json!({})),
                        Err(e) => {
                            debug!(error = %e, "forwarded write failed");
                            cluster_error(e)
                        }
                    }
                }
                Err(resp) => resp,
            },
            (
                _,
                INFO_PATH | APPEND_PATH | VOTE_PATH | SNAPSHOT_PATH | JOIN_PATH | LEAVE_PATH
                | WRITE_PATH,
            ) => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => json_error(StatusCode::NOT_FOUND, "not found"),
        }
    }
}
