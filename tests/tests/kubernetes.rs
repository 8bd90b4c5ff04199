//! The plain Kubernetes manifests (`installers/kubernetes/`) as the server reads them: the
//! StatefulSet's environment, with the values Kubernetes fills in for pod `piko-1`, is a
//! configuration `piko-server` accepts, and means what the manifests' comments say.
//! (`installers/kubernetes/test.sh` checks the rest: schemas, the Helm chart, Docker.)

use std::collections::BTreeMap;
use std::time::Duration;

use piko_server::config::{env_name, leaf_keys, load, Sources};
use serde_yaml_ng::Value;

const TOKEN: &str = "a-cluster-token-of-some-length";

fn statefulset() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../installers/kubernetes/statefulset.yaml"
    );
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The container's environment as the kubelet hands it over to pod `pod` in `namespace`:
/// downward-API fields filled in, `$(VAR)` expanded, the Secret's value read.
fn pod_env(sts: &Value, pod: &str, namespace: &str) -> BTreeMap<String, String> {
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in container["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            let mut v = v.to_string();
            for (k, val) in &env {
                v = v.replace(&format!("$({k})"), val);
            }
            assert!(!v.contains("$("), "{name}: an undefined $(VAR) in {v:?}");
            v
        } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.name" => pod.to_string(),
                "metadata.namespace" => namespace.to_string(),
                other => panic!("{name}: unexpected field {other}"),
            }
        } else {
            assert!(
                e["valueFrom"]["secretKeyRef"]["name"].is_string(),
                "{name}: neither a value, a field nor a Secret"
            );
            TOKEN.to_string()
        };
        env.insert(name, value);
    }
    env
}

#[test]
fn every_piko_variable_of_the_statefulset_is_a_server_key() {
    let env = pod_env(&statefulset(), "piko-1", "tunnels");
    let known: Vec<String> = leaf_keys().keys().map(|k| env_name(k)).collect();
    let piko: Vec<&String> = env.keys().filter(|k| k.starts_with("PIKO_")).collect();
    assert!(piko.len() >= 8, "only {piko:?}");
    for name in piko {
        assert!(known.contains(name), "{name} is not read by piko-server");
    }
}

#[test]
fn the_statefulset_environment_is_a_valid_configuration_of_the_pods_node() {
    let sts = statefulset();
    let env = pod_env(&sts, "piko-1", "tunnels");
    let config = load(&Sources {
        env,
        ..Sources::default()
    })
    .unwrap_or_else(|e| panic!("piko-server rejects the StatefulSet's environment: {e}"));
    let c = &config.cluster;
    assert_eq!(c.node_id, "piko-1");
    assert!(!c.node_id_generated);
    // The headless Service's name, at the cluster port: one name, a record per node.
    let headless = sts["spec"]["serviceName"].as_str().unwrap();
    assert_eq!(
        c.join,
        [format!("{headless}.tunnels.svc.cluster.local:8003")]
    );
    assert_eq!(
        c.advertise_addr.as_deref(),
        Some(format!("piko-1.{headless}.tunnels.svc.cluster.local:8003").as_str())
    );
    assert_eq!(
        config.admin.advertise_addr.as_deref(),
        Some(format!("piko-1.{headless}.tunnels.svc.cluster.local:8002").as_str())
    );
    assert_eq!(c.data_dir.as_deref(), Some(std::path::Path::new("/data")));
    assert_eq!(c.token.as_ref().map(|t| t.0.as_str()), Some(TOKEN));
    // The probes' port.
    assert_eq!(config.admin.bind_addr.port(), 8002);
    // Kubernetes kills the pod after terminationGracePeriodSeconds: the drain must fit.
    let kill_after = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        config.grace_period + Duration::from_secs(5) <= Duration::from_secs(kill_after),
        "grace_period {:?} leaves no time to leave the cluster before the kill at {kill_after}s",
        config.grace_period
    );
}
