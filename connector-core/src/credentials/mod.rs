//! Credentials: tokens (JWTs) per server, kept out of config files and logs.
//!
//! A token is held in a [`Secret`] (its `Debug` prints `***`). Stored tokens live behind the
//! [`CredentialStore`] seam, keyed by the server's origin ([`ServerKey`]):
//! - [`KeyringStore`]: the OS keychain (macOS Keychain, Windows Credential Manager, the Linux
//!   Secret Service), through the `keyring` crate;
//! - [`FileStore`]: one JSON file with mode 0600 in the config dir, for headless machines
//!   without a Secret Service (a Raspberry Pi);
//! - [`MemoryStore`]: for tests.
//!
//! [`BoundedStore`] wraps any of them so that every call answers within a time limit (a
//! locked keychain can wait on an unlock prompt forever); the live core uses it.
//!
//! [`default_store`] picks the keychain when one answers, else the file, and says which.
//! [`resolve_token`] applies the order the agent uses: `--connect.token`, `PIKO_TOKEN`, the
//! stored token.

mod bounded;
mod file;
mod keychain;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;

#[cfg(test)]
pub(crate) use self::bounded::hanging::HangingStore;
pub use self::bounded::{BoundedStore, LateAnswer, LateCall, DEFAULT_TIMEOUT};
pub use self::file::FileStore;
pub use self::keychain::KeyringStore;
use crate::config::ConfigError;

/// Environment variable choosing the credential store: `auto` (default), `keychain` or `file`.
pub const STORE_ENV: &str = "PIKO_CREDENTIALS_STORE";
/// Environment variable holding a token; wins over a stored one.
pub const TOKEN_ENV: &str = "PIKO_TOKEN";

/// Modules whose trace output must never be shown: at trace level tungstenite logs the whole
/// upgrade request (`Authorization` included) and every message it receives, which are the
/// proxied requests with their own credentials.
pub const LOG_REDACTED_TARGETS: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// Levels from the quietest, as `EnvFilter` names them.
const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// A user's log filter (`info`, `debug,hyper=trace`, ...) made safe: directives of its own
/// for tungstenite's modules are dropped, since a more specific one
/// (`tungstenite::protocol=trace`) would win; then tungstenite gets the user's default level,
/// but never more than `debug`. Capping rather than setting `debug` matters: a plain
/// `tungstenite=debug` would *raise* it above a default of `info` and print its chatter.
pub fn redacted_log_filter(user: &str) -> String {
    let mut parts: Vec<&str> = user
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| !LOG_REDACTED_TARGETS.iter().any(|t| d.starts_with(t)))
        .collect();
    // The default is the last directive that is a bare level; with none, EnvFilter shows
    // errors only.
    let default = parts
        .iter()
        .rev()
        .find_map(|d| {
            let d = d.to_ascii_lowercase();
            LEVELS.iter().position(|l| *l == d)
        })
        .unwrap_or(1);
    let level = LEVELS[default.min(4)];
    let capped: Vec<String> = LOG_REDACTED_TARGETS
        .iter()
        .map(|t| format!("{t}={level}"))
        .collect();
    parts.extend(capped.iter().map(String::as_str));
    parts.join(",")
}

/// A secret string (a JWT). `Debug` and `Display` print `***`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The server a token belongs to: the origin of its URL (`https://piko.example.com`,
/// `http://10.0.0.1:8001`). `ws(s)://` counts as `http(s)://` and any path is ignored, so
/// `piko login --server` and `--connect.url` agree however the URL is written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerKey(String);

