#!/usr/bin/env bash
# Remora's end-to-end run on a kind cluster, in one command (needs a Docker engine):
#   e2e/kind/run.sh
# Creates the cluster, builds and loads the images, then runs the cluster suite
# (e2e/suite.sh: installs the chart, deploys the samples in e2e/kind/manifests/ and
# runs e2e/tests/kind.rs against them; the real node here runs the same). The
# cluster is deleted on exit unless KEEP_CLUSTER=1.
#
# Environment: CLUSTER (default remora-e2e), KEEP_CLUSTER=1, KIND_NODE_IMAGE
# (a kindest/node image, Kubernetes 1.29 or later), NAMESPACE (default remora-demo).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
CLUSTER=${CLUSTER:-remora-e2e}
export NAMESPACE=${NAMESPACE:-remora-demo}
TAG=e2e

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH; this run needs docker, kind, kubectl, helm and cargo"
done
docker info >/dev/null 2>&1 || die "no Docker engine is reachable (docker info failed); start Docker, or run the network-namespace e2e instead: cargo test -p remora-e2e --test netns"

cleanup() {
  local status=$?
  if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
    say "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER to remove it)"
  else
    say "deleting cluster $CLUSTER"
    kind delete cluster --name "$CLUSTER" >&2 || true
  fi
  exit "$status"
}

say "creating kind cluster $CLUSTER"
node_image=()
if [[ -n ${KIND_NODE_IMAGE:-} ]]; then
  node_image=(--image "$KIND_NODE_IMAGE")
fi
kind create cluster --name "$CLUSTER" --config "$here/cluster.yaml" "${node_image[@]}" --wait 120s
trap cleanup EXIT
kubectl config use-context "kind-$CLUSTER" >/dev/null

say "building images (TAG=$TAG)"
make -C "$root" images TAG="$TAG"
for image in remora-operator remora-webhook remora-sidecar remora-echo; do
  kind load docker-image --name "$CLUSTER" "ghcr.io/remora-mesh/$image:$TAG"
done

"$root/e2e/suite.sh" "$TAG"
