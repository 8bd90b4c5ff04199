//! The original Go Piko's `piko server` on this project (issue 12): every flag of its server
//! command and of its `status` commands, `piko server` in the `piko` binary running a node
//! exactly as `piko-server` does, `status` printing the original's YAML, and the original's
//! `log.subsystems` names selecting the same logs in a real node's log.

use std::time::Duration;

use piko_tests::{bin, client, wait_until, EchoUpstream, NodeProcess, TestCluster, TestConnector};
use serde_json::{json, Value};
use tokio::process::Command;

/// An RSA public key (PEM), for the `*.auth.rsa-public-key` flags.
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwka2sci5n1QOdlG3h5WE
edLu5obTlTkj8KfvQI3irAgayJD/fGUcSA4GkKjfnBT4Jg99lmbP8BzrcQUP4Bey
E+hDgID9yju2WjSpypeoPBH/7b3mJ0/hzn0hiN1fS0FPL2mrWpQhXTAt2IkYhqXa
JRLlm7xrSyN2O4XxLNXJ35IlkfTyyW85n/CNOtzE4Y7X3d1xw693qZlzEexTsq8g
zASMFoITFzllO0NzXkog7NKAl6vTF8UIaSbfplyeEfLofcK0OubNJXRBgTsilfdk
OUpkMRfxsom3fv9Bdqd/JkOU1z0Z4p7HVm/bCgCXCvTY7zr7Af3voyIdD8hVhm/J
JwIDAQAB
-----END PUBLIC KEY-----
";

/// Files some flags name: a certificate and its key, and a CA file.
struct Files {
    _dir: tempfile::TempDir,
    cert: String,
    key: String,
    ecdsa_public: String,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    Files {
        cert: write("cert.pem", &cert.pem()),
        key: write("key.pem", &key.serialize_pem()),
        ecdsa_public: key.public_key_pem(),
        _dir: dir,
    }
}

