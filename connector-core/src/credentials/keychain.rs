//! The OS keychain through the `keyring` crate: macOS Keychain, Windows Credential Manager,
//! and on Linux/BSD the Secret Service (gnome-keyring, KWallet, KeePassXC) over D-Bus with a
//! pure-Rust client (zbus), so no libdbus is needed to build or run.
//!
//! Each token is an entry with service `piko` and the server origin as user name. Keychains
//! cannot list entries portably, so the origins logged in are also kept in a plain (not
//! secret) index file beside the config, for `piko status`.

use std::path::PathBuf;
use std::time::Duration;

use super::{CredentialError, CredentialStore, Secret, ServerKey};

/// File name of the index of servers with a keychain token, in the config dir.
pub(crate) const INDEX_NAME: &str = "keychain-servers";

/// The keychain entries' service name.
const SERVICE: &str = "piko";

/// Tokens in the OS keychain (see the module docs).
#[derive(Debug, Clone)]
pub struct KeyringStore {
    index: Option<PathBuf>,
}

impl KeyringStore {
    /// A keychain store; `index` lists the servers logged in (no listing without it).
    pub fn new(index: Option<PathBuf>) -> Self {
        Self { index }
    }

    /// Whether the OS keychain answers, within `timeout`; `Err` says why not. Connecting to a
    /// Secret Service can hang on a broken session bus, hence the timeout.
    pub fn probe(timeout: Duration) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        // The keyring crate connects once per process and keeps the result.
        std::thread::spawn(move || {
            let status = keyring::Entry::store_status();
            let _ = tx.send(status.as_ref().map(|_| ()).map_err(describe_error));
        });
        match rx.recv_timeout(timeout) {
            Ok(r) => r.map_err(|e| format!("no {} found ({e})", keychain_kind())),
            Err(_) => Err(format!(
                "no {} answered within {}s",
                keychain_kind(),
                timeout.as_secs()
            )),
        }
    }

    fn entry(&self, server: &ServerKey) -> Result<keyring::Entry, CredentialError> {
        keyring::Entry::new(SERVICE, server.as_str()).map_err(|e| self.err(&e))
    }

    fn err(&self, e: &keyring::Error) -> CredentialError {
        CredentialError::Store {
            store: self.describe(),
            message: describe_error(e),
        }
    }

    fn read_index(&self) -> Vec<String> {
        self.index
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| {
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The index is a convenience for `status`: failing to update it never fails a login.
    fn update_index(&self, server: &ServerKey, present: bool) {
        let Some(path) = &self.index else { return };
        let mut lines = self.read_index();
        lines.retain(|l| l != server.as_str());
        if present {
            lines.push(server.as_str().to_string());
        }
        let result = if lines.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            path.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| std::fs::write(path, lines.join("\n") + "\n"))
        };
        if let Err(e) = result {
            tracing::debug!(path = %path.display(), error = %e, "cannot update the keychain index");
        }
    }
}

/// The keychain's name on this OS.
fn keychain_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "the macOS Keychain"
    } else if cfg!(windows) {
        "Windows Credential Manager"
    } else {
        "the OS keychain (Secret Service)"
    }
}

/// The keychain's kind, for "no ... found".
fn keychain_kind() -> &'static str {
    if cfg!(target_os = "macos") {
        "macOS Keychain"
    } else if cfg!(windows) {
        "Windows Credential Manager"
    } else {
        "Secret Service"
    }
}

/// One line for a keyring error, with what to do for the usual Linux failures.
fn describe_error(e: &keyring::Error) -> String {
    match e {
        keyring::Error::NoStorageAccess(inner) => format!(
            "the keychain is locked or refused access ({inner}); unlock it, or set PIKO_CREDENTIALS_STORE=file"
        ),
        keyring::Error::NoDefaultStore => "no keychain is available on this system".to_string(),
        other => {
            // Platform errors can be long, multi-line D-Bus messages; keep the first line,
            // without the layers' prefixes.
            let text = other.to_string();
            let line = text.lines().next().unwrap_or_default();
            line.trim_start_matches("Platform failure: ")
                .trim_start_matches("zbus error: ")
                .to_string()
        }
    }
}

