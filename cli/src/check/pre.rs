//! `remoractl check --pre`: can Remora be installed on this cluster? The
//! API server answers and is new enough for native sidecars, the user may
//! create what the chart creates, and no Remora CRDs of another version are
//! in the way.

use k8s_openapi::{
    api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, Client, ResourceExt, api::PostParams};
use remora_api::crd::all_crds;

use super::{
    Outcome,
    control_plane::{api_failure, version_list},
};

const API: &str = "kubernetes-api";
const PERMISSIONS: &str = "pre-install-permissions";
const CRDS: &str = "pre-install-crds";

/// Native sidecars (init containers with `restartPolicy: Always`) are on by
/// default from 1.29; the chart's `kubeVersion` says the same.
const MIN_MINOR: u32 = 29;

/// What `helm install` creates: (API group, resource).
const CREATES: &[(&str, &str)] = &[
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "namespaces"),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    ),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
];

pub async fn checks(client: &Client) -> Vec<Outcome> {
    let version = match client.apiserver_version().await {
        Ok(v) => v,
        Err(e) => {
            return vec![Outcome::fail(
                API,
                "reachable",
                format!("the API server did not answer: {e}"),
                "check the kubeconfig's server and credentials: `kubectl cluster-info`",
            )];
        }
    };
    let mut out = vec![Outcome::pass(
        API,
        "reachable",
        format!("the API server answers ({})", version.git_version),
    )];
    out.push(version_check(
        &version.major,
        &version.minor,
        &version.git_version,
    ));
    for (group, resource) in CREATES {
        out.push(can_create(client, group, resource).await);
    }
    out.extend(existing_crds(client).await);
    out
}

fn version_check(major: &str, minor: &str, shown: &str) -> Outcome {
    // Managed clusters report minors such as "29+".
    let minor_n: Option<u32> = minor.trim_end_matches('+').parse().ok();
    match (major, minor_n) {
        ("1", Some(m)) if m >= MIN_MINOR => Outcome::pass(
            API,
            "version",
            format!("Kubernetes {shown} supports native sidecars (needs 1.{MIN_MINOR}+)"),
        ),
        _ => Outcome::fail(
            API,
            "version",
            format!("Kubernetes {shown} is older than 1.{MIN_MINOR}: no native sidecars"),
            format!("upgrade the cluster to 1.{MIN_MINOR} or later"),
        ),
    }
}

async fn can_create(client: &Client, group: &str, resource: &str) -> Outcome {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                verb: Some("create".into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let what = if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    match api.create(&PostParams::default(), &review).await {
        Ok(r) => {
            let status = r.status.unwrap_or_default();
            if status.allowed {
                Outcome::pass(PERMISSIONS, &what, format!("you may create {what}"))
            } else {
                Outcome::fail(
                    PERMISSIONS,
                    &what,
                    format!(
                        "you may not create {what}{}",
                        status.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    ),
                    "install as a cluster admin (the chart creates cluster-scoped objects)",
                )
            }
        }
        Err(e) => api_failure(
            PERMISSIONS,
            &what,
            "asking the API server (SelfSubjectAccessReview)",
            &e,
        ),
    }
}

/// Remora CRDs already present must carry the versions this release uses.
async fn existing_crds(client: &Client) -> Vec<Outcome> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut out = Vec::new();
    for (_, want) in all_crds() {
        let name = want.name_any();
        match api.get_opt(&name).await {
            Ok(None) => out.push(Outcome::pass(CRDS, &name, "not installed yet")),
            Ok(Some(have)) => {
                let same = want
                    .spec
                    .versions
                    .iter()
                    .all(|v| have.spec.versions.iter().any(|h| h.name == v.name));
                out.push(if same {
                    Outcome::pass(
                        CRDS,
                        &name,
                        format!(
                            "already installed with {} (an upgrade)",
                            version_list(&have)
                        ),
                    )
                } else {
                    Outcome::fail(
                        CRDS,
                        &name,
                        format!(
                            "installed with {}, this release uses {}",
                            version_list(&have),
                            version_list(&want)
                        ),
                        "another Remora release owns these CRDs: uninstall it, or upgrade with the \
                         CRDs of this release (kubectl apply --server-side -f charts/remora/crds/)",
                    )
                });
            }
            Err(e) => out.push(api_failure(CRDS, &name, "reading the CRD", &e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_need_1_29() {
        assert!(version_check("1", "29", "v1.29.0").ok);
        assert!(version_check("1", "33+", "v1.33.1-gke").ok);
        let old = version_check("1", "28", "v1.28.9");
        assert!(!old.ok && old.hint.unwrap().contains("1.29"));
        assert!(!version_check("1", "x", "weird").ok);
    }
}