/// Every flag the original's `piko server` registers (v0.9: its server config's
/// `RegisterFlags`, its log config's and its config loader's), each with a value other than
/// its default, and the key of the original's YAML file that flag sets, with the same value.
/// A bool flag given alone has no value.
fn original_server_flags(f: &Files) -> Vec<(String, Option<String>, &'static str, Value)> {
    let mut rows: Vec<(String, Option<String>, &'static str, Value)> = Vec::new();
    let mut row = |flag: &str, value: Option<&str>, key: &'static str, yaml: Value| {
        rows.push((flag.to_string(), value.map(str::to_string), key, yaml))
    };
    row("--log.level", Some("debug"), "log.level", json!("debug"));
    row(
        "--log.subsystems",
        Some("proxy.access,upstream"),
        "log.subsystems",
        json!(["proxy.access", "upstream"]),
    );
    row("--grace-period", Some("7s"), "grace_period", json!("7s"));
    row(
        "--cluster.node-id",
        Some("piko-7"),
        "cluster.node_id",
        json!("piko-7"),
    );
    row(
        "--cluster.join",
        Some("10.0.0.1:8003,piko-0.piko"),
        "cluster.join",
        json!(["10.0.0.1:8003", "piko-0.piko"]),
    );
    row(
        "--cluster.join-timeout",
        Some("7s"),
        "cluster.join_timeout",
        json!("7s"),
    );
    row(
        "--cluster.abort-if-join-fails=false",
        None,
        "cluster.abort_if_join_fails",
        json!(false),
    );
    row(
        "--cluster.gossip.bind-addr",
        Some("127.0.0.1:7946"),
        "cluster.gossip.bind_addr",
        json!("127.0.0.1:7946"),
    );
    row(
        "--cluster.gossip.advertise-addr",
        Some("10.0.0.1:7946"),
        "cluster.gossip.advertise_addr",
        json!("10.0.0.1:7946"),
    );
    row(
        "--cluster.gossip.interval",
        Some("1s"),
        "cluster.gossip.interval",
        json!("1s"),
    );
    row(
        "--cluster.gossip.max-packet-size",
        Some("9000"),
        "cluster.gossip.max_packet_size",
        json!(9000),
    );
    for port in ["proxy", "upstream", "admin"] {
        let k = |s: &str| -> &'static str { Box::leak(format!("{port}.{s}").into_boxed_str()) };
        let flag = |s: &str| format!("--{port}.{s}");
        row(
            &flag("bind-addr"),
            Some("127.0.0.1:7000"),
            k("bind_addr"),
            json!("127.0.0.1:7000"),
        );
        row(
            &flag("advertise-addr"),
            Some("10.0.0.1:7000"),
            k("advertise_addr"),
            json!("10.0.0.1:7000"),
        );
        let auth = |s: &str| flag(&format!("auth.{s}"));
        let akey = |s: &str| k(&format!("auth.{s}"));
        row(
            &auth("hmac-secret-key"),
            Some("s3cret"),
            akey("hmac_secret_key"),
            json!("s3cret"),
        );
        row(
            &auth("rsa-public-key"),
            Some(RSA_PUBLIC_PEM),
            akey("rsa_public_key"),
            json!(RSA_PUBLIC_PEM),
        );
        row(
            &auth("ecdsa-public-key"),
            Some(&f.ecdsa_public),
            akey("ecdsa_public_key"),
            json!(f.ecdsa_public),
        );
        // Audience and issuer apply once a key is set: with one, in the row's base below.
        row(
            &auth("audience"),
            Some("piko"),
            akey("audience"),
            json!("piko"),
        );
        row(
            &auth("issuer"),
            Some("auth.example"),
            akey("issuer"),
            json!("auth.example"),
        );
        row(
            &auth("disable-disconnect-on-expiry"),
            None,
            akey("disable_disconnect_on_expiry"),
            json!(true),
        );
        row(
            &auth("jwks.endpoint"),
            Some("https://auth.example/jwks.json"),
            akey("jwks.endpoint"),
            json!("https://auth.example/jwks.json"),
        );
        row(
            &auth("jwks.cache-ttl"),
            Some("7m"),
            akey("jwks.cache_ttl"),
            json!("7m"),
        );
        row(
            &auth("jwks.timeout"),
            Some("7s"),
            akey("jwks.timeout"),
            json!("7s"),
        );
        let tls = |s: &str| flag(&format!("tls.{s}"));
        let tkey = |s: &str| k(&format!("tls.{s}"));
        row(&tls("cert"), Some(&f.cert), tkey("cert"), json!(f.cert));
        row(&tls("key"), Some(&f.key), tkey("key"), json!(f.key));
        row(
            &tls("client-cas"),
            Some(&f.cert),
            tkey("client_cas"),
            json!(f.cert),
        );
        row(
            &tls("client.cert"),
            Some(&f.cert),
            tkey("client.cert"),
            json!(f.cert),
        );
        row(
            &tls("client.key"),
            Some(&f.key),
            tkey("client.key"),
            json!(f.key),
        );
        row(
            &tls("client.root-cas"),
            Some(&f.cert),
            tkey("client.root_cas"),
            json!(f.cert),
        );
        row(
            &tls("client.insecure-skip-verify"),
            None,
            tkey("client.insecure_skip_verify"),
            json!(true),
        );
        row(
            &tls("client.server-name"),
            Some("piko.example"),
            tkey("client.server_name"),
            json!("piko.example"),
        );
    }
    row("--proxy.timeout", Some("7s"), "proxy.timeout", json!("7s"));
    row(
        "--proxy.access-log.level",
        Some("debug"),
        "proxy.access_log.level",
        json!("debug"),
    );
    for (dir, key) in [
        ("request", "request_headers"),
        ("response", "response_headers"),
    ] {
        for (list, lkey) in [("block-list", "block_list"), ("allow-list", "allow_list")] {
            row(
                &format!("--proxy.access-log.{dir}-headers.{list}"),
                Some("x-one,x-two"),
                Box::leak(format!("proxy.access_log.{key}.{lkey}").into_boxed_str()),
                json!(["x-one", "x-two"]),
            );
        }
    }
    row(
        "--proxy.access-log.disable",
        None,
        "proxy.access_log.disable",
        json!(true),
    );
    for (flag, key) in [
        ("read-timeout", "read_timeout"),
        ("read-header-timeout", "read_header_timeout"),
        ("write-timeout", "write_timeout"),
        ("idle-timeout", "idle_timeout"),
    ] {
        row(
            &format!("--proxy.http.{flag}"),
            Some("7s"),
            Box::leak(format!("proxy.http.{key}").into_boxed_str()),
            json!("7s"),
        );
    }
    row(
        "--proxy.http.max-header-bytes",
        Some("65536"),
        "proxy.http.max_header_bytes",
        json!(65536),
    );
    row(
        "--upstream.rebalance.threshold",
        Some("0.5"),
        "upstream.rebalance.threshold",
        json!(0.5),
    );
    row(
        "--upstream.rebalance.shed-rate",
        Some("0.1"),
        "upstream.rebalance.shed_rate",
        json!(0.1),
    );
    row(
        "--upstream.rebalance.min-conns",
        Some("7"),
        "upstream.rebalance.min_conns",
        json!(7),
    );
    rows
}

