//! The core's rules, against a server that refuses connections (tunnels then retry) and an
//! in-memory credential store. Serving real traffic is tested in `tests/tests/live.rs`.

use std::sync::Arc;
use std::time::Duration;

use piko_protocol::EndpointId;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{Protocol, TlsConfig};
use crate::credentials::MemoryStore;
use crate::status::TunnelState;

/// `{"alg":"HS256","typ":"JWT"}.{"sub":"x"}.signature`
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlY3JldA";

struct Fixture {
    dir: tempfile::TempDir,
    credentials: Arc<MemoryStore>,
    refused_url: String,
}

impl Fixture {
    fn new() -> Self {
        // A port nothing listens on: dials are refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            dir: tempfile::tempdir().unwrap(),
            credentials: Arc::new(MemoryStore::new()),
            refused_url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("settings.yaml")
    }

    async fn start(&self) -> (Core, CancellationToken) {
        let shutdown = CancellationToken::new();
        let mut options = CoreOptions::new(self.path(), self.credentials.clone());
        options.grace_period = Duration::from_millis(100);
        (Core::start(options, shutdown.clone()).await, shutdown)
    }

    fn server(&self, name: &str) -> ServerSettings {
        ServerSettings {
            name: name.into(),
            url: self.refused_url.clone(),
            public_url: Some("https://{endpoint}.piko.example.com".into()),
            tls: TlsConfig::default(),
            proxy_url: None,
        }
    }
}

fn ep(id: &str, server: &str, target: &str) -> EndpointSettings {
    EndpointSettings {
        id: EndpointId::new(id).unwrap(),
        server: server.into(),
        target: target.into(),
        protocol: Protocol::Http,
        enabled: true,
    }
}

fn id(s: &str) -> EndpointId {
    EndpointId::new(s).unwrap()
}

