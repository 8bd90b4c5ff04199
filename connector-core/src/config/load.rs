//! Reading a config file: its text, expanded from the environment when asked, parsed with
//! errors naming the key, and the checks on a token written in it.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::{expand_env, yaml_message, ConfigError, Secret};

/// A config file's text, as read and as parsed.
pub(crate) struct Source {
    /// The text to parse (expanded, with `--config.expand-env`).
    pub(crate) text: String,
    /// The text as written.
    raw: String,
    path: Option<PathBuf>,
    expanded: bool,
}

impl Source {
    /// Read `path`, expanding `${VAR}` references when `expand` is set.
    pub(crate) fn read(path: &Path, expand: bool) -> Result<Self, ConfigError> {
        let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = if expand {
            expand_env(&raw, &|k| std::env::var(k).ok())
        } else {
            raw.clone()
        };
        Ok(Self {
            text,
            raw,
            path: Some(path.to_path_buf()),
            expanded: expand,
        })
    }

    /// Text given in memory: no file, no expansion.
    pub(crate) fn text(s: &str) -> Self {
        Self {
            text: s.to_string(),
            raw: s.to_string(),
            path: None,
            expanded: false,
        }
    }

    /// The `connect.token` of the file, checked: a `${VAR}` left unexpanded is an error (it
    /// would be sent as the token), and a token written literally in a file other users can
    /// read is a warning. The token itself is never part of a message.
    pub(crate) fn token(
        &self,
        token: Option<String>,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Secret>, ConfigError> {
        let Some(token) = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
        else {
            return Ok(None);
        };
        if !self.expanded && token.contains('$') {
            return Err(ConfigError::Invalid {
                key: "connect.token".into(),
                message: "the value refers to an environment variable; pass --config.expand-env to expand it".into(),
            });
        }
        // Written in the file itself, rather than `${PIKO_TOKEN}` expanded at start.
        let literal = !self.expanded || !raw_token(&self.raw).is_some_and(|t| t.contains('$'));
        if literal {
            if let Some(path) = &self.path {
                if let Some(mode) = readable_by_others(path) {
                    warnings.push(format!(
                        "connect.token: {} holds a token and can be read by other users (mode {mode:o}); run `chmod 600 {}`, or write `token: ${{PIKO_TOKEN}}` and pass --config.expand-env",
                        path.display(),
                        path.display()
                    ));
                }
            }
        }
        Ok(Some(Secret::new(token)))
    }
}

/// `connect.token` as written (before expansion), if the text parses.
fn raw_token(raw: &str) -> Option<String> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(raw).ok()?;
    doc.get("connect")?
        .get("token")?
        .as_str()
        .map(str::to_string)
}

/// The permission bits of `path` when its group or others may read it.
#[cfg(unix)]
fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

/// Windows files carry ACLs, not mode bits: no check.
#[cfg(not(unix))]
fn readable_by_others(_path: &Path) -> Option<u32> {
    None
}

/// Deserialize a YAML document (an empty one is the default), errors naming the key.
pub(crate) fn parse<T: DeserializeOwned + Default>(text: &str) -> Result<T, ConfigError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { String::new() } else { path };
        ConfigError::Invalid {
            key,
            message: yaml_message(&e.into_inner().to_string()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_token_in_a_readable_file_is_a_warning_and_an_expanded_one_is_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let literal = "connect:\n  token: abc.def\n";
        let from_env = "connect:\n  token: ${PIKO_TEST_TOKEN_UNSET:abc.def}\n";
        let cases: &[(&str, u32, bool, bool)] = &[
            (literal, 0o644, false, true),
            (literal, 0o640, true, true),
            (literal, 0o600, false, false),
            (from_env, 0o644, true, false),
        ];
        for (i, (body, mode, expand, warns)) in cases.iter().enumerate() {
            let p = write(&format!("a{i}.yaml"), body, *mode);
            let src = Source::read(&p, *expand).unwrap();
            let mut w = Vec::new();
            let t = src.token(Some("abc.def".into()), &mut w).unwrap().unwrap();
            assert_eq!(t.expose(), "abc.def");
            assert_eq!(!w.is_empty(), *warns, "{body:?} {mode:o}: {w:?}");
            for line in &w {
                assert!(
                    !line.contains("abc.def"),
                    "the token is never in a warning: {line}"
                );
                assert!(line.starts_with("connect.token: "), "{line}");
                assert!(line.contains("chmod 600"), "{line}");
            }
        }
        let src = Source::text("connect:\n  token: ${PIKO_TOKEN}\n");
        let err = src
            .token(Some("${PIKO_TOKEN}".into()), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("connect.token: the value refers to an environment variable; pass --config.expand-env"),
            "{err}"
        );
    }
}
