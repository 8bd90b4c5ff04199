//! [`CoreError`]: why a change to the live core was refused.

use serde::ser::SerializeStruct;
use serde::Serialize;

use crate::credentials::CredentialError;
use crate::settings::{FieldError, SettingsError};

/// Why a [`Core`](super::Core) operation failed. One line each; `Invalid` names the form
/// field so the GUI can show it next to that field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A value the user gave is not usable.
    #[error("{message}")]
    Invalid {
        /// The form field (`id`, `target`, `server`, `url`, `public_url`, `proxy_url`, `tls`,
        /// `name`, `token`).
        field: &'static str,
        /// What is wrong and what to give instead.
        message: String,
    },
    /// No endpoint or server by that id or name.
    #[error("{0}")]
    NotFound(String),
    /// An endpoint or server by that id or name exists already.
    #[error("{0}")]
    Duplicate(String),
    /// The server still has endpoints, so it cannot be removed.
    #[error("{0}")]
    InUse(String),
    /// The credential store failed.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The settings file could not be written; nothing changed.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The core has shut down.
    #[error("the connector is shutting down")]
    ShuttingDown,
}

impl From<FieldError> for CoreError {
    fn from(e: FieldError) -> Self {
        CoreError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl CoreError {
    /// A short name of the kind, for programs: `invalid`, `not_found`, `duplicate`, `in_use`,
    /// `credentials`, `settings`, `shutting_down`.
    pub fn kind(&self) -> &'static str {
        match self {
            CoreError::Invalid { .. } => "invalid",
            CoreError::NotFound(_) => "not_found",
            CoreError::Duplicate(_) => "duplicate",
            CoreError::InUse(_) => "in_use",
            CoreError::Credentials(_) => "credentials",
            CoreError::Settings(_) => "settings",
            CoreError::ShuttingDown => "shutting_down",
        }
    }

    /// The form field at fault, for `Invalid`.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            CoreError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// `{"kind": "invalid", "field": "target", "message": "..."}`: the one-line message is the
/// error's `Display`.
impl Serialize for CoreError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("CoreError", 3)?;
        st.serialize_field("kind", self.kind())?;
        st.serialize_field("field", &self.field())?;
        st.serialize_field("message", &self.to_string())?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialize_with_kind_field_and_message() {
        let e = CoreError::Invalid {
            field: "target",
            message: "expected a port".into(),
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"kind": "invalid", "field": "target", "message": "expected a port"})
        );
        let e = CoreError::NotFound("no endpoint shop".into());
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"kind": "not_found", "field": null, "message": "no endpoint shop"})
        );
    }
}