/// Wait for an event about endpoint `id` matching `pred`.
async fn endpoint_event(
    events: &mut broadcast::Receiver<CoreEvent>,
    id: &str,
    what: &str,
    pred: impl Fn(&EndpointView) -> bool,
) -> EndpointView {
    let fut = async {
        loop {
            match events.recv().await {
                Ok(CoreEvent::Endpoint(v)) if v.id.as_str() == id && pred(&v) => return v,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events closed while waiting for {what}: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn changes_are_saved_and_refusals_say_why() {
    let f = Fixture::new();
    let (core, shutdown) = f.start().await;
    let s = core.snapshot();
    assert!(s.servers.is_empty() && s.endpoints.is_empty() && s.settings_error.is_none());

    let err = core
        .add_endpoint(ep("shop", "local", "3000"))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("server"), "{err}");
    core.upsert_server(f.server("local")).await.unwrap();
    core.add_endpoint(ep("shop", "local", "3000"))
        .await
        .unwrap();
    let err = core
        .add_endpoint(ep("shop", "local", "3001"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::Duplicate(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "endpoint shop exists already; choose another id or edit it"
    );
    let err = core
        .add_endpoint(ep("api", "local", "nope"))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("target"), "{err}");
    let err = core
        .update_endpoint(&id("nope"), ep("nope", "local", "1"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no endpoint nope");
    let err = core.remove_server("local").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "server local still has endpoints shop; remove them or move them to another server first"
    );
    let err = core.remove_server("elsewhere").await.unwrap_err();
    assert!(matches!(err, CoreError::NotFound(_)), "{err}");
    let mut bad = f.server("bad");
    bad.tls.root_cas = Some(f.dir.path().join("missing-ca.pem"));
    let err = core.upsert_server(bad).await.unwrap_err();
    assert_eq!(err.field(), Some("tls"), "{err}");
    assert!(err.to_string().starts_with("tls.root_cas: "), "{err}");
    assert!(
        core.snapshot().server("bad").is_none(),
        "a refused server is not saved"
    );

    // Renaming an endpoint keeps its place.
    core.add_endpoint(ep("api", "local", "4000")).await.unwrap();
    core.update_endpoint(&id("shop"), ep("store", "local", "3000"))
        .await
        .unwrap();
    let ids: Vec<String> = core
        .snapshot()
        .endpoints
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(ids, ["store", "api"]);
    core.remove_endpoint(&id("api")).await.unwrap();

    // What was saved is what a new core starts with.
    shutdown.cancel();
    core.closed().await;
    let saved = Settings::from_yaml(&std::fs::read_to_string(f.path()).unwrap()).unwrap();
    assert_eq!(saved, core.settings());
    let (again, _s) = f.start().await;
    assert_eq!(again.settings(), saved);
    assert_eq!(again.snapshot().endpoints[0].id.as_str(), "store");
    assert!(matches!(
        core.add_endpoint(ep("late", "local", "1")).await,
        Err(CoreError::ShuttingDown)
    ));
}

#[tokio::test]
async fn signing_in_keeps_the_token_in_the_credential_store_only() {
    let f = Fixture::new();
    let (core, _shutdown) = f.start().await;
    core.upsert_server(f.server("local")).await.unwrap();
    core.add_endpoint(ep("shop", "local", "3000"))
        .await
        .unwrap();
    let s = core.snapshot();
    assert!(!s.servers[0].signed_in);
    assert_eq!(s.servers[0].token_store, "memory");

    let err = core
        .sign_in("local", Secret::new("not a jwt".into()))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("token"), "{err}");
    assert!(
        !err.to_string().contains("not a jwt"),
        "the token is not echoed: {err}"
    );
    let err = core
        .sign_in("nowhere", Secret::new(JWT.into()))
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::NotFound(_)), "{err}");

    core.sign_in("local", Secret::new(format!(" {JWT}\n")))
        .await
        .unwrap();
    assert!(core.snapshot().servers[0].signed_in);
    let key = ServerKey::parse(&f.refused_url).unwrap();
    assert_eq!(f.credentials.get(&key).unwrap().unwrap().expose(), JWT);
    let text = std::fs::read_to_string(f.path()).unwrap();
    assert!(text.contains("shop"), "{text}");
    assert!(
        !text.contains("c2lnbmF0dXJl"),
        "no token in the settings file:\n{text}"
    );
    let good = std::fs::read_to_string(f.dir.path().join("settings.yaml.good")).unwrap();
    assert!(!good.contains("c2lnbmF0dXJl"));

    core.sign_out("local").await.unwrap();
    assert!(!core.snapshot().servers[0].signed_in);
    assert!(f.credentials.get(&key).unwrap().is_none());
}

/// A locked keychain (a store whose calls hang, as the Secret Service's do while it waits on
/// an unlock prompt) fails sign-in within the time limit with a line saying why, and a core
/// started with it comes up within the limit too, its server saying why it cannot connect.
#[tokio::test]
async fn a_locked_keychain_fails_in_bounded_time_and_says_why() {
    let f = Fixture::new();
    let keychain = crate::credentials::HangingStore::new();
    let limit = Duration::from_millis(300);
    let start = |keychain: Arc<crate::credentials::HangingStore>| {
        let mut options = CoreOptions::new(f.path(), keychain);
        options.credential_timeout = limit;
        options.grace_period = Duration::from_millis(100);
        let shutdown = CancellationToken::new();
        async move { (Core::start(options, shutdown.clone()).await, shutdown) }
    };
    let (core, shutdown) = start(keychain.clone()).await;
    core.upsert_server(f.server("local")).await.unwrap();
    core.add_endpoint(ep("shop", "local", "3000"))
        .await
        .unwrap();

    keychain.hold();
    let began = std::time::Instant::now();
    let err = core
        .sign_in("local", Secret::new(JWT.into()))
        .await
        .unwrap_err();
    let took = began.elapsed();
    assert!(took >= limit && took < Duration::from_secs(3), "{took:?}");
    assert!(
        matches!(
            err,
            CoreError::Credentials(crate::credentials::CredentialError::Timeout { .. })
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the test keychain did not answer within 300 ms (is it locked?); unlock it and try \
         again, or set PIKO_CREDENTIALS_STORE=file to keep tokens in a file"
    );
    assert_eq!(err.field(), None);
    assert!(!core.snapshot().servers[0].signed_in);
    shutdown.cancel();
    core.closed().await;

    // Launching with the keychain still locked: the core starts within the limit (reading
    // the token times out) and the server and its endpoint say why.
    let began = std::time::Instant::now();
    let (core, shutdown) = start(keychain.clone()).await;
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    let s = core.snapshot();
    let why = s.servers[0].error.clone().unwrap_or_default();
    assert!(
        why.starts_with("cannot read the token: the test keychain did not answer within 300 ms"),
        "{why}"
    );
    let shop = s.endpoint("shop").unwrap();
    assert!(
        shop.last_error
            .as_deref()
            .is_some_and(|e| e.contains("(is it locked?)")),
        "{shop:?}"
    );
    keychain.release();
    shutdown.cancel();
    core.closed().await;
}

/// Wait (bounded) for a snapshot event in which server `name` is signed in.
async fn signed_in_event(
    events: &mut tokio::sync::broadcast::Receiver<CoreEvent>,
    name: &str,
) -> Snapshot {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(CoreEvent::Snapshot(s)) if s.server(name).is_some_and(|v| v.signed_in) => {
                    return s;
                }
                Ok(_) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} never showed as signed in"))
}

/// A keychain call that timed out and lands later (the user unlocked the keychain after all)
/// is shown without another try: a sign-in that timed out turns the server signed in, and a
/// core launched with the keychain locked reads the token once it is unlocked.
#[tokio::test]
async fn a_keychain_answer_after_the_timeout_is_applied() {
    let f = Fixture::new();
    let keychain = crate::credentials::HangingStore::new();
    let limit = Duration::from_millis(300);
    let start = |keychain: Arc<crate::credentials::HangingStore>| {
        let mut options = CoreOptions::new(f.path(), keychain);
        options.credential_timeout = limit;
        options.grace_period = Duration::from_millis(100);
        let shutdown = CancellationToken::new();
        async move { (Core::start(options, shutdown.clone()).await, shutdown) }
    };
    let (core, shutdown) = start(keychain.clone()).await;
    core.upsert_server(f.server("local")).await.unwrap();
    let mut events = core.subscribe();

    keychain.hold();
    let err = core
        .sign_in("local", Secret::new(JWT.into()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CoreError::Credentials(crate::credentials::CredentialError::Timeout { .. })
        ),
        "{err:?}"
    );
    assert!(!core.snapshot().servers[0].signed_in);
    keychain.release();
    signed_in_event(&mut events, "local").await;
    assert!(core.snapshot().servers[0].signed_in);
    shutdown.cancel();
    core.closed().await;

    // Launched while locked: the read times out and the server says why; unlocked, it is read
    // again and the error goes.
    keychain.hold();
    let (core, shutdown) = start(keychain.clone()).await;
    let s = core.snapshot();
    assert!(!s.servers[0].signed_in);
    assert!(s.servers[0].error.is_some(), "{s:?}");
    let mut events = core.subscribe();
    keychain.release();
    let s = signed_in_event(&mut events, "local").await;
    assert_eq!(s.servers[0].error, None, "{s:?}");
    shutdown.cancel();
    core.closed().await;
}

#[tokio::test]
async fn a_bad_hand_edit_starts_with_the_last_good_state_and_a_banner() {
    let f = Fixture::new();
    {
        let (core, shutdown) = f.start().await;
        core.upsert_server(f.server("local")).await.unwrap();
        core.add_endpoint(ep("shop", "local", "3000"))
            .await
            .unwrap();
        shutdown.cancel();
        core.closed().await;
    }
    let text = std::fs::read_to_string(f.path()).unwrap();
    let bad = text.replace("target: '3000'", "target: '3000'\n  colour: red");
    assert_ne!(bad, text, "the edit applies:\n{text}");
    std::fs::write(f.path(), &bad).unwrap();

    let (core, _shutdown) = f.start().await;
    let s = core.snapshot();
    let banner = s.settings_error.expect("a banner");
    assert!(
        banner.contains("endpoints[0].colour: unknown field `colour`"),
        "{banner}"
    );
    assert!(banner.contains("line "), "{banner}");
    assert!(
        banner.ends_with("running with the last good settings until you save"),
        "{banner}"
    );
    assert_eq!(s.endpoints.len(), 1, "the last good endpoints");
    assert_eq!(
        std::fs::read_to_string(f.path()).unwrap(),
        bad,
        "not overwritten on start"
    );

    // A save replaces the bad file, keeps it aside, and clears the banner.
    core.add_endpoint(ep("api", "local", "4000")).await.unwrap();
    assert!(core.snapshot().settings_error.is_none());
    let rejected = std::fs::read_to_string(f.dir.path().join("settings.yaml.rejected")).unwrap();
    assert_eq!(rejected, bad);

    // A bad edit while running: reload reports it and changes nothing.
    std::fs::write(f.path(), "endpoints: {\n").unwrap();
    let err = core.reload().await.unwrap_err();
    assert!(err.to_string().contains("line "), "{err}");
    let s = core.snapshot();
    assert_eq!(s.endpoints.len(), 2);
    assert!(s.settings_error.is_some());
}

#[tokio::test]
async fn endpoints_show_their_live_state_and_stop_when_disabled() {
    let f = Fixture::new();
    let (core, shutdown) = f.start().await;
    let mut events = core.subscribe();
    core.upsert_server(f.server("local")).await.unwrap();
    core.add_endpoint(ep("shop", "local", "3000"))
        .await
        .unwrap();
    let v = endpoint_event(&mut events, "shop", "a refused dial", |v| {
        matches!(v.state, TunnelState::Reconnecting { .. })
    })
    .await;
    assert_eq!(v.last_error.as_deref(), Some("connection refused"));
    assert!(
        v.retry_in.is_some_and(|d| d <= Duration::from_secs(1)),
        "{v:?}"
    );
    // The wall-clock deadline (for a page's countdown) is the same moment as `retry_in`.
    let due = v.retry_at.expect("a deadline while reconnecting");
    let wall_left = due
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        wall_left <= v.retry_in.unwrap() + Duration::from_millis(50),
        "{wall_left:?} vs {v:?}"
    );
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["retry_at_ms"], super::view::epoch_millis(due));
    assert_eq!(
        v.public_url.as_deref(),
        Some("https://shop.piko.example.com")
    );

    core.set_enabled(&id("shop"), false).await.unwrap();
    let v = core.snapshot().endpoints[0].clone();
    assert!(!v.enabled);
    assert_eq!(v.state, TunnelState::Stopped { reason: None });
    assert_eq!((v.last_error, v.retry_in, v.retry_at), (None, None, None));
    // The stopped tunnel's own last words do not overwrite the state.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        core.snapshot().endpoints[0].state,
        TunnelState::Stopped { reason: None }
    );

    core.set_enabled(&id("shop"), true).await.unwrap();
    assert_eq!(core.snapshot().endpoints[0].state, TunnelState::Connecting);
    endpoint_event(&mut events, "shop", "retrying again", |v| {
        matches!(v.state, TunnelState::Reconnecting { .. })
    })
    .await;
    let err = core.set_enabled(&id("nope"), true).await.unwrap_err();
    assert!(matches!(err, CoreError::NotFound(_)));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), core.closed())
        .await
        .expect("every tunnel stops on shutdown");
    assert_eq!(
        core.snapshot().endpoints[0].state,
        TunnelState::Stopped { reason: None }
    );
}

