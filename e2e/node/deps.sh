#!/usr/bin/env bash
# Installs what the real node (e2e/node/node.sh) needs from Debian's packages:
# containerd, runc, the CNI plugins, conntrack (kube-proxy), busybox-static and
# curl (the client image), openssl (the node's PKI). Idempotent: does nothing
# when all are there.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin

need=()
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
[[ -x /bin/busybox ]] || need+=(busybox-static)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v iptables >/dev/null 2>&1 || need+=(iptables)

if [[ ${#need[@]} -gt 0 ]]; then
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "node-deps: missing ${need[*]} and cannot install them (needs root and apt-get)" >&2
    exit 1
  fi
  echo "node-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
echo "node-deps: $(containerd --version | cut -d' ' -f3), runc $(runc --version | head -1 | cut -d' ' -f3)" >&2
