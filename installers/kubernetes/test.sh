#!/usr/bin/env bash
# Check the Kubernetes manifests and the Helm chart: render the chart (defaults and
# installers/helm/piko/ci/custom-values.yaml) with Helm's own engine, lint it, validate every
# manifest against the Kubernetes schemas, and check what the schemas cannot (check.py says
# what). With PIKO_TEST_IMAGE set (a piko-server image) the plain StatefulSet's pods are also
# run in Docker.
#
#   bash installers/kubernetes/test.sh
#
# Its Python packages live in a venv of their own (PIKO_K8S_VENV, default
# /var/cache/piko/venv-k8s), made on first use. Needs a piko-server binary for its list of
# PIKO_ variables: PIKO_SERVER_BIN, else $CARGO_TARGET_DIR/debug/piko-server, else built.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
start=$(date +%s)

# helm-python-sdk: Helm v4's Go SDK as a C library (no helm binary, nothing compiled here).
# kubernetes-validate: the Kubernetes OpenAPI schemas of every version, offline.
reqs="helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.4"
venv="${PIKO_K8S_VENV:-/var/cache/piko/venv-k8s}"
if ! mkdir -p "$(dirname "$venv")" 2>/dev/null; then
  venv="$root/target/venv-k8s"
fi
stamp="$venv/.piko-reqs"
if [ "$(cat "$stamp" 2>/dev/null)" != "$reqs" ]; then
  echo "test.sh: making the venv $venv ($reqs)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $reqs
  echo "$reqs" >"$stamp"
fi

bin="${PIKO_SERVER_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/piko-server}"
if [ ! -x "$bin" ]; then
  cargo build -q -p piko-server --bin piko-server
fi
help="$(mktemp)"
trap 'rm -f "$help"' EXIT
"$bin" --help >"$help"

args=(--server-help "$help")
if [ -n "${PIKO_TEST_IMAGE:-}" ]; then
  args+=(--docker-image "$PIKO_TEST_IMAGE")
fi
"$venv/bin/python" installers/kubernetes/check.py "${args[@]}"
echo "test.sh: done in $(($(date +%s) - start))s"