impl CredentialStore for KeyringStore {
    fn describe(&self) -> String {
        keychain_name().to_string()
    }

    fn get(&self, server: &ServerKey) -> Result<Option<Secret>, CredentialError> {
        match self.entry(server)?.get_password() {
            Ok(t) => Ok(Some(Secret::new(t))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(self.err(&e)),
        }
    }

    fn set(&self, server: &ServerKey, token: &Secret) -> Result<(), CredentialError> {
        self.entry(server)?
            .set_password(token.expose())
            .map_err(|e| self.err(&e))?;
        self.update_index(server, true);
        Ok(())
    }

    fn delete(&self, server: &ServerKey) -> Result<bool, CredentialError> {
        let deleted = match self.entry(server)?.delete_credential() {
            Ok(()) => true,
            Err(keyring::Error::NoEntry) => false,
            Err(e) => return Err(self.err(&e)),
        };
        self.update_index(server, false);
        Ok(deleted)
    }

    fn servers(&self) -> Result<Vec<ServerKey>, CredentialError> {
        Ok(self
            .read_index()
            .iter()
            .filter_map(|l| ServerKey::parse(l).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set by [`real_secret_service`] for the helper it runs inside the D-Bus session.
    const HELPER_ENV: &str = "PIKO_TEST_SECRET_SERVICE_HELPER";

    /// Store, load and delete through [`KeyringStore`] against a real Secret Service:
    /// gnome-keyring started with an empty password inside a private `dbus-run-session`, in a
    /// temporary HOME. The checks run in this test binary, re-invoked inside that session
    /// (the keyring crate connects once per process, so it needs a process of its own).
    #[test]
    fn real_secret_service() {
        for (tool, package) in [
            ("dbus-run-session", "dbus-daemon"),
            ("gnome-keyring-daemon", "gnome-keyring"),
        ] {
            let found = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                found,
                "{tool} is missing: install the {package} package (tests/run.sh does: apt-get install {package})"
            );
        }
        let home = tempfile::tempdir().unwrap();
        let runtime = home.path().join("run");
        std::fs::create_dir_all(&runtime).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let exe = std::env::current_exe().unwrap();
        // gnome-keyring reads the login keyring's password from stdin (empty input means none), creates and
        // unlocks it, and becomes the Secret Service of this session.
        let script = r#"printf 'piko-test' | gnome-keyring-daemon --unlock --components=secrets >/dev/null || exit 97
exec "$0" --exact credentials::keychain::tests::secret_service_helper --include-ignored --nocapture --test-threads=1"#;
        let out = std::process::Command::new("dbus-run-session")
            .args(["--", "sh", "-c", script])
            .arg(&exe)
            .env(HELPER_ENV, "1")
            .env("HOME", home.path())
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("GNOME_KEYRING_CONTROL")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the Secret Service helper failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        // The helper really ran (a filter matching nothing also exits 0).
        assert!(
            stdout.contains("secret service round trip ok"),
            "{stdout}\n{stderr}"
        );
    }

    /// Runs only inside [`real_secret_service`]'s D-Bus session.
    #[test]
    #[ignore = "run by real_secret_service inside dbus-run-session"]
    fn secret_service_helper() {
        if std::env::var_os(HELPER_ENV).is_none() {
            return;
        }
        KeyringStore::probe(Duration::from_secs(10)).expect("the Secret Service answers");
        let dir = tempfile::tempdir().unwrap();
        let store = KeyringStore::new(Some(dir.path().join(INDEX_NAME)));
        assert_eq!(store.describe(), "the OS keychain (Secret Service)");
        crate::credentials::tests::store_contract(&store);

        // And the token really is in the Secret Service: a second store (no index) reads it.
        let key = ServerKey::parse("https://piko.example.com:8001").unwrap();
        store
            .set(&key, &Secret::new(crate::credentials::tests::JWT.into()))
            .unwrap();
        let other = KeyringStore::new(None);
        assert_eq!(
            other.get(&key).unwrap().unwrap().expose(),
            crate::credentials::tests::JWT
        );
        assert_eq!(store.servers().unwrap(), vec![key.clone()]);
        assert!(other.delete(&key).unwrap());
        assert_eq!(store.get(&key).unwrap(), None);
        println!("secret service round trip ok");
    }
}
