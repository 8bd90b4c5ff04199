#!/usr/bin/env bash
# Build the piko-server image: a statically linked binary in an image FROM scratch.
#
#   installers/docker/build.sh [TAG]        (default tag: piko-server:dev)
#
# PIKO_PROFILE=release (default) or dev. PIKO_STATIC_TARGET_DIR is where cargo builds
# (default /var/cache/piko/target-static): not CARGO_TARGET_DIR, because static linking
# changes every crate's flags and would throw away the normal build.
set -euo pipefail
tag="${1:-piko-server:dev}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
profile="${PIKO_PROFILE:-release}"
target_dir="${PIKO_STATIC_TARGET_DIR:-/var/cache/piko/target-static}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

cd "$root"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" \
    cargo build --locked -p piko-server --profile "$profile" --target "$triple"
dir="$profile"; [ "$profile" = dev ] && dir=debug
bin="$target_dir/$triple/$dir/piko-server"
if ldd "$bin" 2>/dev/null | grep -q '=>'; then
    echo "build.sh: $bin is not static" >&2
    exit 1
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp installers/docker/Dockerfile "$ctx/"
# The image gets a stripped binary; its symbols and line tables stay beside the build
# output as piko-server.debug (gdb and addr2line find it through the debug link).
debug="$bin.debug"
objcopy --only-keep-debug "$bin" "$debug"
objcopy --strip-all --add-gnu-debuglink="$debug" "$bin" "$ctx/piko-server"
echo "build.sh: piko-server $(stat -c %s "$ctx/piko-server") bytes stripped, symbols in $debug" >&2
mkdir "$ctx/data"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
