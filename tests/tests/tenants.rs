//! Tenant isolation of endpoint ids: an endpoint belongs to the tenant of the upstreams that
//! hold it anywhere in the cluster; another tenant's registration is refused with 409 until
//! they all leave, and two nodes racing to register one id for two tenants keep only one.

use std::sync::Arc;
use std::time::Duration;

use piko_connector_core::config::Protocol;
use piko_protocol::mux::{self, Mode, Session};
use piko_server::auth::{PortAuth, Verifier, VerifierSettings};
use piko_tests::{
    get_endpoint, hs256_token, wait_until, EchoUpstream, TestCluster, TestConnector, TestServer,
};
use serde_json::json;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What a refused registration gets.
const OTHER_TENANT: (u16, &str) = (409, "endpoint registered by another tenant");
/// The key of upstreams without a tenant (the port's default verifier).
const DEFAULT_KEY: &str = "default-key";

fn verifier(key: &str) -> Arc<Verifier> {
    Arc::new(
        Verifier::new(VerifierSettings {
            hmac_secret: Some(key.as_bytes().to_vec()),
            ..Default::default()
        })
        .unwrap(),
    )
}

/// Upstream auth with the tenants `acme` and `rival`, each verified by its own key.
fn two_tenants() -> PortAuth {
    PortAuth {
        default: None,
        tenants: ["acme", "rival"]
            .into_iter()
            .map(|t| (t.to_string(), verifier(&format!("{t}-key"))))
            .collect(),
    }
}

/// Upstream auth without tenants: every upstream is the default tenant's.
fn default_only() -> PortAuth {
    PortAuth {
        default: Some(verifier(DEFAULT_KEY)),
        tenants: Default::default(),
    }
}

/// A registered upstream: a yamux client session over the WebSocket (it answers keepalives).
struct Registered {
    session: Session,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.session.close();
    }
}

/// Register `endpoint` at `upstream_addr` as `tenant` (`None`: the default tenant, signed
/// with [`DEFAULT_KEY`]); a refusal is its status and JSON error.
async fn register(
    upstream_addr: std::net::SocketAddr,
    endpoint: &str,
    tenant: Option<&str>,
) -> Result<Registered, (u16, String)> {
    let url = format!("ws://{upstream_addr}/piko/v1/upstream/{endpoint}");
    let mut req = url.as_str().into_client_request().unwrap();
    let key = tenant.map_or(DEFAULT_KEY.to_string(), |t| format!("{t}-key"));
    let token = hs256_token(&key, json!({}));
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(t) = tenant {
        req.headers_mut()
            .insert("x-piko-tenant-id", t.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => {
            let (session, driver) =
                Session::over_websocket(ws, Mode::Client, mux::Config::default());
            tokio::spawn(driver);
            Ok(Registered { session })
        }
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(
                resp.headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some("application/json"),
                "a refusal is JSON"
            );
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            Err((
                resp.status().as_u16(),
                body["error"].as_str().unwrap_or_default().to_string(),
            ))
        }
        Err(e) => panic!("registering {endpoint}: {e}"),
    }
}

fn refused(r: Result<Registered, (u16, String)>) -> (u16, String) {
    match r {
        Ok(_) => panic!("the registration was accepted"),
        Err(e) => e,
    }
}

fn other_tenant() -> (u16, String) {
    (OTHER_TENANT.0, OTHER_TENANT.1.to_string())
}

