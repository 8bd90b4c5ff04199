//! `piko login`, `piko logout`, `piko status`: tokens per server in the credential store
//! `piko-connector-core` picks (the OS keychain, else a 0600 file). Tokens are never printed.

use std::io::{IsTerminal, Read};

use piko_connector_core::credentials::{
    check_jwt_shape, default_store, CredentialError, SelectedStore, ServerKey, STORE_ENV, TOKEN_ENV,
};
use piko_connector_core::Secret;

use crate::exit::Failure;

/// Longest token read from stdin; real JWTs are a few KiB at most.
const MAX_TOKEN: u64 = 64 * 1024;

fn server_key(url: &str) -> Result<ServerKey, Failure> {
    ServerKey::parse(url).map_err(|e| Failure::Usage(format!("--server: {e}")))
}

fn store() -> Result<SelectedStore, Failure> {
    default_store().map_err(|e| match e {
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
    let selected = store()?;
    selected
        .store
        .set(&key, &token)
        .map_err(|e| Failure::Runtime(format!("cannot store the token: {e}")))?;
    println!("{}", selected.stored_line(&key));
    Ok(())
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
