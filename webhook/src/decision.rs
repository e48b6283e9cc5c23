//! Whether a pod gets the sidecar.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::annotations;
use crate::inject::{INIT_CONTAINER, PROXY_CONTAINER};

/// Namespaces whose pods are never injected, whatever their labels say.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Why a pod was left without a sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Neither the namespace nor the pod asked for injection.
    NamespaceNotEnabled,
    /// The namespace carries `remora.dev/inject=disabled`.
    NamespaceDisabled,
    /// The pod carries `remora.dev/inject=disabled` (label or annotation).
    PodDisabled,
    /// `hostNetwork: true`: redirecting the node's traffic is never wanted.
    HostNetwork,
    /// The pod already has the sidecar; injecting again is a no-op.
    AlreadyInjected,
    /// The mesh's own control plane namespace.
    ControlPlaneNamespace,
    /// kube-system and friends.
    SystemNamespace,
    /// `remora.dev/template` names a template that does not exist.
    TemplateNotFound,
    /// The selected template fails validation.
    TemplateInvalid,
    /// The pod has a container named like ours (`remora-init`) without being injected.
    NameConflict,
    /// The admission request has no pod spec.
    NoPodSpec,
    /// Explicit capture (no inbound listener) in a mesh with mTLS on.
    ExplicitCaptureWithMtls,
}

impl SkipReason {
    pub const ALL: [SkipReason; 12] = [
        SkipReason::NamespaceNotEnabled,
        SkipReason::NamespaceDisabled,
        SkipReason::PodDisabled,
        SkipReason::HostNetwork,
        SkipReason::AlreadyInjected,
        SkipReason::ControlPlaneNamespace,
        SkipReason::SystemNamespace,
        SkipReason::TemplateNotFound,
        SkipReason::TemplateInvalid,
        SkipReason::NameConflict,
        SkipReason::NoPodSpec,
        SkipReason::ExplicitCaptureWithMtls,
    ];

    /// Metric label and annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NamespaceNotEnabled => "namespace-not-enabled",
            SkipReason::NamespaceDisabled => "namespace-disabled",
            SkipReason::PodDisabled => "pod-disabled",
            SkipReason::HostNetwork => "host-network",
            SkipReason::AlreadyInjected => "already-injected",
            SkipReason::ControlPlaneNamespace => "control-plane-namespace",
            SkipReason::SystemNamespace => "system-namespace",
            SkipReason::TemplateNotFound => "template-not-found",
            SkipReason::TemplateInvalid => "template-invalid",
            SkipReason::NameConflict => "name-conflict",
            SkipReason::NoPodSpec => "no-pod-spec",
            SkipReason::ExplicitCaptureWithMtls => "explicit-capture-with-mtls",
        }
    }

    /// Whether the reason is written into the pod's `remora.dev/inject-status`. Reasons
    /// of the namespace (which the API server's namespaceSelector mostly keeps from us
    /// anyway) and pods already injected leave the pod byte-for-byte as it came; the
    /// reason is still counted in the metrics.
    pub fn annotated(self) -> bool {
        !matches!(
            self,
            SkipReason::NamespaceNotEnabled
                | SkipReason::NamespaceDisabled
                | SkipReason::AlreadyInjected
                | SkipReason::ControlPlaneNamespace
                | SkipReason::SystemNamespace
                | SkipReason::NoPodSpec
        )
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a `remora.dev/inject` label or annotation says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    Enabled,
    Disabled,
    /// Absent, or a value we do not understand.
    Unset,
}

impl Intent {
    /// As the operator reads it too (`remora_api::labels::InjectIntent`).
    pub fn parse(value: Option<&String>) -> Intent {
        match remora_api::labels::InjectIntent::parse(value.map(String::as_str)) {
            remora_api::labels::InjectIntent::Enabled => Intent::Enabled,
            remora_api::labels::InjectIntent::Disabled => Intent::Disabled,
            remora_api::labels::InjectIntent::Unset => Intent::Unset,
        }
    }

    /// From a namespace's labels.
    pub fn of_namespace(labels: Option<&BTreeMap<String, String>>) -> Intent {
        Intent::parse(labels.and_then(|l| l.get(annotations::INJECT)))
    }

    /// From a pod: its label, else its annotation.
    pub fn of_pod(pod: &Pod) -> Intent {
        let meta = &pod.metadata;
        match Intent::parse(
            meta.labels
                .as_ref()
                .and_then(|l| l.get(annotations::INJECT)),
        ) {
            Intent::Unset => Intent::parse(
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(annotations::INJECT)),
            ),
            intent => intent,
        }
    }
}

