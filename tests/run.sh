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

# The connector's Secret Service test runs gnome-keyring inside dbus-run-session.
if ! command -v dbus-run-session >/dev/null 2>&1 || ! command -v gnome-keyring-daemon >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dbus-daemon gnome-keyring >/dev/null
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
