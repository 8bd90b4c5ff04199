//! Loading and converting configuration: precedence, env expansion, every error naming its key.

use super::*;

fn src(file: Option<&str>, env: &[(&str, &str)], flags: &[(&str, &str)]) -> Sources {
    Sources {
        file: file.map(|f| ("piko.yaml".to_string(), f.to_string())),
        expand_env: true,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flags: flags
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect(),
    }
}

#[test]
fn defaults_are_the_original_ports() {
    let c = load(&Sources::default()).unwrap();
    assert_eq!(c.proxy.bind_addr, "0.0.0.0:8000".parse().unwrap());
    assert_eq!(c.upstream.bind_addr, "0.0.0.0:8001".parse().unwrap());
    assert_eq!(c.admin.bind_addr, "0.0.0.0:8002".parse().unwrap());
    assert_eq!(c.cluster.bind_addr, "0.0.0.0:8003".parse().unwrap());
    assert_eq!(c.proxy.timeout, Duration::from_secs(30));
    assert_eq!(c.grace_period, Duration::from_secs(60));
}

#[test]
fn precedence_is_defaults_file_env_flags() {
    let file = "proxy:\n  bind_addr: 127.0.0.1:1000\n  timeout: 5s\nupstream:\n  bind_addr: 127.0.0.1:1001\n";
    let c = load(&src(
        Some(file),
        &[
            ("PIKO_PROXY_BIND_ADDR", "127.0.0.1:2000"),
            ("PIKO_PROXY_TIMEOUT", "7s"),
        ],
        &[("proxy.bind_addr", "127.0.0.1:3000")],
    ))
    .unwrap();
    assert_eq!(c.proxy.bind_addr.port(), 3000, "flag wins");
    assert_eq!(c.proxy.timeout, Duration::from_secs(7), "env beats file");
    assert_eq!(c.upstream.bind_addr.port(), 1001, "file beats default");
}

#[test]
fn expands_env_in_file() {
    let file = "proxy:\n  bind_addr: ${ADDR}\n  timeout: ${TIMEOUT:12s}\n";
    let c = load(&src(Some(file), &[("ADDR", "127.0.0.1:4000")], &[])).unwrap();
    assert_eq!(
        (c.proxy.bind_addr.port(), c.proxy.timeout),
        (4000, Duration::from_secs(12))
    );
    assert_eq!(
        // An unterminated `${` is dropped, as the original does.
        expand_env("a${X}b${Y:z}c${", &|n| (n == "X").then(|| "1".into())),
        "a1bzc"
    );
}

