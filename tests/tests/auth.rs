//! Authentication and TLS end to end: every auth row of the error table on each port, scopes,
//! expiry, tenants, JWKS rotation over HTTP, TLS/mTLS handshakes and certificate reload.

use std::time::Duration;

use piko_connector_core::config::Protocol;
use piko_server::auth::{PortAuth, Verifier, VerifierSettings};
use piko_server::tls::TlsFiles;
use piko_tests::tls::{client_config, https_get, temp_dir, TestCa};
use piko_tests::{
    client, hs256_token, now_secs, wait_until, EchoUpstream, NodeProcess, TestConnector, TestServer,
};
use serde_json::json;
use std::sync::Arc;

const SECRET: &str = "integration-secret";

fn hmac_auth(secret: &str) -> PortAuth {
    let v = Verifier::new(VerifierSettings {
        hmac_secret: Some(secret.as_bytes().to_vec()),
        ..Default::default()
    })
    .unwrap();
    PortAuth {
        default: Some(Arc::new(v)),
        tenants: Default::default(),
    }
}

async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("application/json".into())
    );
    let v: serde_json::Value = resp.json().await.unwrap();
    (status, v["error"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn upstream_port_auth_errors() {
    let server = TestServer::start_with(|c| c.upstream.auth = hmac_auth(SECRET)).await;
    let url = format!("{}/piko/v1/upstream/shop", server.upstream_url());
    let expired = hs256_token(SECRET, json!({"exp": now_secs() - 10}));
    let other_key = hs256_token("other", json!({}));
    let scoped = hs256_token(SECRET, json!({"piko": {"endpoints": ["blog"]}}));
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing authorization"),
        (Some("Bearer garbage".into()), "invalid token"),
        (Some(format!("Bearer {other_key}")), "invalid token"),
        (Some(format!("Basic {other_key}")), "invalid token"),
        (Some(format!("Bearer {expired}")), "expired token"),
        (Some(format!("Bearer {scoped}")), "endpoint not permitted"),
    ];
    for (auth, want) in cases {
        let mut req = client().get(&url);
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        assert_eq!(
            error_of(req.send().await.unwrap()).await,
            (401, want.to_string()),
            "{auth:?}"
        );
    }
}

#[tokio::test]
async fn a_connector_with_a_good_token_serves_and_a_bad_one_stops() {
    let server = TestServer::start_with(|c| c.upstream.auth = hmac_auth(SECRET)).await;
    let echo = EchoUpstream::start().await;
    let good = hs256_token(SECRET, json!({"piko": {"endpoints": ["shop"]}}));
    let _conn = TestConnector::start_with_token(
        &server.upstream_url(),
        &[("shop", &echo.target(), Protocol::Http)],
        Some(&good),
    );
    server.wait_for_upstreams("shop", 1).await;
    let r = server.get("shop", "/name").await;
    assert_eq!(r.text().await.unwrap(), "echo");

    // Scoped to another endpoint: the agent stops with the server's reason instead of retrying.
    let bad = TestConnector::start_with_token(
        &server.upstream_url(),
        &[("blog", &echo.target(), Protocol::Http)],
        Some(&good),
    );
    let err = bad.result().await.unwrap_err().to_string();
    assert!(
        err.contains("401") && err.contains("endpoint not permitted"),
        "{err}"
    );
    let none = TestConnector::start(
        &server.upstream_url(),
        &[("shop", &echo.target(), Protocol::Http)],
    );
    let err = none.result().await.unwrap_err().to_string();
    assert!(err.contains("missing authorization"), "{err}");
}

#[tokio::test]
async fn proxy_port_auth_and_scopes() {
    let server = TestServer::start_with(|c| c.proxy.auth = hmac_auth(SECRET)).await;
    let echo = EchoUpstream::start().await;
    let _conn = TestConnector::http(&server, "shop", &echo.target());
    server.wait_for_upstreams("shop", 1).await;
    let url = format!("{}/headers", server.proxy_url());
    let shop = hs256_token(SECRET, json!({"piko": {"endpoints": ["shop"]}}));
    let blog = hs256_token(SECRET, json!({"piko": {"endpoints": ["blog"]}}));

    let r = client()
        .get(&url)
        .header("x-piko-endpoint", "shop")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "missing authorization".into()));
    let r = client()
        .get(&url)
        .header("x-piko-endpoint", "shop")
        .bearer_auth(&blog)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "endpoint not permitted".into()));
    let r = client()
        .get(&url)
        .header("x-piko-endpoint", "shop")
        .bearer_auth(&shop)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // x-piko-authorization wins; the service gets its own Authorization and never Piko's token.
    let r = client()
        .get(&url)
        .header("x-piko-endpoint", "shop")
        .header("x-piko-authorization", format!("Bearer {shop}"))
        .header("authorization", "Bearer service-credential")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["authorization"], "Bearer service-credential");
    assert!(
        v["headers"].get("x-piko-authorization").is_none(),
        "Piko's token is not forwarded: {v}"
    );

    // TCP over WebSocket checks the same scopes before the upgrade.
    let err =
        tokio_tungstenite::connect_async(format!("ws://{}/_piko/v1/tcp/shop", server.proxy_addr))
            .await
            .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other}"),
    }
}

