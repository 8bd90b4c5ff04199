//! `$VAR`, `${VAR}` and `${VAR:default}` in a configuration file (`--config.expand-env`, for
//! the server's and the connector's files alike), read as the original Go Piko reads them (the shell's syntax, as Go's `os.Expand`):
//! - `$NAME` takes letters, digits and `_`; `${NAME}` anything up to `}`;
//! - an unset variable expands to nothing;
//! - `${VAR:default}` takes `default` when VAR is unset *or empty*;
//! - `$` followed by anything else stays as it is, and `${` without its `}` or `${}` is
//!   dropped.
//!
//! One intentional difference: `$$` is a literal `$`, so a value (a secret) can hold one; the
//! original reads `$$` as the variable `$`, which expands to nothing.

/// Expand the variables of `s` from `env` (see the module's rules).
pub fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let lookup = |inner: &str| {
        let (name, default) = match inner.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => String::new(),
        }
    };
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => match after.find('}') {
                Some(1) => rest = &after[2..],
                Some(end) => {
                    out.push_str(&lookup(&after[1..end]));
                    rest = &after[end + 1..];
                }
                None => rest = &after[1..],
            },
            Some(c) if "*#@!?-0123456789".contains(c) => {
                out.push_str(&lookup(&after[..1]));
                rest = &after[1..];
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                out.push_str(&lookup(&after[..end]));
                rest = &after[end..];
            }
            // `$` before anything else, or at the end: kept.
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand_env;

    #[test]
    fn variables_expand_as_in_the_shell() {
        let env = |n: &str| match n {
            "HOST" => Some("127.0.0.1".to_string()),
            "EMPTY" => Some(String::new()),
            "A_1" => Some("x".to_string()),
            _ => None,
        };
        for (input, want) in [
            ("${HOST}:8000", "127.0.0.1:8000"),
            ("$HOST:8000", "127.0.0.1:8000"),
            ("$A_1/b", "x/b"),
            ("${UNSET:127.0.0.1:9000}", "127.0.0.1:9000"),
            ("${EMPTY:fallback}", "fallback"),
            ("${HOST:fallback}", "127.0.0.1"),
            ("$UNSET.", "."),
            ("${EMPTY}", ""),
            ("pa$$word", "pa$word"),
            ("cost: 5$", "cost: 5$"),
            ("a $ b", "a $ b"),
            ("${}x", "x"),
            ("${HOST", "HOST"),
            ("$1x", "x"),
            ("token: ${TOKEN:t}", "token: t"),
            ("url: http://x:${A_1}0", "url: http://x:x0"),
            ("é: ${HOST}é", "é: 127.0.0.1é"),
            ("", ""),
        ] {
            assert_eq!(expand_env(input, &env), want, "{input}");
        }
    }
}