#[test]
fn limits() {
    let c = load(&Sources::default()).unwrap();
    assert_eq!(
        (
            c.upstream.limits.max_streams,
            c.upstream.limits.max_per_endpoint
        ),
        (65_536, None)
    );
    let c = load(&src(
        None,
        &[("PIKO_UPSTREAM_MAX_UPSTREAMS_PER_ENDPOINT", "3")],
        &[("upstream.max_streams", "100")],
    ))
    .unwrap();
    assert_eq!(
        (
            c.upstream.limits.max_streams,
            c.upstream.limits.max_per_endpoint
        ),
        (100, Some(3))
    );
    let e = load(&src(None, &[], &[("upstream.max_streams", "0")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("upstream.max_streams: must be at least 1"),
        "{e}"
    );
}

#[test]
fn a_partial_section_keeps_the_other_defaults() {
    let c = load(&src(
        Some("upstream:\n  advertise_addr: node1:8001\nadmin: {}\n"),
        &[],
        &[],
    ))
    .unwrap();
    assert_eq!(c.upstream.bind_addr.port(), 8001);
    assert_eq!(c.admin.bind_addr.port(), 8002);
    assert_eq!(c.upstream.advertise_addr.as_deref(), Some("node1:8001"));
}

#[test]
fn list_values_from_flags_and_env() {
    let c = load(&src(None, &[("PIKO_CLUSTER_JOIN", "a:8003,b:8003")], &[])).unwrap();
    assert_eq!(c.cluster.join, vec!["a:8003", "b:8003"]);
    let c = load(&src(None, &[], &[("cluster.join", "c:8003")])).unwrap();
    assert_eq!(c.cluster.join, vec!["c:8003"]);
}

#[test]
fn errors_name_the_key() {
    let cases: [(Sources, &str); 12] = [
        (
            src(Some("proxy:\n  bind_adr: x\n"), &[], &[]),
            "proxy.bind_adr: unknown field `bind_adr`",
        ),
        (src(Some("nope: 1\n"), &[], &[]), "unknown field `nope`"),
        (
            src(Some("proxy:\n  timeout: soon\n"), &[], &[]),
            "proxy.timeout: invalid duration \"soon\"",
        ),
        (
            src(None, &[("PIKO_PROXY_TIMEOUT", "10 parsecs")], &[]),
            "proxy.timeout: invalid duration",
        ),
        (
            src(None, &[], &[("upstream.bind_addr", "nowhere")]),
            "upstream.bind_addr: invalid address",
        ),
        (
            src(None, &[], &[("log.level", "loud")]),
            "log.level: invalid level",
        ),
        (
            src(None, &[], &[("proxy.http.max_header_bytes", "lots")]),
            "proxy.http.max_header_bytes: invalid type",
        ),
        (
            src(Some("proxy: [1, 2]\n"), &[], &[]),
            "proxy: invalid type",
        ),
        (
            src(None, &[], &[("proxy.access_log.level", "loud")]),
            "proxy.access_log.level: invalid level \"loud\"",
        ),
        (
            src(
                Some("proxy:\n  access_log:\n    request_headers:\n      allow_list: [a]\n      block_list: [b]\n"),
                &[],
                &[],
            ),
            "proxy.access_log.request_headers: set allow_list or block_list, not both",
        ),
        (
            src(Some("proxy:\n  access_log:\n    lvl: info\n"), &[], &[]),
            "proxy.access_log.lvl: unknown field `lvl`",
        ),
        (
            src(None, &[("PIKO_PROXY_HTTP_IDLE_TIMEOUT", "0s")], &[]),
            "proxy.http.idle_timeout: must be greater than zero",
        ),
    ];
    for (s, want) in cases {
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains(want), "error {e:?} should contain {want:?}");
    }
}

#[test]
fn out_of_range_durations_and_bad_trusted_proxies_name_the_key() {
    let absurd = "10000000000000000000s";
    let too_long = "duration \"10000000000000000000s\" is too long; the limit is 1year";
    let mut cases: Vec<(Sources, String)> = [
        "proxy.timeout",
        "proxy.http.read_header_timeout",
        "proxy.http.idle_timeout",
        "grace_period",
        "cluster.node_lease",
        "proxy.auth.jwks.cache_ttl",
        "upstream.auth.jwks.timeout",
        "admin.auth.jwks.timeout",
    ]
    .iter()
    .map(|k| (src(None, &[], &[(k, absurd)]), format!("{k}: {too_long}")))
    .collect();
    cases.extend([
        (
            src(None, &[("PIKO_GRACE_PERIOD", "366d")], &[]),
            "grace_period: duration \"366d\" is too long".to_string(),
        ),
        (
            src(
                Some("upstream:\n  tenants:\n    - id: t1\n      auth:\n        hmac_secret_key: k\n        jwks:\n          cache_ttl: 2years\n"),
                &[],
                &[],
            ),
            "upstream.tenants[0].auth.jwks.cache_ttl: duration \"2years\" is too long".to_string(),
        ),
        (
            src(None, &[], &[("proxy.trusted_proxies", "10.0.0.0/33")]),
            "proxy.trusted_proxies: invalid CIDR \"10.0.0.0/33\"".to_string(),
        ),
        (
            src(None, &[("PIKO_PROXY_TRUSTED_PROXIES", "10.0.0.0/8,lb.internal")], &[]),
            "proxy.trusted_proxies: invalid CIDR \"lb.internal\"".to_string(),
        ),
        (
            src(Some("proxy:\n  trusted_proxies: 10.0.0.0/8\n"), &[], &[]),
            "proxy.trusted_proxies: invalid type".to_string(),
        ),
    ]);
    assert_eq!(cases.len(), 13);
    for (s, want) in cases {
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains(&want), "error {e:?} should contain {want:?}");
    }
    // The limit itself is accepted.
    let c = load(&src(None, &[], &[("grace_period", "1y")])).unwrap();
    assert_eq!(c.grace_period, MAX_DURATION);
}

