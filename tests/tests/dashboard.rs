//! The Grafana dashboard (`installers/grafana/piko.json`) against a real cluster's
//! `/metrics`: every metric its queries name is one the nodes serve, every label it groups
//! or filters by is one they carry (or one Prometheus adds), and every metric family the
//! nodes serve has a panel.

use std::collections::BTreeSet;

use piko_tests::{client, get_endpoint, EchoUpstream, TestCluster, TestConnector, TestServer};
use serde_json::Value;

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// PromQL functions, aggregations and keywords (and Grafana's `label_values`) that may
/// stand in a query next to metric names.
const PROMQL_WORDS: [&str; 24] = [
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "changes",
    "delta",
    "deriv",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "label_values",
    "clamp_min",
];

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../installers/grafana/piko.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every PromQL query of the dashboard: each panel's targets (rows' nested panels too) and
/// the query variables.
fn queries(dash: &Value) -> Vec<String> {
    fn panels(list: &Value, out: &mut Vec<String>) {
        for p in list.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                panels(&p["panels"], out);
                continue;
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {} does not use the data source variable",
                p["title"]
            );
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty(), "panel {} has an empty query", p["title"]);
                out.push(expr.to_string());
            }
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            out.push(q.unwrap_or_default().to_string());
        }
    }
    out
}

/// What a query names: its metric names and its label names (in `{...}` matchers and in
/// `by (...)` / `without (...)`). Quoted strings and `[...]` ranges are skipped; any other
/// word must be a PromQL word, so a metric the test does not recognise fails it.
fn names_in(query: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    let chars: Vec<char> = query.chars().collect();
    let word = |i: usize| {
        let mut j = i;
        while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
            j += 1;
        }
        (chars[i..j].iter().collect::<String>(), j)
    };
    let (mut i, mut in_matcher, mut grouping, mut after_grouping_word) = (0, false, false, false);
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1 + usize::from(chars[i] == '\\');
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            in_matcher = true;
            i += 1;
        } else if c == '}' {
            in_matcher = false;
            i += 1;
        } else if c == '(' {
            grouping = after_grouping_word;
            after_grouping_word = false;
            i += 1;
        } else if c == ')' {
            grouping = false;
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let (w, j) = word(i);
            if in_matcher || grouping {
                labels.insert(w);
            } else if w.starts_with("piko_") {
                metrics.insert(w);
            } else if w == "by" || w == "without" {
                after_grouping_word = true;
            } else if w == "instance" && query.starts_with("label_values") {
                labels.insert(w);
            } else {
                assert!(
                    PROMQL_WORDS.contains(&w.as_str()),
                    "{w:?} in {query:?} is neither a piko metric nor a PromQL word"
                );
            }
            i = j;
        } else {
            i += 1;
        }
    }
    (metrics, labels)
}

async fn scrape(node: &TestServer) -> String {
    client()
        .get(format!("{}/metrics", node.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[test]
fn the_query_scanner_finds_metrics_and_labels_and_rejects_other_names() {
    let (m, l) = names_in(
        r#"histogram_quantile(0.95, sum by (le, status) (rate(piko_proxy_request_latency_seconds_bucket{instance=~"$instance", status!="a{b}"}[$__rate_interval])))"#,
    );
    assert_eq!(
        m,
        BTreeSet::from(["piko_proxy_request_latency_seconds_bucket".to_string()])
    );
    assert_eq!(
        l,
        ["instance", "le", "status"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let other = std::panic::catch_unwind(|| names_in("sum(rate(up[5m]))"));
    assert!(other.is_err(), "a metric of another exporter must fail");
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_served() {
    let dash = dashboard();
    let queries = queries(&dash);
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    for q in &queries {
        let (m, l) = names_in(q);
        metrics.extend(m);
        labels.extend(l);
    }
    assert!(
        metrics.len() >= 15,
        "only {} metrics found in {} queries: {metrics:?}",
        metrics.len(),
        queries.len()
    );

    // Traffic that gives every family a sample: one request served by node-0's own
    // upstream, two forwarded by node-1 to node-0, and one for an endpoint nobody serves.
    let cluster = TestCluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let echo = EchoUpstream::start().await;
    let connector = TestConnector::http(a, "e1", &echo.target());
    cluster.wait_for_replicated("e1", 1).await;
    assert_eq!(
        get_endpoint(&a.proxy_url(), "e1", "/echo").await.unwrap().0,
        200
    );
    for _ in 0..2 {
        assert_eq!(
            get_endpoint(&b.proxy_url(), "e1", "/echo").await.unwrap().0,
            200
        );
    }
    assert_eq!(
        get_endpoint(&b.proxy_url(), "nobody", "/").await.unwrap().0,
        502
    );
    let served = format!("{}{}", scrape(a).await, scrape(b).await);
    connector.stop().await;
    cluster.stop().await;

    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    let mut served_labels: BTreeSet<String> = TARGET_LABELS.map(String::from).into();
    for line in served.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().unwrap_or_default().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            samples.insert(name.to_string());
            if let Some((_, l)) = line.split_once('{') {
                for pair in l.split("\",") {
                    served_labels.insert(pair.split('=').next().unwrap_or_default().to_string());
                }
            }
        }
    }
    let missing: Vec<_> = metrics.difference(&samples).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics that /metrics does not serve: {missing:?}\nserved: {samples:?}"
    );
    let unknown: Vec<_> = labels.difference(&served_labels).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses labels no series has: {unknown:?}"
    );
    let unshown: Vec<_> = families
        .iter()
        .filter(|f| !metrics.iter().any(|m| m.starts_with(f.as_str())))
        .collect();
    assert!(
        unshown.is_empty(),
        "metric families without a panel: {unshown:?}"
    );
}

#[test]
fn the_dashboards_panels_fit_the_grid_without_overlapping() {
    let dash = dashboard();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        let g = &p["gridPos"];
        let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        assert!(
            b[0] + b[2] <= 24,
            "panel {} is wider than the grid",
            p["title"]
        );
        for (title, o) in &boxes {
            let apart = b[0] + b[2] <= o[0]
                || o[0] + o[2] <= b[0]
                || b[1] + b[3] <= o[1]
                || o[1] + o[3] <= b[1];
            assert!(apart, "panels {} and {title} overlap", p["title"]);
        }
        boxes.push((p["title"].to_string(), b));
    }
    assert!(boxes.len() > 20, "only {} panels", boxes.len());
}
