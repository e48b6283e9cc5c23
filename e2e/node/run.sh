#!/usr/bin/env bash
# The cluster suite on a real single-node cluster on this machine (no Docker):
#   e2e/node/run.sh                 KEEP_NODE=1 keeps the node running afterwards
# Installs the node's Debian packages (e2e/node/deps.sh), builds the Kubernetes
# binaries once (scripts/control-plane.sh --node, cached under ~/.cache/remora),
# starts the node (e2e/node/node.sh up), builds and imports the images
# (e2e/node/images.sh), runs the suite kind runs too (e2e/suite.sh: helm install,
# the samples, e2e/tests/kind.rs), checks the egress guard dropped nothing, and stops
# the node and restores the host on exit, also on failure. Each step is named; a
# failing step is named again at the end. Needs root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
export REMORA_NODE_DIR=${REMORA_NODE_DIR:-/tmp/remora-node}
TAG=e2e
current="starting"

step() { current=$*; printf '\n==> node run: %s\n' "$*" >&2; }

finish() {
  local status=$?
  if [[ $status != 0 ]]; then
    printf '\nnode run: FAILED at step "%s" (exit %s); logs in %s/logs\n' "$current" "$status" "$REMORA_NODE_DIR" >&2
    if [[ -d $REMORA_NODE_DIR/logs ]]; then
      # The logs go with the node: keep a copy for the failure's reader.
      rm -rf "${REMORA_NODE_DIR}-logs" && cp -r "$REMORA_NODE_DIR/logs" "${REMORA_NODE_DIR}-logs" &&
        printf 'node run: a copy of the logs is in %s-logs\n' "$REMORA_NODE_DIR" >&2
    fi
  fi
  if [[ ${KEEP_NODE:-0} == 1 ]]; then
    printf 'node run: keeping the node (KUBECONFIG=%s/admin.kubeconfig; e2e/node/node.sh down stops it)\n' "$REMORA_NODE_DIR" >&2
  else
    "$here/node.sh" down || status=1
  fi
  exit "$status"
}

step "Debian packages (containerd, runc, CNI plugins; installed once)"
"$here/deps.sh"

step "Kubernetes binaries (built once, cached under ~/.cache/remora)"
bin=$("$root/scripts/control-plane.sh" --node)
tools=${REMORA_TOOLS_BIN:-$("$root/scripts/tools.sh")}
export REMORA_NODE_BIN=$bin PATH=$bin:$tools:$PATH

trap finish EXIT
step "starting the node"
"$here/node.sh" up
export KUBECONFIG=$REMORA_NODE_DIR/admin.kubeconfig
kubectl get nodes -o wide

step "images (built without Docker, imported into the node's containerd)"
"$here/images.sh" "$TAG"

step "the cluster suite (e2e/suite.sh)"
"$root/e2e/suite.sh" "$TAG"

step "the egress guard"
"$here/node.sh" guard
printf 'node run: passed; node up in %s s\n' "$(cat "$REMORA_NODE_DIR/up-seconds")" >&2
