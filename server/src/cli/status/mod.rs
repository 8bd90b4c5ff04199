//! `status`: one GET to a node's admin port, printed.
//!
//! - The original's commands print its YAML (`original.rs`): `status upstream endpoints`,
//!   `status cluster nodes [--status S]`, `status cluster node ID|local`, with its
//!   `--server.url` and `--forward NODE` (the node the admin port asks, `?forward=`).
//! - This project's print the JSON answer pretty: `status endpoints | nodes | node ID | raft
//!   | health` (`health` exits 0 when healthy: for container health checks).
//!
//! Exit 0 on an answer, 1 when there is none (unreachable, refused, not 200), 2 on bad usage.

mod original;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Arg, ArgMatches, Command};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Time a status request has to answer, as the original's client allows.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The largest answer read.
const MAX_ANSWER: usize = 16 << 20;

/// The `status` subcommand and its subcommands.
pub fn command() -> Command {
    let id = || {
        Arg::new("id")
            .required(true)
            .value_name("ID")
            .help("The node id, or `local` for the node behind --server.url")
    };
    Command::new("status")
        .about("Print a node's status from its admin port")
        .long_about(
            "Print a node's status from its admin port.\n\n\
             The original Go Piko's commands print YAML: `status upstream endpoints`, `status cluster \
             nodes [--status S]`, `status cluster node ID|local`. This project's print JSON: `status \
             endpoints | nodes | node ID | raft | health` (health exits 0 when the node is healthy: for \
             container health checks).",
        )
        .subcommand_negates_reqs(true)
        .arg(
            Arg::new("what")
                .required(true)
                .value_parser(["endpoints", "nodes", "node", "raft", "health"])
                .help("endpoints | nodes | node ID | raft | health (JSON); or a subcommand below (YAML)"),
        )
        .arg(Arg::new("node-id").value_name("ID").help("The node id, for `status node ID`"))
        .arg(
            Arg::new("server.url")
                .long("server.url")
                .global(true)
                .value_name("URL")
                .default_value("http://localhost:8002")
                .help("Admin URL of the node"),
        )
        .arg(
            Arg::new("forward")
                .long("forward")
                .global(true)
                .value_name("NODE")
                .help("Ask node NODE, through the node at --server.url (for nodes behind a load balancer)"),
        )
        .arg(
            Arg::new("server.token")
                .long("server.token")
                .global(true)
                .env("PIKO_SERVER_TOKEN")
                .hide_env_values(true)
                .value_name("TOKEN")
                .help("Token for an admin port with authentication"),
        )
        .subcommand(
            Command::new("upstream")
                .about("Inspect connected upstreams")
                .subcommand_required(true)
                .subcommand(
                    Command::new("endpoints")
                        .about("Upstreams of each endpoint on the node (YAML: endpoint: upstreams)"),
                ),
        )
        .subcommand(
            Command::new("cluster")
                .about("Inspect the cluster")
                .subcommand_required(true)
                .subcommand(
                    Command::new("nodes")
                        .about("The nodes this node knows, by id (YAML)")
                        .arg(
                            Arg::new("status")
                                .long("status")
                                .value_name("STATUS")
                                .help("Only nodes with this status (active, unreachable)"),
                        ),
                )
                .subcommand(
                    Command::new("node")
                        .about("One node: its addresses and endpoints (YAML)")
                        .arg(id()),
                ),
        )
        .subcommand(
            Command::new("gossip")
                .about("The original's gossip state; this server has none (its cluster runs on Raft)")
                .subcommand_required(true)
                .subcommand(Command::new("nodes").about("Not available: see `status cluster nodes`"))
                .subcommand(
                    Command::new("node")
                        .about("Not available: see `status cluster node ID`")
                        .arg(id()),
                ),
        )
}

