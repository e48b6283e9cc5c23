#!/usr/bin/env bash
# Builds the images the real node runs, without Docker, and imports them into its
# containerd:
#   e2e/node/images.sh [TAG]        (TAG defaults to e2e)
# remora-operator, remora-webhook and remora-echo (one binary at /usr/local/bin/app,
# user 65532, as images/rust-binary.Dockerfile lays them out), remora-sidecar (the
# binary at /usr/local/bin/remora-sidecar with iptables for the init container, user
# 1337, as images/sidecar.Dockerfile), and the sample client image
# curlimages/curl:8.11.1 (Debian's curl and busybox). Binaries are built with cargo's
# `node-image` profile (release without fat LTO; REMORA_NODE_PROFILE=release for the
# real thing, =dev for the test build's binaries); each ELF file brings the shared libraries it links, from this machine's
# Debian 12 (the same glibc as the distroless and bookworm bases). Archives are kept in
# $REMORA_NODE_DIR/images.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
NODE=${REMORA_NODE_DIR:-/tmp/remora-node}
TAG=${1:-e2e}
PROFILE=${REMORA_NODE_PROFILE:-node-image}
REGISTRY=ghcr.io/remora-mesh

say() { printf 'images: %s\n' "$*" >&2; }
die() { printf 'images: FAILED: %s\n' "$*" >&2; exit 1; }

[[ -S $NODE/containerd/containerd.sock ]] || die "no node is running ($NODE/containerd/containerd.sock); run e2e/node/node.sh up"
export PATH=$PATH:/usr/sbin:/sbin

say "building the binaries (cargo --profile $PROFILE)"
start=$SECONDS
(cd "$root" && cargo build --profile "$PROFILE" --locked \
  -p remora-operator -p remora-webhook -p remora-sidecar -p remora-e2e \
  --bin remora-operator --bin remora-webhook --bin remora-sidecar --bin remora-echo)
say "binaries built in $((SECONDS - start)) s"
target=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
out=$target/$PROFILE
[[ $PROFILE == dev ]] && out=$target/debug

mkdir -p "$NODE/images"
image() { python3 "$here/oci-image.py" --out "$NODE/images/$1.tar" "${@:2}"; }

for app in remora-operator remora-webhook remora-echo; do
  image "$app" --name "$REGISTRY/$app:$TAG" --entrypoint /usr/local/bin/app \
    --user 65532:65532 --file "$out/$app=/usr/local/bin/app" \
    --text "/etc/passwd=root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
done

# The sidecar: iptables (nft backend, the Dockerfile's default) for remora-init, with
# its extension modules, which it loads at run time.
xtables=(--file /usr/sbin/xtables-nft-multi=/usr/sbin/xtables-nft-multi)
for tool in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
  xtables+=(--link "/usr/sbin/$tool=xtables-nft-multi")
done
image remora-sidecar --name "$REGISTRY/remora-sidecar:$TAG" \
  --entrypoint /usr/local/bin/remora-sidecar --cmd=run --cmd=--config --cmd=/etc/remora/config/config.json \
  --user 1337:1337 --file "$out/remora-sidecar=/usr/local/bin/remora-sidecar" "${xtables[@]}" \
  --tree /usr/lib/x86_64-linux-gnu/xtables=/usr/lib/x86_64-linux-gnu/xtables \
  --text "/etc/passwd=root:x:0:0:root:/root:/sbin/nologin\nproxy:x:1337:1337:proxy:/nonexistent:/sbin/nologin\n"

# The sample client (e2e/kind/manifests/client.yaml): curl, and busybox for sh and sleep.
busybox=(--file /bin/busybox=/bin/busybox)
for tool in sh sleep cat seq printf echo grep wc sort uniq head tr date timeout; do
  busybox+=(--link "/bin/$tool=busybox")
done
image client --name docker.io/curlimages/curl:8.11.1 --user 100:101 \
  --file /usr/bin/curl=/usr/bin/curl "${busybox[@]}" \
  --text "/etc/passwd=root:x:0:0:root:/root:/bin/sh\ncurl_user:x:100:101:curl:/home/curl_user:/bin/sh\n"

for archive in "$NODE"/images/*.tar; do
  ctr -a "$NODE/containerd/containerd.sock" -n k8s.io images import "$archive" >/dev/null ||
    die "ctr images import $archive failed"
done
say "imported: $(ctr -a "$NODE/containerd/containerd.sock" -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"
