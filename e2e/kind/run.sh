#!/usr/bin/env bash
# Remora's end-to-end run on a kind cluster, in one command (needs a Docker engine):
#   e2e/kind/run.sh
# Creates the cluster, builds and loads the images, installs the chart, deploys the
# samples in e2e/kind/manifests/ and runs e2e/tests/kind.rs against them. The
# cluster is deleted on exit unless KEEP_CLUSTER=1.
#
# Environment: CLUSTER (default remora-e2e), KEEP_CLUSTER=1, KIND_NODE_IMAGE
# (a kindest/node image, Kubernetes 1.29 or later), NAMESPACE (default remora-demo).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
CLUSTER=${CLUSTER:-remora-e2e}
NAMESPACE=${NAMESPACE:-remora-demo}
TAG=e2e
RELEASE=remora
SYSTEM_NAMESPACE=remora-system

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

say "installing the chart"
helm install "$RELEASE" "$root/charts/remora" \
  --namespace "$SYSTEM_NAMESPACE" --create-namespace \
  --set images.operator.tag="$TAG" \
  --set images.webhook.tag="$TAG" \
  --set images.sidecar.tag="$TAG" \
  --wait --timeout 5m
kubectl -n "$SYSTEM_NAMESPACE" rollout status deploy/remora-operator deploy/remora-webhook --timeout 2m

say "deploying the samples into $NAMESPACE"
kubectl apply -f "$here/manifests/namespace.yaml"
if [[ $NAMESPACE != remora-demo ]]; then
  kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
  kubectl label namespace "$NAMESPACE" remora.dev/inject=enabled --overwrite
fi
# Policy and certificates first, so the pods start with their identity and config.
kubectl apply -n "$NAMESPACE" -f "$here/manifests/mesh.yaml"
kubectl -n "$NAMESPACE" wait --for=condition=Ready meshcertificate/echo meshcertificate/client --timeout 60s
kubectl apply -n "$NAMESPACE" -f "$here/manifests/echo.yaml" -f "$here/manifests/client.yaml"
kubectl -n "$NAMESPACE" rollout status deploy/echo-v1 deploy/echo-v2 deploy/client --timeout 3m

say "running the kind tests"
cd "$root"
REMORA_E2E_KIND=1 REMORA_E2E_NAMESPACE="$NAMESPACE" \
  cargo test -p remora-e2e --test kind -- --test-threads=1