/// What a parsed `status` command asks for.
#[derive(Debug, PartialEq)]
enum Query {
    /// This project's form: the path, printed as JSON.
    Json(String),
    /// `upstream endpoints`.
    Endpoints,
    /// `cluster nodes`, maybe only those with a status.
    Nodes(Option<String>),
    /// `cluster node ID`.
    Node(String),
}

/// Why `status` printed nothing.
#[derive(Debug, thiserror::Error)]
enum StatusError {
    /// Bad usage: exit 2.
    #[error("{0}")]
    Usage(String),
    /// No answer: exit 1.
    #[error("{0}")]
    Failed(String),
}

fn query(m: &ArgMatches) -> Result<Query, StatusError> {
    let one = |m: &ArgMatches, id: &str| m.get_one::<String>(id).cloned();
    Ok(match m.subcommand() {
        Some(("upstream", _)) => Query::Endpoints,
        Some(("cluster", sub)) => match sub.subcommand() {
            Some(("nodes", n)) => Query::Nodes(one(n, "status").filter(|s| !s.is_empty())),
            Some(("node", n)) => Query::Node(one(n, "id").unwrap_or_default()),
            _ => return Err(StatusError::Usage("status cluster: nodes or node ID".into())),
        },
        Some(("gossip", _)) => {
            return Err(StatusError::Failed(
                "status gossip: this server has no gossip state (its cluster runs on Raft); use `status cluster nodes` for the nodes and their status, or `status raft` for the group".into(),
            ))
        }
        _ => match (one(m, "what").as_deref(), one(m, "node-id")) {
            (Some("node"), Some(id)) => Query::Json(format!("/status/cluster/nodes/{id}")),
            (Some("node"), None) => {
                return Err(StatusError::Usage(
                    "status node: give the node id, as in `status node node-1` (or `local`)".into(),
                ))
            }
            (Some("nodes"), _) => Query::Json("/status/cluster/nodes".into()),
            (Some("raft"), _) => Query::Json("/status/cluster/raft".into()),
            (Some("health"), _) => Query::Json("/health".into()),
            _ => Query::Json("/status/upstream/endpoints".into()),
        },
    })
}

impl Query {
    fn path(&self) -> String {
        match self {
            Query::Json(p) => p.clone(),
            Query::Endpoints => "/status/upstream/endpoints".into(),
            Query::Nodes(_) => "/status/cluster/nodes".into(),
            Query::Node(id) => format!("/status/cluster/nodes/{id}"),
        }
    }

    /// The answer as this command prints it.
    fn print(&self, body: &[u8]) -> Result<String, String> {
        let decode = |what: &str| format!("cannot decode the answer as {what}");
        match self {
            Query::Json(_) => {
                let value: serde_json::Value = serde_json::from_slice(body)
                    .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned().into());
                serde_json::to_string_pretty(&value)
                    .map(|s| s + "\n")
                    .map_err(|e| e.to_string())
            }
            Query::Endpoints => serde_json::from_slice::<BTreeMap<String, i64>>(body)
                .map(|e| original::endpoints_yaml(&e))
                .map_err(|e| format!("{}: {e}", decode("endpoint: upstreams"))),
            Query::Nodes(status) => {
                let mut nodes: Vec<original::NodeMetadata> = serde_json::from_slice(body)
                    .map_err(|e| format!("{}: {e}", decode("a list of nodes")))?;
                nodes.retain(|n| status.as_ref().is_none_or(|s| *s == n.status));
                nodes.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(original::nodes_yaml(&nodes))
            }
            Query::Node(_) => serde_json::from_slice::<original::Node>(body)
                .map(|n| original::node_yaml(&n))
                .map_err(|e| format!("{}: {e}", decode("a node"))),
        }
    }

    /// What the original says first when there is no answer.
    fn failure(&self) -> String {
        match self {
            Query::Json(p) => format!("GET {p}"),
            Query::Endpoints => "failed to get upstream endpoints".into(),
            Query::Nodes(_) => "failed to get cluster nodes".into(),
            Query::Node(id) => format!("failed to get cluster node {id}"),
        }
    }
}

