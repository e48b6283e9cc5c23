#!/usr/bin/env bash
# Builds the chart tools the tests use — helm and kubeconform — from the Go
# module proxy, once, into ~/.cache/remora/bin/tools-<versions>/, puts the
# Kubernetes OpenAPI document next to them (kubeconform's schemas are generated
# from it, offline), installs shellcheck from the distribution's packages when
# it is missing, and prints that directory as the last line on stdout
# (messages go to stderr).
# Idempotent: a second run finds everything and does nothing. Offline after
# the first run (the Go module and build caches live under ~/.cache/remora/go,
# shared with scripts/control-plane.sh).
set -euo pipefail

HELM_VERSION=v3.20.2
KUBECONFORM_VERSION=v0.8.0
# Kubernetes version the helm binary reports as its default capabilities
# (`.Capabilities.KubeVersion` in `helm template`/`helm lint`): the client-go
# minor it is built with, as helm's own Makefile sets it.
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=35

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The Kubernetes release whose OpenAPI document becomes kubeconform's schemas:
# the one the test control plane runs (scripts/control-plane.sh).
K8S_VERSION=$(sed -n 's/^K8S_VERSION=//p' "$here/scripts/control-plane.sh")
cache=${REMORA_CACHE:-$HOME/.cache/remora}
out=$cache/bin/tools-helm-$HELM_VERSION-kubeconform-$KUBECONFORM_VERSION-k8s-$K8S_VERSION
swagger=kubernetes-$K8S_VERSION-swagger.json

say() { printf 'tools: %s\n' "$*" >&2; }

install_shellcheck() {
  if command -v shellcheck >/dev/null 2>&1; then
    return
  fi
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    say "shellcheck is not on PATH; install it with your package manager (Debian/Ubuntu: apt-get install -y shellcheck)"
    exit 1
  fi
  say "installing shellcheck with apt-get"
  if ! apt-get install -y -q shellcheck >&2; then
    apt-get update -q >&2
    apt-get install -y -q shellcheck >&2
  fi
}

install_shellcheck

if [[ -x $out/helm && -x $out/kubeconform && -s $out/$swagger ]]; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  say "the Go toolchain (go) is not on PATH; it is needed once to build helm and kubeconform"
  exit 1
fi
if [[ -z $K8S_VERSION ]]; then
  say "could not read K8S_VERSION from $here/scripts/control-plane.sh"
  exit 1
fi

export GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# `go install pkg@version` builds with the module's own go.mod and go.sum, so
# the dependency versions are exactly the ones the release pins.
build() {
  local name=$1 pkg=$2 ldflags=$3
  if [[ -x $out/$name ]]; then return; fi
  say "building $name from $pkg (first run only; helm takes a few minutes on 2 cores)"
  local start=$SECONDS
  GOBIN=$tmp go install -trimpath -ldflags "$ldflags" "$pkg"
  mv "$tmp/$name" "$out/$name"
  say "built $out/$name in $((SECONDS - start)) s"
}

build kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" \
  "-s -w -X main.version=$KUBECONFORM_VERSION"
build helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
  "-s -w \
  -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$HELM_K8S_MAJOR \
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR \
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$HELM_K8S_MAJOR \
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR"

# kubeconform downloads its JSON schemas from the network by default. Instead the
# tests generate them offline (e2e/tests/chart/schemas.rs) from the OpenAPI
# document Kubernetes ships in its Go module (api/openapi-spec/swagger.json) plus
# our CRDs. The module is already in the cache once the control plane is built.
if [[ ! -s $out/$swagger ]]; then
  say "copying the OpenAPI document of Kubernetes $K8S_VERSION from its Go module"
  dir=$(cd "$tmp" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  if [[ -z $dir || ! -s $dir/api/openapi-spec/swagger.json ]]; then
    say "k8s.io/kubernetes@$K8S_VERSION has no api/openapi-spec/swagger.json (module dir: ${dir:-none})"
    exit 1
  fi
  cp "$dir/api/openapi-spec/swagger.json" "$tmp/$swagger"
  mv "$tmp/$swagger" "$out/$swagger"
fi

echo "$out"
