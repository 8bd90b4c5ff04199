//! The commands' wiring, on Tauri's mock runtime: the page's calls reach the live core and
//! come back as the view or as the core's one-line error with its field, and changes are
//! pushed as `piko://view` events.

#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use piko_connector::state::{AppState, StartOptions};
use piko_connector_core::credentials::{CredentialError, CredentialStore, MemoryStore, ServerKey};
use piko_connector_core::Secret;
use serde_json::{json, Value};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime};
use tauri::webview::InvokeRequest;
use tauri::{App, Listener, Manager, WebviewWindow, WebviewWindowBuilder};

/// A JWT-shaped token (the core checks the shape; only a server checks the signature).
const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl";

struct TestApp {
    app: App<MockRuntime>,
    window: WebviewWindow<MockRuntime>,
    dir: tempfile::TempDir,
}

impl TestApp {
    fn new() -> Self {
        Self::with_credentials(Arc::new(MemoryStore::new()))
    }

    /// An app whose tokens go to `credentials`, each call allowed 300 ms.
    fn with_credentials(credentials: Arc<dyn CredentialStore>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = StartOptions {
            settings_path: dir.path().join("settings.yaml"),
            credentials,
            credentials_fallback: None,
            credential_timeout: Duration::from_millis(300),
            logs: None,
            inspector: Default::default(),
        };
        let state = tauri::async_runtime::block_on(AppState::start(options));
        let app = mock_builder()
            .manage(state)
            .invoke_handler(piko_connector::handler!())
            .build(mock_context(noop_assets()))
            .unwrap();
        let window = WebviewWindowBuilder::new(&app, "main", Default::default())
            .build()
            .unwrap();
        Self { app, window, dir }
    }

    /// Call a command as the page does; `Err` carries the serialized error.
    fn invoke(&self, cmd: &str, args: Value) -> Result<Value, Value> {
        get_ipc_response(
            &self.window,
            InvokeRequest {
                cmd: cmd.into(),
                callback: CallbackFn(0),
                error: CallbackFn(1),
                // The origin of the app's own page (a remote origin would be refused).
                url: "tauri://localhost".parse().unwrap(),
                body: InvokeBody::Json(args),
                headers: Default::default(),
                invoke_key: tauri::test::INVOKE_KEY.to_string(),
            },
        )
        .map(|b| b.deserialize::<Value>().unwrap())
    }

