//! [`Locked`]: a credential store that never answers, for the tests of bounded calls.

use piko_connector_core::credentials::{CredentialError, CredentialStore, ServerKey};
use piko_connector_core::Secret;

/// A keychain that never answers, as a locked one waiting on an unlock prompt does. Its
/// calls park their thread for good (the bounded wrapper's worker thread, in the tests).
pub(crate) struct Locked;

fn hang<T>() -> T {
    loop {
        std::thread::park();
    }
}

impl CredentialStore for Locked {
    fn describe(&self) -> String {
        "the locked keychain".into()
    }
    fn get(&self, _: &ServerKey) -> Result<Option<Secret>, CredentialError> {
        hang()
    }
    fn set(&self, _: &ServerKey, _: &Secret) -> Result<(), CredentialError> {
        hang()
    }
    fn delete(&self, _: &ServerKey) -> Result<bool, CredentialError> {
        hang()
    }
    fn servers(&self) -> Result<Vec<ServerKey>, CredentialError> {
        hang()
    }
}
