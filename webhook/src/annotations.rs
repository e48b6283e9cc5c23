//! The labels and annotations the webhook reads and writes, all under `remora.dev/`.

/// Pod label or annotation, namespace label: `enabled` or `disabled`.
pub const INJECT: &str = "remora.dev/inject";
/// Written by the webhook: `injected`, or `skipped: <reason>`.
pub const INJECT_STATUS: &str = "remora.dev/inject-status";
/// Written by the webhook: `<namespace>/<name>@<generation>` of the template, or `builtin`.
pub const INJECTED: &str = "remora.dev/injected";
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
