//! What the original Go Piko's `piko server status` prints: the admin API's answers decoded
//! into its shapes (so fields this project adds are left out, as there), written as YAML the
//! way its YAML library (goccy/go-yaml) writes them: fields in declaration order, map keys
//! sorted, block style, two-space indent, sequences not indented under their key, `{}` and
//! `[]` when empty, and double quotes only where a plain scalar would read as something else.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Deserialize;

/// A node in `/status/cluster/nodes` (the original's `NodeMetadata`).
#[derive(Debug, Deserialize)]
pub(super) struct NodeMetadata {
    #[serde(default)]
    pub(super) id: String,
    #[serde(default)]
    pub(super) status: String,
    #[serde(default)]
    proxy_addr: String,
    #[serde(default)]
    admin_addr: String,
    #[serde(default)]
    endpoints: i64,
    #[serde(default)]
    upstreams: i64,
}

/// A node in `/status/cluster/nodes/{id|local}` (the original's `Node`).
#[derive(Debug, Deserialize)]
pub(super) struct Node {
    #[serde(default)]
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    proxy_addr: String,
    #[serde(default)]
    admin_addr: String,
    #[serde(default)]
    endpoints: Option<BTreeMap<String, i64>>,
}

/// `piko server status upstream endpoints`: endpoint → upstreams on the node.
pub(super) fn endpoints_yaml(endpoints: &BTreeMap<String, i64>) -> String {
    let mut out = String::new();
    map(&mut out, "", endpoints);
    out
}

/// `piko server status cluster nodes`: `nodes:` and one item per node, in the order given.
pub(super) fn nodes_yaml(nodes: &[NodeMetadata]) -> String {
    if nodes.is_empty() {
        return "nodes: []\n".into();
    }
    let mut out = String::from("nodes:\n");
    for n in nodes {
        let _ = writeln!(out, "- id: {}", scalar(&n.id));
        field(&mut out, "  ", "status", &scalar(&n.status));
        field(&mut out, "  ", "proxy_addr", &scalar(&n.proxy_addr));
        field(&mut out, "  ", "admin_addr", &scalar(&n.admin_addr));
        field(&mut out, "  ", "endpoints", &n.endpoints.to_string());
        field(&mut out, "  ", "upstreams", &n.upstreams.to_string());
    }
    out
}

/// `piko server status cluster node ID|local`: the node, its endpoints as endpoint →
/// upstreams.
pub(super) fn node_yaml(n: &Node) -> String {
    let mut out = String::new();
    field(&mut out, "", "id", &scalar(&n.id));
    field(&mut out, "", "status", &scalar(&n.status));
    field(&mut out, "", "proxy_addr", &scalar(&n.proxy_addr));
    field(&mut out, "", "admin_addr", &scalar(&n.admin_addr));
    match &n.endpoints {
        Some(e) if !e.is_empty() => {
            out.push_str("endpoints:\n");
            map(&mut out, "  ", e);
        }
        _ => out.push_str("endpoints: {}\n"),
    }
    out
}

fn field(out: &mut String, indent: &str, key: &str, value: &str) {
    let _ = writeln!(out, "{indent}{key}: {value}");
}

fn map(out: &mut String, indent: &str, m: &BTreeMap<String, i64>) {
    if m.is_empty() {
        let _ = writeln!(out, "{indent}{{}}");
    }
    // BTreeMap's order is byte order, the order the original sorts keys in.
    for (k, v) in m {
        field(out, indent, &scalar(k), &v.to_string());
    }
}

/// `s` as a YAML scalar: plain, or double-quoted (with Go's escapes) where plain text would
/// read as another type or break the document.
fn scalar(s: &str) -> String {
    if !needs_quotes(s) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Words YAML 1.1 or 1.2 readers take for null or a bool.
const KEYWORDS: &[&str] = &[
    "null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False", "FALSE", "y", "Y",
    "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF",
];

fn needs_quotes(s: &str) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return true;
    };
    KEYWORDS.contains(&s)
        || s == "-"
        || is_number(s)
        || is_timestamp(s)
        || "*&[{}],!|>%'\"@ `".contains(first)
        || matches!(last, ':' | ' ')
        || s.contains(['#', '\\'])
        || s.contains(": ")
        || s.contains("- ")
}

/// Whether a YAML reader would take `s` for a number: decimal, `0x`/`0o`/`0b` or
/// leading-zero octal integers (`_` allowed), or a float with one dot.
fn is_number(s: &str) -> bool {
    if s.starts_with('_') || s.matches('.').count() > 1 {
        return false;
    }
    let digits: String = s
        .strip_prefix(['+', '-'])
        .unwrap_or(s)
        .chars()
        .filter(|c| *c != '_')
        .collect();
    let radix = |rest: &str, base: u32| !rest.is_empty() && rest.chars().all(|c| c.is_digit(base));
    if let Some(rest) = digits.strip_prefix("0x") {
        radix(rest, 16)
    } else if let Some(rest) = digits.strip_prefix("0o") {
        radix(rest, 8)
    } else if let Some(rest) = digits.strip_prefix("0b") {
        radix(rest, 2)
    } else if digits.len() > 1 && digits.starts_with('0') && !digits.contains('.') {
        radix(&digits, 8)
    } else if digits.contains('.') {
        digits.parse::<f64>().is_ok()
    } else {
        radix(&digits, 10)
    }
}