#[tokio::test]
async fn an_upstream_is_disconnected_when_its_token_expires() {
    let server = TestServer::start_with(|c| c.upstream.auth = hmac_auth(SECRET)).await;
    let token = hs256_token(SECRET, json!({"exp": now_secs() + 2}));
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/piko/v1/upstream/brief", server.upstream_addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (_ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("registered");
    server.wait_for_upstreams("brief", 1).await;
    wait_until(
        "the expired upstream is gone",
        Duration::from_secs(6),
        || async { server.endpoints().await.get("brief").is_none() },
    )
    .await;
}

#[tokio::test]
async fn tenants_select_their_own_keys() {
    let tenant = Verifier::new(VerifierSettings {
        hmac_secret: Some(b"tenant-key".to_vec()),
        ..Default::default()
    })
    .unwrap();
    let server = TestServer::start_with(|c| {
        c.upstream.auth = PortAuth {
            default: None,
            tenants: [("acme".to_string(), Arc::new(tenant))]
                .into_iter()
                .collect(),
        }
    })
    .await;
    let token = hs256_token("tenant-key", json!({}));
    let url = format!("ws://{}/piko/v1/upstream/acme-shop", server.upstream_addr);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.headers_mut()
        .insert("x-piko-tenant-id", "acme".parse().unwrap());
    let (_ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("tenant registered");
    server.wait_for_upstreams("acme-shop", 1).await;
    let r = client()
        .get(format!(
            "{}/piko/v1/upstream/acme-shop",
            server.upstream_url()
        ))
        .bearer_auth(&token)
        .header("x-piko-tenant-id", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "unknown tenant".into()));
}

