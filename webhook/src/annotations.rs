//! The labels and annotations the webhook reads and writes, all under `remora.dev/`.

// Shared with the operator: `inject` (pod label or annotation, namespace label), `inject-status`
// and `injected` (written by the webhook: the template's `<namespace>/<name>@<generation>`, or
// `builtin`), and the `remora.dev/sidecar=injected` label the operator watches pods by.
pub use remora_api::labels::{INJECT, INJECT_STATUS, INJECTED, SIDECAR, SIDECAR_INJECTED};
/// Pod annotation: the SidecarTemplate to use, `<name>` (pod's namespace) or `<namespace>/<name>`.
pub const TEMPLATE: &str = "remora.dev/template";
/// Pod label written by the webhook: the workload the pod belongs to.
pub const WORKLOAD: &str = "remora.dev/workload";
/// Pod annotation: `"false"` keeps the app's probes as they are (their ports then
/// bypass the capture) instead of sending them through the proxy's admin port.
pub const REWRITE_APP_PROBES: &str = "remora.dev/rewrite-app-probes";
/// Pod annotation: the Secret holding the workload certificate (default `<serviceAccount>-tls`).
pub const IDENTITY_SECRET: &str = "remora.dev/identity-secret";

// Per-pod overrides of the template.
pub const PROXY_IMAGE: &str = "remora.dev/proxy-image";
pub const PROXY_CPU: &str = "remora.dev/proxy-cpu";
pub const PROXY_CPU_LIMIT: &str = "remora.dev/proxy-cpu-limit";
pub const PROXY_MEMORY: &str = "remora.dev/proxy-memory";
pub const PROXY_MEMORY_LIMIT: &str = "remora.dev/proxy-memory-limit";
pub const LOG_LEVEL: &str = "remora.dev/log-level";
pub const CAPTURE_MODE: &str = "remora.dev/capture-mode";
pub const EXCLUDE_INBOUND_PORTS: &str = "remora.dev/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "remora.dev/exclude-outbound-ports";
