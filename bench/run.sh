#!/usr/bin/env bash
# Run the Piko benchmark: builds release binaries, installs the tools it compares against
# (oha, rathole, wrk, nginx-light) when missing, then runs `piko-bench run`.
#   bash bench/run.sh           quick mode (under 3 minutes once built)
#   bash bench/run.sh --full    5 rounds of 10 s, 10,000 idle upstreams
# Further arguments go to `piko-bench run` (see `piko-bench run --help`).
# Results: bench/results/latest.{md,json} and a dated copy of each.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/piko/target}"
if ! mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null; then
  export CARGO_TARGET_DIR="$PWD/target"
fi
export CARGO_TERM_COLOR=never

cargo build --release --locked -p piko-server -p piko-cli -p piko-bench

if ! command -v oha >/dev/null 2>&1; then
  cargo install --locked oha
fi
if ! command -v rathole >/dev/null 2>&1; then
  # rathole 0.5.0's lock pins a `time` release that no longer builds on current Rust:
  # fall back to fresh dependency resolution; only the TCP transport is needed.
  cargo install --locked rathole \
    || cargo install rathole --no-default-features --features server,client \
    || echo "rathole could not be installed: it will be reported as not run" >&2
fi
if ! command -v nginx >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
  { $SUDO apt-get update && $SUDO apt-get install -y nginx-light wrk; } \
    || echo "nginx-light/wrk could not be installed: nginx will be reported as not run" >&2
fi
# Debian starts the packaged nginx on port 80; it does not disturb the benchmark's own nginx.

# 1,000 WebSocket sessions and 10,000 idle upstreams need many descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec "$CARGO_TARGET_DIR/release/piko-bench" run "$@"
