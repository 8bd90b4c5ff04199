//! `log.subsystems`: the names a user gives (this project's module paths, or the original Go
//! Piko's subsystem names) as the log targets they select.

/// The `tracing` targets that `name` selects. The original's names (`proxy.http.access`,
/// `cluster.manager`, `gossip`, ...) select the logs of the part of this server that does the
/// same work; any other name is a module path under `piko_server` (`.` or `::` between parts).
pub(super) fn targets(name: &str) -> Vec<String> {
    let fixed: &[&str] = match name {
        "main" | "server" => &["piko_server"],
        "proxy.http" | "proxy.tcp" => &["piko_server::proxy"],
        "proxy.access" | "proxy.http.access" | "proxy.tcp.access" => {
            &["piko_server::proxy::access"]
        }
        "cluster.manager" | "gossip" => &["piko_server::cluster"],
        "forwarder" => &["piko_server::proxy::forward"],
        "client" => &["piko_server::cluster::network"],
        _ => &[],
    };
    if !fixed.is_empty() {
        return fixed.iter().map(|t| t.to_string()).collect();
    }
    vec![format!("piko_server::{}", name.replace('.', "::"))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_originals_names_select_the_same_logs() {
        for (name, want) in [
            ("proxy", "piko_server::proxy"),
            ("proxy.http", "piko_server::proxy"),
            ("proxy.access", "piko_server::proxy::access"),
            ("proxy.http.access", "piko_server::proxy::access"),
            ("proxy.tcp.access", "piko_server::proxy::access"),
            ("upstream", "piko_server::upstream"),
            ("admin", "piko_server::admin"),
            ("cluster", "piko_server::cluster"),
            ("cluster.manager", "piko_server::cluster"),
            ("gossip", "piko_server::cluster"),
            ("forwarder", "piko_server::proxy::forward"),
            ("server", "piko_server"),
            ("upstream.pool", "piko_server::upstream::pool"),
        ] {
            assert_eq!(targets(name), vec![want.to_string()], "{name}");
        }
    }
}