impl ServerKey {
    /// The key of a server URL.
    pub fn parse(server_url: &str) -> Result<Self, CredentialError> {
        let bad = |reason: &str| CredentialError::InvalidServer {
            url: server_url.to_string(),
            reason: reason.to_string(),
        };
        let s = server_url.trim();
        let s = if let Some(rest) = s.strip_prefix("ws://") {
            format!("http://{rest}")
        } else if let Some(rest) = s.strip_prefix("wss://") {
            format!("https://{rest}")
        } else {
            s.to_string()
        };
        if !s.contains("://") {
            return Err(bad("expected a URL such as https://piko.example.com"));
        }
        let url = url::Url::parse(&s).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("expected an http:// or https:// URL"));
        }
        if url.host().is_none() {
            return Err(bad("the URL has no host"));
        }
        Ok(Self(url.origin().ascii_serialization()))
    }

    /// The origin, as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a credential operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The server URL cannot key a credential.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidServer {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The token is not shaped like a JWT.
    #[error("the token does not look like a JWT ({0}); give the token your Piko operator issued, three base64url parts separated by dots")]
    NotAJwt(String),
    /// The store failed (keychain locked or unreachable, file unreadable).
    #[error("{store}: {message}")]
    Store {
        /// Which store (`the OS keychain (Secret Service)`, a path).
        store: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// The store did not answer in time: a locked keychain waiting on an unlock prompt.
    #[error("{store} did not answer within {} (is it locked?); unlock it and try again, or set {STORE_ENV}=file to keep tokens in a file", Wait(*.after))]
    Timeout {
        /// Which store.
        store: String,
        /// How long it was given.
        after: Duration,
    },
    /// `PIKO_CREDENTIALS_STORE` asked for something unknown or unavailable.
    #[error("{STORE_ENV}: {0}")]
    Choice(String),
    /// The config directory is unknown.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A wait for people: `5 s`, `300 ms`.
struct Wait(Duration);

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_millis() == 0 && self.0.as_secs() > 0 {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{} ms", self.0.as_millis())
        }
    }
}

/// Where tokens are kept, keyed by server. Implementations block (keychains are synchronous
/// IPC): call them from `spawn_blocking` inside async code.
pub trait CredentialStore: Send + Sync {
    /// Where tokens go, for people: `the OS keychain (Secret Service)`,
    /// `/home/pi/.config/piko/credentials.json (mode 0600)`.
    fn describe(&self) -> String;
    /// The token stored for `server`, if any.
    fn get(&self, server: &ServerKey) -> Result<Option<Secret>, CredentialError>;
    /// Store `token` for `server`, replacing any other.
    fn set(&self, server: &ServerKey, token: &Secret) -> Result<(), CredentialError>;
    /// Remove the token of `server`; `false` if there was none.
    fn delete(&self, server: &ServerKey) -> Result<bool, CredentialError>;
    /// The servers with a stored token.
    fn servers(&self) -> Result<Vec<ServerKey>, CredentialError>;
}

/// Tokens in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<BTreeMap<ServerKey, Secret>>);

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServerKey, Secret>> {
        // A panic while holding the lock cannot leave the map half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CredentialStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn get(&self, server: &ServerKey) -> Result<Option<Secret>, CredentialError> {
        Ok(self.map().get(server).cloned())
    }
    fn set(&self, server: &ServerKey, token: &Secret) -> Result<(), CredentialError> {
        self.map().insert(server.clone(), token.clone());
        Ok(())
    }
    fn delete(&self, server: &ServerKey) -> Result<bool, CredentialError> {
        Ok(self.map().remove(server).is_some())
    }
    fn servers(&self) -> Result<Vec<ServerKey>, CredentialError> {
        Ok(self.map().keys().cloned().collect())
    }
}

/// The store [`default_store`] picked, and why when it is not the keychain.
pub struct SelectedStore {
    /// The store.
    pub store: Box<dyn CredentialStore>,
    /// Set when the file store stands in for a keychain that did not answer: why
    /// (`no Secret Service found (...)`).
    pub fallback: Option<String>,
}

impl SelectedStore {
    /// The same store with every call bounded by `timeout` (see [`BoundedStore`]), for
    /// callers with no core of their own to do it: `piko login`, the CLI agent.
    pub fn bounded(self, timeout: Duration) -> Self {
        Self {
            store: Box::new(BoundedStore::new(std::sync::Arc::from(self.store), timeout)),
            fallback: self.fallback,
        }
    }

