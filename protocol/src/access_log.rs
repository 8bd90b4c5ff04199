//! The access log both sides of the tunnel write: one record per proxied request, whose header
//! lists follow an allow or block list and never show credentials.
//!
//! The settings keep the original Piko's keys (`access_log.level`, `access_log.disable`,
//! `access_log.request_headers.allow_list`, ...). Records are `tracing` events; each crate emits
//! them under its own target with [`access_event!`](crate::access_event).

use std::fmt;
use std::time::Instant;

/// The header map records are made of (re-exported for [`access_record!`](crate::access_record!)).
pub use http::header::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use tracing::Level;

/// Headers whose values are credentials: always logged as `***`, whatever the lists say.
pub const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-piko-authorization",
    "cookie",
    "set-cookie",
    // Browsers cannot set headers on a WebSocket handshake, so some APIs (Kubernetes) carry a
    // bearer token in the subprotocol list.
    "sec-websocket-protocol",
    // The cluster's shared secret between nodes.
    "x-piko-cluster-token",
];

/// Parts of header names that mark a credential (`X-Api-Key`, `X-Auth-Token`,
/// `X-Session-Id`, ...): services invent such headers freely, so a fixed list of names cannot
/// keep them out of the logs. Masking a harmless header costs a little detail; logging a key
/// leaks it, so the match is wide on purpose. Names are lowercase in a `HeaderName`.
pub const CREDENTIAL_WORDS: &[&str] = &[
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "session",
    "auth",
    "credential",
    "signature",
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

    /// `headers` as this filter logs them: a JSON object of arrays (as the original), credentials
    /// masked; `-` when the headers were not kept.
    pub fn render<'a>(&'a self, headers: Option<&'a HeaderMap>) -> RenderedHeaders<'a> {
        RenderedHeaders {
            filter: self,
            headers,
        }
    }
}

/// A header map formatted as a JSON object when (and only when) a record is written.
pub struct RenderedHeaders<'a> {
    filter: &'a HeaderFilter,
    headers: Option<&'a HeaderMap>,
}

impl fmt::Display for RenderedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(headers) = self.headers else {
            return f.write_str("-");
        };
        let mut map = serde_json::Map::new();
        for name in headers.keys() {
            if !self.filter.logs(name) {
                continue;
            }
            let values: Vec<serde_json::Value> = if is_sensitive(name) {
                vec!["***".into()]
            } else {
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
                    .collect()
            };
            map.insert(name.as_str().to_string(), values.into());
        }
        write!(f, "{}", serde_json::Value::Object(map))
    }
}

/// What a record keeps of a request while it is proxied: the request line always (cheap:
/// reference-counted clones), the headers only when the record's level is on.
#[derive(Debug)]
pub struct Requested {
    /// Request method.
    pub method: http::Method,
    /// Request target.
    pub uri: http::Uri,
    /// HTTP version.
    pub version: http::Version,
    /// `Host`, else the target's authority.
    host: Option<HeaderValue>,
    /// The request headers, when kept.
    pub headers: Option<HeaderMap>,
    /// When the request arrived.
    pub start: Instant,
}

impl Requested {
    /// The host the request named (`-` when none).
    pub fn host(&self) -> &str {
        self.host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.uri.authority().map(|a| a.as_str()))
            .unwrap_or("-")
    }

    /// Milliseconds since the request arrived.
    pub fn elapsed_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }
}

/// Status of a record whose client went away before the response head (as nginx logs it).
pub const CLIENT_CLOSED: u16 = 499;

/// Where a finished record goes: each side writes it under its own `tracing` target (with
/// [`access_event!`](crate::access_event), which wants the target as a literal).
pub trait RecordSink {
    /// Write the record of `r`. `headers` (the response's) come only when the request's were
    /// kept; `error` says why a request failed.
    fn write(&self, r: &Requested, status: u16, headers: Option<&HeaderMap>, error: Option<&str>);
}

/// A record begun for one request and written exactly once: by [`PendingRecord::finish`] when
/// the response head is ready, or on drop with status 499 when the request's future is
/// dropped first (hyper does that when the client goes away).
pub struct PendingRecord<S: RecordSink> {
    sink: S,
    requested: Option<Requested>,
}

