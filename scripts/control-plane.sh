#!/usr/bin/env bash
# Builds kube-apiserver, etcd and kube-controller-manager from the Go module
# proxy, once, into
# ~/.cache/remora/bin/k8s-<version>/, and prints that directory.
# With --node it also builds what the real node needs (e2e/node/): kubelet, kubectl,
# kube-scheduler, kube-proxy, a CoreDNS with only the cluster-DNS plugins and
# the sandbox image's pause binary.
# Idempotent: a second run finds the binaries and does nothing. Offline after
# the first run (the Go module and build caches live under ~/.cache/remora/go).
set -euo pipefail

K8S_VERSION=v1.33.13
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${REMORA_CACHE:-$HOME/.cache/remora}
out=$cache/bin/k8s-$K8S_VERSION

say() { printf 'control-plane: %s\n' "$*" >&2; }

bins=(etcd kube-apiserver kube-controller-manager)
if [[ ${1:-} == --node ]]; then
  bins+=(kubelet kube-scheduler kube-proxy kubectl coredns pause)
elif [[ -n ${1:-} ]]; then
  say "unknown argument $1 (the only option is --node)"
  exit 2
fi

missing=0
for bin in "${bins[@]}"; do [[ -x $out/$bin ]] || missing=1; done
if [[ $missing == 0 ]]; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  say "the Go toolchain (go) is not on PATH; it is needed once to build kube-apiserver and etcd"
  exit 1
fi

export GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w \
  -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
  -X k8s.io/component-base/version.gitMajor=1 \
  -X k8s.io/component-base/version.gitMinor=$minor \
  -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

for bin in "${bins[@]}"; do
  if [[ -x $out/$bin ]]; then continue; fi
  say "building $bin for Kubernetes $K8S_VERSION (first run only; up to several minutes on 2 cores)"
  start=$SECONDS
  if [[ $bin == coredns || $bin == pause ]]; then
    # Modules of their own (e2e/node/<bin>), so CoreDNS's client-go leaves the pins above alone.
    (cd "$here/e2e/node/$bin" && go build -trimpath -ldflags "-s -w" -o "$tmp/$bin" .)
  else
    (cd "$here/e2e/envtest" && go build -trimpath -ldflags "$ldflags" -o "$tmp/$bin" "./$bin")
  fi
  mv "$tmp/$bin" "$out/$bin"
  say "built $out/$bin in $((SECONDS - start)) s"
done
echo "$out"
