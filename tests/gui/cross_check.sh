#!/usr/bin/env bash
# `cargo check -p piko-connector` for Windows and macOS from Linux.
#
# A target whose standard library cannot be fetched is reported and skipped (only that check).
# `cargo check` still runs build scripts: ring compiles C for the target, so the script points
# the cc crate at Debian's clang (`--target=...`); tauri-build compiles the Windows resource file
# with llvm-rc. Neither links, so no Windows or macOS SDK is needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/piko/target}"

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
  export "CFLAGS_${var}=-ffreestanding"
  echo "== gui cross-check: cargo check -p piko-connector --target $target"
  if ! cargo check -p piko-connector --target "$target"; then
    failed=1
  fi
done
exit "$failed"
