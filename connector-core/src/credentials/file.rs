//! The token file: one JSON object `{"<server origin>": "<token>"}` with mode 0600, for
//! machines without a keychain. Written whole to a temporary file (created 0600) and renamed,
//! so a crash never leaves half a file and the token is never readable by others, not even
//! for a moment.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[cfg(unix)]
use tracing::warn;

use super::{CredentialError, CredentialStore, Secret, ServerKey};

/// File name of the token file in the config dir.
pub(crate) const FILE_NAME: &str = "credentials.json";

/// Tokens in a 0600 file (see the module docs).
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store in `path` (created on the first [`CredentialStore::set`]).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, message: String) -> CredentialError {
        CredentialError::Store {
            store: self.path.display().to_string(),
            message,
        }
    }

    fn load(&self) -> Result<BTreeMap<String, String>, CredentialError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(self.err(format!("cannot read: {e}"))),
        };
        self.check_mode();
        if text.trim().is_empty() {
            return Ok(BTreeMap::new());
        }
        // serde_json's errors quote no input, so a damaged file never echoes a token.
        serde_json::from_str(&text).map_err(|e| {
            self.err(format!(
                "not a valid credentials file ({e}); fix it or delete it and run `piko login` again"
            ))
        })
    }

    #[cfg(unix)]
    fn check_mode(&self) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&self.path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warn!(
                    path = %self.path.display(),
                    "the credentials file is readable by others (mode {mode:o}); run chmod 600 on it"
                );
            }
        }
    }

    #[cfg(not(unix))]
    fn check_mode(&self) {}

    fn save(&self, map: &BTreeMap<String, String>) -> Result<(), CredentialError> {
        let dir = self
            .path
            .parent()
            .ok_or_else(|| self.err("the path has no directory".into()))?;
        create_private_dir(dir).map_err(|e| {
            self.err(format!(
                "cannot create the directory {}: {e}",
                dir.display()
            ))
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(map)
            .map_err(|e| self.err(format!("cannot encode: {e}")))?;
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut f = open_private(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.err(format!("cannot write: {e}"))
        })
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// A new file only its owner can read or write.
#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    // Files under the user's profile are private to the user by default on Windows.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

impl CredentialStore for FileStore {
    fn describe(&self) -> String {
        if cfg!(unix) {
            format!("{} (mode 0600)", self.path.display())
        } else {
            self.path.display().to_string()
        }
    }

    fn get(&self, server: &ServerKey) -> Result<Option<Secret>, CredentialError> {
        Ok(self.load()?.remove(server.as_str()).map(Secret::new))
    }

    fn set(&self, server: &ServerKey, token: &Secret) -> Result<(), CredentialError> {
        let mut map = self.load()?;
        map.insert(server.as_str().to_string(), token.expose().to_string());
        self.save(&map)
    }

    fn delete(&self, server: &ServerKey) -> Result<bool, CredentialError> {
        let mut map = self.load()?;
        if map.remove(server.as_str()).is_none() {
            return Ok(false);
        }
        if map.is_empty() {
            std::fs::remove_file(&self.path)
                .map_err(|e| self.err(format!("cannot remove: {e}")))?;
        } else {
            self.save(&map)?;
        }
        Ok(true)
    }

    fn servers(&self) -> Result<Vec<ServerKey>, CredentialError> {
        Ok(self
            .load()?
            .into_keys()
            .filter_map(|k| ServerKey::parse(&k).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{store_contract, JWT};
    use super::*;

    #[test]
    fn file_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("piko").join(FILE_NAME));
        store_contract(&store);
        // The last delete removed the file.
        assert!(!store.path().exists());
    }

    #[cfg(unix)]
    #[test]
    fn file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("cfg").join(FILE_NAME));
        let key = ServerKey::parse("https://piko.example.com").unwrap();
        store.set(&key, &Secret::new(JWT.into())).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(&dir.path().join("cfg")), 0o700);
        assert!(store.describe().ends_with("credentials.json (mode 0600)"));

        // Rewrites stay private even if someone loosened the file.
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        store.set(&key, &Secret::new("other".into())).unwrap();
        assert_eq!(mode(store.path()), 0o600);
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(
            text.contains("\"https://piko.example.com\": \"other\""),
            "{text}"
        );
        assert!(!dir.path().join("cfg").join("credentials.json.tmp").exists());
    }

    #[test]
    fn damaged_file_is_a_clear_error_without_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "{\"https://x\": \"eyJsecret").unwrap();
        let store = FileStore::new(path);
        let e = store
            .get(&ServerKey::parse("https://x").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid credentials file"), "{e}");
        assert!(!e.contains("eyJsecret"), "{e}");
    }
}
