#!/usr/bin/env bash
# Installs the benchmark tools once and caches them:
#   oha      -> ~/.cache/remora/tools/bin/oha (cargo install, from crates.io)
#   nginx, haproxy -> Debian packages (apt-get), only when missing.
set -euo pipefail
TOOLS="${REMORA_TOOLS:-$HOME/.cache/remora/tools}"
if [ ! -x "$TOOLS/bin/oha" ]; then
  echo "installing oha into $TOOLS (once)" >&2
  cargo install oha --locked --root "$TOOLS"
fi
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "$TOOLS/bin/oha"
