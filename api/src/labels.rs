//! Names that the operator, the webhook and the CLI must spell the same way:
//! label and annotation keys, the rendered ConfigMap, and how the inject
//! label is read. Free of kube, like [`crate::config`].

/// Pod label or annotation, namespace label: `enabled` or `disabled`.
pub const INJECT: &str = "remora.dev/inject";
/// Annotation written by the webhook: `injected`, or `skipped: <reason>`.
pub const INJECT_STATUS: &str = "remora.dev/inject-status";
/// Annotation written by the webhook: the template it injected from.
pub const INJECTED: &str = "remora.dev/injected";
/// Label the webhook puts on every pod it injects (value [`SIDECAR_INJECTED`]),
/// so the operator can watch those pods with a label selector and render the
/// config their sidecars mount, even in a namespace that holds nothing else.
pub const SIDECAR: &str = "remora.dev/sidecar";
pub const SIDECAR_INJECTED: &str = "injected";

/// The ConfigMap holding each mesh namespace's sidecar config, and its key.
pub const CONFIG_MAP: &str = "remora-config";
pub const CONFIG_KEY: &str = "config.json";
/// Annotation on that ConfigMap: the content hash of the document.
pub const CONFIG_HASH: &str = "remora.dev/config-hash";

/// Whether a `remora.dev/inject` value asks for injection (`enabled` or
/// `true`), refuses it (`disabled` or `false`), or says nothing we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectIntent {
    Enabled,
    Disabled,
    /// Absent, or a value we do not understand.
    Unset,
}

impl InjectIntent {
    /// Case-insensitive, surrounding whitespace ignored.
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("enabled" | "true") => Self::Enabled,
            Some("disabled" | "false") => Self::Disabled,
            _ => Self::Unset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inject_value_is_read_loosely() {
        for yes in ["enabled", "true", "TRUE", " Enabled "] {
            assert_eq!(
                InjectIntent::parse(Some(yes)),
                InjectIntent::Enabled,
                "{yes:?}"
            );
        }
        for no in ["disabled", "False"] {
            assert_eq!(
                InjectIntent::parse(Some(no)),
                InjectIntent::Disabled,
                "{no:?}"
            );
        }
        for unset in [Some("yes"), Some(""), None] {
            assert_eq!(InjectIntent::parse(unset), InjectIntent::Unset, "{unset:?}");
        }
    }
}