#[test]
fn trusted_proxies_from_file_env_and_flags() {
    let nets = |c: Config| -> Vec<String> {
        c.proxy
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect()
    };
    assert!(load(&src(None, &[], &[]))
        .unwrap()
        .proxy
        .trusted_proxies
        .is_empty());
    let file = "proxy:\n  trusted_proxies: [10.0.0.0/8, 'fd00::/8', 192.0.2.1]\n";
    assert_eq!(
        nets(load(&src(Some(file), &[], &[])).unwrap()),
        vec!["10.0.0.0/8", "fd00::/8", "192.0.2.1/32"]
    );
    assert_eq!(
        nets(
            load(&src(
                None,
                &[("PIKO_PROXY_TRUSTED_PROXIES", "10.1.0.0/16, 10.2.0.0/16")],
                &[]
            ))
            .unwrap()
        ),
        vec!["10.1.0.0/16", "10.2.0.0/16"]
    );
    // A repeated flag and a comma-separated one, flags over env.
    let mut s = src(None, &[("PIKO_PROXY_TRUSTED_PROXIES", "10.9.0.0/16")], &[]);
    s.flags.insert(
        "proxy.trusted_proxies".into(),
        vec!["10.3.0.0/16,10.4.0.0/16".into(), "::1".into()],
    );
    assert_eq!(
        nets(load(&s).unwrap()),
        vec!["10.3.0.0/16", "10.4.0.0/16", "::1/128"]
    );
}

#[test]
fn keys_flags_and_env_names() {
    let keys = leaf_keys();
    assert!(keys.contains_key("proxy.http.read_header_timeout"));
    assert!(keys.contains_key("cluster.join"));
    assert!(keys.contains_key("proxy.access_log.request_headers.block_list"));
    assert_eq!(
        flag_name("proxy.access_log.request_headers.allow_list"),
        "proxy.access-log.request-headers.allow-list"
    );
    assert_eq!(
        flag_name("proxy.http.read_header_timeout"),
        "proxy.http.read-header-timeout"
    );
    assert_eq!(env_name("cluster.node_id"), "PIKO_CLUSTER_NODE_ID");
}

#[test]
fn auth_and_tls_settings() {
    let c = load(&src(
        None,
        &[("PIKO_UPSTREAM_AUTH_HMAC_SECRET_KEY", "top-secret")],
        &[],
    ))
    .unwrap();
    assert!(c.upstream.auth.enabled());
    assert!(!c.proxy.auth.enabled() && !c.admin.auth.enabled());
    let file = load(&src(
        Some("upstream:\n  auth:\n    hmac_secret_key: top-secret\n"),
        &[],
        &[],
    ))
    .unwrap();
    assert!(file.upstream.auth.enabled());
    let shown = format!(
        "{:?}",
        FileConfig {
            upstream: UpstreamFile {
                auth: AuthFile {
                    hmac_secret_key: SecretString("top-secret".into()),
                    ..AuthFile::default()
                },
                ..UpstreamFile::default()
            },
            ..FileConfig::default()
        }
    );
    assert!(
        !shown.contains("top-secret") && shown.contains("***"),
        "{shown}"
    );
    let tenants = "upstream:\n  tenants:\n    - id: t1\n      auth:\n        hmac_secret_key: k1\n";
    let c = load(&src(Some(tenants), &[], &[])).unwrap();
    assert_eq!(
        c.upstream.auth.tenants.keys().collect::<Vec<_>>(),
        vec!["t1"]
    );
    assert!(
        !leaf_keys().contains_key("upstream.tenants"),
        "tenants are file-only"
    );
}