#[tokio::test]
async fn admin_auth_keeps_probes_open() {
    let server = TestServer::start_with(|c| c.admin.auth = hmac_auth(SECRET)).await;
    let admin = server.admin_url();
    for p in ["/health", "/ready"] {
        assert_eq!(
            client()
                .get(format!("{admin}{p}"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{p}"
        );
    }
    for p in ["/status/upstream/endpoints", "/metrics"] {
        let r = client().get(format!("{admin}{p}")).send().await.unwrap();
        assert_eq!(
            error_of(r).await,
            (401, "missing authorization".into()),
            "{p}"
        );
    }
    let token = hs256_token(SECRET, json!({}));
    let r = client()
        .get(format!("{admin}/status/upstream/endpoints"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The CLI's status command takes the token.
    let out = tokio::process::Command::new(piko_tests::bin("piko-server"))
        .args(["status", "endpoints", "--server.url", &admin])
        .env("PIKO_SERVER_TOKEN", &token)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new(piko_tests::bin("piko-server"))
        .args(["status", "endpoints", "--server.url", &admin])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing authorization"));
}

#[tokio::test]
async fn jwks_over_http_rotates_keys() {
    use jsonwebtoken::jwk::{CommonParameters, Jwk, JwkSet, KeyAlgorithm};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let jwk = |kid: &str, secret: &[u8]| {
        let mut j =
            Jwk::from_encoding_key(&EncodingKey::from_secret(secret), Algorithm::HS256).unwrap();
        j.common = CommonParameters {
            key_id: Some(kid.into()),
            key_algorithm: Some(KeyAlgorithm::HS256),
            ..j.common
        };
        j
    };
    let doc = Arc::new(std::sync::Mutex::new(
        serde_json::to_vec(&JwkSet {
            keys: vec![jwk("k1", b"one")],
        })
        .unwrap(),
    ));
    // A tiny JWKS server on loopback.
    let listener = piko_tests::loopback_listener().await;
    let jwks_addr = listener.local_addr().unwrap();
    let served = doc.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = served.lock().unwrap().clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let mut config = piko_server::Config::loopback_ephemeral();
    config.grace_period = Duration::from_secs(1);
    let v = Verifier::new(VerifierSettings {
        jwks: Some(piko_server::auth::JwksSource {
            location: piko_server::auth::JwksLocation::parse(&format!(
                "http://{jwks_addr}/jwks.json"
            ))
            .unwrap(),
            cache_ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
        }),
        ..Default::default()
    })
    .unwrap();
    config.upstream.auth = PortAuth {
        default: Some(Arc::new(v)),
        tenants: Default::default(),
    };
    let server = TestServer::start_on(piko_server::Listeners::bind(&config).await.unwrap(), config);
    let token = |kid: &str, secret: &[u8]| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &json!({}), &EncodingKey::from_secret(secret)).unwrap()
    };
    let status_with = |t: String| {
        let url = format!("{}/piko/v1/upstream/x", server.upstream_url());
        async move {
            client()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // A valid token for k1 gets past auth (400: not a websocket upgrade).
    // The node loads the JWKS before it serves.
    assert_eq!(status_with(token("k1", b"one")).await, 400);
    assert_eq!(status_with(token("k2", b"two")).await, 401);
    *doc.lock().unwrap() = serde_json::to_vec(&JwkSet {
        keys: vec![jwk("k2", b"two")],
    })
    .unwrap();
    wait_until(
        "the rotated key is accepted",
        Duration::from_secs(15),
        || async { status_with(token("k2", b"two")).await == 400 },
    )
    .await;
    assert_eq!(
        status_with(token("k1", b"one")).await,
        401,
        "the retired key is refused"
    );
}

async fn tls_server(
    tweak: impl FnOnce(&mut piko_server::Config),
) -> (TestServer, TestCa, std::path::PathBuf) {
    let dir = temp_dir("tls");
    let ca = TestCa::new("piko test ca");
    let leaf = ca.issue(&dir, "server", &["localhost", "127.0.0.1"]);
    let files = TlsFiles {
        cert: leaf.cert,
        key: leaf.key,
        client_cas: None,
    };
    let server = TestServer::start_with(|c| {
        c.proxy.tls = Some(files.clone());
        c.upstream.tls = Some(files.clone());
        c.admin.tls = Some(files.clone());
        tweak(c);
    })
    .await;
    (server, ca, dir)
}

#[tokio::test]
async fn tls_on_every_port_and_a_wrong_ca_is_refused() {
    let (server, ca, _dir) = tls_server(|_| {}).await;
    let good = client_config(&ca.pem, None);
    let (status, body) = https_get(server.admin_addr, "localhost", good.clone(), "/health", &[])
        .await
        .unwrap();
    assert_eq!((status, body.trim()), (200, r#"{"status":"ok"}"#));
    let (status, body) = https_get(server.proxy_addr, "localhost", good.clone(), "/", &[])
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, _) = https_get(
        server.upstream_addr,
        "localhost",
        good,
        "/piko/v1/upstream/x",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let stranger = TestCa::new("someone else");
    let err = https_get(
        server.admin_addr,
        "localhost",
        client_config(&stranger.pem, None),
        "/health",
        &[],
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );
    // Plain HTTP to a TLS port does not get an answer.
    assert!(client()
        .get(format!("{}/health", server.admin_url()))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let dir = temp_dir("mtls");
    let clients = TestCa::new("client ca");
    let client_ca = clients.write(&dir, "clients.pem");
    let (server, ca, _dir) = tls_server(|c| {
        if let Some(t) = c.admin.tls.as_mut() {
            t.client_cas = Some(client_ca.clone());
        }
    })
    .await;
    let leaf = clients.issue(&dir, "client", &["client.local"]);
    let (status, _) = https_get(
        server.admin_addr,
        "localhost",
        client_config(&ca.pem, Some(&leaf)),
        "/health",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let err = https_get(
        server.admin_addr,
        "localhost",
        client_config(&ca.pem, None),
        "/health",
        &[],
    )
    .await
    .unwrap_err();
    assert!(!err.is_empty());
    let outsider = TestCa::new("outsider").issue(&dir, "outsider", &["x.local"]);
    assert!(https_get(
        server.admin_addr,
        "localhost",
        client_config(&ca.pem, Some(&outsider)),
        "/health",
        &[]
    )
    .await
    .is_err());
}

#[tokio::test]
async fn certificates_reload_without_a_restart() {
    let (server, _old_ca, dir) = tls_server(|_| {}).await;
    let new_ca = TestCa::new("rotated ca");
    let before = https_get(
        server.admin_addr,
        "localhost",
        client_config(&new_ca.pem, None),
        "/health",
        &[],
    )
    .await;
    assert!(
        before.is_err(),
        "the new CA does not verify the old certificate"
    );
    // Replace the files in place, as a certificate manager does.
    let fresh = new_ca.issue(&dir, "fresh", &["localhost"]);
    std::fs::copy(&fresh.key, dir.join("server.key")).unwrap();
    std::fs::copy(&fresh.cert, dir.join("server.crt")).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    for f in ["server.crt", "server.key"] {
        std::fs::File::options()
            .write(true)
            .open(dir.join(f))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    wait_until(
        "the new certificate is served",
        Duration::from_secs(10),
        || async {
            https_get(
                server.admin_addr,
                "localhost",
                client_config(&new_ca.pem, None),
                "/health",
                &[],
            )
            .await
            .is_ok()
        },
    )
    .await;
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let token = hs256_token(SECRET, json!({"piko": {"endpoints": ["quiet"]}}));
    let mut server = NodeProcess::alone()
        .with_args(&["--log.level", "trace"])
        .with_env("PIKO_UPSTREAM_AUTH_HMAC_SECRET_KEY", SECRET)
        .with_env("PIKO_PROXY_AUTH_HMAC_SECRET_KEY", SECRET);
    server.spawn().await;
    server.wait_ready().await;
    let echo = EchoUpstream::start().await;
    let agent = tokio::process::Command::new(piko_tests::bin("piko"))
        .args([
            "agent",
            "http",
            "quiet",
            &echo.target(),
            "--connect.url",
            &server.upstream(),
            // Asking for tungstenite's frame dumps by name must not bring them back.
            "--log.level",
            "trace,tungstenite::protocol=trace",
        ])
        .env("PIKO_TOKEN", &token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("{}/name", server.proxy());
    wait_until("an authenticated request goes through", Duration::from_secs(10), || async {
        matches!(client().get(&url).header("x-piko-endpoint", "quiet").header("x-piko-authorization", format!("Bearer {token}")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    // The service's own credentials pass through the tunnel but not into any access log.
    let resp = client()
        .get(&url)
        .header("x-piko-endpoint", "quiet")
        .header("x-piko-authorization", format!("Bearer {token}"))
        .header("authorization", "Bearer service-secret-xyz")
        .header("cookie", "session=cookie-secret-xyz")
        .header("x-trace-me", "visible-header")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A client that gives up before the response head: its record says 499.
    let gave_up = client()
        .get(format!("{}/slow/3000", server.proxy()))
        .header("x-piko-endpoint", "quiet")
        .header("x-piko-authorization", format!("Bearer {token}"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    // A rejected one too, so error paths log.
    let _ = client()
        .get(&url)
        .header("x-piko-endpoint", "quiet")
        .bearer_auth("not-a-valid-token")
        .send()
        .await;
    piko_tests::process::sigterm(agent.id().unwrap());
    server.terminate().await;
    let a = agent.wait_with_output().await.unwrap();
    let logs = [a.stdout, a.stderr]
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .join("\n")
        + "\n"
        + &server.log();
    assert!(logs.len() > 200, "the run logged something: {logs}");
    // The access log recorded the request, its headers, and masked the credentials.
    let record = logs
        .lines()
        .find(|l| l.contains("piko_server::proxy::access") && l.contains("visible-header"))
        .unwrap_or_else(|| panic!("no server access record with the request headers: {logs}"));
    for want in [
        "status=200",
        "method=GET",
        "path=\"/name\"",
        r#""x-piko-authorization":["***"]"#,
        r#""authorization":["***"]"#,
        r#""cookie":["***"]"#,
    ] {
        assert!(record.contains(want), "{want} missing from {record}");
    }
    assert!(
        logs.lines()
            .any(|l| l.contains("piko_server::proxy::access")
                && l.contains("path=\"/slow/3000\"")
                && l.contains("status=499")
                && l.contains("client went away")),
        "the abandoned request has a 499 record: {logs}"
    );
    // The agent's access log too, with the service's own credentials masked.
    let record = logs
        .lines()
        .find(|l| l.contains("piko_connector_core::tunnel::access") && l.contains("visible-header"))
        .unwrap_or_else(|| panic!("no agent access record with the request headers: {logs}"));
    for want in [
        "status=200",
        "path=\"/name\"",
        r#""authorization":["***"]"#,
        r#""cookie":["***"]"#,
    ] {
        assert!(record.contains(want), "{want} missing from {record}");
    }
    assert!(
        logs.lines()
            .any(|l| l.contains("piko_server::proxy::access")
                && l.contains("status=401")
                && l.contains("error=\"invalid token\"")),
        "the rejected request has a record: {logs}"
    );
    for secret in [
        token.as_str(),
        SECRET,
        "not-a-valid-token",
        "service-secret-xyz",
        "cookie-secret-xyz",
    ] {
        if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
            panic!("a secret reached the logs: {secret} in {line}");
        }
    }
    // Nor as the hex dumps some libraries log frames with.
    let hex: String = token.bytes().take(24).map(|b| format!("{b:02x}")).collect();
    assert!(!logs.contains(&hex), "the token reached the logs as hex");
    // The signature part alone must not leak either.
    let sig = token.rsplit('.').next().unwrap();
    assert!(!logs.contains(sig));
}

#[tokio::test]
async fn a_connector_registers_over_wss_with_mtls_and_a_token() {
    use piko_connector_core::config::{
        AgentConfig, ConnectConfig, EndpointConfig, TlsConfig, TransportConfig,
    };
    use piko_connector_core::transport::Connector;
    use piko_connector_core::tunnel::Agent;
    let dir = temp_dir("wss");
    let clients = TestCa::new("client ca");
    let client_ca = clients.write(&dir, "clients.pem");
    let (server, ca, _d) = tls_server(|c| {
        c.upstream.auth = hmac_auth(SECRET);
        if let Some(t) = c.upstream.tls.as_mut() {
            t.client_cas = Some(client_ca.clone());
        }
    })
    .await;
    let ca_file = ca.write(&dir, "server-ca.pem");
    let leaf = clients.issue(&dir, "agent", &["agent.local"]);
    let echo = EchoUpstream::start().await;
    let transport = TransportConfig {
        tls: TlsConfig {
            root_cas: Some(ca_file),
            cert: Some(leaf.cert),
            key: Some(leaf.key),
            insecure_skip_verify: false,
        },
        proxy_url: None,
    };
    let config = AgentConfig {
        connect: ConnectConfig {
            url: format!("https://localhost:{}", server.upstream_addr.port()),
            token: Some(piko_connector_core::Secret::new(hs256_token(
                SECRET,
                json!({}),
            ))),
            timeout: Duration::from_secs(10),
            tenant_id: None,
        },
        endpoints: vec![EndpointConfig::parse(
            "secure",
            &echo.target(),
            Protocol::Http,
            Duration::from_secs(10),
        )
        .unwrap()],
        grace_period: Duration::from_secs(1),
    };
    let agent = Agent::new(config).with_connector(Connector::new(&transport).unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    // The proxy port is TLS too: check the registration through the admin API, then a request.
    wait_until(
        "the endpoint registers over wss",
        Duration::from_secs(10),
        || async {
            let (status, body) = https_get(
                server.admin_addr,
                "localhost",
                client_config(&ca.pem, None),
                "/status/upstream/endpoints",
                &[],
            )
            .await
            .unwrap_or_default();
            status == 200 && body.contains("\"secure\":1")
        },
    )
    .await;
    let (status, body) = https_get(
        server.proxy_addr,
        "localhost",
        client_config(&ca.pem, None),
        "/name",
        &[("x-piko-endpoint", "secure")],
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "echo"));
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

#[tokio::test]
async fn the_proxy_asks_for_a_token_before_anything_else() {
    let server = TestServer::start_with(|c| c.proxy.auth = hmac_auth(SECRET)).await;
    // No endpoint named and no token: the answer is about the token, as in the original Piko.
    let r = client()
        .get(format!("{}/", server.proxy_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "missing authorization".into()));
    let token = hs256_token(SECRET, json!({}));
    let r = client()
        .get(format!("{}/", server.proxy_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (400, "missing endpoint id".into()));
}