/// Whether `s` reads as a date (`2006-01-02`) or a time of day (`15:04`).
fn is_timestamp(s: &str) -> bool {
    let num = |t: &str, len: std::ops::RangeInclusive<usize>, max: u32| {
        len.contains(&t.len())
            && t.chars().all(|c| c.is_ascii_digit())
            && t.parse::<u32>().is_ok_and(|n| n <= max)
    };
    let parts: Vec<&str> = s.split('-').collect();
    if let [y, m, d] = parts[..] {
        return num(y, 4..=4, 9999)
            && num(m, 2..=2, 12)
            && m != "00"
            && num(d, 2..=2, 31)
            && d != "00";
    }
    match s.split_once(':') {
        Some((h, m)) => num(h, 1..=2, 23) && num(m, 1..=2, 59),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_quoted_where_the_original_quotes_them() {
        for (plain, want) in [
            ("node-1", "node-1"),
            ("127.0.0.1:8000", "127.0.0.1:8000"),
            ("piko-0.piko.svc:8002", "piko-0.piko.svc:8002"),
            ("active", "active"),
            ("my.endpoint_1", "my.endpoint_1"),
            ("", "\"\""),
            ("123", "\"123\""),
            ("1_000", "\"1_000\""),
            ("0x1f", "\"0x1f\""),
            ("017", "\"017\""),
            ("019", "019"),
            ("1.5", "\"1.5\""),
            ("1.2.3", "1.2.3"),
            ("1e5", "1e5"),
            ("true", "\"true\""),
            ("no", "\"no\""),
            ("null", "\"null\""),
            ("-", "\"-\""),
            ("2024-01-02", "\"2024-01-02\""),
            ("2024-13-02", "2024-13-02"),
            ("12:30", "\"12:30\""),
            ("[::1]:8000", "\"[::1]:8000\""),
            ("a: b", "\"a: b\""),
            ("a#b", "\"a#b\""),
        ] {
            assert_eq!(scalar(plain), want, "{plain:?}");
        }
    }

    #[test]
    fn nodes_print_as_the_originals_yaml() {
        let nodes: Vec<NodeMetadata> = serde_json::from_str(
            r#"[{"id":"node-0","status":"active","proxy_addr":"10.0.0.1:8000","admin_addr":"10.0.0.1:8002","endpoints":2,"upstreams":3,"endpoint_upstreams":{"a":1,"b":2},"role":"leader"},
                {"id":"node-1","status":"unreachable","proxy_addr":"10.0.0.2:8000","admin_addr":"10.0.0.2:8002","endpoints":0,"upstreams":0}]"#,
        )
        .unwrap();
        assert_eq!(
            nodes_yaml(&nodes),
            "nodes:\n\
             - id: node-0\n  status: active\n  proxy_addr: 10.0.0.1:8000\n  admin_addr: 10.0.0.1:8002\n  endpoints: 2\n  upstreams: 3\n\
             - id: node-1\n  status: unreachable\n  proxy_addr: 10.0.0.2:8000\n  admin_addr: 10.0.0.2:8002\n  endpoints: 0\n  upstreams: 0\n"
        );
        assert_eq!(nodes_yaml(&[]), "nodes: []\n");
    }

    #[test]
    fn a_node_and_the_endpoints_print_as_the_originals_yaml() {
        let node: Node = serde_json::from_str(
            r#"{"id":"node-0","status":"active","proxy_addr":"10.0.0.1:8000","admin_addr":"10.0.0.1:8002","endpoints":{"shop":2,"123":1},"upstreams":3,"role":"leader"}"#,
        )
        .unwrap();
        assert_eq!(
            node_yaml(&node),
            "id: node-0\nstatus: active\nproxy_addr: 10.0.0.1:8000\nadmin_addr: 10.0.0.1:8002\nendpoints:\n  \"123\": 1\n  shop: 2\n"
        );
        let empty: Node = serde_json::from_str(r#"{"id":"n","endpoints":{}}"#).unwrap();
        assert!(node_yaml(&empty).ends_with("endpoints: {}\n"));
        let e: BTreeMap<String, i64> = [("web".to_string(), 2), ("api".to_string(), 1)].into();
        assert_eq!(endpoints_yaml(&e), "api: 1\nweb: 2\n");
        assert_eq!(endpoints_yaml(&BTreeMap::new()), "{}\n");
    }
}
