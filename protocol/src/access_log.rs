//! The access log both sides of the tunnel write: one record per proxied request, whose header
//! lists follow an allow or block list and never show credentials.
//!
//! The settings keep the original Piko's keys (`access_log.level`, `access_log.disable`,
//! `access_log.request_headers.allow_list`, ...). Records are `tracing` events; each crate emits
//! them under its own target with [`access_event!`](crate::access_event).

use std::fmt;

use http::header::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};
use tracing::Level;

/// Headers whose values are credentials: always logged as `***`, whatever the lists say.
pub const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-piko-authorization",
    "cookie",
    "set-cookie",
];

/// `access_log.*` as written in a configuration file or given as flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Level of the records: `debug`, `info`, `warn` or `error` (5xx answers log at warn at least).
    pub level: String,
    /// Log no request at all.
    pub disable: bool,
    /// Which request headers to log.
    pub request_headers: HeaderListConfig,
    /// Which response headers to log.
    pub response_headers: HeaderListConfig,
}

/// An allow list or a block list of header names (at most one of the two).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderListConfig {
    /// Log only these headers.
    pub allow_list: Vec<String>,
    /// Log every header but these.
    pub block_list: Vec<String>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            disable: false,
            request_headers: HeaderListConfig::default(),
            response_headers: HeaderListConfig::default(),
        }
    }
}

/// Validated access-log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// `None`: disabled.
    level: Option<Level>,
    request: HeaderFilter,
    response: HeaderFilter,
}

/// Which headers of a map are logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFilter {
    allow: Option<Vec<HeaderName>>,
    block: Vec<HeaderName>,
}

impl HeaderFilter {
    fn new(key: &str, c: &HeaderListConfig) -> Result<Self, String> {
        if !c.allow_list.is_empty() && !c.block_list.is_empty() {
            return Err(format!("{key}: set allow_list or block_list, not both"));
        }
        let names = |list: &[String], sub: &str| {
            list.iter()
                .map(|n| {
                    HeaderName::from_bytes(n.trim().as_bytes())
                        .map_err(|_| format!("{key}.{sub}: {n:?} is not a header name"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allow: (!c.allow_list.is_empty())
                .then(|| names(&c.allow_list, "allow_list"))
                .transpose()?,
            block: names(&c.block_list, "block_list")?,
        })
    }

    fn logs(&self, name: &HeaderName) -> bool {
        match &self.allow {
            Some(allow) => allow.contains(name),
            None => !self.block.contains(name),
        }
    }

    /// `headers` as this filter logs them: a JSON object, credentials masked.
    pub fn render<'a>(&'a self, headers: &'a HeaderMap) -> RenderedHeaders<'a> {
        RenderedHeaders {
            filter: self,
            headers,
        }
    }
}

/// A header map formatted as a JSON object when (and only when) a record is written.
pub struct RenderedHeaders<'a> {
    filter: &'a HeaderFilter,
    headers: &'a HeaderMap,
}

impl fmt::Display for RenderedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = serde_json::Map::new();
        for name in self.headers.keys() {
            if !self.filter.logs(name) {
                continue;
            }
            let values: Vec<serde_json::Value> = if is_sensitive(name) {
                vec!["***".into()]
            } else {
                self.headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
                    .collect()
            };
            let value = match <[_; 1]>::try_from(values) {
                Ok([one]) => one,
                Err(many) => many.into(),
            };
            map.insert(name.as_str().to_string(), value);
        }
        write!(f, "{}", serde_json::Value::Object(map))
    }
}

/// Whether `name` carries credentials.
pub fn is_sensitive(name: &HeaderName) -> bool {
    SENSITIVE_HEADERS.contains(&name.as_str())
}

impl AccessLog {
    /// Validate `c`; errors name the sub-key (`level`, `request_headers.allow_list`, ...).
    pub fn new(c: &AccessLogConfig) -> Result<Self, String> {
        let level = match c.level.trim().to_ascii_lowercase().as_str() {
            "debug" => Level::DEBUG,
            "info" => Level::INFO,
            "warn" => Level::WARN,
            "error" => Level::ERROR,
            _ => {
                return Err(format!(
                    "level: invalid level {:?}; use debug, info, warn or error",
                    c.level
                ))
            }
        };
        Ok(Self {
            level: (!c.disable).then_some(level),
            request: HeaderFilter::new("request_headers", &c.request_headers)?,
            response: HeaderFilter::new("response_headers", &c.response_headers)?,
        })
    }

    /// Access logging switched off.
    pub fn disabled() -> Self {
        Self {
            level: None,
            request: HeaderFilter::default(),
            response: HeaderFilter::default(),
        }
    }

    /// The level of a record for a response with `status` (`None`: not logged). Server errors
    /// log at warn at least, so they show at the default log level.
    pub fn level_for(&self, status: u16) -> Option<Level> {
        let level = self.level?;
        Some(if status >= 500 && level > Level::WARN {
            Level::WARN
        } else {
            level
        })
    }

    /// The configured level (`None`: disabled).
    pub fn level(&self) -> Option<Level> {
        self.level
    }

    /// The request-header filter.
    pub fn request(&self) -> &HeaderFilter {
        &self.request
    }