    /// One line saying where `server`'s token was stored, for `piko login`:
    /// `token for https://x stored in the OS keychain (Secret Service)`, or with the reason
    /// the keychain was not used first.
    pub fn stored_line(&self, server: &ServerKey) -> String {
        let stored = format!("token for {server} stored in {}", self.store.describe());
        match &self.fallback {
            None => stored,
            Some(why) => format!("{why}; {stored}"),
        }
    }

    /// One line naming the store, for `piko status`.
    pub fn describe_line(&self) -> String {
        match &self.fallback {
            None => format!("tokens are kept in {}", self.store.describe()),
            Some(why) => format!("{why}; tokens are kept in {}", self.store.describe()),
        }
    }
}

/// How long to wait for the keychain to answer before falling back to the file store.
const KEYCHAIN_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The credential store to use: `PIKO_CREDENTIALS_STORE=keychain|file` forces one; otherwise
/// the OS keychain when it answers, else the token file in the config dir.
pub fn default_store() -> Result<SelectedStore, CredentialError> {
    let dir = crate::config::config_dir()?;
    let choice = std::env::var(STORE_ENV).unwrap_or_default();
    let file = || FileStore::new(dir.join(file::FILE_NAME));
    let keychain = || KeyringStore::new(Some(dir.join(keychain::INDEX_NAME)));
    match choice.trim() {
        "file" => Ok(SelectedStore {
            store: Box::new(file()),
            fallback: None,
        }),
        "keychain" => match KeyringStore::probe(KEYCHAIN_PROBE_TIMEOUT) {
            Ok(()) => Ok(SelectedStore {
                store: Box::new(keychain()),
                fallback: None,
            }),
            Err(why) => Err(CredentialError::Choice(format!(
                "keychain was asked for but {why}; unset {STORE_ENV} to fall back to a token file"
            ))),
        },
        "" | "auto" => match KeyringStore::probe(KEYCHAIN_PROBE_TIMEOUT) {
            Ok(()) => Ok(SelectedStore {
                store: Box::new(keychain()),
                fallback: None,
            }),
            Err(why) => Ok(SelectedStore {
                store: Box::new(file()),
                fallback: Some(why),
            }),
        },
        other => Err(CredentialError::Choice(format!(
            "{other:?} is not a store; use auto, keychain or file"
        ))),
    }
}

/// Check that `token` is shaped like a JWT: three base64url parts, the first a JSON object
/// with an `alg`. Nothing is verified: only the server can.
pub fn check_jwt_shape(token: &str) -> Result<(), CredentialError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(CredentialError::NotAJwt(format!(
            "{} part{} instead of 3",
            parts.len(),
            if parts.len() == 1 { "" } else { "s" }
        )));
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for (i, part) in parts.iter().enumerate() {
        let name = ["header", "payload", "signature"][i];
        if part.is_empty() {
            return Err(CredentialError::NotAJwt(format!("the {name} is empty")));
        }
        if b64.decode(part.trim_end_matches('=')).is_err() {
            return Err(CredentialError::NotAJwt(format!(
                "the {name} is not base64url"
            )));
        }
    }
    let header = b64
        .decode(parts[0].trim_end_matches('='))
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok());
    match header {
        Some(h) if h.get("alg").is_some_and(|a| a.is_string()) => Ok(()),
        _ => Err(CredentialError::NotAJwt(
            "the header is not a JSON object with \"alg\"".into(),
        )),
    }
}

/// Where the token the agent uses came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--connect.token`.
    Flag,
    /// `PIKO_TOKEN`.
    Env,
    /// A credential store (its description).
    Stored(String),
    /// No token anywhere.
    None,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Flag => f.write_str("--connect.token"),
            TokenSource::Env => f.write_str(TOKEN_ENV),
            TokenSource::Stored(where_) => f.write_str(where_),
            TokenSource::None => f.write_str("none"),
        }
    }
}

