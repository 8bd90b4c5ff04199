//! The real image (`installers/docker/build.sh`) and a real three-container cluster
//! (`installers/compose/docker-compose.yml`): health check, non-root user, forwarding between
//! containers, a container killed and started again, and a network partition.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use piko_connector_core::config::Protocol;
use piko_tests::{
    get_endpoint, get_json as json, replicated_count, wait_until, EchoUpstream, TestConnector,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A compose project, taken down (volumes too) when dropped.
struct Compose {
    project: String,
    image: String,
}

impl Compose {
    fn cmd(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(root().join("installers/compose/docker-compose.yml"))
            .env("PIKO_IMAGE", &self.image)
            .env("PIKO_NODE_LEASE", "3s")
            .env("PIKO_CLUSTER_TOKEN", "compose-test-token-0123456789");
        c
    }

    /// `http://127.0.0.1:PORT` where `service`'s `port` is published.
    fn url(&self, service: &str, port: u16) -> String {
        let addr = run(self.cmd().args(["port", service, &port.to_string()]));
        format!("http://{addr}")
    }

    fn container(&self, service: &str) -> String {
        run(self.cmd().args(["ps", "-q", service]))
    }

    fn network(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.cmd().args(["down", "-v", "-t", "2"]).output();
    }
}

#[tokio::test]
async fn a_three_container_cluster_of_the_real_image() {
    if !Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        panic!("this test needs a Docker engine and docker-compose (tests/run.sh checks for them)");
    }
    // tests/run.sh builds the image before the tests start (so the release build does not
    // compete with timing-sensitive tests); run alone, this test builds it itself.
    let given = std::env::var("PIKO_TEST_IMAGE")
        .ok()
        .filter(|i| !i.is_empty());
    let image = match &given {
        Some(image) => image.clone(),
        None => {
            let image = format!("piko-server:test-{}", std::process::id());
            let built = run(Command::new(root().join("installers/docker/build.sh")).arg(&image));
            assert_eq!(built, image);
            image
        }
    };
    let user =
        run(Command::new("docker").args(["inspect", "--format", "{{.Config.User}}", &image]));
    assert_eq!(user, "65532:65532", "the image runs as a non-root user");
    // The image holds a stripped binary (its symbols are kept beside the build output):
    // operators pull it on every node, so its size is a promise (issue 13: under 25 MB).
    let size: u64 =
        run(Command::new("docker").args(["image", "inspect", "--format", "{{.Size}}", &image]))
            .parse()
            .expect("docker image inspect prints the size in bytes");
    assert!(
        size < 25 * 1000 * 1000,
        "the image is {size} bytes; keep it under 25 MB (is the binary stripped?)"
    );

    let compose = Compose {
        project: format!("pikotest{}", std::process::id()),
        image: image.clone(),
    };
    run(compose.cmd().args(["up", "-d"]));
    let admin: Vec<String> = (1..=3)
        .map(|i| compose.url(&format!("node-{i}"), 8002))
        .collect();
    let proxy: Vec<String> = (1..=3)
        .map(|i| compose.url(&format!("node-{i}"), 8000))
        .collect();
    let upstream: Vec<String> = (1..=3)
        .map(|i| compose.url(&format!("node-{i}"), 8001))
        .collect();

    for a in &admin {
        wait_until(
            "the cluster has 3 voters",
            Duration::from_secs(60),
            || async {
                let raft = json(format!("{a}/status/cluster/raft")).await;
                raft["voters"].as_array().map(Vec::len) == Some(3) && raft["leader"].is_string()
            },
        )
        .await;
    }
    let node1 = compose.container("node-1");
    wait_until(
        "docker reports node-1 healthy",
        Duration::from_secs(60),
        || async {
            let out = Command::new("docker")
                .args(["inspect", "--format", "{{.State.Health.Status}}", &node1])
                .output();
            matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "healthy")
        },
    )
    .await;

    // An upstream on node-2 is served by every node.
    let echo = EchoUpstream::named("in-docker").await;
    let _on2 = TestConnector::start(
        &upstream[1],
        &[("shop", &echo.addr.to_string(), Protocol::Http)],
    );
    for p in &proxy {
        wait_until(
            "shop answers through every node",
            Duration::from_secs(20),
            || async { get_endpoint(p, "shop", "/name").await == Some((200, "in-docker".into())) },
        )
        .await;
    }

    // Partition node-2 from the others: it keeps serving its own upstream, the majority
    // expires its entries, and what registers on node-2 meanwhile stays local.
    let node2 = compose.container("node-2");
    run(Command::new("docker").args([
        "network",
        "disconnect",
        &compose.network("cluster"),
        &node2,
    ]));
    wait_until(
        "the majority drops node-2's endpoints",
        Duration::from_secs(30),
        || async {
            replicated_count(
                &json(format!("{}/status/cluster/nodes", admin[0])).await,
                "shop",
            ) == Some(0)
        },
    )
    .await;
    assert_eq!(
        get_endpoint(&proxy[1], "shop", "/name").await,
        Some((200, "in-docker".into())),
        "the minority serves its own upstream"
    );
    let (status, body) = get_endpoint(&proxy[0], "shop", "/name").await.unwrap();
    assert_eq!(status, 502, "{body}");
    let late = EchoUpstream::named("late").await;
    let _late = TestConnector::start(
        &upstream[1],
        &[("late", &late.addr.to_string(), Protocol::Http)],
    );
    wait_until(
        "late serves locally on node-2",
        Duration::from_secs(20),
        || async { get_endpoint(&proxy[1], "late", "/name").await == Some((200, "late".into())) },
    )
    .await;
    assert_eq!(
        replicated_count(
            &json(format!("{}/status/cluster/nodes", admin[0])).await,
            "late"
        ),
        Some(0),
        "the minority cannot change the registry"
    );

    // Heal: node-2's entries come back and the majority routes to it again.
    run(Command::new("docker").args([
        "network",
        "connect",
        "--alias",
        "node-2.cluster",
        &compose.network("cluster"),
        &node2,
    ]));
    for ep in ["shop", "late"] {
        wait_until(
            "node-1 routes to node-2 again",
            Duration::from_secs(40),
            || async { get_endpoint(&proxy[0], ep, "/name").await.map(|r| r.0) == Some(200) },
        )
        .await;
    }

    // Kill node-3 (no goodbye) and start it again: it rejoins from its volume.
    run(compose.cmd().args(["kill", "node-3"]));
    run(compose.cmd().args(["start", "node-3"]));
    let admin3 = compose.url("node-3", 8002);
    wait_until(
        "node-3 is back in the cluster",
        Duration::from_secs(60),
        || async {
            let raft = json(format!("{admin3}/status/cluster/raft")).await;
            raft["leader"].is_string() && raft["voters"].as_array().map(Vec::len) == Some(3)
        },
    )
    .await;
    let proxy3 = compose.url("node-3", 8000);
    wait_until(
        "node-3 serves shop again",
        Duration::from_secs(20),
        || async {
            get_endpoint(&proxy3, "shop", "/name").await == Some((200, "in-docker".into()))
        },
    )
    .await;

    drop(compose);
    if given.is_none() {
        let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
    }
}

#[test]
fn the_compose_file_refuses_to_start_a_cluster_without_a_cluster_token() {
    // Without a token every node refuses peers that are not on its own loopback, so the cluster
    // could never form; compose must say what to set instead of starting three lone nodes.
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(root().join("installers/compose/docker-compose.yml"))
        .arg("config")
        .env_remove("PIKO_CLUSTER_TOKEN")
        .output()
        .expect("run docker-compose");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "compose accepted a missing token");
    assert!(
        stderr.contains("set PIKO_CLUSTER_TOKEN to a shared secret of 16+ characters"),
        "compose said: {stderr}"
    );
}