/// `--cluster.node-id-prefix`: the original generates the rest of the id (tested on its own:
/// the id is random).
const PREFIX_FLAG: &str = "--cluster.node-id-prefix";

/// The original's `piko server status` flags: `--server.url` and `--forward` on every status
/// command, `--status` on `cluster nodes`.
const ORIGINAL_STATUS_FLAGS: &[&str] = &["--server.url", "--forward", "--status"];

/// YAML (as JSON, which YAML readers read) setting the dotted `key` to `value`, plus `base`.
fn yaml_of(base: &Value, key: &str, value: &Value) -> String {
    let mut tree = base.clone();
    let mut at = &mut tree;
    let parts: Vec<&str> = key.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        at = at
            .as_object_mut()
            .unwrap()
            .entry(p.to_string())
            .or_insert_with(|| json!({}));
    }
    at[parts[parts.len() - 1]] = value.clone();
    tree.to_string()
}

/// The configuration `name ARGS` makes, as its `Debug` text (secrets print `***`, so a
/// secret's own value is compared through the verifier it builds), or the error.
fn config_of(name: &'static str, args: &[String]) -> Result<String, String> {
    let m = piko_server::cli::command(name)
        .try_get_matches_from(std::iter::once("piko".to_string()).chain(args.iter().cloned()))
        .map_err(|e| e.to_string())?;
    piko_server::cli::load_config(&m)
        .map(|c| format!("{c:?}"))
        .map_err(|e| e.to_string())
}

/// The configuration flags `name ARGS` sets, by key.
fn flags_of(
    name: &'static str,
    args: &[String],
) -> std::collections::BTreeMap<String, Vec<String>> {
    let m = piko_server::cli::command(name)
        .try_get_matches_from(std::iter::once("piko".to_string()).chain(args.iter().cloned()))
        .unwrap();
    piko_server::cli::sources(&m).unwrap().flags
}