    /// Sign in to a server nobody listens on (enough for everything but connecting).
    fn sign_in(&self) -> Value {
        let port = closed_port();
        self.invoke(
            "sign_in",
            json!({"url": format!("http://127.0.0.1:{port}"), "publicUrl": "http://127.0.0.1:8000", "token": TOKEN}),
        )
        .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let state = self.app.state::<AppState>();
        tauri::async_runtime::block_on(state.shutdown());
    }
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn endpoint_form(server: &str, id: &str, target: &str) -> Value {
    json!({"endpoint": {"id": id, "server": server, "target": target, "protocol": "http", "enabled": true}})
}

#[test]
fn a_fresh_app_shows_the_first_run_view() {
    let t = TestApp::new();
    let view = t.invoke("snapshot", json!({})).unwrap();
    assert_eq!(view["servers"], json!([]));
    assert_eq!(view["endpoints"], json!([]));
    assert_eq!(view["summary"], "Piko — signed out");
    assert_eq!(view["preferences"]["theme"], "system");
    assert_eq!(view["token_store"], "memory");
}

#[test]
fn a_malformed_token_is_refused_next_to_its_field_and_no_server_is_kept() {
    let t = TestApp::new();
    let err = t
        .invoke(
            "sign_in",
            json!({"url": "http://127.0.0.1:1", "publicUrl": null, "token": "not-a-token"}),
        )
        .unwrap_err();
    assert_eq!(err["field"], "token", "{err}");
    assert!(!err["message"].as_str().unwrap().is_empty());
    let view = t.invoke("snapshot", json!({})).unwrap();
    assert_eq!(
        view["servers"],
        json!([]),
        "the refused server was removed again"
    );
}

/// A keychain that never answers: locked, waiting on an unlock prompt nobody sees.
struct LockedKeychain;

impl LockedKeychain {
    fn hang() -> ! {
        loop {
            std::thread::park();
        }
    }
}

impl CredentialStore for LockedKeychain {
    fn describe(&self) -> String {
        "the OS keychain (Secret Service)".into()
    }
    fn get(&self, _: &ServerKey) -> Result<Option<Secret>, CredentialError> {
        Self::hang()
    }
    fn set(&self, _: &ServerKey, _: &Secret) -> Result<(), CredentialError> {
        Self::hang()
    }
    fn delete(&self, _: &ServerKey) -> Result<bool, CredentialError> {
        Self::hang()
    }
    fn servers(&self) -> Result<Vec<ServerKey>, CredentialError> {
        Self::hang()
    }
}

#[test]
fn a_locked_keychain_fails_sign_in_in_bounded_time_with_the_reason_for_the_page() {
    let t = TestApp::with_credentials(Arc::new(LockedKeychain));
    let began = std::time::Instant::now();
    let port = closed_port();
    let err = t
        .invoke(
            "sign_in",
            json!({"url": format!("http://127.0.0.1:{port}"), "publicUrl": null, "token": TOKEN}),
        )
        .unwrap_err();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(
        err,
        json!({
            "message": "the OS keychain (Secret Service) did not answer within 300 ms (is it locked?); unlock it and try again, or set PIKO_CREDENTIALS_STORE=file to keep tokens in a file",
            "field": null,
        })
    );
    let view = t.invoke("snapshot", json!({})).unwrap();
    assert_eq!(view["servers"], json!([]), "the new server was not kept");
}

#[test]
fn the_diagnostics_show_the_state_but_never_the_token() {
    let t = TestApp::new();
    let server = t.sign_in()["servers"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    t.invoke("add_endpoint", endpoint_form(&server, "shop", "3000"))
        .unwrap();
    let state = t.app.state::<AppState>();
    let text = piko_connector::diagnostics::report(&state, Some("2.50".into()));
    for part in [
        "Piko Connector ",
        "webview 2.50",
        "tokens in memory",
        "--- settings",
        "--- state",
        "shop -> 3000 [http]",
    ] {
        assert!(text.contains(part), "{part:?} in:\n{text}");
    }
    assert!(!text.contains(TOKEN), "the token is not in:\n{text}");
    assert!(
        !text.contains("c2lnbmF0dXJl"),
        "no part of the token in:\n{text}"
    );
}

#[test]
fn a_bad_server_url_is_refused_next_to_its_field() {
    let t = TestApp::new();
    let err = t
        .invoke(
            "sign_in",
            json!({"url": "ftp://x", "publicUrl": null, "token": TOKEN}),
        )
        .unwrap_err();
    assert_eq!(err["field"], "url", "{err}");
}

#[test]
fn signing_in_then_adding_an_endpoint_shows_it_and_saves_it_without_the_token() {
    let t = TestApp::new();
    let view = t.sign_in();
    let server = view["servers"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(view["servers"][0]["signed_in"], true);
    assert_eq!(view["servers"][0]["token_store"], "memory");

    let view = t
        .invoke("add_endpoint", endpoint_form(&server, "shop", "3000"))
        .unwrap();
    let ep = &view["endpoints"][0];
    assert_eq!(ep["id"], "shop");
    assert_eq!(ep["enabled"], true);
    // Nobody listens at the server: the endpoint is on but not serving.
    assert_eq!(ep["tone"], "warn", "{ep}");
    assert_eq!(ep["url"], "http://127.0.0.1:8000");

    let file = std::fs::read_to_string(t.dir.path().join("settings.yaml")).unwrap();
    assert!(file.contains("shop"), "{file}");
    assert!(
        !file.contains(TOKEN),
        "the token stays out of the settings file"
    );
}

#[test]
fn a_bad_endpoint_id_and_target_are_refused_next_to_their_fields() {
    let t = TestApp::new();
    let server = t.sign_in()["servers"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let err = t
        .invoke("add_endpoint", endpoint_form(&server, "bad id!", "3000"))
        .unwrap_err();
    assert_eq!(err["field"], "id", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("use letters, digits, '-', '_' or '.'"),
        "{err}"
    );
    let err = t
        .invoke("add_endpoint", endpoint_form(&server, "ok", "not a target"))
        .unwrap_err();
    assert_eq!(err["field"], "target", "{err}");
    let err = t
        .invoke("add_endpoint", endpoint_form("nowhere", "ok", "3000"))
        .unwrap_err();
    assert_eq!(err["field"], "server", "{err}");
    let view = t.invoke("snapshot", json!({})).unwrap();
    assert_eq!(view["endpoints"], json!([]), "nothing was added");
}

#[test]
fn an_endpoint_is_switched_off_edited_and_removed() {
    let t = TestApp::new();
    let server = t.sign_in()["servers"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    t.invoke("add_endpoint", endpoint_form(&server, "shop", "3000"))
        .unwrap();
    let view = t
        .invoke(
            "set_endpoint_enabled",
            json!({"id": "shop", "enabled": false}),
        )
        .unwrap();
    assert_eq!(view["endpoints"][0]["tone"], "off");
    assert_eq!(view["endpoints"][0]["state"], "off");

    let mut form = endpoint_form(&server, "shop2", "localhost:4000");
    form["id"] = json!("shop");
    let view = t.invoke("update_endpoint", form).unwrap();
    assert_eq!(view["endpoints"][0]["id"], "shop2");
    assert_eq!(view["endpoints"][0]["target"], "localhost:4000");

    let view = t.invoke("remove_endpoint", json!({"id": "shop2"})).unwrap();
    assert_eq!(view["endpoints"], json!([]));
    let err = t
        .invoke("remove_endpoint", json!({"id": "shop2"}))
        .unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("shop2"),
        "the error names the endpoint: {err}"
    );
    assert_eq!(err["field"], Value::Null);
}

#[test]
fn preferences_are_saved_and_an_unknown_theme_is_refused() {
    let t = TestApp::new();
    let prefs = json!({"start_at_login": false, "start_tunnels_on_launch": false, "notify_on_disconnect": false, "theme": "dark"});
    let view = t
        .invoke("set_preferences", json!({"preferences": prefs}))
        .unwrap();
    assert_eq!(view["preferences"], prefs);
    let file = std::fs::read_to_string(t.dir.path().join("settings.yaml")).unwrap();
    assert!(file.contains("dark"), "{file}");

    let mut bad = prefs.clone();
    bad["theme"] = json!("purple");
    let err = t
        .invoke("set_preferences", json!({"preferences": bad}))
        .unwrap_err();
    assert_eq!(err["field"], "theme", "{err}");
}

#[test]
fn testing_a_local_target_says_whether_it_answers() {
    let t = TestApp::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ok = t
        .invoke(
            "test_target",
            json!({"target": addr.to_string(), "protocol": "tcp"}),
        )
        .unwrap();
    assert!(ok.as_str().unwrap().contains("accepts connections"), "{ok}");
    drop(listener);
    let err = t
        .invoke(
            "test_target",
            json!({"target": addr.to_string(), "protocol": "http"}),
        )
        .unwrap_err();
    assert_eq!(err["field"], "target");
    assert!(
        err["message"].as_str().unwrap().contains("nothing answers"),
        "{err}"
    );
    let err = t
        .invoke("test_target", json!({"target": "", "protocol": "http"}))
        .unwrap_err();
    assert_eq!(err["field"], "target", "{err}");
}

#[test]
fn the_log_view_says_when_logging_is_not_set_up() {
    let t = TestApp::new();
    let err = t.invoke("logs_tail", json!({"limit": 10})).unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("logging"),
        "{err}"
    );
}

#[test]
fn changes_are_pushed_to_the_page_as_view_events() {
    let t = TestApp::new();
    piko_connector::events::forward(t.app.handle());
    let (tx, rx) = mpsc::channel::<Value>();
    t.app
        .listen_any(piko_connector::events::VIEW_EVENT, move |e| {
            let _ = tx.send(serde_json::from_str(e.payload()).unwrap());
        });
    let server = t.sign_in()["servers"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    t.invoke("add_endpoint", endpoint_form(&server, "pushed", "3000"))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let view = rx
            .recv_timeout(left)
            .expect("a piko://view event naming the new endpoint within 10 s");
        if view["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "pushed")
        {
            break;
        }
    }
}

#[test]
fn the_inspector_starts_empty_and_names_a_request_it_does_not_have() {
    let t = TestApp::new();
    assert_eq!(t.invoke("inspector_list", json!({})).unwrap(), json!([]));
    let err = t.invoke("inspector_get", json!({"id": 42})).unwrap_err();
    assert!(
        err["message"].as_str().unwrap().contains("request 42"),
        "{err}"
    );
    let err = t
        .invoke("inspector_replay", json!({"id": 42, "edit": null}))
        .unwrap_err();
    assert!(err["message"].as_str().unwrap().contains("42"), "{err}");
}
