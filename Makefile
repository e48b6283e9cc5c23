# Container images. `make images` builds all four with Docker (BuildKit) from the
# repository root; `make images TAG=0.1.0 REGISTRY=ghcr.io/remora-mesh`.
REGISTRY ?= ghcr.io/remora-mesh
TAG ?= dev
DOCKER ?= docker

RUST_IMAGES := remora-operator:remora-operator remora-webhook:remora-webhook remora-echo:remora-e2e

.PHONY: images image-sidecar docker-check $(addprefix image-,$(foreach i,$(RUST_IMAGES),$(firstword $(subst :, ,$(i)))))

images: docker-check image-remora-operator image-remora-webhook image-sidecar image-remora-echo

docker-check:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make images: $(DOCKER) is not on PATH; install Docker (or set DOCKER=podman)" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make images: no Docker engine is reachable ($(DOCKER) info failed); start the Docker daemon or point DOCKER_HOST at one" >&2; exit 1; }

# image-<binary>: one Rust binary (from package <package>) on distroless.
define rust_image
image-$(1): docker-check
	DOCKER_BUILDKIT=1 $$(DOCKER) build -f images/rust-binary.Dockerfile \
		--build-arg PACKAGE=$(2) --build-arg BINARY=$(1) -t $$(REGISTRY)/$(1):$$(TAG) .
endef
$(foreach i,$(RUST_IMAGES),$(eval $(call rust_image,$(firstword $(subst :, ,$(i))),$(lastword $(subst :, ,$(i))))))

image-sidecar: docker-check
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/sidecar.Dockerfile -t $(REGISTRY)/remora-sidecar:$(TAG) .
