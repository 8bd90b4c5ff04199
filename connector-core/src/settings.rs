//! The connector's own settings file: the servers it knows, the endpoints it exposes and the
//! user's preferences, as the tray app and the live [`Core`](crate::core::Core) keep them.
//!
//! YAML (`settings.yaml` in the config dir), unknown keys denied, no tokens (those live in the
//! [`CredentialStore`](crate::CredentialStore)). [`SettingsStore::save`] writes atomically
//! (a temporary file in the same directory, fsync, rename), so a crash mid-write leaves the
//! previous file whole. A file that does not parse (a hand edit gone wrong) gives an error
//! naming the key and the line; the store then loads the last good copy it kept
//! (`settings.yaml.good`) and, on the next save, keeps the rejected file as
//! `settings.yaml.rejected` rather than losing the user's edit.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use piko_protocol::EndpointId;
use serde::{Deserialize, Serialize};

use crate::config::{yaml_message, ConfigError, EndpointConfig, Protocol, Target, TlsConfig};
use crate::credentials::ServerKey;
use crate::transport::ProxyUrl;

/// The settings file's name in the config dir.
pub const FILE_NAME: &str = "settings.yaml";
/// Suffix of the copy of the last file that parsed.
const GOOD_SUFFIX: &str = ".good";
/// Suffix a rejected (unparsable) file is kept under when the app next saves.
const REJECTED_SUFFIX: &str = ".rejected";
/// Temporary files older than this are leftovers of a crash and removed on open.
const STALE_TEMP: Duration = Duration::from_secs(60);

/// Everything the connector keeps in its settings file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The servers endpoints can register with.
    #[serde(default)]
    pub servers: Vec<ServerSettings>,
    /// The endpoints, in the order the user sees them.
    #[serde(default)]
    pub endpoints: Vec<EndpointSettings>,
    /// The user's preferences.
    #[serde(default)]
    pub preferences: Preferences,
}

/// One Piko server (cluster) and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// A unique name endpoints refer to (`piko.example.com`).
    pub name: String,
    /// The server's upstream URL (`https://piko.example.com:8001`).
    pub url: String,
    /// How clients reach an endpoint: `https://{endpoint}.piko.example.com`, or one URL for
    /// all (`http://localhost:8000`, clients then name the endpoint in `x-piko-endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// TLS settings for `https://` server URLs.
    #[serde(default, skip_serializing_if = "is_default_tls")]
    pub tls: TlsConfig,
    /// An HTTP proxy (`http://[user:pass@]host:port`); unset: the environment decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
}

fn is_default_tls(t: &TlsConfig) -> bool {
    *t == TlsConfig::default()
}

/// One endpoint: its id, the server it registers with and the local target behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSettings {
    /// The endpoint id registered with the server.
    pub id: EndpointId,
    /// The [`ServerSettings::name`] of its server.
    pub server: String,
    /// The local target: a port (`3000`), `host:port`, or `http://host:port[/base]`.
    pub target: String,
    /// HTTP or TCP.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Whether the tunnel should run.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_protocol() -> Protocol {
    Protocol::Http
}

fn yes() -> bool {
    true
}

/// The user's preferences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preferences {
    /// Start the app when the user logs in (the GUI applies it).
    pub start_at_login: bool,
    /// Start the enabled endpoints when the app starts; otherwise all start off.
    pub start_tunnels_on_launch: bool,
    /// Show a notification when a tunnel disconnects (the GUI applies it).
    pub notify_on_disconnect: bool,
    /// The window's colour theme.
    pub theme: Theme,
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            start_at_login: false,
            start_tunnels_on_launch: true,
            notify_on_disconnect: true,
            theme: Theme::System,
        }
    }
}

/// The window's colour theme.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    /// Follow the OS.
    #[default]
    System,
    /// Light.
    Light,
    /// Dark.
    Dark,
}

