//! `piko-server status`: one GET to a node's admin port, its JSON answer printed pretty.

use anyhow::Context;
use clap::ArgMatches;

/// Ask the node at `--server.url` for what `m` names and print its JSON answer.
pub async fn run(m: &ArgMatches) -> anyhow::Result<()> {
    let base = m
        .get_one::<String>("server.url")
        .map(String::as_str)
        .unwrap_or("http://localhost:8002");
    let id = m.get_one::<String>("id");
    let path = match (m.get_one::<String>("what").map(String::as_str), id) {
        (Some("node"), Some(id)) => format!("/status/cluster/nodes/{id}"),
        (Some("node"), None) => {
            anyhow::bail!("status node: give the node id, as in `piko-server status node node-1`")
        }
        (Some("nodes"), _) => "/status/cluster/nodes".into(),
        (Some("raft"), _) => "/status/cluster/raft".into(),
        (Some("health"), _) => "/health".into(),
        _ => "/status/upstream/endpoints".into(),
    };
    let url: http::Uri = format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .context("--server.url: invalid URL")?;
    let authority = url
        .authority()
        .context("--server.url: missing host")?
        .clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .with_context(|| {
            format!("cannot reach {authority}; is the admin port right (--server.url)?")
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    // The connection of this one request: it ends with the response, and the process then.
    tokio::spawn(conn);
    let mut req = http::Request::get(url.path()).header("host", authority.as_str());
    if let Some(token) = m.get_one::<String>("server.token") {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or(
        serde_json::Value::String(String::from_utf8_lossy(&body).into()),
    );
    if !status.is_success() {
        anyhow::bail!("{path}: {status}: {value}");
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
