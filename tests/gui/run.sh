#!/usr/bin/env bash
# Piko Connector's tests, in their own step (the GUI crate is outside default-members):
#   1. build the app and the server;
#   2. wiring tests of the Tauri commands on the mock runtime (cargo nextest -p piko-connector);
#   3. the real window and tray under Xvfb, driven by WebDriver (tauri-driver + WebKitWebDriver,
#      selenium and jeepney from PyPI in a venv, xclip), screenshots saved under $PIKO_GUI_OUT;
#   4. cargo check for Windows (x86_64-pc-windows-msvc) and macOS (aarch64-apple-darwin).
# The Debian packages come from tests/run.sh's one apt-get pass.
set -euo pipefail
cd "$(dirname "$0")/../.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/piko/target}"
export CARGO_TERM_COLOR=never
out="${PIKO_GUI_OUT:-$CARGO_TARGET_DIR/gui-test-output}"
rm -rf "$out" && mkdir -p "$out"

start=$(date +%s)
step() { echo "== gui: $* (t+$(($(date +%s) - start))s)"; }

step "build piko-connector and piko-server"
# The same selection as tests/run.sh (whole workspace, all targets): a narrower one resolves
# other features and rebuilds the GUI's dependency tree (measured: 6 min on a fresh machine).
cargo build --workspace --all-targets

step "wiring tests (tauri::test mock runtime)"
cargo nextest run --workspace -E 'package(piko-connector)' --no-fail-fast

step "tools: tauri-driver, selenium and jeepney"
# xclip reads the clipboard back for the "Copy URL" and "Copy diagnostics" checks.
if ! command -v xclip >/dev/null 2>&1; then
  echo "xclip is missing: apt-get install xclip (tests/run.sh's package list has it)" >&2
  exit 1
fi
driver="$(command -v tauri-driver || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tauri-driver")"
if [ ! -x "$driver" ]; then
  cargo install --locked tauri-driver
fi
venv="$(dirname "$CARGO_TARGET_DIR")/gui-venv"
# jeepney (pure Python D-Bus) plays the desktop notification server on the private bus.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import selenium, jeepney' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'selenium>=4.20,<5' 'jeepney>=0.8,<1'
fi

step "window and tray under Xvfb (screenshots in $out)"
# A private session bus: the tray's StatusNotifier lookup and the Secret Service probe get a
# quick answer instead of a timeout, notifications go to the test's stand-in server, and
# nothing touches the user's own session.
dbus-run-session -- "$venv/bin/python" tests/gui/window_test.py \
  --app "$CARGO_TARGET_DIR/debug/piko-connector" \
  --server "$CARGO_TARGET_DIR/debug/piko-server" \
  --driver "$driver" \
  --out "$out"

step "cross-target checks"
bash tests/gui/cross_check.sh

step "done"
