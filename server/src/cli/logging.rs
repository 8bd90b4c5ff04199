//! The node's log: `log.level`, `log.format`, and `log.subsystems` at debug level whatever the
//! level (by this project's module paths or the original's subsystem names, see
//! [`super::subsystems`]).

use crate::config::LogFile;

use super::subsystems;

/// The `tracing` filter of `log`: the level, quieter dependencies, and a debug directive for
/// each target of `log.subsystems`.
pub(super) fn filter(log: &LogFile) -> String {
    let mut filter = format!(
        // openraft warns about routine races (stale responses after a vote or membership
        // change); its errors still show, and `log.subsystems: [cluster]` shows the rest.
        "{},hyper=warn,h2=warn,tungstenite=warn,tokio_tungstenite=warn,openraft=error",
        log.level
    );
    let mut named = Vec::new();
    for s in &log.subsystems {
        for target in subsystems::targets(s) {
            filter.push_str(&format!(",{target}=debug"));
            named.push(target);
        }
        if matches!(s.as_str(), "cluster" | "cluster.manager" | "gossip") {
            filter.push_str(",openraft=info");
        }
    }
    // A directive covers the targets below it; a subsystem of its own below a named one
    // keeps the base level unless it is named too (the most specific directive wins).
    for own in OWN_SUBSYSTEMS {
        let covered = named.iter().any(|t| {
            own.strip_prefix(t.as_str())
                .is_some_and(|r| r.starts_with("::"))
        });
        if covered && !named.iter().any(|t| t == own) {
            filter.push_str(&format!(",{own}={}", log.level));
        }
    }
    filter
}

/// Targets that are subsystems of their own in the original, not part of the one above them:
/// its access log is `proxy.access`, which neither `proxy` nor `proxy.http` selects.
const OWN_SUBSYSTEMS: &[&str] = &["piko_server::proxy::access"];

/// Log to stderr as `log` says (text, or JSON with `log.format: json`). Call once per process.
pub fn init_logging(log: &LogFile) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter(log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: piped logs are read by tools (and by grep).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_of(subsystems: &[&str]) -> String {
        filter(&LogFile {
            level: "info".into(),
            subsystems: subsystems.iter().map(|s| s.to_string()).collect(),
            format: "text".into(),
        })
    }

    #[test]
    fn a_named_subsystem_is_at_debug_and_the_access_log_only_when_named() {
        let f = filter_of(&["proxy.http"]);
        assert!(f.contains(",piko_server::proxy=debug"), "{f}");
        assert!(f.ends_with(",piko_server::proxy::access=info"), "{f}");
        let f = filter_of(&["proxy.http", "proxy.access"]);
        assert!(f.contains(",piko_server::proxy::access=debug"), "{f}");
        assert!(!f.contains("access=info"), "{f}");
        let f = filter_of(&["server"]);
        assert!(
            f.ends_with(",piko_server=debug,piko_server::proxy::access=info"),
            "{f}"
        );
        assert!(!filter_of(&["upstream"]).contains("access"));
        assert!(filter_of(&["gossip"]).contains(",piko_server::cluster=debug,openraft=info"));
    }
}
