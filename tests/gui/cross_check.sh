#!/usr/bin/env bash
# `cargo check -p piko-connector -p piko-cli` for Windows and macOS from Linux (the tray app,
# and the CLI's Windows service and launchd code).
#
# A target whose standard library cannot be fetched is reported and skipped (only that check).
# `cargo check` still runs build scripts: ring compiles C for the target, so the script points
# the cc crate at Debian's clang (`--target=...`) with stand-in C headers (tests/gui/cross-include:
# declarations of the few libc functions ring uses, and macOS's TargetConditionals.h). Nothing
# links, so no Windows or macOS SDK is needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/piko/target}"
include="$PWD/tests/gui/cross-include"

failed=0
for target in x86_64-pc-windows-msvc aarch64-apple-darwin; do
  if ! rustup target list --installed | grep -qx "$target"; then
    if ! rustup target add "$target"; then
      echo "== gui cross-check: SKIPPED $target: rustup could not fetch its standard library"
      continue
    fi
  fi
  var="$(echo "$target" | tr '-' '_')"
  # clang cross-compiles ring's C (freestanding: only its own headers and clang's builtins).
  export "CC_${var}=clang"
  export "AR_${var}=llvm-ar"
  export "CFLAGS_${var}=-ffreestanding -isystem $include"
  features=()
  if [ "$target" = aarch64-apple-darwin ]; then
    # mac-notification-sys (the notification plugin's macOS backend) compiles Objective-C
    # against Cocoa.framework, which only the macOS SDK has: that one crate is left out here.
    echo "== gui cross-check: $target without the notifications feature (needs the macOS SDK's Cocoa)"
    features=(--no-default-features)
  fi
  echo "== gui cross-check: cargo check -p piko-connector -p piko-cli --target $target ${features[*]}"
  if ! cargo check -p piko-connector -p piko-cli --target "$target" "${features[@]}"; then
    failed=1
  fi
done
exit "$failed"
