//! "Copy diagnostics": what support needs to help, without a secret in it.
//!
//! Tokens are never in the settings (they live in the credential store); the one secret a
//! settings file may hold is a proxy password in `proxy_url`, masked here.

use std::fmt::Write as _;

use crate::state::AppState;

/// Log lines included.
pub const LOG_LINES: usize = 200;

/// The report: versions, OS, credential store, settings, endpoint states, recent log lines.
pub fn report(state: &AppState, webview: Option<String>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Piko Connector {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "tauri {}", tauri::VERSION);
    let _ = writeln!(out, "webview {}", webview.as_deref().unwrap_or("unknown"));
    let _ = writeln!(
        out,
        "os {} {} ({})",
        std::env::consts::OS,
        std::env::consts::ARCH,
        os_name()
    );
    let _ = writeln!(out, "tokens in {}", state.token_store);
    if let Some(why) = &state.credentials_fallback {
        let _ = writeln!(out, "keychain not used: {why}");
    }
    let _ = writeln!(
        out,
        "settings file {}",
        state.core.settings_path().display()
    );
    let mut settings = state.core.settings();
    for s in &mut settings.servers {
        s.proxy_url = s.proxy_url.as_deref().map(mask_password);
    }
    let _ = writeln!(out, "\n--- settings\n{}", settings.to_yaml().trim_end());
    let view = state.view();
    let _ = writeln!(out, "\n--- state\n{}", view.summary);
    if let Some(b) = &view.banner {
        let _ = writeln!(out, "settings problem: {b}");
    }
    for e in &view.endpoints {
        let _ = writeln!(
            out,
            "{} {} -> {} [{}] {}{}",
            e.tone.glyph(),
            e.id,
            e.target,
            e.protocol,
            e.state,
            e.error
                .as_deref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        );
    }
    if let Some(logs) = &state.logs {
        let lines = logs.tail().recent();
        let from = lines.len().saturating_sub(LOG_LINES);
        let _ = writeln!(
            out,
            "\n--- last {} log lines ({})",
            lines.len() - from,
            logs.dir().display()
        );
        for l in &lines[from..] {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

/// `http://user:secret@proxy:3128` → `http://user:***@proxy:3128`.
pub fn mask_password(proxy: &str) -> String {
    match url::Url::parse(proxy) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) if u.has_host() => proxy.to_string(),
        // Not a URL with a host: it could hold anything, so show none of it.
        _ => "*** (unparsable proxy URL)".to_string(),
    }
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown release".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_passwords_are_masked() {
        assert_eq!(
            mask_password("http://me:hunter2@proxy:3128"),
            "http://me:***@proxy:3128/"
        );
        assert_eq!(mask_password("http://proxy:3128"), "http://proxy:3128");
        assert_eq!(
            mask_password("me:hunter2@proxy"),
            "*** (unparsable proxy URL)"
        );
    }
}