/// A value the user typed that is not usable, tagged with its form field (`id`, `target`,
/// `server`, `url`, `public_url`, `proxy_url`, `tls`, `name`, `token`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong and what to give instead.
    pub message: String,
}

impl FieldError {
    /// An error on `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// An endpoint as typed into a form, before validation: the id is still text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointForm {
    /// The endpoint id as typed.
    pub id: String,
    /// The server's name.
    pub server: String,
    /// The local target as typed.
    pub target: String,
    /// HTTP or TCP.
    pub protocol: Protocol,
    /// Whether the tunnel should run.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl EndpointForm {
    /// Check every field with the CLI's rules; the first bad field is named.
    pub fn validate(&self) -> Result<EndpointSettings, FieldError> {
        let id =
            EndpointId::new(self.id.trim()).map_err(|e| FieldError::new("id", e.to_string()))?;
        let settings = EndpointSettings {
            id,
            server: self.server.trim().to_string(),
            target: self.target.trim().to_string(),
            protocol: self.protocol,
            enabled: self.enabled,
        };
        settings.validate()?;
        Ok(settings)
    }
}

impl EndpointSettings {
    /// Check the fields the id's type does not: a server is named, and the target parses
    /// for the protocol (the CLI's rules: `3000`, `host:port`, `http://host:port`).
    pub fn validate(&self) -> Result<(), FieldError> {
        self.target().map(|_| ())
    }

    /// The parsed local target.
    pub fn target(&self) -> Result<Target, FieldError> {
        if self.server.trim().is_empty() {
            return Err(FieldError::new(
                "server",
                "choose the server this endpoint registers with",
            ));
        }
        self.to_config(crate::config::DEFAULT_TIMEOUT)
            .map(|c| c.target)
    }

    /// The endpoint as the tunnel runs it, with `timeout` per request to the local target.
    pub fn to_config(&self, timeout: Duration) -> Result<EndpointConfig, FieldError> {
        EndpointConfig::parse(self.id.as_str(), &self.target, self.protocol, timeout).map_err(|e| {
            match e {
                ConfigError::Addr { reason, .. } => FieldError::new("target", reason),
                other => FieldError::new("target", other.to_string()),
            }
        })
    }
}

impl ServerSettings {
    /// Check the name and every URL (TLS files are checked when the server is connected).
    pub fn validate(&self) -> Result<(), FieldError> {
        let name = &self.name;
        if name.trim().is_empty() {
            return Err(FieldError::new(
                "name",
                "give the server a name, such as piko.example.com",
            ));
        }
        if name.trim() != name || name.chars().any(char::is_control) || name.len() > 253 {
            return Err(FieldError::new(
                "name",
                "use at most 253 characters, without control characters or surrounding spaces",
            ));
        }
        ServerKey::parse(&self.url)
            .map_err(|e| FieldError::new("url", url_message(&e.to_string())))?;
        if let Some(public) = &self.public_url {
            check_public_url(public)?;
        }
        if let Some(proxy) = self.proxy_url.as_deref().filter(|p| !p.trim().is_empty()) {
            ProxyUrl::parse("proxy_url", proxy).map_err(|e| {
                FieldError::new("proxy_url", strip_key(&e.to_string(), "proxy_url"))
            })?;
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(FieldError::new(
                "tls",
                "a client certificate needs its key and a key its certificate; give both or neither",
            ));
        }
        Ok(())
    }

    /// The URL clients use to reach `endpoint` on this server, if the server says.
    pub fn public_url_of(&self, endpoint: &EndpointId) -> Option<String> {
        self.public_url
            .as_deref()
            .map(|u| u.replace("{endpoint}", endpoint.as_str()))
    }
}

/// `invalid server URL "x": reason` reads better in a form as just the reason.
fn url_message(msg: &str) -> String {
    msg.split_once(": ").map_or(msg, |(_, r)| r).to_string()
}

