#!/usr/bin/env bash
# Run every Piko test from a fresh checkout: installs what the tests need, builds the
# binaries the CLI tests run, then runs the whole workspace's tests with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

# A shared target dir outside the clone keeps repeated runs fast; a fresh machine still works.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/piko/target}"
if ! mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null; then
  export CARGO_TARGET_DIR="$PWD/target"
fi
export CARGO_TERM_COLOR=never
start=$(date +%s)
# Each step prints its start time, so a slow CI run shows where the time went.
step() { echo "== ci: $* (t+$(($(date +%s) - start))s)"; }

# Debian packages the tests use, installed (after one `apt-get update`) when missing:
# gnome-keyring inside dbus-run-session for the connector's Secret Service test, and
# docker-compose for the three-container cluster test (tests/tests/docker.rs), which also
# needs a running Docker engine.
need=()
command -v dbus-run-session >/dev/null 2>&1 || need+=(dbus-daemon)
command -v gnome-keyring-daemon >/dev/null 2>&1 || need+=(gnome-keyring)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# systemd-analyze checks the unit `piko service install` writes (tests/tests/cli.rs).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The tray app (tests/gui/run.sh): WebKitGTK, the tray indicator and SVG libraries to build it;
# Xvfb, a tray host (trayer), xdotool, xclip (the clipboard) and imagemagick (`import`) to drive
# and photograph it;
# WebKitWebDriver for tauri-driver; clang/llvm for the Windows and macOS cross-checks.
for pkg in libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev \
  webkit2gtk-driver xvfb xauth trayer xdotool xclip imagemagick clang llvm python3-venv; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The static build for the Docker image has its own target dir (its flags differ).
export PIKO_STATIC_TARGET_DIR="${PIKO_STATIC_TARGET_DIR:-$(dirname "$CARGO_TARGET_DIR")/target-static}"

if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

step "format, lint"
cargo fmt --all -- --check
bash tests/layers.sh
cargo clippy --workspace --all-targets -- -D warnings
step "docs"
# Every public item documented (missing_docs in the library crates), no broken doc link.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
step "build"
# One build for the binaries and the tests: with --all-targets, dev-dependency features
# (tokio's test-util) are unified once, so nextest and tests/gui/run.sh rebuild nothing
# (a --bins build here cost a second pass over every dependency: ~5 min on a fresh machine).
cargo build --workspace --all-targets
step "docker image"
# The real image, for tests/tests/docker.rs (built here so its release build runs alone).
export PIKO_TEST_IMAGE="$(bash installers/docker/build.sh piko-server:ci)"
step "kubernetes manifests, helm chart"
# Renders and validates installers/kubernetes and installers/helm, and runs the StatefulSet's
# pods from the image just built (its own venv; about 25 s cold, a few seconds warm).
bash installers/kubernetes/test.sh
step "tests"
cargo nextest run --workspace --no-fail-fast
# The tray app, in its own step (outside default-members): build, wiring tests, the real
# window and tray under Xvfb, and the Windows/macOS cross-checks.
bash tests/gui/run.sh
step "done"
