//! Logs of the connector: rolling files in the OS log dir (one per day, a bounded number
//! kept) for support, and an in-memory [`LogTail`] of recent lines with a live feed for the
//! GUI's log view.
//!
//! Both go through the same filter, made safe by
//! [`crate::credentials::redacted_log_filter`]: even at trace level no
//! token reaches a file or the tail.
//!
//! Layout: this file (the log dir, [`layers`], [`init`]), `tail` ([`LogTail`], [`TailLayer`]).

mod tail;

use std::path::{Path, PathBuf};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use self::tail::{LogLine, LogTail, TailLayer};
use crate::config::ConfigError;
use crate::credentials::redacted_log_filter;

/// Environment variable naming the log directory (overrides the OS's; for tests).
pub const LOG_DIR_ENV: &str = "PIKO_LOG_DIR";
/// Daily files kept by default: a week.
pub const DEFAULT_MAX_FILES: usize = 7;
/// Lines the in-memory tail keeps by default.
pub const DEFAULT_TAIL_LINES: usize = 1000;
/// Log files are `piko-connector.YYYY-MM-DD.log`.
pub const DEFAULT_FILE_PREFIX: &str = "piko-connector";

/// The connector's log directory: `$PIKO_LOG_DIR`, else the OS's place for logs
/// (`~/.local/state/piko/logs` on Linux, `~/Library/Logs/piko` on macOS,
/// `%LOCALAPPDATA%\piko\data\logs` on Windows).
pub fn log_dir() -> Result<PathBuf, ConfigError> {
    if let Some(dir) = std::env::var_os(LOG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let none = || ConfigError::Invalid {
        key: LOG_DIR_ENV.to_string(),
        message: "no home directory found to keep logs in; set PIKO_LOG_DIR".into(),
    };
    if cfg!(target_os = "macos") {
        let base = directories::BaseDirs::new().ok_or_else(none)?;
        return Ok(base.home_dir().join("Library/Logs/piko"));
    }
    let dirs = directories::ProjectDirs::from("", "", "piko").ok_or_else(none)?;
    Ok(match dirs.state_dir() {
        Some(state) => state.join("logs"),
        None => dirs.data_local_dir().join("logs"),
    })
}

/// Where and what to log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The directory of the log files.
    pub dir: PathBuf,
    /// File names start with this (`piko-connector.2026-01-31.log`).
    pub file_prefix: String,
    /// Daily files kept; older ones are deleted (at start and at each new day).
    pub max_files: usize,
    /// Lines kept in memory for the log view.
    pub tail_lines: usize,
    /// The filter (`info`, `debug,hyper=warn`); made safe before use.
    pub filter: String,
}

impl LogOptions {
    /// Options for `dir` with the defaults: `info`, a week of files, 1000 lines in memory.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            file_prefix: DEFAULT_FILE_PREFIX.to_string(),
            max_files: DEFAULT_MAX_FILES,
            tail_lines: DEFAULT_TAIL_LINES,
            filter: "info".to_string(),
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The filter does not parse.
    #[error("invalid log filter {filter:?}: {message}; use error, warn, info, debug or trace")]
    Filter {
        /// The filter given.
        filter: String,
        /// Why.
        message: String,
    },
    /// The log directory or file cannot be created.
    #[error("cannot write logs to {}: {message}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// Another subscriber is already installed.
    #[error("logging is already set up in this process")]
    AlreadySet,
}

/// Logging that is running: the tail, the directory, and the guard that flushes the file
/// writer when dropped (keep it until the program ends).
pub struct Logs {
    tail: LogTail,
    dir: PathBuf,
    _guard: WorkerGuard,
}

impl Logs {
    /// Recent lines and their live feed.
    pub fn tail(&self) -> &LogTail {
        &self.tail
    }