#[test]
fn every_flag_of_the_original_server_command_means_what_its_yaml_key_means() {
    let f = files();
    let rows = original_server_flags(&f);
    // 11 cluster and log flags, 19 per port, 12 of the proxy's own, 3 of rebalancing.
    assert_eq!(rows.len(), 11 + 3 * 19 + 12 + 3, "the list lost rows");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yaml");
    for name in ["piko-server", "piko server"] {
        for (flag, value, key, yaml) in &rows {
            // A fixed id (the default is random); a key for the settings of a key to apply.
            let mut base_args = vec!["--cluster.node-id".to_string(), "n1".into()];
            let mut base_yaml = json!({"cluster": {"node_id": "n1"}});
            let port = key.split('.').next().unwrap();
            let of_a_key = [".audience", ".issuer", ".disable-disconnect-on-expiry"];
            if of_a_key.iter().any(|s| flag.ends_with(s)) {
                base_args.extend([format!("--{port}.auth.hmac-secret-key"), "k".into()]);
                base_yaml[port] = json!({"auth": {"hmac_secret_key": "k"}});
            }
            // A certificate needs its key, and the other way round.
            let tls = |part: &str| -> Vec<(&str, &str)> {
                match part {
                    "cert" => vec![("key", &f.key)],
                    "key" => vec![("cert", &f.cert)],
                    "client-cas" => vec![("cert", &f.cert), ("key", &f.key)],
                    "client.cert" => vec![("client.key", &f.key)],
                    "client.key" => vec![("client.cert", &f.cert)],
                    _ => vec![],
                }
            };
            if let Some((_, part)) = flag.split_once(".tls.") {
                for (k, path) in tls(part) {
                    base_args.extend([format!("--{port}.tls.{k}"), path.to_string()]);
                    let (section, leaf) = match k.split_once('.') {
                        Some((s, l)) => (Some(s), l),
                        None => (None, k),
                    };
                    let tree = base_yaml[port]["tls"].take();
                    let mut tree = if tree.is_null() { json!({}) } else { tree };
                    match section {
                        Some(s) => tree[s][leaf] = json!(path),
                        None => tree[leaf] = json!(path),
                    }
                    base_yaml[port]["tls"] = tree;
                }
            }
            if flag.ends_with(".jwks.cache-ttl") || flag.ends_with(".jwks.timeout") {
                let url = "https://auth.example/jwks.json";
                base_args.extend([format!("--{port}.auth.jwks.endpoint"), url.into()]);
                base_yaml[port] = json!({"auth": {"jwks": {"endpoint": url}}});
            }
            let mut args = base_args.clone();
            args.push(flag.clone());
            args.extend(value.clone());
            let by_flag = config_of(name, &args)
                .unwrap_or_else(|e| panic!("{name} {args:?} is refused: {e}"));
            // The flag sets the original's key, to the value given.
            let set = flags_of(name, &args);
            let want = value.clone().unwrap_or_else(|| match flag.split_once('=') {
                Some((_, v)) => v.to_string(),
                None => "true".into(),
            });
            // (the last one given wins, as in the original: `cluster.node_id` is in the base)
            let got = set.get(*key).and_then(|v| v.last());
            assert_eq!(got, Some(&want), "{flag}: {set:?}");
            std::fs::write(&file, yaml_of(&base_yaml, key, yaml)).unwrap();
            let file_args = ["--config.path".to_string(), file.display().to_string()];
            let by_file = config_of(name, &file_args)
                .unwrap_or_else(|e| panic!("the original's key {key} = {yaml} is refused: {e}"));
            assert_eq!(by_flag, by_file, "{flag} {value:?} and {key}: {yaml}");
            // Settings a configuration's `Debug` does not show (a verifier's key material
            // and expiry and JWKS timing; rebalancing, only validated here, see
            // docs/migrating.md) are checked by the key the flag sets, above.
            let hidden = [".hmac-secret-key", ".rsa-public-key", ".ecdsa-public-key"]
                .iter()
                .chain(&[
                    ".disable-disconnect-on-expiry",
                    ".jwks.cache-ttl",
                    ".jwks.timeout",
                ])
                .chain(&[".rebalance.shed-rate", ".rebalance.min-conns"])
                .any(|s| flag.ends_with(s));
            // (a key without its certificate is refused: then against the defaults)
            let default = config_of(name, &base_args)
                .or_else(|_| config_of(name, &base_args[..2]))
                .unwrap();
            if !hidden {
                assert_ne!(by_flag, default, "{flag} {value:?} changed nothing");
            }
        }
        // The prefix: the id is the prefix and a generated rest, whichever way it is given.
        let by_flag = config_of(name, &[PREFIX_FLAG.into(), "eu-".into()]).unwrap();
        std::fs::write(&file, r#"{"cluster": {"node_id_prefix": "eu-"}}"#).unwrap();
        let by_file =
            config_of(name, &["--config.path".into(), file.display().to_string()]).unwrap();
        for c in [&by_flag, &by_file] {
            assert!(c.contains("node_id: \"eu-"), "{c}");
        }
        // The loader's own flags.
        std::fs::write(&file, "log:\n  level: ${PIKO_COMPAT_LEVEL:debug}\n").unwrap();
        let path = file.display().to_string();
        for expand in ["--config.expand-env", "--config.expand-env=true"] {
            let c =
                config_of(name, &["--config.path".into(), path.clone(), expand.into()]).unwrap();
            assert!(c.contains("level: \"debug\""), "{expand}: {c}");
        }
        let e = config_of(name, &["--config.path".into(), path.clone()]).unwrap_err();
        assert!(e.contains("log.level"), "without --config.expand-env: {e}");
    }
}

#[test]
fn every_flag_of_the_originals_status_commands_is_accepted() {
    assert!(!ORIGINAL_STATUS_FLAGS.is_empty());
    for name in ["piko-server", "piko server"] {
        for args in [
            &[
                "status",
                "upstream",
                "endpoints",
                "--server.url",
                "http://a:8002",
                "--forward",
                "n2",
            ][..],
            &[
                "status",
                "--server.url",
                "http://a:8002",
                "--forward",
                "n2",
                "cluster",
                "nodes",
            ],
            &[
                "status",
                "cluster",
                "nodes",
                "--status",
                "active",
                "--forward",
                "n2",
            ],
            &[
                "status",
                "cluster",
                "node",
                "local",
                "--server.url",
                "http://a:8002",
            ],
            &["status", "cluster", "node", "n1", "--forward", "n2"],
            &["status", "gossip", "nodes", "--server.url", "http://a:8002"],
            &["status", "gossip", "node", "n1", "--forward", "n2"],
        ] {
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                assert!(
                    ORIGINAL_STATUS_FLAGS.contains(flag),
                    "{flag} is not the original's"
                );
            }
            let line = std::iter::once("piko").chain(args.iter().copied());
            if let Err(e) = piko_server::cli::command(name).try_get_matches_from(line) {
                panic!("{name} {args:?} is refused: {e}");
            }
        }
    }
}

async fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("exits within 30 s")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn piko(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("piko"));
    cmd.args(args).kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn piko_server_with_every_flag_of_the_original_runs_a_node_that_serves() {
    let f = files();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yaml");
    std::fs::write(&file, "proxy:\n  timeout: ${PIKO_COMPAT_TIMEOUT:20s}\n").unwrap();
    // Every flag at once, with values a single node on loopback runs with: no TLS (empty
    // paths are unset, as in the original), no proxy authentication (the request below has
    // no token), no JWKS to fetch.
    let mut args: Vec<String> = vec![
        "--config.path".into(),
        file.display().to_string(),
        "--config.expand-env".into(),
    ];
    for (flag, value, _, _) in original_server_flags(&f) {
        let value = match flag.as_str() {
            "--log.level" => Some("info".to_string()),
            "--cluster.node-id" => Some("node-0".to_string()),
            "--cluster.join" => Some(String::new()),
            "--cluster.abort-if-join-fails=false" => None,
            f if f.ends_with("bind-addr") => Some("127.0.0.1:0".to_string()),
            f if f.ends_with("advertise-addr") => Some(String::new()),
            f if f.contains(".auth.") && !f.contains("jwks.") && value.is_some() => {
                Some(String::new())
            }
            f if f.ends_with("jwks.endpoint") || f.contains(".tls.") && value.is_some() => {
                Some(String::new())
            }
            f if f.ends_with("insecure-skip-verify") => {
                args.push(format!("{f}=false"));
                continue;
            }
            f if f.contains("access-log.request-headers.allow")
                || f.contains("access-log.response-headers.block") =>
            {
                continue; // the original refuses an allow and a block list together
            }
            "--proxy.access-log.disable" => {
                args.push("--proxy.access-log.disable=false".into());
                continue;
            }
            "--proxy.http.read-timeout" | "--proxy.http.write-timeout" => Some("30s".into()),
            "--proxy.http.read-header-timeout" => Some("10s".into()),
            "--proxy.http.max-header-bytes" => Some("1048576".into()),
            _ => value,
        };
        args.push(flag);
        args.extend(value);
    }
    args.extend([PREFIX_FLAG.into(), "ignored-".into()]);
    let mut node = NodeProcess::alone().via_piko().with_args(&args);
    node.spawn().await;
    node.wait_ready().await;
    let echo = EchoUpstream::start().await;
    let _connector = TestConnector::start(
        &node.upstream(),
        &[(
            "web",
            &echo.target(),
            piko_connector_core::config::Protocol::Http,
        )],
    );
    node.wait_for_upstreams("web", 1).await;
    let (status, body) = node.get("web", "/echo").await.expect("the proxy answers");
    assert_eq!(status, 200, "{body}");
    let local = node.json("/status/cluster/nodes/local").await;
    assert_eq!(local["id"], "node-0", "{local}");
    assert!(node.terminate().await.success(), "{}", node.log());
    let log = node.log();
    // The original's gossip settings have no meaning here: each is named once.
    assert!(log.contains("cluster.gossip"), "{log}");
    assert!(!log.contains("unknown"), "{log}");
}

