# syntax=docker/dockerfile:1.7
# remora-sidecar: the proxy (container remora-proxy, runs as proxyUid 1337) and, in the
# same image, the iptables init container remora-init (`remora-sidecar init-iptables`,
# which pipes its rules into `iptables-restore --noflush`; see sidecar/src/iptables.rs).
# Build from the repository root:
#   docker build -f images/sidecar.Dockerfile -t ghcr.io/remora-mesh/remora-sidecar:dev .
# The toolchain the workspace is tested with (rustc 1.95); rust-version in Cargo.toml is the floor.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=remora-target \
    cargo build --release --locked -p remora-sidecar --bin remora-sidecar \
 && install -D -m 0755 target/release/remora-sidecar /out/remora-sidecar

# Debian rather than distroless: the init container needs iptables-restore.
FROM docker.io/library/debian:bookworm-slim
# nft (Debian's default, works on every kernel kind and current distributions run) or
# legacy, for nodes whose other rules live in the legacy ip_tables backend.
ARG IPTABLES_BACKEND=nft
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && update-alternatives --set iptables "/usr/sbin/iptables-${IPTABLES_BACKEND}" \
 && update-alternatives --set ip6tables "/usr/sbin/ip6tables-${IPTABLES_BACKEND}" \
 && iptables-restore --version
COPY --from=build /out/remora-sidecar /usr/local/bin/remora-sidecar
# The proxy's uid: its own traffic is never redirected (SidecarTemplate proxyUid).
# The webhook runs remora-init as root with only NET_ADMIN and NET_RAW.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/remora-sidecar"]
CMD ["run", "--config", "/etc/remora/config/config.json"]