#[test]
fn cluster_settings() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["node-1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let (c, k) = (c.to_str().unwrap(), k.to_str().unwrap());
    let yaml = format!(
        "cluster:\n  node_id: node-1\n  node_lease: 3s\n  join: [a:8003, b:8003]\n  data_dir: /var/lib/piko\n  tls:\n    cert: {c}\n    key: {k}\n    client_cas: {c}\n    root_cas: {c}\n"
    );
    let cfg = load(&src(Some(&yaml), &[], &[])).unwrap();
    assert_eq!(cfg.cluster.node_id, "node-1");
    assert!(!cfg.cluster.node_id_generated);
    assert_eq!(cfg.cluster.node_lease, Duration::from_secs(3));
    assert_eq!(
        cfg.cluster.join,
        vec!["a:8003".to_string(), "b:8003".to_string()]
    );
    assert_eq!(
        cfg.cluster.data_dir.as_deref(),
        Some(std::path::Path::new("/var/lib/piko"))
    );
    let files = cfg.cluster.tls.expect("cluster TLS on");
    assert_eq!(files.client_cas.as_deref(), Some(std::path::Path::new(c)));
    assert!(
        cfg.cluster.client_tls.is_some(),
        "calls to other nodes use TLS too"
    );
    let with_token = load(&src(
        None,
        &[("PIKO_CLUSTER_TOKEN", "0123456789abcdef-secret")],
        &[],
    ))
    .unwrap();
    let shown = format!("{:?}", with_token.cluster.token);
    assert!(
        with_token.cluster.token.is_some() && !shown.contains("secret"),
        "{shown}"
    );
    let plain = load(&src(None, &[], &[])).unwrap();
    assert!(plain.cluster.token.is_none());
    assert!(plain.cluster.tls.is_none() && plain.cluster.client_tls.is_none());
    assert!(
        !plain.cluster.allow_unauthenticated_peers,
        "peers must authenticate unless the operator opts out"
    );
    for opt_out in [
        src(
            None,
            &[("PIKO_CLUSTER_ALLOW_UNAUTHENTICATED_PEERS", "true")],
            &[],
        ),
        src(
            None,
            &[],
            &[("cluster.allow_unauthenticated_peers", "true")],
        ),
        src(
            Some("cluster:\n  allow_unauthenticated_peers: true\n"),
            &[],
            &[],
        ),
    ] {
        assert!(load(&opt_out).unwrap().cluster.allow_unauthenticated_peers);
    }
    assert!(plain.cluster.node_id_generated && plain.cluster.node_id.starts_with("piko-"));
    assert_eq!(plain.cluster.node_lease, Duration::from_secs(10));
}