    /// The response-header filter.
    pub fn response(&self) -> &HeaderFilter {
        &self.response
    }
}

/// Whether a `tracing` event at a run-time `level` under `target` would be recorded
/// (`tracing::enabled!` wants the level as a constant).
#[macro_export]
macro_rules! access_enabled {
    ($target:literal, $level:expr) => {
        match $level {
            ::tracing::Level::ERROR => ::tracing::enabled!(target: $target, ::tracing::Level::ERROR),
            ::tracing::Level::WARN => ::tracing::enabled!(target: $target, ::tracing::Level::WARN),
            ::tracing::Level::INFO => ::tracing::enabled!(target: $target, ::tracing::Level::INFO),
            ::tracing::Level::DEBUG => ::tracing::enabled!(target: $target, ::tracing::Level::DEBUG),
            _ => ::tracing::enabled!(target: $target, ::tracing::Level::TRACE),
        }
    };
}

/// A `tracing` event at a run-time `level` under `target` (`tracing::event!` wants the level as
/// a constant); field expressions are evaluated only when the event is recorded.
#[macro_export]
macro_rules! access_event {
    ($target:literal, $level:expr, $($fields:tt)*) => {
        match $level {
            ::tracing::Level::ERROR => ::tracing::event!(target: $target, ::tracing::Level::ERROR, $($fields)*),
            ::tracing::Level::WARN => ::tracing::event!(target: $target, ::tracing::Level::WARN, $($fields)*),
            ::tracing::Level::INFO => ::tracing::event!(target: $target, ::tracing::Level::INFO, $($fields)*),
            ::tracing::Level::DEBUG => ::tracing::event!(target: $target, ::tracing::Level::DEBUG, $($fields)*),
            _ => ::tracing::event!(target: $target, ::tracing::Level::TRACE, $($fields)*),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn config(allow: &[&str], block: &[&str]) -> AccessLogConfig {
        AccessLogConfig {
            request_headers: HeaderListConfig {
                allow_list: allow.iter().map(|s| s.to_string()).collect(),
                block_list: block.iter().map(|s| s.to_string()).collect(),
            },
            ..AccessLogConfig::default()
        }
    }

    #[test]
    fn credentials_are_masked_whatever_the_lists_say() {
        let h = headers(&[
            ("authorization", "Bearer secret-1"),
            ("x-piko-authorization", "Bearer secret-2"),
            ("proxy-authorization", "Basic secret-3"),
            ("cookie", "session=secret-4"),
            ("accept", "*/*"),
        ]);
        for c in [
            config(&[], &[]),
            config(
                &[
                    "authorization",
                    "x-piko-authorization",
                    "cookie",
                    "proxy-authorization",
                ],
                &[],
            ),
        ] {
            let log = AccessLog::new(&c).unwrap();
            let out = log.request().render(&h).to_string();
            assert!(!out.contains("secret"), "{out}");
            assert!(out.contains(r#""authorization":"***""#), "{out}");
            assert!(out.contains(r#""x-piko-authorization":"***""#), "{out}");
        }
    }

    #[test]
    fn allow_and_block_lists_choose_the_headers() {
        let h = headers(&[
            ("accept", "*/*"),
            ("user-agent", "t"),
            ("x-a", "1"),
            ("x-a", "2"),
        ]);
        let allow = AccessLog::new(&config(&["Accept"], &[])).unwrap();
        assert_eq!(
            allow.request().render(&h).to_string(),
            r#"{"accept":"*/*"}"#
        );
        let block = AccessLog::new(&config(&[], &["user-agent"])).unwrap();
        assert_eq!(
            block.request().render(&h).to_string(),
            r#"{"accept":"*/*","x-a":["1","2"]}"#
        );
        // Response headers keep their own (empty) lists.
        assert!(allow
            .response()
            .render(&h)
            .to_string()
            .contains("user-agent"));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let cases: &[(AccessLogConfig, &str)] = &[
            (
                config(&["a"], &["b"]),
                "request_headers: set allow_list or block_list, not both",
            ),
            (
                config(&["bad header"], &[]),
                "request_headers.allow_list: \"bad header\" is not a header name",
            ),
            (
                AccessLogConfig {
                    level: "loud".into(),
                    ..AccessLogConfig::default()
                },
                "level: invalid level \"loud\"",
            ),
        ];
        for (c, want) in cases {
            let e = AccessLog::new(c).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn server_errors_log_at_warn_at_least_and_disable_logs_nothing() {
        let info = AccessLog::new(&AccessLogConfig::default()).unwrap();
        assert_eq!(info.level_for(200), Some(Level::INFO));
        assert_eq!(info.level_for(502), Some(Level::WARN));
        let error = AccessLog::new(&AccessLogConfig {
            level: "error".into(),
            ..AccessLogConfig::default()
        })
        .unwrap();
        assert_eq!(error.level_for(502), Some(Level::ERROR));
        let off = AccessLog::new(&AccessLogConfig {
            disable: true,
            ..AccessLogConfig::default()
        })
        .unwrap();
        assert_eq!(off.level_for(500), None);
        assert_eq!(AccessLog::disabled().level_for(200), None);
    }
}
