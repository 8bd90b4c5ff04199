//! `--config.expand-env`: environment variables in a config file's text, the way the original
//! Go Piko expands them, so its files (`token: ${PIKO_TOKEN}`) work unchanged.

/// Replace `${VAR}`, `$VAR` and `${VAR:default}` in `text` with `lookup(VAR)`. An unset
/// variable becomes `""`; the default applies when the value is unset *or empty*. `$$` is a
/// literal `$` (so a value can hold one), and a `$` not followed by a name stays as it is.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let value = |name: &str| {
        let (key, default) = match name.split_once(':') {
            Some((k, d)) => (k, Some(d)),
            None => (name, None),
        };
        match (lookup(key).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => String::new(),
        }
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) if end > 0 => {
                    out.push_str(&value(&inner[..end]));
                    rest = &inner[end + 1..];
                }
                // `${}` or an unclosed `${`: not a reference, kept as written.
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            let len = after
                .char_indices()
                .find(|&(i, c)| {
                    !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
                })
                .map_or(after.len(), |(i, _)| i);
            if len == 0 {
                out.push('$');
            } else {
                out.push_str(&value(&after[..len]));
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("abc.def".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("8001".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_like_the_original_go_piko() {
        let cases: &[(&str, &str)] = &[
            ("token: ${TOKEN}", "token: abc.def"),
            ("token: $TOKEN", "token: abc.def"),
            ("url: http://x:$PORT/a", "url: http://x:8001/a"),
            ("url: http://x:${PORT}0", "url: http://x:80010"),
            ("a: ${UNSET}", "a: "),
            ("a: $UNSET.", "a: ."),
            ("a: ${UNSET:fallback}", "a: fallback"),
            ("a: ${EMPTY:fallback}", "a: fallback"),
            ("a: ${TOKEN:fallback}", "a: abc.def"),
            ("a: ${UNSET:127.0.0.1:8000}", "a: 127.0.0.1:8000"),
            ("a: $$TOKEN", "a: $TOKEN"),
            ("a: 5$", "a: 5$"),
            ("a: $ b", "a: $ b"),
            ("a: ${}", "a: ${}"),
            ("a: ${OPEN", "a: ${OPEN"),
            ("a: $1", "a: $1"),
            ("é: ${TOKEN}é", "é: abc.defé"),
            ("", ""),
        ];
        assert!(!cases.is_empty());
        for (text, want) in cases {
            assert_eq!(expand_env(text, env), *want, "{text:?}");
        }
    }
}
