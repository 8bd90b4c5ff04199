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
cp "$bin" "$ctx/piko-server"
mkdir "$ctx/data"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
