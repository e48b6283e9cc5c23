#!/usr/bin/env bash
# Runs every check and test: the README's test command, and what CI runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Kubernetes binaries (kube-apiserver, etcd, and the node's kubelet, kube-proxy, CoreDNS; built once, cached under ~/.cache/remora)"
REMORA_CONTROL_PLANE_BIN=$(scripts/control-plane.sh --node)
export REMORA_CONTROL_PLANE_BIN

step "chart tools (helm, kubeconform, shellcheck; built once, cached under ~/.cache/remora)"
REMORA_TOOLS_BIN=$(scripts/tools.sh)
export REMORA_TOOLS_BIN

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the sidecar builds without kube or k8s-openapi"
if cargo tree -p remora-sidecar -e normal --locked | grep -E '^.*(kube|k8s-openapi) v' ; then
  echo "remora-sidecar must not depend on kube or k8s-openapi" >&2
  exit 1
fi

step "e2e test dependencies (iptables, curl, chromium-headless-shell from Debian's packages; installed once)"
scripts/e2e-deps.sh

step "cargo test --workspace"
cargo test --workspace --locked

step "a real node: kubelet, containerd and real pods, the chart and the cluster suite (e2e/node/run.sh)"
e2e/node/run.sh