/// The token to use for `server_url`: `flag` (`--connect.token`), else `env` (`PIKO_TOKEN`),
/// else the one `store` holds for the server. `store` is only opened when needed; a store
/// that fails is reported as the error so the caller can say so and go on without a token.
pub fn resolve_token(
    flag: Option<String>,
    env: Option<String>,
    server_url: &str,
    store: impl FnOnce() -> Result<SelectedStore, CredentialError>,
) -> Result<(Option<Secret>, TokenSource), CredentialError> {
    if let Some(t) = flag.filter(|t| !t.trim().is_empty()) {
        return Ok((Some(Secret::new(t.trim().to_string())), TokenSource::Flag));
    }
    if let Some(t) = env.filter(|t| !t.trim().is_empty()) {
        return Ok((Some(Secret::new(t.trim().to_string())), TokenSource::Env));
    }
    let key = ServerKey::parse(server_url)?;
    let selected = store()?;
    Ok(match selected.store.get(&key)? {
        Some(t) => (Some(t), TokenSource::Stored(selected.store.describe())),
        None => (None, TokenSource::None),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_filters_cannot_reopen_tungstenite_dumps() {
        assert_eq!(
            super::redacted_log_filter("trace"),
            "trace,tungstenite=debug,tokio_tungstenite=debug"
        );
        assert_eq!(
            super::redacted_log_filter(
                "info, tungstenite::protocol=trace,hyper=debug,tokio_tungstenite=trace"
            ),
            "info,hyper=debug,tungstenite=info,tokio_tungstenite=info"
        );
    }

    #[test]
    fn log_filters_never_raise_tungstenite_above_the_default() {
        for (user, want) in [
            ("info", "info"),
            ("warn", "warn"),
            ("WARN", "warn"),
            ("debug", "debug"),
            ("off", "off"),
            ("piko=trace", "error"),
            ("trace,warn", "warn"),
        ] {
            let got = super::redacted_log_filter(user);
            assert!(
                got.ends_with(&format!("tungstenite={want},tokio_tungstenite={want}")),
                "{user}: {got}"
            );
        }
    }

    use super::*;

    /// A JWT-shaped token: `{"alg":"HS256","typ":"JWT"}.{"sub":"x"}.sig`.
    pub(crate) const JWT: &str =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("eyJhbGciOi.secret".to_string());
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "eyJhbGciOi.secret");
    }

    #[test]
    fn server_keys_are_origins() {
        let same = [
            "https://piko.example.com",
            "https://piko.example.com/",
            "https://PIKO.example.com:443/base",
            "wss://piko.example.com",
        ];
        for url in same {
            assert_eq!(
                ServerKey::parse(url).unwrap().as_str(),
                "https://piko.example.com",
                "{url}"
            );
        }
        assert_eq!(
            ServerKey::parse("ws://127.0.0.1:8001/").unwrap().as_str(),
            "http://127.0.0.1:8001"
        );
        assert_eq!(
            ServerKey::parse("http://[::1]:8001").unwrap().as_str(),
            "http://[::1]:8001"
        );
        let bad = [
            ("piko.example.com", "expected a URL such as"),
            ("ftp://x", "expected an http:// or https:// URL"),
            ("http://", "invalid server URL \"http://\": "),
        ];
        for (url, want) in bad {
            let e = ServerKey::parse(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn jwt_shapes() {
        check_jwt_shape(JWT).unwrap();
        let bad = [
            ("not-a-token", "1 part instead of 3"),
            ("a.b", "2 parts instead of 3"),
            ("a.b.c.d", "4 parts instead of 3"),
            ("eyJhbGciOiJIUzI1NiJ9..sig", "the payload is empty"),
            (
                "eyJhbGciOiJIUzI1NiJ9.a b.sig",
                "the payload is not base64url",
            ),
            (
                "aGVsbG8.eyJzdWIiOiJ4In0.sig",
                "the header is not a JSON object",
            ),
            (
                "e30.e30.sig",
                "the header is not a JSON object with \"alg\"",
            ),
        ];
        for (token, want) in bad {
            let e = check_jwt_shape(token).unwrap_err().to_string();
            assert!(e.starts_with("the token does not look like a JWT ("), "{e}");
            assert!(e.contains(want), "{token}: {e}");
            assert!(
                !e.contains(token) || token.len() < 4,
                "never echo the token: {e}"
            );
        }
    }

    /// The seam: everything the CLI does goes through the trait; the memory store shows the
    /// contract every store keeps.
    #[test]
    fn memory_store_contract() {
        store_contract(&MemoryStore::new());
    }

    /// The contract of a [`CredentialStore`], run against each implementation.
    pub(crate) fn store_contract(store: &dyn CredentialStore) {
        let a = ServerKey::parse("https://a.example.com").unwrap();
        let b = ServerKey::parse("http://b.example.com:8001").unwrap();
        assert_eq!(store.get(&a).unwrap(), None);
        assert!(!store.delete(&a).unwrap());
        store.set(&a, &Secret::new(JWT.into())).unwrap();
        store.set(&b, &Secret::new("b-token".into())).unwrap();
        assert_eq!(store.get(&a).unwrap().unwrap().expose(), JWT);
        store.set(&a, &Secret::new("a-token-2".into())).unwrap();
        assert_eq!(store.get(&a).unwrap().unwrap().expose(), "a-token-2");
        let mut servers = store.servers().unwrap();
        servers.sort();
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        assert_eq!(servers, want);
        assert!(store.delete(&a).unwrap());
        assert_eq!(store.get(&a).unwrap(), None);
        assert_eq!(store.servers().unwrap(), vec![b.clone()]);
        assert!(store.delete(&b).unwrap());
        assert!(store.servers().unwrap().is_empty());
    }

    #[test]
    fn token_resolution_order() {
        let mem = std::sync::Arc::new(MemoryStore::new());
        let key = ServerKey::parse("https://piko.example.com").unwrap();
        mem.set(&key, &Secret::new("stored".into())).unwrap();
        struct Shared(std::sync::Arc<MemoryStore>);
        impl CredentialStore for Shared {
            fn describe(&self) -> String {
                self.0.describe()
            }
            fn get(&self, s: &ServerKey) -> Result<Option<Secret>, CredentialError> {
                self.0.get(s)
            }
            fn set(&self, s: &ServerKey, t: &Secret) -> Result<(), CredentialError> {
                self.0.set(s, t)
            }
            fn delete(&self, s: &ServerKey) -> Result<bool, CredentialError> {
                self.0.delete(s)
            }
            fn servers(&self) -> Result<Vec<ServerKey>, CredentialError> {
                self.0.servers()
            }
        }
        let store = || {
            Ok(SelectedStore {
                store: Box::new(Shared(mem.clone())),
                fallback: None,
            })
        };
        let s = |x: &str| Some(x.to_string());
        let url = "https://piko.example.com/";
        let cases = [
            (s("flag"), s("env"), Some("flag"), TokenSource::Flag),
            (None, s("env"), Some("env"), TokenSource::Env),
            (s(""), s("env"), Some("env"), TokenSource::Env),
            (
                None,
                None,
                Some("stored"),
                TokenSource::Stored("memory".into()),
            ),
            (
                None,
                s(" "),
                Some("stored"),
                TokenSource::Stored("memory".into()),
            ),
        ];
        for (flag, env, want, source) in cases {
            let (t, src) = resolve_token(flag.clone(), env.clone(), url, store).unwrap();
            assert_eq!(t.as_ref().map(Secret::expose), want, "{flag:?} {env:?}");
            assert_eq!(src, source);
        }
        let (t, src) = resolve_token(None, None, "https://other.example.com", store).unwrap();
        assert_eq!((t, src), (None, TokenSource::None));
        // The store is not opened when a token is given.
        let (_, src) = resolve_token(s("flag"), None, url, || -> Result<SelectedStore, _> {
            panic!("store opened")
        })
        .unwrap();
        assert_eq!(src.to_string(), "--connect.token");
    }
}
