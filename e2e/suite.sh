#!/usr/bin/env bash
# The cluster suite, shared by the kind run (e2e/kind/run.sh) and the real node here
# (e2e/node/run.sh): on the current kubectl context, with the images already loaded,
#   e2e/suite.sh TAG
# installs the chart with those image tags (and two operator replicas, so a test can kill
# the leader) and waits for its rollout, deploys the
# samples of e2e/kind/manifests/ into $NAMESPACE (default remora-demo), and runs
# e2e/tests/kind.rs against them (REMORA_E2E_KIND=1). helm and kubectl come from PATH.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
TAG=${1:?usage: e2e/suite.sh TAG}
NAMESPACE=${NAMESPACE:-remora-demo}
RELEASE=remora
SYSTEM_NAMESPACE=remora-system
manifests=$here/kind/manifests

say() { printf '\n==> %s\n' "$*" >&2; }

say "installing the chart"
start=$SECONDS
# HELM_EXTRA_ARGS: more helm flags, split on spaces (e.g. "--set operator.replicas=2").
read -r -a extra <<<"${HELM_EXTRA_ARGS:-}"
helm install "$RELEASE" "$root/charts/remora" \
  --namespace "$SYSTEM_NAMESPACE" --create-namespace \
  --set images.operator.tag="$TAG" \
  --set images.webhook.tag="$TAG" \
  --set images.sidecar.tag="$TAG" \
  --set operator.replicas=2 \
  "${extra[@]}" \
  --wait --timeout 5m
kubectl -n "$SYSTEM_NAMESPACE" rollout status deploy/remora-operator deploy/remora-webhook --timeout 2m
say "chart installed and rolled out in $((SECONDS - start)) s"

say "deploying the samples into $NAMESPACE"
start=$SECONDS
kubectl apply -f "$manifests/namespace.yaml"
if [[ $NAMESPACE != remora-demo ]]; then
  kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
  kubectl label namespace "$NAMESPACE" remora.dev/inject=enabled --overwrite
fi
# Policy and certificates first, so the pods start with their identity and config.
kubectl apply -n "$NAMESPACE" -f "$manifests/mesh.yaml"
kubectl -n "$NAMESPACE" wait --for=condition=Ready meshcertificate/echo meshcertificate/client --timeout 60s
kubectl apply -n "$NAMESPACE" -f "$manifests/echo.yaml" -f "$manifests/client.yaml"
kubectl -n "$NAMESPACE" rollout status deploy/echo-v1 deploy/echo-v2 deploy/client --timeout 3m
say "samples Ready in $((SECONDS - start)) s"

say "running the cluster tests (e2e/tests/kind.rs)"
cd "$root"
REMORA_E2E_KIND=1 REMORA_E2E_NAMESPACE="$NAMESPACE" \
  cargo test -p remora-e2e --test kind --locked -- --test-threads=1
