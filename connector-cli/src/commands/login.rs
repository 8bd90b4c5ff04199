//! `piko login`, `piko logout`, `piko status`: tokens per server in the credential store
//! `piko-connector-core` picks (the OS keychain, else a 0600 file). Tokens are never printed.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use piko_connector_core::credentials::{
    check_jwt_shape, default_store, CredentialError, SelectedStore, ServerKey, DEFAULT_TIMEOUT,
    STORE_ENV, TOKEN_ENV,
};
use piko_connector_core::Secret;

use crate::exit::Failure;

/// Longest token read from stdin; real JWTs are a few KiB at most.
const MAX_TOKEN: u64 = 64 * 1024;

fn server_key(url: &str) -> Result<ServerKey, Failure> {
    ServerKey::parse(url).map_err(|e| Failure::Usage(format!("--server: {e}")))
}

/// The store `piko login`, `logout` and `status` use: [`default_store`] with every call
/// bounded, so a locked keychain fails in seconds with a line saying what to do instead of
/// hanging the terminal.
fn store() -> Result<SelectedStore, Failure> {
    open_store(default_store, DEFAULT_TIMEOUT)
}

/// The store `open` gives, every call bounded by `timeout`.
fn open_store(
    open: impl FnOnce() -> Result<SelectedStore, CredentialError>,
    timeout: Duration,
) -> Result<SelectedStore, Failure> {
    open().map(|s| s.bounded(timeout)).map_err(|e| match e {
        CredentialError::Choice(_) | CredentialError::Config(_) => Failure::Usage(e.to_string()),
        e => Failure::Runtime(e.to_string()),
    })
}

/// Read the token: all of stdin when it is not a terminal (`piko login ... < token.jwt`,
/// `echo $T | piko login ...`), else a prompt that does not echo.
fn read_token(server: &ServerKey) -> Result<Secret, Failure> {
    let text = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("token for {server}: ")).map_err(|e| {
            Failure::Runtime(format!("cannot read the token from the terminal: {e}"))
        })?
    } else {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(MAX_TOKEN + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Failure::Runtime(format!("cannot read the token from stdin: {e}")))?;
        if buf.len() as u64 > MAX_TOKEN {
            return Err(Failure::Usage(format!(
                "the input on stdin is larger than {} KiB; pipe in only the token",
                MAX_TOKEN / 1024
            )));
        }
        String::from_utf8(buf)
            .map_err(|_| Failure::Usage("the token on stdin is not UTF-8 text".into()))?
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::Usage(
            "no token given; pipe it in (piko login --server URL < token.jwt) or type it at the prompt"
                .into(),
        ));
    }
    check_jwt_shape(token).map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(Secret::new(token.to_string()))
}

/// `piko login --server URL`.
pub(crate) fn login(server_url: &str) -> Result<(), Failure> {
    let key = server_key(server_url)?;
    let token = read_token(&key)?;
    println!("{}", store_token(store()?, &key, &token)?);
    Ok(())
}

/// Store `token` for `key` in `selected`; the line saying where.
fn store_token(
    selected: SelectedStore,
    key: &ServerKey,
    token: &Secret,
) -> Result<String, Failure> {
    selected
        .store
        .set(key, token)
        .map_err(|e| Failure::Runtime(format!("cannot store the token: {e}")))?;
    Ok(selected.stored_line(key))
}

/// `piko logout --server URL`.
pub(crate) fn logout(server_url: &str) -> Result<(), Failure> {
    let key = server_key(server_url)?;
    let selected = store()?;
    let deleted = selected
        .store
        .delete(&key)
        .map_err(|e| Failure::Runtime(format!("cannot remove the token: {e}")))?;
    let where_ = selected.store.describe();
    if deleted {
        println!("token for {key} removed from {where_}");
    } else {
        println!("no token stored for {key} in {where_}");
    }
    Ok(())
}

/// `piko status [--server URL]`: where tokens are kept, which servers have one, whether
/// `PIKO_TOKEN` is set. Never a token.
pub(crate) fn status(server_url: Option<&str>) -> Result<(), Failure> {
    let only = server_url.map(server_key).transpose()?;
    let selected = store()?;
    println!("{}", selected.describe_line());
    let env_set = std::env::var(TOKEN_ENV).is_ok_and(|t| !t.trim().is_empty());
    println!(
        "{TOKEN_ENV}: {}",
        if env_set {
            "set (used before any stored token)"
        } else {
            "not set"
        }
    );
    let read = |e: CredentialError| Failure::Runtime(format!("cannot read the stored tokens: {e}"));
    match only {
        Some(key) => {
            let state = match selected.store.get(&key).map_err(read)? {
                Some(_) => "token stored",
                None => "no token stored",
            };
            println!("{key}: {state}");
        }
        None => {
            let servers = selected.store.servers().map_err(read)?;
            if servers.is_empty() {
                println!("no stored tokens; `piko login --server URL` stores one");
            }
            for key in servers {
                println!("{key}: token stored");
            }
        }
    }
    if std::env::var(STORE_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        println!("{STORE_ENV} chooses the store");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use piko_connector_core::credentials::{CredentialStore, MemoryStore};

    use super::*;
    use crate::commands::locked::Locked;

    fn selected(store: impl CredentialStore + 'static) -> SelectedStore {
        SelectedStore {
            store: Box::new(store),
            fallback: None,
        }
    }

    #[test]
    fn login_with_a_locked_keychain_fails_in_bounded_time_with_what_to_do() {
        let key = ServerKey::parse("https://piko.example.com").unwrap();
        let (done, result) = mpsc::channel();
        let began = Instant::now();
        std::thread::spawn(move || {
            let stored = open_store(|| Ok(selected(Locked)), Duration::from_millis(200))
                .and_then(|s| store_token(s, &key, &Secret::new("a.b.c".into())));
            let _ = done.send(stored);
        });
        let stored = result
            .recv_timeout(Duration::from_secs(5))
            .expect("piko login hung on a locked keychain");
        assert!(began.elapsed() < Duration::from_secs(3));
        let Err(Failure::Runtime(line)) = stored else {
            panic!("{stored:?}")
        };
        assert_eq!(
            line,
            "cannot store the token: the locked keychain did not answer within 200 ms (is it \
             locked?); unlock it and try again, or set PIKO_CREDENTIALS_STORE=file to keep \
             tokens in a file"
        );
    }

    #[test]
    fn login_says_where_the_token_went() {
        let key = ServerKey::parse("https://piko.example.com").unwrap();
        let s = open_store(|| Ok(selected(MemoryStore::new())), DEFAULT_TIMEOUT).unwrap();
        assert_eq!(
            store_token(s, &key, &Secret::new("a.b.c".into())).unwrap(),
            "token for https://piko.example.com stored in memory"
        );
    }
}
