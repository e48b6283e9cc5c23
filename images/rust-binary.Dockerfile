# syntax=docker/dockerfile:1.7
# The operator, the webhook and the e2e echo server: one Rust binary on distroless.
# Build from the repository root (the Makefile does):
#   docker build -f images/rust-binary.Dockerfile --build-arg PACKAGE=remora-operator \
#     --build-arg BINARY=remora-operator -t ghcr.io/remora-mesh/remora-operator:dev .
# The binary is built inside the official Rust image (glibc, x86_64 or arm64 as the
# builder runs), so no cross target needs installing on the host.
# The toolchain the workspace is tested with (rustc 1.95); rust-version in Cargo.toml is the floor.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG PACKAGE
ARG BINARY
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=remora-target \
    test -n "$PACKAGE" && test -n "$BINARY" \
 && cargo build --release --locked -p "$PACKAGE" --bin "$BINARY" \
 && install -D -m 0755 "target/release/$BINARY" "/out/$BINARY"

# libgcc and glibc, no shell, user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
ARG BINARY
COPY --from=build /out/${BINARY} /usr/local/bin/app
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/app"]