impl<S: RecordSink> PendingRecord<S> {
    /// The pending record of `requested`, to be written to `sink`.
    pub fn new(sink: S, requested: Requested) -> Self {
        Self {
            sink,
            requested: Some(requested),
        }
    }

    /// Write the record with the response's `status` and `headers`.
    pub fn finish(mut self, status: u16, headers: &HeaderMap, error: Option<&str>) {
        if let Some(r) = self.requested.take() {
            let headers = r.headers.is_some().then_some(headers);
            self.sink.write(&r, status, headers, error);
        }
    }
}

impl<S: RecordSink> Drop for PendingRecord<S> {
    fn drop(&mut self) {
        if let Some(r) = self.requested.take() {
            self.sink
                .write(&r, CLIENT_CLOSED, None, Some("client went away"));
        }
    }
}

/// Whether `name` carries credentials.
pub fn is_sensitive(name: &HeaderName) -> bool {
    let name = name.as_str();
    SENSITIVE_HEADERS.contains(&name) || CREDENTIAL_WORDS.iter().any(|w| name.contains(w))
}

impl AccessLog {
    /// Validate `c`; errors name the sub-key (`level`, `request_headers.allow_list`, ...). A
    /// disabled log is not checked further, and an empty level means info (as the original).
    pub fn new(c: &AccessLogConfig) -> Result<Self, String> {
        if c.disable {
            return Ok(Self::disabled());
        }
        let level = match c.level.trim().to_ascii_lowercase().as_str() {
            "debug" => Level::DEBUG,
            "info" | "" => Level::INFO,
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
            level: Some(level),
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

    /// Start the record of `req`, or `None` when no record of it could be written. `enabled`
    /// says whether a level is on for the caller's target (see [`access_enabled!`](crate::access_enabled!)).
    pub fn begin<B>(
        &self,
        req: &http::Request<B>,
        enabled: impl Fn(Level) -> bool,
    ) -> Option<Requested> {
        let level = self.level?;
        let on = enabled(level);
        // A server error raises the record to warn, so keep the request line if that is on.
        if !on && !enabled(self.level_for(500)?) {
            return None;
        }
        Some(Requested {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            host: req.headers().get(header::HOST).cloned(),
            headers: on.then(|| req.headers().clone()),
            start: Instant::now(),
        })
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

/// Write the record of a request (`&Requested`) with its `status`, response `headers` and
/// `error` under `target`, at the level `log` gives that status (nothing when disabled); extra
/// fields (`remote = %addr`) go first. Both sides' [`RecordSink`]s are this one line.
#[macro_export]
macro_rules! access_record {
    ($target:literal, $log:expr, $r:expr, $status:expr, $headers:expr, $error:expr $(, $($extra:tt)+)?) => {{
        let log: &$crate::access_log::AccessLog = $log;
        let r: &$crate::access_log::Requested = $r;
        let status: u16 = $status;
        let headers: Option<&$crate::access_log::HeaderMap> = $headers;
        let error: Option<&str> = $error;
        if let Some(level) = log.level_for(status) {
            $crate::access_event!(
                $target,
                level,
                $($($extra)+,)?
                proto = ?r.version,
                method = %r.method,
                host = r.host(),
                path = r.uri.path(),
                status,
                duration_ms = r.elapsed_ms(),
                request_headers = %log.request().render(r.headers.as_ref()),
                response_headers = %log.response().render(headers),
                error = error.unwrap_or("-"),
                "request"
            );
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_keeps_headers_only_when_the_level_is_on() {
        let log = AccessLog::new(&AccessLogConfig::default()).unwrap();
        let req = http::Request::get("/p?q=1")
            .header("host", "shop.example.com")
            .header("authorization", "Bearer t")
            .body(())
            .unwrap();
        let all = log.begin(&req, |_| true).unwrap();
        assert_eq!(all.host(), "shop.example.com");
        assert!(all.headers.is_some());
        // Info off, warn on: the request line is kept for a 5xx record, the headers are not.
        let warn = log.begin(&req, |l| l <= Level::WARN).unwrap();
        assert!(warn.headers.is_none());
        assert_eq!(warn.uri.path(), "/p");
        assert!(log.begin(&req, |_| false).is_none());
        assert!(AccessLog::disabled().begin(&req, |_| true).is_none());
    }

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
            let out = log.request().render(Some(&h)).to_string();
            assert!(!out.contains("secret"), "{out}");
            assert!(out.contains(r#""authorization":["***"]"#), "{out}");
            assert!(out.contains(r#""x-piko-authorization":["***"]"#), "{out}");
        }
    }

    #[test]
    fn credential_like_names_are_masked_by_default() {
        let h = headers(&[
            ("x-api-key", "secret-1"),
            ("x-auth-token", "secret-2"),
            ("x-amz-security-token", "secret-3"),
            ("x-session-id", "secret-4"),
            ("x-client-secret", "secret-5"),
            ("x-db-password", "secret-6"),
            ("x-goog-api-client-credential", "secret-7"),
            ("x-hub-signature-256", "secret-8"),
            ("accept", "text/plain"),
            ("user-agent", "curl/8"),
        ]);
        let log = AccessLog::new(&config(&[], &[])).unwrap();
        let out = log.request().render(Some(&h)).to_string();
        assert!(!out.contains("secret-"), "{out}");
        for name in [
            "x-api-key",
            "x-auth-token",
            "x-session-id",
            "x-hub-signature-256",
        ] {
            assert!(
                out.contains(&format!(r#""{name}":["***"]"#)),
                "{name}: {out}"
            );
        }
        assert!(out.contains(r#""accept":["text/plain"]"#), "{out}");
        assert!(out.contains(r#""user-agent":["curl/8"]"#), "{out}");
    }

    #[test]
    fn a_pending_record_is_written_once_with_499_when_dropped() {
        use std::sync::{Arc, Mutex};
        type Seen = Arc<Mutex<Vec<(u16, bool, Option<String>)>>>;
        struct Sink(Seen);
        impl RecordSink for Sink {
            fn write(&self, _: &Requested, status: u16, h: Option<&HeaderMap>, e: Option<&str>) {
                self.0
                    .lock()
                    .unwrap()
                    .push((status, h.is_some(), e.map(String::from)));
            }
        }
        let log = AccessLog::new(&AccessLogConfig::default()).unwrap();
        let req = http::Request::get("/").body(()).unwrap();
        let seen = Seen::default();
        let finished = PendingRecord::new(Sink(seen.clone()), log.begin(&req, |_| true).unwrap());
        finished.finish(200, &HeaderMap::new(), None);
        // Info off: no request headers kept, so no response headers either.
        let partial = PendingRecord::new(
            Sink(seen.clone()),
            log.begin(&req, |l| l <= Level::WARN).unwrap(),
        );
        partial.finish(502, &HeaderMap::new(), Some("upstream unreachable"));
        drop(PendingRecord::new(
            Sink(seen.clone()),
            log.begin(&req, |_| true).unwrap(),
        ));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (200, true, None),
                (502, false, Some("upstream unreachable".into())),
                (CLIENT_CLOSED, false, Some("client went away".into())),
            ]
        );
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
            allow.request().render(Some(&h)).to_string(),
            r#"{"accept":["*/*"]}"#
        );
        let block = AccessLog::new(&config(&[], &["user-agent"])).unwrap();
        assert_eq!(
            block.request().render(Some(&h)).to_string(),
            r#"{"accept":["*/*"],"x-a":["1","2"]}"#
        );
        // Response headers keep their own (empty) lists; headers not kept print as `-`.
        assert!(allow
            .response()
            .render(Some(&h))
            .to_string()
            .contains("user-agent"));
        assert_eq!(allow.response().render(None).to_string(), "-");
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
        // Disabled: nothing else is checked (as the original); an empty level is info.
        let off = AccessLog::new(&AccessLogConfig {
            disable: true,
            level: "loud".into(),
            ..config(&["a"], &["b"])
        })
        .unwrap();
        assert_eq!(off.level_for(500), None);
        let empty = AccessLog::new(&AccessLogConfig {
            level: String::new(),
            ..AccessLogConfig::default()
        })
        .unwrap();
        assert_eq!(empty.level(), Some(Level::INFO));
        assert_eq!(AccessLog::disabled().level_for(200), None);
    }
}
