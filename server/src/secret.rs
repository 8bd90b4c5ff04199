//! Secrets that cannot leak into logs: the cluster token and the HMAC keys.
//!
//! The lowest layer: `config` reads secrets into it and `cluster` and `auth` hold them, so it
//! depends on nothing in the crate.

use serde::{Deserialize, Serialize};

/// A string that never prints: `***` in Debug output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

#[cfg(test)]
mod tests {
    use super::SecretString;

    #[test]
    fn debug_hides_a_set_secret_and_shows_an_empty_one() {
        assert_eq!(format!("{:?}", SecretString("top-secret".into())), "***");
        assert_eq!(format!("{:?}", SecretString::default()), "\"\"");
    }
}