fn strip_key(msg: &str, key: &str) -> String {
    msg.strip_prefix(&format!("{key}: "))
        .unwrap_or(msg)
        .to_string()
}

fn check_public_url(public: &str) -> Result<(), FieldError> {
    let bad = |m: &str| FieldError::new("public_url", m);
    // `{endpoint}` sits in the host, where `Url` would not accept braces.
    let probe = public.replace("{endpoint}", "endpoint");
    let url = url::Url::parse(probe.trim()).map_err(|e| {
        bad(&format!(
            "not a valid URL ({e}); use https://{{endpoint}}.piko.example.com or http://host:8000"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("use an http:// or https:// URL with a host"));
    }
    if public.matches("{endpoint}").count() > 1 {
        return Err(bad("name {endpoint} at most once"));
    }
    Ok(())
}

impl Settings {
    /// The server named `name`.
    pub fn server(&self, name: &str) -> Option<&ServerSettings> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The endpoint `id`.
    pub fn endpoint(&self, id: &EndpointId) -> Option<&EndpointSettings> {
        self.endpoints.iter().find(|e| &e.id == id)
    }

    /// Check every entry and that they agree: unique server names and endpoint ids, each
    /// endpoint naming a known server. The error names the key (`endpoints[1].target`).
    pub fn validate(&self) -> Result<(), SettingsProblem> {
        for (i, s) in self.servers.iter().enumerate() {
            s.validate()
                .map_err(|e| SettingsProblem::at(format!("servers[{i}].{}", e.field), e.message))?;
            if self.servers[..i].iter().any(|o| o.name == s.name) {
                return Err(SettingsProblem::at(
                    format!("servers[{i}].name"),
                    format!(
                        "server {:?} is listed twice; give each server its own name",
                        s.name
                    ),
                ));
            }
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            e.validate().map_err(|f| {
                SettingsProblem::at(format!("endpoints[{i}].{}", f.field), f.message)
            })?;
            if self.endpoints[..i].iter().any(|o| o.id == e.id) {
                return Err(SettingsProblem::at(
                    format!("endpoints[{i}].id"),
                    format!(
                        "endpoint {} is listed twice; give each endpoint its own id",
                        e.id
                    ),
                ));
            }
            if self.server(&e.server).is_none() {
                return Err(SettingsProblem::at(
                    format!("endpoints[{i}].server"),
                    format!(
                        "no server is named {:?}; add it under servers or name one that is",
                        e.server
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The YAML text of these settings.
    pub fn to_yaml(&self) -> String {
        // Plain data of strings, bools and lists: serializing cannot fail.
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    /// Parse settings from YAML text; errors name the key and the line.
    pub fn from_yaml(text: &str) -> Result<Self, SettingsProblem> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let settings: Settings = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let inner = e.into_inner();
            let line = inner.location().map(|l| l.line());
            let mut message = without_location(&yaml_message(&inner.to_string()));
            if key.ends_with(".token") || key == "token" {
                message = "tokens are not kept in the settings file; sign in from the app (the token goes to the OS keychain)".into();
            }
            SettingsProblem { key, line, message }
        })?;
        settings.validate().map_err(|mut p| {
            p.line = line_of(text, &p.key);
            p
        })?;
        Ok(settings)
    }
}

/// What is wrong in a settings file: the key, the line when known, the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SettingsProblem {
    /// Dotted path of the key (`endpoints[1].target`); empty for the document itself.
    pub key: String,
    /// The 1-based line of the key in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl SettingsProblem {
    fn at(key: String, message: String) -> Self {
        Self {
            key,
            line: None,
            message,
        }
    }
}

impl fmt::Display for SettingsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// The line is reported apart; drop serde_yaml_ng's ` at line 3 column 5` suffix.
fn without_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

/// The line of the node at `key` (`endpoints[1].target`) in `text`: deserialize the
/// document with a seed that walks to that node and fails there, and read where the parser
/// says the failure was. Precise for any key, with no YAML parser of our own.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let path = parse_key(key)?;
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match serde::de::DeserializeSeed::deserialize(probe::Probe(&path), de) {
        Ok(()) => None,
        Err(e) if e.to_string().contains(probe::FOUND) => e.location().map(|l| l.line()),
        Err(_) => None,
    }
}

/// `endpoints[1].target` as segments.
fn parse_key(key: &str) -> Option<Vec<probe::Segment>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(probe::Segment::Key(name.to_string()));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            out.push(probe::Segment::Index(idx.strip_suffix(']')?.parse().ok()?));
        }
    }
    Some(out)
}

mod probe {
    //! A seed that walks a document to one node and fails there, for its line.
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    pub(super) const FOUND: &str = "piko-settings-probe-found";

    pub(super) enum Segment {
        Key(String),
        Index(usize),
    }

    pub(super) struct Probe<'a>(pub(super) &'a [Segment]);

    impl<'de> DeserializeSeed<'de> for Probe<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            if self.0.is_empty() {
                // Fail on the node itself, so its position is the one reported.
                return d.deserialize_any(Found);
            }
            d.deserialize_any(self)
        }
    }

    struct Found;

    impl<'de> Visitor<'de> for Found {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("anything")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Err(E::custom(FOUND))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Err(E::custom(FOUND))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Err(E::custom(FOUND))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Err(E::custom(FOUND))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Err(E::custom(FOUND))
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Err(E::custom(FOUND))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
            Err(de::Error::custom(FOUND))
        }
        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
            Err(de::Error::custom(FOUND))
        }
    }

    impl<'de> Visitor<'de> for Probe<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map or a list")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let want = match &self.0[0] {
                Segment::Index(i) => Some(*i),
                Segment::Key(_) => None,
            };
            let mut i = 0;
            loop {
                if Some(i) == want {
                    seq.next_element_seed(Probe(&self.0[1..]))?;
                } else if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                i += 1;
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<String>()? {
                match &self.0[0] {
                    Segment::Key(want) if *want == k => map.next_value_seed(Probe(&self.0[1..]))?,
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }
}

/// Why settings could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file does not parse or its values are not usable.
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, line and message.
        problem: SettingsProblem,
    },
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file could not be written; the previous one is unchanged.
    #[error("cannot save {}: {source}; the previous settings are kept", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// What [`SettingsStore::open`] found.