#[test]
fn auth_and_tls_errors_name_the_key() {
    let cases: [(Sources, &str); 14] = [
        (
            src(None, &[], &[("proxy.auth.rsa_public_key", "nope")]),
            "proxy.auth.rsa_public_key: invalid key",
        ),
        (
            src(None, &[], &[("admin.auth.ecdsa_public_key", "nope")]),
            "admin.auth.ecdsa_public_key: invalid key",
        ),
        (
            src(None, &[], &[("upstream.auth.jwks.endpoint", "ftp://x")]),
            "upstream.auth.jwks.endpoint: unsupported JWKS endpoint",
        ),
        (
            src(Some("upstream:\n  tenants:\n    - id: t1\n"), &[], &[]),
            "upstream.tenants[0].auth: a tenant needs a verification key",
        ),
        (
            src(None, &[], &[("proxy.tls.cert", "/nonexistent.pem")]),
            "proxy.tls.key: missing",
        ),
        (
            src(
                None,
                &[],
                &[
                    ("proxy.tls.cert", "/nonexistent.pem"),
                    ("proxy.tls.key", "/nonexistent.key"),
                ],
            ),
            "proxy.tls: cannot read certificates from /nonexistent.pem",
        ),
        (
            src(None, &[], &[("upstream.tls.client_cas", "/ca.pem")]),
            "upstream.tls.cert: missing",
        ),
        (
            src(None, &[], &[("cluster.tls.cert", "/nonexistent.pem")]),
            "cluster.tls.key: missing",
        ),
        (
            src(None, &[], &[("cluster.tls.root_cas", "/ca.pem")]),
            "cluster.tls.root_cas: set cluster.tls.cert and cluster.tls.key too",
        ),
        (
            src(
                None,
                &[("PIKO_CLUSTER_TLS_CERT", "/nonexistent.pem")],
                &[("cluster.tls.key", "/nonexistent.key")],
            ),
            "cluster.tls: cannot read certificates from /nonexistent.pem",
        ),
        (
            src(None, &[], &[("cluster.node_lease", "500ms")]),
            "cluster.node_lease: must be at least 1s",
        ),
        (
            src(None, &[], &[("cluster.node_id", "node 1")]),
            "cluster.node_id: use up to 64 letters, digits, '-', '_' or '.'",
        ),
        (
            src(None, &[("PIKO_CLUSTER_TOKEN", "short")], &[]),
            "cluster.token: too short; use at least 16 random characters",
        ),
        (
            src(Some("cluster:\n  tls:\n    ca: x\n"), &[], &[]),
            "cluster.tls.ca: unknown field `ca`",
        ),
    ];
    for (s, want) in cases {
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains(want), "error {e:?} should contain {want:?}");
    }
}

#[test]
fn node_id_prefix_starts_a_generated_id() {
    let c = load(&src(None, &[], &[("cluster.node_id_prefix", "piko-0-")])).unwrap();
    assert!(c.cluster.node_id_generated);
    assert!(
        c.cluster.node_id.starts_with("piko-0-"),
        "{}",
        c.cluster.node_id
    );
    assert_eq!(c.cluster.node_id.len(), "piko-0-".len() + 8);
    // A configured id wins over the prefix.
    let c = load(&src(
        None,
        &[],
        &[("cluster.node_id_prefix", "x-"), ("cluster.node_id", "n1")],
    ))
    .unwrap();
    assert_eq!(c.cluster.node_id, "n1");
    let e = load(&src(None, &[], &[("cluster.node_id_prefix", "a b")])).unwrap_err();
    assert_eq!(e.key, "cluster.node_id_prefix");
}

#[test]
fn join_entries_without_a_port_take_the_cluster_port() {
    let file = "cluster:\n  bind_addr: 127.0.0.1:7000\n  join: [piko, 10.0.0.1, 'fd00::1', '[fd00::2]', 'b:9', '[fd00::3]:9']\n";
    let c = load(&src(Some(file), &[], &[])).unwrap();
    assert_eq!(
        c.cluster.join,
        [
            "piko:7000",
            "10.0.0.1:7000",
            "[fd00::1]:7000",
            "[fd00::2]:7000",
            "b:9",
            "[fd00::3]:9"
        ]
    );
    let e = load(&src(
        None,
        &[],
        &[
            ("cluster.bind_addr", "127.0.0.1:0"),
            ("cluster.join", "piko"),
        ],
    ))
    .unwrap_err();
    assert_eq!(e.key, "cluster.join");
}

