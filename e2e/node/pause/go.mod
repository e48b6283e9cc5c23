// The node's sandbox ("pause") image: a static binary of our own, so no
// registry is needed. scripts/control-plane.sh --node builds it.
module remora.dev/pause

go 1.24.0
