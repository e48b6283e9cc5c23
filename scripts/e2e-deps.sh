#!/usr/bin/env bash
# Installs what the network-namespace e2e test (e2e/tests/netns.rs) needs from
# Debian's packages: iptables (the sidecar's init-iptables runs
# `iptables-restore`), curl (the client app), iproute2 (`ip netns`),
# util-linux (`setpriv`) and procps (`sysctl`); and Chromium's headless shell
# for the dashboard test (cli/tests/dashboard.rs), the smallest Debian
# Chromium that renders a page (`chromium` works too). Idempotent: does nothing
# when all are there.
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
{ command -v sysctl >/dev/null 2>&1 || [ -x /usr/sbin/sysctl ]; } || need+=(procps)
{ command -v iptables-restore >/dev/null 2>&1 || [ -x /usr/sbin/iptables-restore ]; } || need+=(iptables)
command -v curl >/dev/null 2>&1 || need+=(curl)
{ command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1; } ||
  need+=(chromium-headless-shell)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "e2e-deps: missing ${need[*]} and cannot install them (needs root and apt-get);" \
      "the netns test will fail unless REMORA_SKIP_NETNS=1, the dashboard test unless" \
      "REMORA_SKIP_BROWSER=1" >&2
    exit 0
  fi
  echo "e2e-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# The sidecar calls plain `iptables-restore`: say which backend that is.
browser=$(command -v chromium-headless-shell || command -v chromium || true)
browser_version=$([ -n "$browser" ] && "$browser" --version 2>/dev/null | head -1 || echo "no chromium")
echo "e2e-deps: $(PATH="$PATH:/usr/sbin:/sbin" iptables-restore --version 2>&1 | head -1), $(curl --version | head -1 | cut -d' ' -f1-2), $browser_version" >&2
