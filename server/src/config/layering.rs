//! The layers of configuration: defaults < YAML file < `PIKO_*` environment < dotted flags,
//! merged into one tree of keys and deserialized once (unknown keys rejected).

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::file::FileConfig;
use super::{err, Config, ConfigError};
use piko_protocol::expand::expand_env;

/// Every leaf key of the configuration tree with its default value, in dotted form.
pub fn leaf_keys() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let tree = serde_yaml_ng::to_value(FileConfig::default()).unwrap_or(Value::Null);
    walk(&tree, String::new(), &mut out);
    out
}

fn walk(v: &Value, prefix: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                let k = k.as_str().unwrap_or_default();
                let key = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(child, key, out);
            }
        }
        // Lists of sections (upstream.tenants) are set in the file only.
        Value::Sequence(_) if prefix.ends_with("tenants") => {}
        other => {
            out.insert(prefix, other.clone());
        }
    }
}

/// The flag name of a key: `proxy.bind_addr` → `proxy.bind-addr`.
pub fn flag_name(key: &str) -> String {
    key.replace('_', "-")
}

/// The environment variable of a key: `proxy.bind_addr` → `PIKO_PROXY_BIND_ADDR`.
pub fn env_name(key: &str) -> String {
    format!("PIKO_{}", key.replace('.', "_").to_uppercase())
}

/// Turn a flag or environment string into a value of the same kind as the key's default.
fn typed_value(default: &Value, raw: &[String]) -> Value {
    match default {
        Value::Sequence(_) => Value::Sequence(
            raw.iter()
                .flat_map(|r| r.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        Value::Bool(_) => match raw.last().map(String::as_str) {
            Some("true") => Value::Bool(true),
            Some("false") => Value::Bool(false),
            other => Value::String(other.unwrap_or_default().to_string()),
        },
        Value::Number(n) => {
            let s = raw.last().cloned().unwrap_or_default();
            match s.parse::<u64>() {
                Ok(v) if !n.is_f64() => Value::from(v),
                // A fraction key (`upstream.rebalance.shed_rate`) takes `1` and `0.5` alike.
                _ if n.is_f64() => s
                    .trim()
                    .parse::<f64>()
                    .map(Value::from)
                    .unwrap_or(Value::String(s)),
                _ => Value::String(s),
            }
        }
        _ => Value::String(raw.last().cloned().unwrap_or_default()),
    }
}

/// Merge `over` into `base`: mappings key by key, anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn set_path(tree: &mut Value, key: &str, v: Value) {
    let mut cur = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !matches!(cur, Value::Mapping(_)) {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else { return };
        let k = Value::String((*p).to_string());
        if i + 1 == parts.len() {
            m.insert(k, v);
            return;
        }
        cur = m.entry(k).or_insert(Value::Mapping(Mapping::new()));
    }
}

/// Where configuration comes from, besides the defaults.
#[derive(Debug, Default)]
pub struct Sources {
    /// The YAML file's text, if any, and its path for messages.
    pub file: Option<(String, String)>,
    /// Expand `${VAR}` in the file.
    pub expand_env: bool,
    /// Environment variables (`PIKO_*` are read).
    pub env: BTreeMap<String, String>,
    /// Dotted flags given on the command line: key → values.
    pub flags: BTreeMap<String, Vec<String>>,
}

/// Load the configuration from its sources.
pub fn load(src: &Sources) -> Result<Config, ConfigError> {
    let keys = leaf_keys();
    // Start from the defaults and merge the file over them, so a partial section keeps the
    // defaults of the keys it does not set.
    let mut tree =
        serde_yaml_ng::to_value(FileConfig::default()).unwrap_or(Value::Mapping(Mapping::new()));
    if let Some((path, text)) = &src.file {
        let text = if src.expand_env {
            expand_env(text, &|n| src.env.get(n).cloned())
        } else {
            text.clone()
        };
        let v: Value =
            serde_yaml_ng::from_str(&text).map_err(|e| err(&format!("config file {path}"), e))?;
        match v {
            Value::Null => {}
            Value::Mapping(_) => merge(&mut tree, v),
            _ => {
                return Err(err(
                    &format!("config file {path}"),
                    "expected a mapping of keys at the top level",
                ))
            }
        }
    }
    for (key, default) in &keys {
        if let Some(v) = src.env.get(&env_name(key)) {
            set_path(
                &mut tree,
                key,
                typed_value(default, std::slice::from_ref(v)),
            );
        }
    }
    for (key, vals) in &src.flags {
        let default = keys.get(key).ok_or_else(|| err(key, "unknown flag"))?;
        set_path(&mut tree, key, typed_value(default, vals));
    }
    let file: FileConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_yaml_ng appends " at line N column M" for file input; keep the message short.
        err(if path == "." { "config" } else { &path }, inner)
    })?;
    file.into_config()
}