/// Run the `status` command `m`: ask, print the answer to stdout, or one line to stderr.
pub async fn run(m: &ArgMatches) -> ExitCode {
    match ask(m).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(StatusError::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(StatusError::Failed(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn ask(m: &ArgMatches) -> Result<String, StatusError> {
    let q = query(m)?;
    let base = m
        .get_one::<String>("server.url")
        .map_or("http://localhost:8002", String::as_str);
    let mut url = format!("{}{}", base.trim_end_matches('/'), q.path());
    if let Some(node) = m.get_one::<String>("forward").filter(|n| !n.is_empty()) {
        url.push_str(&format!("?forward={node}"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| StatusError::Usage(format!("--server.url: invalid URL {base:?}: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(StatusError::Usage(format!(
            "--server.url: {base:?} is not an http:// or https:// URL of the admin port"
        )));
    }
    let token = m.get_one::<String>("server.token").cloned();
    let fail = |e: String| StatusError::Failed(format!("{}: {e}", q.failure()));
    let body = tokio::time::timeout(TIMEOUT, get(uri, token))
        .await
        .map_err(|_| fail(format!("no answer from {base} within {TIMEOUT:?}")))?
        .map_err(fail)?;
    q.print(&body).map_err(fail)
}

/// GET `uri` (plain or TLS, trusting the OS's roots), bearing `token`; the body of a 200.
async fn get(uri: http::Uri, token: Option<String>) -> Result<Bytes, String> {
    let tls = if uri.scheme_str() == Some("https") {
        (*crate::tls::client_config().map_err(|e| e.to_string())?).clone()
    } else {
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let mut req = http::Request::get(uri.clone());
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| {
        let cause = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
        format!("cannot reach {authority} ({cause}); is the admin port right (--server.url)?")
    })?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if status != http::StatusCode::OK {
        let said = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(format!("{} answered {status}: {said}", uri.path()));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Query, String> {
        let m = crate::cli::command("piko-server")
            .try_get_matches_from(std::iter::once("piko-server").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let (_, sub) = m.subcommand().ok_or("no subcommand")?;
        query(sub).map_err(|e| e.to_string())
    }

    #[test]
    fn both_forms_parse_to_their_query() {
        for (args, want) in [
            (
                &["status", "endpoints"][..],
                Query::Json("/status/upstream/endpoints".into()),
            ),
            (
                &["status", "nodes"],
                Query::Json("/status/cluster/nodes".into()),
            ),
            (
                &["status", "node", "n1"],
                Query::Json("/status/cluster/nodes/n1".into()),
            ),
            (
                &["status", "raft"],
                Query::Json("/status/cluster/raft".into()),
            ),
            (&["status", "health"], Query::Json("/health".into())),
            (&["status", "upstream", "endpoints"], Query::Endpoints),
            (&["status", "cluster", "nodes"], Query::Nodes(None)),
            (
                &["status", "cluster", "nodes", "--status", "active"],
                Query::Nodes(Some("active".into())),
            ),
            (
                &["status", "cluster", "node", "local"],
                Query::Node("local".into()),
            ),
            (
                &[
                    "status",
                    "--server.url",
                    "http://a:1",
                    "cluster",
                    "node",
                    "x",
                    "--forward",
                    "y",
                ],
                Query::Node("x".into()),
            ),
        ] {
            assert_eq!(parse(args).unwrap(), want, "{args:?}");
        }
    }

    #[test]
    fn bad_usage_says_what_to_give() {
        for (args, want) in [
            (&["status", "node"][..], "give the node id"),
            (&["status", "cluster", "node"], "<ID>"),
            (&["status", "cluster"], "Usage"),
            (&["status", "gossip", "nodes"], "no gossip state"),
            (&["status", "what"], "invalid value 'what'"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