/// Local upstreams of `endpoint` on `server`.
async fn local_count(server: &TestServer, endpoint: &str) -> u64 {
    server.endpoints().await[endpoint].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_tenant_cannot_register_an_endpoint_another_tenant_holds() {
    let server = TestServer::start_with(|c| c.upstream.auth = two_tenants()).await;
    let addr = server.upstream_addr;
    let first = register(addr, "shop", Some("acme")).await.unwrap();
    server.wait_for_upstreams("shop", 1).await;

    assert_eq!(
        refused(register(addr, "shop", Some("rival")).await),
        other_tenant()
    );
    assert_eq!(local_count(&server, "shop").await, 1, "acme keeps it alone");
    // The owner may add upstreams; the other tenant may register other ids.
    let second = register(addr, "shop", Some("acme")).await.unwrap();
    server.wait_for_upstreams("shop", 2).await;
    let _blog = register(addr, "blog", Some("rival")).await.unwrap();
    server.wait_for_upstreams("blog", 1).await;

    // Once every upstream of acme has left, the id is free.
    drop((first, second));
    server.wait_for_upstreams("shop", 0).await;
    let _rival = register(addr, "shop", Some("rival")).await.unwrap();
    server.wait_for_upstreams("shop", 1).await;
    assert_eq!(
        refused(register(addr, "shop", Some("acme")).await),
        other_tenant(),
        "now acme is the other tenant"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_endpoint_held_on_one_node_is_refused_to_other_tenants_on_every_node() {
    // Node 1 has no tenants (its upstreams are the default tenant's), nodes 0 and 2 have two.
    let cluster = TestCluster::start_with(3, |i, c| {
        c.upstream.auth = if i == 1 {
            default_only()
        } else {
            two_tenants()
        }
    })
    .await;
    let echo = EchoUpstream::named("owner").await;
    let owner = TestConnector::start_with_token(
        &cluster.nodes[1].upstream_url(),
        &[("shop", &echo.addr.to_string(), Protocol::Http)],
        Some(&hs256_token(DEFAULT_KEY, json!({}))),
    );
    cluster.wait_for_replicated("shop", 1).await;

    for (node, tenant) in [(2, "rival"), (0, "acme")] {
        assert_eq!(
            refused(register(cluster.nodes[node].upstream_addr, "shop", Some(tenant)).await),
            other_tenant(),
            "{tenant} on node {node}"
        );
    }
    // Every client still reaches the owner's service, through any node.
    for node in &cluster.nodes {
        for _ in 0..4 {
            let got = get_endpoint(&node.proxy_url(), "shop", "/name").await;
            assert_eq!(
                got,
                Some((200, "owner".to_string())),
                "via {}",
                node.proxy_addr
            );
        }
    }

    // Once the owner has left everywhere, another tenant may take the id.
    owner.stop().await;
    cluster.wait_for_replicated("shop", 0).await;
    let _rival = register(cluster.nodes[2].upstream_addr, "shop", Some("rival"))
        .await
        .unwrap();
    cluster.wait_for_replicated("shop", 1).await;
    let _acme_elsewhere = register(cluster.nodes[0].upstream_addr, "blog", Some("acme"))
        .await
        .unwrap();
    assert_eq!(
        refused(register(cluster.nodes[0].upstream_addr, "shop", Some("acme")).await),
        other_tenant()
    );
    cluster.stop().await;
}

#[tokio::test]
async fn two_nodes_racing_for_one_id_for_two_tenants_keep_one() {
    let cluster = TestCluster::start_with(3, |_, c| c.upstream.auth = two_tenants()).await;
    let (n0, n2) = (&cluster.nodes[0], &cluster.nodes[2]);
    let (acme, rival) = tokio::join!(
        register(n0.upstream_addr, "race", Some("acme")),
        register(n2.upstream_addr, "race", Some("rival")),
    );
    assert!(
        acme.is_ok() || rival.is_ok(),
        "one of them registers: {:?} {:?}",
        acme.as_ref().err(),
        rival.as_ref().err()
    );
    // Whatever the order, the cluster settles on one tenant: one node holds the id, every
    // replica says so, and the loser's session (if it was upgraded) is closed.
    wait_until(
        "one node holds the id and every replica agrees",
        Duration::from_secs(20),
        || async {
            let (c0, c2) = (local_count(n0, "race").await, local_count(n2, "race").await);
            let mut agree = true;
            for node in &cluster.nodes {
                agree &= node.replicated_upstreams("race").await == 1;
            }
            c0 + c2 == 1 && agree
        },
    )
    .await;
    let (winner, loser) = if local_count(n0, "race").await == 1 {
        (acme, rival)
    } else {
        (rival, acme)
    };
    let winner = winner.expect("the node that holds the id accepted its upstream");
    if let Ok(loser) = loser {
        tokio::time::timeout(Duration::from_secs(10), loser.session.closed())
            .await
            .expect("the refused upstream's session is closed");
    }
    assert!(!winner.session.is_closed(), "the winner keeps its session");
    cluster.stop().await;
}