    /// The log files' directory (for "Open log folder").
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The file and tail layers, for a program that builds its own subscriber (with a terminal
/// layer, say). Keep [`Logs`] alive for as long as logs should be written.
pub fn layers<S>(options: &LogOptions) -> Result<(impl Layer<S> + Send + Sync, Logs), LogError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let filter = |f: &str| {
        EnvFilter::try_new(redacted_log_filter(f)).map_err(|e| LogError::Filter {
            filter: f.to_string(),
            message: e.to_string(),
        })
    };
    let file_filter = filter(&options.filter)?;
    let tail_filter = filter(&options.filter)?;
    std::fs::create_dir_all(&options.dir).map_err(|e| LogError::Dir {
        dir: options.dir.clone(),
        message: e.to_string(),
    })?;
    let appender = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(&options.file_prefix)
        .filename_suffix("log")
        .max_log_files(options.max_files.max(1))
        .build(&options.dir)
        .map_err(|e| LogError::Dir {
            dir: options.dir.clone(),
            message: e.to_string(),
        })?;
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let tail = LogTail::new(options.tail_lines);
    let file = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_filter(file_filter);
    let live = TailLayer::new(tail.clone()).with_filter(tail_filter);
    Ok((
        file.and_then(live),
        Logs {
            tail,
            dir: options.dir.clone(),
            _guard: guard,
        },
    ))
}

/// Install the file and tail layers as the process's subscriber (the tray app's setup).
pub fn init(options: &LogOptions) -> Result<Logs, LogError> {
    let (layer, logs) = layers(options)?;
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .map_err(|_| LogError::AlreadySet)?;
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines reach the file and the tail (with their span), the live feed sees them, and
    /// even at trace level tungstenite's dumps (which hold the Authorization header) are
    /// kept out of both.
    #[test]
    fn lines_reach_the_file_and_the_tail_but_never_tungstenite_dumps() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            filter: "trace".into(),
            tail_lines: 3,
            ..LogOptions::new(dir.path().join("logs"))
        };
        let (layer, logs) = layers(&options).unwrap();
        let mut feed = logs.tail().subscribe();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("tunnel", endpoint = "shop");
            let _g = span.enter();
            tracing::info!(delay = 3, "tunnel lost; reconnecting");
            tracing::trace!(target: "tungstenite::protocol", "authorization: Bearer SECRET-TOKEN");
            for i in 0..4 {
                tracing::debug!(i, "filler");
            }
        });
        let first = feed.try_recv().unwrap();
        assert_eq!(first.level, "INFO");
        assert_eq!(first.context, "tunnel{endpoint=shop}");
        assert_eq!(first.message, "tunnel lost; reconnecting delay=3");
        assert!(
            first.to_string().contains("tunnel{endpoint=shop}: "),
            "{first}"
        );
        let recent = logs.tail().recent();
        assert_eq!(recent.len(), 3, "the tail keeps its bound");
        assert_eq!(recent[2].message, "filler i=3");
        let log_dir = logs.dir().to_path_buf();
        drop(logs); // flushes the file writer
        let files: Vec<_> = std::fs::read_dir(&log_dir).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "one file for today");
        let name = files[0].file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with("piko-connector.") && name.ends_with(".log"),
            "{name}"
        );
        let text = std::fs::read_to_string(files[0].path()).unwrap();
        assert!(text.contains("tunnel lost; reconnecting"), "{text}");
        assert!(!text.contains("SECRET-TOKEN"), "{text}");
        while let Ok(line) = feed.try_recv() {
            assert!(!line.message.contains("SECRET-TOKEN"), "{line}");
        }
    }

    #[test]
    fn old_log_files_beyond_the_bound_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for day in 1..=9 {
            std::fs::write(
                dir.path()
                    .join(format!("piko-connector.2020-01-0{day}.log")),
                "old\n",
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("other.txt"), "not a log").unwrap();
        let options = LogOptions {
            max_files: 3,
            ..LogOptions::new(dir.path().to_path_buf())
        };
        let (_layer, logs) = layers::<tracing_subscriber::Registry>(&options).unwrap();
        drop(logs);
        let logs: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .collect();
        assert_eq!(logs.len(), 3, "{logs:?}");
        assert!(
            dir.path().join("other.txt").exists(),
            "other files are left alone"
        );
    }

    #[test]
    fn a_bad_filter_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            filter: "loud=[".into(),
            ..LogOptions::new(dir.path().to_path_buf())
        };
        let err = layers::<tracing_subscriber::Registry>(&options)
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("invalid log filter \"loud=[\""), "{err}");
    }
}