#[test]
fn join_timeout_and_abort_default_as_in_the_original() {
    let c = load(&src(None, &[], &[])).unwrap();
    assert_eq!(c.cluster.join_timeout, Duration::from_secs(60));
    assert!(c.cluster.abort_if_join_fails);
    let c = load(&src(
        Some("cluster:\n  join_timeout: 5s\n  abort_if_join_fails: false\n"),
        &[],
        &[],
    ))
    .unwrap();
    assert_eq!(c.cluster.join_timeout, Duration::from_secs(5));
    assert!(!c.cluster.abort_if_join_fails);
    let e = load(&src(None, &[], &[("cluster.join_timeout", "0")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cluster.join_timeout: must be greater than zero"
    );
}

#[test]
fn gossip_addresses_are_the_cluster_port_or_refused() {
    let c = load(&src(
        Some("cluster:\n  gossip:\n    bind_addr: 127.0.0.1:7946\n    advertise_addr: n1:7946\n"),
        &[],
        &[],
    ))
    .unwrap();
    assert_eq!(c.cluster.bind_addr, "127.0.0.1:7946".parse().unwrap());
    assert_eq!(c.cluster.advertise_addr.as_deref(), Some("n1:7946"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let e = load(&src(
        Some("cluster:\n  bind_addr: 127.0.0.1:8003\n  gossip:\n    bind_addr: 127.0.0.1:7946\n"),
        &[],
        &[("cluster.bind_addr", "127.0.0.1:9000")],
    ))
    .unwrap_err();
    assert_eq!(e.key, "cluster.gossip.bind_addr");
    assert!(e.message.contains("set only cluster.bind_addr"), "{e}");
    let e = load(&src(
        Some("cluster:\n  advertise_addr: a:1\n  gossip:\n    advertise_addr: b:1\n"),
        &[],
        &[],
    ))
    .unwrap_err();
    assert_eq!(e.key, "cluster.gossip.advertise_addr");
    let c = load(&src(
        Some("cluster:\n  gossip:\n    interval: 100ms\n    max_packet_size: 1400\n"),
        &[],
        &[],
    ))
    .unwrap();
    assert_eq!(
        c.warnings
            .iter()
            .map(|w| w.key.as_str())
            .collect::<Vec<_>>(),
        ["cluster.gossip.interval, cluster.gossip.max_packet_size"]
    );
}

#[test]
fn rebalance_is_validated_and_named_when_it_would_act() {
    let c = load(&src(
        None,
        &[],
        &[
            ("upstream.rebalance.shed_rate", "0.5"),
            ("upstream.rebalance.min_conns", "10"),
        ],
    ))
    .unwrap();
    assert!(
        c.warnings.is_empty(),
        "threshold 0 is off: {:?}",
        c.warnings
    );
    let c = load(&src(None, &[], &[("upstream.rebalance.threshold", "0.2")])).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].key, "upstream.rebalance.threshold");
    assert!(c.warnings[0].message.contains("not implemented"));
    for (key, value, want) in [
        (
            "upstream.rebalance.threshold",
            "-1",
            "upstream.rebalance.threshold: cannot be negative",
        ),
        (
            "upstream.rebalance.shed_rate",
            "1.5",
            "upstream.rebalance.shed_rate: must be between 0 and 1",
        ),
    ] {
        assert_eq!(
            load(&src(None, &[], &[(key, value)]))
                .unwrap_err()
                .to_string(),
            want
        );
    }
}

#[test]
fn read_and_write_timeouts_are_applied_and_zero_is_no_limit() {
    let c = load(&src(
        Some("proxy:\n  http:\n    read_timeout: 10s\n    write_timeout: 2m\n"),
        &[],
        &[],
    ))
    .unwrap();
    assert_eq!(c.proxy.http.read_timeout, Some(Duration::from_secs(10)));
    assert_eq!(c.proxy.http.write_timeout, Some(Duration::from_secs(120)));
    assert!(
        c.warnings.is_empty(),
        "enforced, so not warned about: {:?}",
        c.warnings
    );
    for sources in [
        Sources::default(),
        src(
            Some("proxy:\n  http:\n    read_timeout: 0\n    write_timeout: 0s\n"),
            &[],
            &[],
        ),
    ] {
        let c = load(&sources).unwrap();
        assert_eq!(
            (c.proxy.http.read_timeout, c.proxy.http.write_timeout),
            (None, None)
        );
    }
    // A bare number other than 0 has no unit (the original would take nanoseconds).
    let e = load(&src(
        Some("proxy:\n  http:\n    write_timeout: 10\n"),
        &[],
        &[],
    ))
    .unwrap_err();
    assert_eq!(e.key, "proxy.http.write_timeout");
    assert!(e.message.contains("a number without a unit"), "{e}");
}

/// A CA-less self-signed certificate and its key in `dir`, for `*.tls` keys.
fn cert_files(dir: &std::path::Path) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["admin.piko.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[test]
fn client_tls_sections_are_checked_and_those_without_a_call_named() {
    for key in ["proxy.tls.client", "upstream.tls.client"] {
        let flag = format!("{key}.insecure_skip_verify");
        let c = load(&src(None, &[], &[(&flag, "true")])).unwrap();
        let named: Vec<_> = c.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(named, [key]);
        assert!(
            c.warnings[0].message.contains("has no effect"),
            "{}",
            c.warnings[0]
        );
    }
    // admin.tls.client without admin.tls: ?forward= is plain HTTP, the section is named.
    let c = load(&src(
        None,
        &[],
        &[("admin.tls.client.server_name", "a.test")],
    ))
    .unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].key, "admin.tls.client");
    assert!(
        c.warnings[0].message.contains("admin.tls"),
        "{}",
        c.warnings[0]
    );
    assert!(c.admin.forward.tls.is_none());

    let bad = [
        (("admin.tls.client.cert", "c.pem"), "admin.tls.client.key"),
        (("admin.tls.client.key", "k.pem"), "admin.tls.client.cert"),
        (
            ("admin.tls.client.server_name", "not a name"),
            "admin.tls.client.server_name",
        ),
        (
            ("upstream.tls.client.root_cas", "/nonexistent/ca.pem"),
            "upstream.tls.client",
        ),
        (
            ("proxy.tls.client.root_cas", "/nonexistent/ca.pem"),
            "proxy.tls.client",
        ),
    ];
    for ((k, v), want) in bad {
        let e = load(&src(None, &[], &[(k, v)])).unwrap_err();
        assert_eq!(e.key, want, "{k}={v}: {e}");
    }
}

#[test]
fn admin_tls_client_is_the_client_side_of_forwarding_when_the_admin_port_uses_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_files(dir.path());
    let tls = [
        ("admin.tls.cert", cert.as_str()),
        ("admin.tls.key", key.as_str()),
    ];
    // TLS on the admin port: ?forward= speaks TLS, with the OS's roots by default.
    let c = load(&src(None, &[], &tls)).unwrap();
    let fwd = c.admin.forward.tls.expect("forwarding over TLS");
    assert!(fwd.server_name.is_none());
    assert_eq!(c.admin.forward.timeout, Duration::from_secs(15));
    // With the client section: its name and CA (and no warning).
    let mut with_client = tls.to_vec();
    with_client.extend([
        ("admin.tls.client.server_name", "admin.piko.test"),
        ("admin.tls.client.root_cas", cert.as_str()),
    ]);
    let c = load(&src(None, &[], &with_client)).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let fwd = c.admin.forward.tls.expect("forwarding over TLS");
    assert_eq!(
        fwd.server_name.map(|n| n.to_str().into_owned()),
        Some("admin.piko.test".to_string())
    );
}

#[test]
fn dollar_var_and_empty_var_defaults_expand_in_the_file() {
    let file = "proxy:\n  bind_addr: $ADDR\n  timeout: ${TIMEOUT:12s}\n";
    let c = load(&src(
        Some(file),
        &[("ADDR", "127.0.0.1:4000"), ("TIMEOUT", "")],
        &[],
    ))
    .unwrap();
    assert_eq!(
        (c.proxy.bind_addr.port(), c.proxy.timeout),
        (4000, Duration::from_secs(12))
    );
}
