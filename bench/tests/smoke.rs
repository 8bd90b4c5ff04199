//! The harness's own check: one very short round of direct and piko must measure traffic.
//!
//! Runs the `piko-bench` binary with the `piko-server` and `piko` binaries of the same build
//! profile (the test command builds `--workspace --bins` first), writing into a temp dir.

use std::path::PathBuf;
use std::process::Command;

/// The target profile dir (`target/debug` or `target/release`) this test runs from.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/smoke-<hash>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test executable is in <target>/<profile>/deps")
        .to_path_buf()
}

#[test]
fn smoke_run_measures_direct_and_piko() {
    let dir = profile_dir();
    for bin in ["piko-server", "piko"] {
        assert!(
            dir.join(bin).is_file(),
            "{} missing: run `cargo build --workspace --bins` first (tests/run.sh does)",
            dir.join(bin).display()
        );
    }
    let out = std::env::temp_dir().join(format!("piko-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(env!("CARGO_BIN_EXE_piko-bench"))
        .args(["run", "--smoke", "--out"])
        .arg(&out)
        .arg("--bin-dir")
        .arg(&dir)
        .output()
        .expect("run piko-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "piko-bench run --smoke failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    let json = std::fs::read_to_string(out.join("latest.json")).expect("latest.json written");
    let report: serde_json::Value = serde_json::from_str(&json).expect("latest.json is JSON");
    assert_eq!(report["mode"], "smoke");
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert!(!scenarios.is_empty(), "no scenario in {json}");
    for id in ["small_get_keepalive", "download_1m"] {
        let s = scenarios
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("scenario {id} missing in {json}"));
        for system in ["direct", "piko"] {
            let v = s["results"][system]["median"].as_f64().unwrap_or(0.0);
            assert!(v > 0.0, "{id}/{system}: median {v} in {json}");
        }
    }
    let md = std::fs::read_to_string(out.join("latest.md")).expect("latest.md written");
    assert!(
        md.contains("| small GET, keep-alive, 64 conns | req/s |"),
        "{md}"
    );
    // A target not met comes with the profile that explains it.
    assert_eq!(
        md.contains("❌ not met"),
        md.contains("## Why the targets not met are not met (profile)"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