#[derive(Debug)]
pub struct Loaded {
    /// The settings to run with: the file's, or the last good ones when it is bad.
    pub settings: Settings,
    /// Set when the file could not be used: why, and that the last good settings stand in.
    pub error: Option<SettingsError>,
}

/// The settings file on disk: loading with a fallback to the last good copy, atomic saves.
/// Cheap to clone; clones share the file.
#[derive(Debug, Clone)]
pub struct SettingsStore {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    path: PathBuf,
    /// The file on disk was rejected at load: keep it aside before the next save replaces it.
    rejected: AtomicBool,
}

/// Distinguishes temporary files of concurrent saves in one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl SettingsStore {
    /// `settings.yaml` in the connector's config dir (`PIKO_CONFIG_DIR` overrides it).
    pub fn default_path() -> Result<PathBuf, ConfigError> {
        Ok(crate::config::config_dir()?.join(FILE_NAME))
    }

    /// Open the settings file at `path` and load it. Never fails: a missing file is empty
    /// settings; a bad one is reported in [`Loaded::error`] with the last good settings.
    pub fn open(path: impl Into<PathBuf>) -> (Self, Loaded) {
        let store = Self {
            inner: Arc::new(StoreInner {
                path: path.into(),
                rejected: AtomicBool::new(false),
            }),
        };
        store.remove_stale_temps();
        let loaded = store.load();
        (store, loaded)
    }

    /// The settings file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn side_path(&self, suffix: &str) -> PathBuf {
        let mut p = self.inner.path.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// Read the file again (after a hand edit): its settings, or the last good ones and why.
    pub fn load(&self) -> Loaded {
        let path = self.path().to_path_buf();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Loaded {
                    settings: Settings::default(),
                    error: None,
                }
            }
            Err(source) => return self.fallback(SettingsError::Read { path, source }),
        };
        match Settings::from_yaml(&text) {
            Ok(settings) => {
                self.inner.rejected.store(false, Ordering::Release);
                // Keep a copy to fall back on; not being able to is no reason to fail.
                let good = self.side_path(GOOD_SUFFIX);
                if fs::read_to_string(&good).ok().as_deref() != Some(text.as_str()) {
                    if let Err(e) = write_atomically(&good, text.as_bytes()) {
                        tracing::warn!(error = %e, path = %good.display(), "cannot keep a copy of the settings");
                    }
                }
                Loaded {
                    settings,
                    error: None,
                }
            }
            Err(problem) => {
                self.inner.rejected.store(true, Ordering::Release);
                self.fallback(SettingsError::Invalid { path, problem })
            }
        }
    }

    /// The last good settings (or none), with `error` saying why the file was not used.
    fn fallback(&self, error: SettingsError) -> Loaded {
        let good = fs::read_to_string(self.side_path(GOOD_SUFFIX))
            .ok()
            .and_then(|t| Settings::from_yaml(&t).ok());
        tracing::warn!(error = %error, fallback = good.is_some(), "settings file not used");
        Loaded {
            settings: good.unwrap_or_default(),
            error: Some(error),
        }
    }

    /// Write `settings` atomically: the file is either the previous one or the new one, even
    /// if the process dies mid-write. A file rejected at load is first kept as
    /// `settings.yaml.rejected`.
    pub fn save(&self, settings: &Settings) -> Result<(), SettingsError> {
        let path = self.path();
        let werr = |source| SettingsError::Write {
            path: path.to_path_buf(),
            source,
        };
        if self.inner.rejected.swap(false, Ordering::AcqRel) {
            if let Err(e) = fs::rename(path, self.side_path(REJECTED_SUFFIX)) {
                if e.kind() != io::ErrorKind::NotFound {
                    self.inner.rejected.store(true, Ordering::Release);
                    return Err(werr(e));
                }
            }
        }
        let text = settings.to_yaml();
        write_atomically(path, text.as_bytes()).map_err(werr)?;
        if let Err(e) = write_atomically(&self.side_path(GOOD_SUFFIX), text.as_bytes()) {
            tracing::warn!(error = %e, "cannot keep a copy of the settings");
        }
        Ok(())
    }

    fn temp_prefix(&self) -> String {
        let name = self
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| FILE_NAME.to_string());
        format!(".{name}.tmp.")
    }

    /// Temporary files a crashed save left behind.
    fn remove_stale_temps(&self) {
        let Some(dir) = self.path().parent() else {
            return;
        };
        let Ok(entries) = fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) else {
            return;
        };
        let prefix = self.temp_prefix();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() >= STALE_TEMP)
                .unwrap_or(true);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Write `bytes` to `path` through a temporary file in the same directory: write, fsync,