#[tokio::test]
async fn piko_server_runs_a_node_from_config_path_and_exits_2_on_a_bad_key_as_piko_server_does() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("server.yaml");
    std::fs::write(
        &good,
        "proxy:\n  bind_addr: 127.0.0.1:0\nupstream:\n  bind_addr: 127.0.0.1:0\nadmin:\n  bind_addr: 127.0.0.1:0\ncluster:\n  bind_addr: 127.0.0.1:0\n  node_id: from-file\n",
    )
    .unwrap();
    // Only --config.path and the data dir: the ports and the id come from the file.
    let data = dir.path().join("data");
    let mut child = piko(&[
        "server",
        "--config.path",
        &good.display().to_string(),
        "--cluster.data-dir",
        &data.display().to_string(),
    ]);
    let log = dir.path().join("node.log");
    let out = std::fs::File::create(&log).unwrap();
    child.stderr(out.try_clone().unwrap()).stdout(out);
    let mut child = child.spawn().unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let admin = wait_for_logged_addr(&read_log, "listening port=\"admin\" addr=").await;
    let proxy = wait_for_logged_addr(&read_log, "listening port=\"proxy\" addr=").await;
    let upstream = wait_for_logged_addr(&read_log, "listening port=\"upstream\" addr=").await;
    let ready = format!("http://{admin}/ready");
    wait_until("piko server is ready", Duration::from_secs(20), || async {
        matches!(client().get(&ready).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let echo = EchoUpstream::start().await;
    let _connector = TestConnector::start(
        &format!("http://{upstream}"),
        &[(
            "web",
            &echo.target(),
            piko_connector_core::config::Protocol::Http,
        )],
    );
    let url = format!("http://{proxy}/echo");
    wait_until("piko server proxies a request", Duration::from_secs(20), || async {
        matches!(client().get(&url).header("x-piko-endpoint", "web").send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let (code, stdout, _) = output(&mut piko(&[
        "server",
        "status",
        "cluster",
        "node",
        "local",
        "--server.url",
        &format!("http://{admin}"),
    ]))
    .await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.starts_with("id: from-file\n"), "{stdout}");
    piko_tests::process::sigterm(child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "graceful exit is 0: {status:?}\n{}",
        read_log()
    );

    // A bad key, value or flag: exit 2, the same message from both binaries.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "proxy:\n  bind_adr: 127.0.0.1:0\n").unwrap();
    let bad = bad.display().to_string();
    for (args, want) in [
        (
            &["--config.path", &bad][..],
            "proxy.bind_adr: unknown field `bind_adr`",
        ),
        (
            &["--proxy.timeout", "soon"],
            "proxy.timeout: invalid duration \"soon\"",
        ),
        (&["--no-such-flag"], "unexpected argument '--no-such-flag'"),
        (
            &["--proxy.access-log.disable=maybe"],
            "invalid value 'maybe'",
        ),
    ] {
        let (code, _, theirs) = output(Command::new(bin("piko-server")).args(args)).await;
        assert_eq!(code, 2, "piko-server {args:?}: {theirs}");
        let mut line = vec!["server"];
        line.extend(args);
        let (code, _, ours) = output(&mut piko(&line)).await;
        assert_eq!(code, 2, "piko server {args:?}: {ours}");
        assert!(ours.contains(want), "piko server {args:?}: {ours}");
        assert_eq!(
            ours.replace("piko server", "piko-server"),
            theirs,
            "{args:?}: the same error"
        );
    }
}

async fn wait_for_logged_addr(read: &impl Fn() -> String, tag: &str) -> std::net::SocketAddr {
    let mut found = None;
    wait_until(
        &format!("the log says {tag:?}"),
        Duration::from_secs(20),
        || {
            let addr = read().lines().find_map(|l| {
                let rest = &l[l.find(tag)? + tag.len()..];
                rest.split_whitespace()
                    .next()?
                    .trim_matches('"')
                    .parse()
                    .ok()
            });
            found = addr;
            async move { addr.is_some() }
        },
    )
    .await;
    found.unwrap()
}

#[tokio::test]
async fn piko_server_help_is_useful_and_piko_help_names_it() {
    let (code, stdout, _) = output(&mut piko(&["server", "--help"])).await;
    assert_eq!(code, 0);
    for want in [
        "Usage: piko server [OPTIONS] [COMMAND]",
        "status",
        "--config.path <FILE>",
        "--cluster.join <VALUE>",
        "--proxy.access-log.disable [<BOOL>]",
        "env PIKO_PROXY_BIND_ADDR; default",
        "piko server --config.path server.yaml",
        "exits 2",
    ] {
        assert!(stdout.contains(want), "{want:?} in:\n{stdout}");
    }
    let (code, stdout, _) = output(&mut piko(&["server", "status", "--help"])).await;
    assert_eq!(code, 0);
    for want in ["upstream", "cluster", "--server.url", "--forward <NODE>"] {
        assert!(stdout.contains(want), "{want:?} in:\n{stdout}");
    }
    let (code, stdout, _) = output(&mut piko(&[
        "server", "status", "cluster", "nodes", "--help",
    ]))
    .await;
    assert_eq!(code, 0);
    assert!(stdout.contains("--status <STATUS>"), "{stdout}");
    let (code, stdout, _) = output(&mut piko(&["--help"])).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("server "),
        "piko --help lists server:\n{stdout}"
    );
    // `piko`'s global flags before `server` are the server's own.
    let (code, _, stderr) = output(&mut piko(&[
        "--log.level",
        "loud",
        "server",
        "--cluster.node-id",
        "x",
    ]))
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("log.level: invalid level \"loud\""),
        "{stderr}"
    );
}

/// `piko server status ARGS` against a node's admin URL: exit code, stdout, stderr.
async fn status(admin: &str, args: &[&str]) -> (i32, String, String) {
    let mut line = vec!["server", "status"];
    line.extend(args);
    line.extend(["--server.url", admin]);
    output(&mut piko(&line)).await
}

#[tokio::test]
async fn piko_server_status_prints_the_originals_yaml_and_forwards_to_another_node() {
    let cluster = TestCluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let echo = EchoUpstream::start().await;
    let _c1 = TestConnector::http(a, "web", &echo.target());
    let _c2 = TestConnector::http(a, "web", &echo.target());
    let _c3 = TestConnector::http(a, "123", &echo.target());
    a.wait_for_upstreams("web", 2).await;
    a.wait_for_upstreams("123", 1).await;
    cluster.wait_for_replicated("web", 2).await;
    cluster.wait_for_replicated("123", 1).await;
    let (a_url, b_url) = (a.admin_url(), b.admin_url());
    let (pa, pb) = (a.proxy_url(), b.proxy_url());
    let addr = |u: &str| u.trim_start_matches("http://").to_string();

    // `upstream endpoints`: endpoint → upstreams, keys sorted, a number-like key quoted.
    let (code, out, err) = status(&a_url, &["upstream", "endpoints"]).await;
    assert_eq!((code, out.as_str()), (0, "\"123\": 1\nweb: 2\n"), "{err}");
    // The same asked of b, forwarded to node-0; b itself has none.
    let (code, out, err) = status(&b_url, &["upstream", "endpoints", "--forward", "node-0"]).await;
    assert_eq!((code, out.as_str()), (0, "\"123\": 1\nweb: 2\n"), "{err}");
    let (code, out, err) = status(&b_url, &["upstream", "endpoints"]).await;
    assert_eq!((code, out.as_str()), (0, "{}\n"), "{err}");

    // `cluster nodes`: the original's NodeMetadata fields only, sorted by id.
    let nodes = format!(
        "nodes:\n\
         - id: node-0\n  status: active\n  proxy_addr: {}\n  admin_addr: {}\n  endpoints: 2\n  upstreams: 3\n\
         - id: node-1\n  status: active\n  proxy_addr: {}\n  admin_addr: {}\n  endpoints: 0\n  upstreams: 0\n",
        addr(&pa),
        addr(&a_url),
        addr(&pb),
        addr(&b_url)
    );
    let (code, out, err) = status(&b_url, &["cluster", "nodes"]).await;
    assert_eq!((code, out.as_str()), (0, nodes.as_str()), "{err}");
    let (code, out, _) = status(&b_url, &["cluster", "nodes", "--status", "active"]).await;
    assert_eq!((code, out.as_str()), (0, nodes.as_str()));
    let (code, out, _) = status(&b_url, &["cluster", "nodes", "--status", "left"]).await;
    assert_eq!((code, out.as_str()), (0, "nodes: []\n"));

    // `cluster node ID|local`: the original's Node, endpoints as endpoint → upstreams.
    let node0 = format!(
        "id: node-0\nstatus: active\nproxy_addr: {}\nadmin_addr: {}\nendpoints:\n  \"123\": 1\n  web: 2\n",
        addr(&pa),
        addr(&a_url)
    );
    for (url, args) in [
        (&a_url, &["cluster", "node", "local"][..]),
        (&b_url, &["cluster", "node", "node-0"]),
        (&b_url, &["cluster", "node", "local", "--forward", "node-0"]),
    ] {
        let (code, out, err) = status(url, args).await;
        assert_eq!((code, out.as_str()), (0, node0.as_str()), "{args:?}: {err}");
    }
    let (code, out, _) = status(&b_url, &["cluster", "node", "local"]).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("id: node-1\n") && out.ends_with("endpoints: {}\n"),
        "{out}"
    );

    // No answer: exit 1, one line saying what failed.
    let (code, out, err) = status(&b_url, &["cluster", "node", "node-9"]).await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.starts_with("error: failed to get cluster node node-9: /status/cluster/nodes/node-9 answered 404 Not Found: node \"node-9\" not found"),
        "{err}"
    );
    let (code, _, err) = status(&b_url, &["cluster", "nodes", "--forward", "node-9"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404"), "{err}");
    let (_socket, refused) = piko_tests::refused_addr();
    let (code, _, err) = status(&format!("http://{refused}"), &["cluster", "nodes"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    let (code, _, err) = status(&b_url, &["gossip", "nodes"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no gossip state"), "{err}");
    let (code, _, err) = status(&b_url, &["cluster", "node"]).await;
    assert_eq!(code, 2, "{err}");

    // This project's forms still print JSON, from both binaries.
    let (code, out, err) = status(&a_url, &["endpoints"]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, json!({"123": 1, "web": 2}));
    let out = Command::new(bin("piko-server"))
        .args(["status", "nodes", "--server.url", &b_url])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    let out = Command::new(bin("piko-server"))
        .args(["status", "cluster", "nodes", "--server.url", &b_url])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), nodes);
}

/// Whether `log` holds a line containing every one of `parts`.
fn logged(log: &str, parts: &[&str]) -> bool {
    log.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

#[tokio::test]
async fn the_originals_log_subsystem_names_select_those_logs_in_a_real_node() {
    // A request the proxy refuses (400, no endpoint id) makes two debug lines, hidden at the
    // default info level unless their subsystem is named, by flag or by the YAML key: the
    // access line (`proxy.access`) and the proxy's own (`proxy.http`). As in the original,
    // naming one does not show the other.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.yaml");
    std::fs::write(&file, "log:\n  subsystems: [proxy.http]\n").unwrap();
    let file = file.display().to_string();
    let base = ["--proxy.access-log.level", "debug"];
    let runs: [(&[&str], bool, bool); 4] = [
        (&["--log.subsystems", "proxy.access"], true, false),
        (&["--config.path", &file], false, true),
        (&["--log.subsystems", "proxy.access,proxy.http"], true, true),
        (&[], false, false),
    ];
    let wanted_access = [
        "DEBUG piko_server::proxy::access:",
        "path=\"/orders\"",
        "status=400",
    ];
    let wanted_proxy = [
        "DEBUG piko_server::proxy:",
        "proxy request rejected error=missing endpoint id",
    ];
    for (args, access, proxy) in runs {
        let mut all = base.to_vec();
        all.extend(args);
        let mut node = NodeProcess::start(&all).await;
        let r = client()
            .get(format!("{}/orders", node.proxy()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // The lines are written as the request ends; the log file may lag a little behind.
        // (No panic here when they never come: the assertions below say which is missing.)
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            let log = node.log();
            if (!access || logged(&log, &wanted_access)) && (!proxy || logged(&log, &wanted_proxy))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(node.terminate().await.success());
        let log = node.log();
        assert_eq!(
            logged(&log, &wanted_access),
            access,
            "{args:?}: access line\n{log}"
        );
        assert_eq!(
            logged(&log, &wanted_proxy),
            proxy,
            "{args:?}: proxy debug line\n{log}"
        );
        assert!(
            !logged(&log, &["DEBUG", "piko_server::upstream"]),
            "{args:?}: only what was named\n{log}"
        );
    }
}