/// Decides whether `pod`, created in `namespace`, gets the sidecar. In order: system and
/// control plane namespaces, pods already injected, host network, then intent: the
/// namespace's `disabled` wins, then the pod's own, then the namespace's `enabled`.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_intent: Intent,
    mesh_namespace: &str,
) -> Result<(), SkipReason> {
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return Err(SkipReason::SystemNamespace);
    }
    if namespace == mesh_namespace {
        return Err(SkipReason::ControlPlaneNamespace);
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Err(SkipReason::NoPodSpec);
    };
    if is_injected(pod) {
        return Err(SkipReason::AlreadyInjected);
    }
    if spec.host_network == Some(true) {
        return Err(SkipReason::HostNetwork);
    }
    if namespace_intent == Intent::Disabled {
        return Err(SkipReason::NamespaceDisabled);
    }
    match (Intent::of_pod(pod), namespace_intent) {
        (Intent::Disabled, _) => Err(SkipReason::PodDisabled),
        (Intent::Enabled, _) | (Intent::Unset, Intent::Enabled) => {
            if has_container(pod, INIT_CONTAINER) {
                Err(SkipReason::NameConflict)
            } else {
                Ok(())
            }
        }
        (Intent::Unset, _) => Err(SkipReason::NamespaceNotEnabled),
    }
}

/// True when the pod already carries the sidecar container (in either mode).
pub fn is_injected(pod: &Pod) -> bool {
    has_container(pod, PROXY_CONTAINER)
}

fn has_container(pod: &Pod, name: &str) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers.iter().any(|c| c.name == name)
            || spec
                .init_containers
                .iter()
                .flatten()
                .any(|c| c.name == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
        };
        Pod {
            metadata: ObjectMeta {
                labels: map(labels),
                annotations: map(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    const MESH: &str = "remora-system";

    #[test]
    fn namespace_label_enables_and_pod_opts_out() {
        let p = pod(&[], &[]);
        assert_eq!(decide(&p, "shop", Intent::Enabled, MESH), Ok(()));
        assert_eq!(
            decide(&p, "shop", Intent::Unset, MESH),
            Err(SkipReason::NamespaceNotEnabled)
        );
        let out = pod(&[(annotations::INJECT, "disabled")], &[]);
        assert_eq!(
            decide(&out, "shop", Intent::Enabled, MESH),
            Err(SkipReason::PodDisabled)
        );
        let out = pod(&[], &[(annotations::INJECT, "false")]);
        assert_eq!(
            decide(&out, "shop", Intent::Enabled, MESH),
            Err(SkipReason::PodDisabled)
        );
    }

    #[test]
    fn pod_opts_in_unless_namespace_disabled() {
        let p = pod(&[], &[(annotations::INJECT, "enabled")]);
        assert_eq!(decide(&p, "shop", Intent::Unset, MESH), Ok(()));
        assert_eq!(
            decide(&p, "shop", Intent::Disabled, MESH),
            Err(SkipReason::NamespaceDisabled)
        );
        // The label wins over the annotation.
        let p = pod(
            &[(annotations::INJECT, "disabled")],
            &[(annotations::INJECT, "enabled")],
        );
        assert_eq!(
            decide(&p, "shop", Intent::Enabled, MESH),
            Err(SkipReason::PodDisabled)
        );
    }

    #[test]
    fn system_control_plane_and_host_network_are_skipped() {
        let p = pod(&[], &[(annotations::INJECT, "enabled")]);
        assert_eq!(
            decide(&p, "kube-system", Intent::Enabled, MESH),
            Err(SkipReason::SystemNamespace)
        );
        assert_eq!(
            decide(&p, MESH, Intent::Enabled, MESH),
            Err(SkipReason::ControlPlaneNamespace)
        );
        let mut host = p.clone();
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert_eq!(
            decide(&host, "shop", Intent::Enabled, MESH),
            Err(SkipReason::HostNetwork)
        );
    }

    #[test]
    fn already_injected_and_conflicting_names() {
        let mut p = pod(&[], &[]);
        p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: PROXY_CONTAINER.into(),
            ..Container::default()
        }]);
        assert_eq!(
            decide(&p, "shop", Intent::Enabled, MESH),
            Err(SkipReason::AlreadyInjected)
        );
        let mut p = pod(&[], &[]);
        p.spec.as_mut().unwrap().containers.push(Container {
            name: INIT_CONTAINER.into(),
            ..Container::default()
        });
        assert_eq!(
            decide(&p, "shop", Intent::Enabled, MESH),
            Err(SkipReason::NameConflict)
        );
    }
}