/// rename over `path`, fsync the directory. A crash at any point leaves `path` whole (the old
/// or the new content) and at worst a temporary file, which the next open removes.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; not every platform can open a directory.
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"servers:
  - name: piko.example.com
    url: https://piko.example.com:8001
    public_url: https://{endpoint}.piko.example.com
  - name: local
    url: http://127.0.0.1:8001
    proxy_url: http://proxy.corp:3128
    tls:
      insecure_skip_verify: true
endpoints:
  - id: shop
    server: piko.example.com
    target: "3000"
  - id: db
    server: local
    target: db.local:5432
    protocol: tcp
    enabled: false
preferences:
  theme: dark
"#;

    fn ep(id: &str, server: &str, target: &str) -> EndpointSettings {
        EndpointSettings {
            id: EndpointId::new(id).unwrap(),
            server: server.into(),
            target: target.into(),
            protocol: Protocol::Http,
            enabled: true,
        }
    }

    #[test]
    fn parses_a_settings_file_and_writes_it_back_the_same() {
        let s = Settings::from_yaml(GOOD).unwrap();
        assert_eq!(s.servers.len(), 2);
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(s.endpoints[0].protocol, Protocol::Http);
        assert!(s.endpoints[0].enabled);
        assert_eq!(s.endpoints[1].protocol, Protocol::Tcp);
        assert!(!s.endpoints[1].enabled);
        assert!(s.servers[1].tls.insecure_skip_verify);
        assert_eq!(s.preferences.theme, Theme::Dark);
        assert!(
            s.preferences.start_tunnels_on_launch,
            "defaults fill the rest"
        );
        assert_eq!(
            s.servers[0].public_url_of(&s.endpoints[0].id).as_deref(),
            Some("https://shop.piko.example.com")
        );
        assert_eq!(Settings::from_yaml(&s.to_yaml()).unwrap(), s);
        assert_eq!(Settings::from_yaml("").unwrap(), Settings::default());
    }

    /// Every mistake names the key and the line it is on.
    #[test]
    fn mistakes_name_the_key_and_the_line() {
        let cases: &[(&str, &str, &str)] = &[
            // (replace, with, expected error)
            (
                "    target: \"3000\"",
                "    target: nope",
                "line 13: endpoints[0].target: expected a port (3000), host:port (localhost:3000) or http://host:port",
            ),
            (
                "  - id: shop",
                "  - id: sh/op",
                "line 11: endpoints[0].id: ",
            ),
            (
                "    protocol: tcp",
                "    protocol: udp",
                "line 17: endpoints[1].protocol: unknown variant `udp`",
            ),
            (
                "    enabled: false",
                "    enabled: false\n    colour: red",
                "line 19: endpoints[1].colour: unknown field `colour`",
            ),
            (
                "    server: local",
                "    server: nowhere",
                "line 15: endpoints[1].server: no server is named \"nowhere\"",
            ),
            (
                "  - id: db",
                "  - id: shop",
                "line 14: endpoints[1].id: endpoint shop is listed twice",
            ),
            (
                "  - name: local",
                "  - name: piko.example.com",
                "line 5: servers[1].name: server \"piko.example.com\" is listed twice",
            ),
            (
                "    url: http://127.0.0.1:8001",
                "    url: 127.0.0.1:8001",
                "line 6: servers[1].url: expected a URL",
            ),
            (
                "    proxy_url: http://proxy.corp:3128",
                "    proxy_url: socks5://proxy.corp:1080",
                "line 7: servers[1].proxy_url: ",
            ),
            (
                "    public_url: https://{endpoint}.piko.example.com",
                "    public_url: piko.example.com",
                "line 4: servers[0].public_url: not a valid URL",
            ),
            (
                "      insecure_skip_verify: true",
                "      insecure_skip_verify: maybe",
                "line 9: servers[1].tls.insecure_skip_verify: invalid type",
            ),
            (
                "    url: https://piko.example.com:8001",
                "    url: https://piko.example.com:8001\n    token: eyJhbGciOi.x.y",
                "line 4: servers[0].token: tokens are not kept in the settings file",
            ),
            (
                "  theme: dark",
                "  theme: blue",
                "line 20: preferences.theme: unknown variant `blue`",
            ),
            (
                "preferences:",
                "preferences: [",
                "line ",
            ),
        ];
        assert!(!cases.is_empty());
        for (from, to, want) in cases {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            let err = Settings::from_yaml(&text).expect_err(to).to_string();
            assert!(
                err.starts_with(want),
                "edit {to:?}\n got: {err}\nwant: {want}"
            );
        }
    }

    #[test]
    fn forms_name_the_field_at_fault() {
        let form = |id: &str, server: &str, target: &str, protocol| EndpointForm {
            id: id.into(),
            server: server.into(),
            target: target.into(),
            protocol,
            enabled: true,
        };
        let ok = form(" shop ", "local", "localhost:3000", Protocol::Http)
            .validate()
            .unwrap();
        assert_eq!(ok.id.as_str(), "shop");
        assert_eq!(ok.target, "localhost:3000");
        let cases = [
            (form("", "local", "3000", Protocol::Http), "id"),
            (form("a b", "local", "3000", Protocol::Http), "id"),
            (form("shop", "", "3000", Protocol::Http), "server"),
            (form("shop", "local", "", Protocol::Http), "target"),
            (form("shop", "local", "abc", Protocol::Http), "target"),
            (
                form("shop", "local", "ftp://x:21", Protocol::Http),
                "target",
            ),
            (form("shop", "local", "0", Protocol::Tcp), "target"),
        ];
        for (f, field) in cases {
            let e = f.validate().expect_err(&f.target);
            assert_eq!(e.field, field, "{f:?}: {e}");
            assert!(!e.message.is_empty());
        }
        let server = |name: &str, url: &str| ServerSettings {
            name: name.into(),
            url: url.into(),
            public_url: None,
            tls: TlsConfig::default(),
            proxy_url: None,
        };
        server("a", "https://a.example.com").validate().unwrap();
        let with = |f: &dyn Fn(&mut ServerSettings)| {
            let mut s = server("a", "https://a.example.com");
            f(&mut s);
            s.validate().unwrap_err().field
        };
        assert_eq!(with(&|s| s.name = String::new()), "name");
        assert_eq!(with(&|s| s.name = " a".into()), "name");
        assert_eq!(with(&|s| s.url = "a.example.com".into()), "url");
        assert_eq!(with(&|s| s.url = "ftp://a.example.com".into()), "url");
        assert_eq!(with(&|s| s.public_url = Some("nope".into())), "public_url");
        assert_eq!(
            with(&|s| s.public_url = Some("https://{endpoint}.{endpoint}.x".into())),
            "public_url"
        );
        assert_eq!(
            with(&|s| s.proxy_url = Some("socks5://p:1080".into())),
            "proxy_url"
        );
        assert_eq!(with(&|s| s.tls.cert = Some("/c.pem".into())), "tls");
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn sample() -> Settings {
        Settings::from_yaml(GOOD).unwrap()
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let d = dir();
        let path = d.path().join("sub").join(FILE_NAME);
        let (store, loaded) = SettingsStore::open(&path);
        assert_eq!(
            loaded.settings,
            Settings::default(),
            "a missing file is empty settings"
        );
        assert!(loaded.error.is_none());
        store.save(&sample()).unwrap();
        let (_, again) = SettingsStore::open(&path);
        assert_eq!(again.settings, sample());
        assert!(again.error.is_none());
        let names: Vec<String> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains(".tmp.")),
            "no temporary file is left: {names:?}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// A hand edit with a mistake: the error names key and line, the last good settings
    /// run, and the next save keeps the rejected file aside instead of losing it.
    #[test]
    fn a_bad_hand_edit_loads_the_last_good_settings() {
        let d = dir();
        let path = d.path().join(FILE_NAME);
        let (store, _) = SettingsStore::open(&path);
        store.save(&sample()).unwrap();
        let bad = GOOD.replace("target: db.local:5432", "target: db.local:99999");
        fs::write(&path, &bad).unwrap();

        let (store, loaded) = SettingsStore::open(&path);
        assert_eq!(loaded.settings, sample(), "the last good settings");
        let err = loaded.error.expect("the bad file is reported").to_string();
        assert!(
            err.contains("line 16: endpoints[1].target: expected a port"),
            "{err}"
        );
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            bad,
            "the bad file is untouched"
        );

        let mut next = sample();
        next.endpoints.remove(1);
        store.save(&next).unwrap();
        let rejected = fs::read_to_string(d.path().join("settings.yaml.rejected")).unwrap();
        assert_eq!(rejected, bad, "the user's edit is kept aside");
        let (_, loaded) = SettingsStore::open(&path);
        assert_eq!(loaded.settings, next);
        assert!(loaded.error.is_none());
    }

    #[test]
    fn a_bad_file_without_a_good_copy_is_empty_settings_and_an_error() {
        let d = dir();
        let path = d.path().join(FILE_NAME);
        fs::write(&path, "servers: 3\n").unwrap();
        let (_, loaded) = SettingsStore::open(&path);
        assert_eq!(loaded.settings, Settings::default());
        let err = loaded.error.unwrap().to_string();
        assert!(err.contains("line 1: servers: invalid type"), "{err}");
    }

    /// A crash mid-write leaves a partial temporary file: the settings are the previous
    /// ones, and the leftover goes away once it is stale.
    #[test]
    fn a_partial_temporary_file_from_a_crash_is_ignored_and_cleaned_up() {
        let d = dir();
        let path = d.path().join(FILE_NAME);
        let (store, _) = SettingsStore::open(&path);
        store.save(&sample()).unwrap();
        let partial = d.path().join(".settings.yaml.tmp.999999.0");
        fs::write(&partial, &GOOD[..40]).unwrap();
        let (_, loaded) = SettingsStore::open(&path);
        assert_eq!(loaded.settings, sample());
        assert!(loaded.error.is_none());
        assert!(
            partial.exists(),
            "a fresh temporary file may be another save's"
        );
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&partial)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (store, _) = SettingsStore::open(&path);
        assert!(!partial.exists(), "a stale leftover is removed");
        store.save(&Settings::default()).unwrap();
        assert_eq!(store.load().settings, Settings::default());
    }

    /// Set by [`a_process_killed_while_saving_never_loses_the_file`] in the child it starts.
    const CRASH_CHILD_ENV: &str = "PIKO_SETTINGS_CRASH_CHILD";

    /// Not a test of its own: the child process of the crash test, saving in a loop until
    /// it is killed. Returns at once in a normal run.
    #[test]
    fn crash_child_saves_until_killed() {
        let Some(path) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let (store, _) = SettingsStore::open(PathBuf::from(path));
        let mut s = sample();
        for i in 0u64.. {
            // A long file, so that a kill often lands mid-write.
            s.endpoints = (0..200)
                .map(|n| ep(&format!("e{i}-{n}"), "local", "3000"))
                .collect();
            store.save(&s).unwrap();
        }
    }

    /// Kill a process that saves in a loop, many times at random moments (mid-write,
    /// between write and rename): the file always parses as one whole version.
    #[test]
    fn a_process_killed_while_saving_never_loses_the_file() {
        let d = dir();
        let path = d.path().join(FILE_NAME);
        let (store, _) = SettingsStore::open(&path);
        store.save(&sample()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut kills = 0;
        for round in 0..20u64 {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "settings::tests::crash_child_saves_until_killed",
                    "--nocapture",
                ])
                .env(CRASH_CHILD_ENV, &path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Let it get into its loop, at a different moment each round.
            std::thread::sleep(Duration::from_millis(30 + (round * 7) % 40));
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            let text = fs::read_to_string(&path).unwrap();
            let s = Settings::from_yaml(&text)
                .unwrap_or_else(|e| panic!("round {round}: the file does not parse: {e}"));
            assert!(
                s.endpoints.len() == 2 || s.endpoints.len() == 200,
                "round {round}: a whole version, got {} endpoints",
                s.endpoints.len()
            );
        }
        assert_eq!(kills, 20);
        let (_, loaded) = SettingsStore::open(&path);
        assert!(loaded.error.is_none());
    }
}