#[tokio::test]
async fn start_tunnels_on_launch_off_starts_every_endpoint_off() {
    let f = Fixture::new();
    {
        let (core, shutdown) = f.start().await;
        core.upsert_server(f.server("local")).await.unwrap();
        core.add_endpoint(ep("shop", "local", "3000"))
            .await
            .unwrap();
        core.set_preferences(Preferences {
            start_tunnels_on_launch: false,
            ..Preferences::default()
        })
        .await
        .unwrap();
        shutdown.cancel();
        core.closed().await;
    }
    let (core, _shutdown) = f.start().await;
    let v = &core.snapshot().endpoints[0];
    assert!(!v.enabled);
    assert_eq!(v.state, TunnelState::Stopped { reason: None });
    assert!(
        std::fs::read_to_string(f.path())
            .unwrap()
            .contains("enabled: true"),
        "the file keeps the user's choice"
    );
}

#[tokio::test]
async fn snapshots_and_events_serialize_for_the_page() {
    let f = Fixture::new();
    let (core, _shutdown) = f.start().await;
    core.upsert_server(f.server("local")).await.unwrap();
    let mut disabled = ep("shop", "local", "3000");
    disabled.enabled = false;
    core.add_endpoint(disabled).await.unwrap();
    let json = serde_json::to_value(CoreEvent::Snapshot(core.snapshot())).unwrap();
    assert_eq!(json["type"], "snapshot");
    let e = &json["data"]["endpoints"][0];
    assert_eq!(e["id"], "shop");
    assert_eq!(e["protocol"], "http");
    assert_eq!(
        e["state"],
        serde_json::json!({"state": "stopped", "reason": null})
    );
    assert_eq!(e["retry_in_ms"], serde_json::Value::Null);
    assert_eq!(e["retry_at_ms"], serde_json::Value::Null);
    assert_eq!(json["data"]["servers"][0]["signed_in"], false);
    assert_eq!(json["data"]["preferences"]["theme"], "system");
    let reconnecting = serde_json::to_value(TunnelState::Reconnecting {
        delay: Duration::from_millis(1600),
        error: "connection refused".into(),
    })
    .unwrap();
    assert_eq!(
        reconnecting,
        serde_json::json!({"state": "reconnecting", "delay_ms": 1600, "error": "connection refused"})
    );
}
