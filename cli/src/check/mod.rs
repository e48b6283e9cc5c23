//! `remoractl check`: is the mesh healthy on this cluster (like `linkerd
//! check`), or, with `--pre`, can it be installed here. Each check is a ✔/✘
//! line under its category, with the fix for every ✘; the exit code is 1
//! when any check fails. With `-f`, it validates manifest files offline
//! instead ([`files`]).

mod control_plane;
mod data_plane;
mod files;
mod pre;
mod webhook_cert;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::cluster::KubeArgs;

#[derive(Args)]
pub struct CheckArgs {
    /// Validate these manifest files or directories offline instead of
    /// checking a cluster.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Check that Remora can be installed: API server version, permissions,
    /// no Remora CRDs of another version.
    #[arg(long, conflicts_with = "files")]
    pre: bool,
    /// The namespace Remora is installed in.
    #[arg(short, long, default_value = "remora-system")]
    namespace: String,
    /// `text`: ✔/‼/✘ lines by category, a fix under each ✘; `json`: an
    /// array of {category, name, ok, warning, message, hint}.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// The result of one check.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub category: &'static str,
    pub name: String,
    /// False fails the run (exit code 1).
    pub ok: bool,
    /// True for a passing check that needs attention soon (a certificate
    /// close to expiry).
    pub warning: bool,
    pub message: String,
    /// What to do about a failure or warning.
    pub hint: Option<String>,
}

impl Outcome {
    fn new(
        category: &'static str,
        name: impl Into<String>,
        ok: bool,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        Self {
            category,
            name: name.into(),
            ok,
            warning: false,
            message: message.into(),
            hint,
        }
    }

    pub fn pass(
        category: &'static str,
        name: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(category, name, true, message, None)
    }

    pub fn fail(
        category: &'static str,
        name: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(category, name, false, message, Some(hint.into()))
    }

    pub fn warn(
        category: &'static str,
        name: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            warning: true,
            ..Self::new(category, name, true, message, Some(hint.into()))
        }
    }
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    if !args.files.is_empty() {
        return files::check(&args.files);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcomes = rt.block_on(async {
        let client = match args.kube.client().await {
            Ok(c) => c,
            Err(e) => {
                return vec![Outcome::fail(
                    "kubernetes-api",
                    "kubeconfig",
                    format!("{e:#}"),
                    "point remoractl at a cluster: --kubeconfig FILE, --context NAME or $KUBECONFIG",
                )];
            }
        };
        if args.pre {
            pre::checks(&client).await
        } else {
            let mut all = control_plane::checks(&client, &args.namespace).await;
            let version = control_plane::operator_version(&client, &args.namespace).await;
            all.extend(data_plane::checks(&client, version.as_deref()).await);
            all
        }
    });
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&outcomes)?),
        Output::Text => print!("{}", text(&outcomes)),
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// ✔/‼/✘ lines under a header per category, then the verdict.
fn text(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let mut category = "";
    for o in outcomes {
        if o.category != category {
            if !category.is_empty() {
                out.push('\n');
            }
            category = o.category;
            out.push_str(&format!("{category}\n{}\n", "-".repeat(category.len())));
        }
        let mark = match (o.ok, o.warning) {
            (false, _) => '✘',
            (true, true) => '‼',
            (true, false) => '✔',
        };
        out.push_str(&format!("{mark} {}: {}\n", o.name, o.message));
        if let Some(hint) = &o.hint {
            out.push_str(&format!("    fix: {hint}\n"));
        }
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    let warned = outcomes.iter().filter(|o| o.warning).count();
    out.push('\n');
    if failed == 0 {
        out.push_str(&format!(
            "Status check results are ✔ ({} checks, {warned} warnings)\n",
            outcomes.len()
        ));
    } else {
        out.push_str(&format!(
            "Status check results are ✘ ({failed} of {} checks failed)\n",
            outcomes.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_groups_by_category_and_shows_the_fix_of_every_failure() {
        let t = text(&[
            Outcome::pass("remora-crds", "serviceroutes", "established"),
            Outcome::fail(
                "remora-crds",
                "meshcertificates",
                "missing",
                "apply the CRDs",
            ),
            Outcome::warn(
                "remora-webhook",
                "certificate",
                "expires in 3 days",
                "rotate",
            ),
        ]);
        assert!(t.starts_with("remora-crds\n-----------\n✔ serviceroutes: established\n"));
        assert!(t.contains("✘ meshcertificates: missing\n    fix: apply the CRDs\n"));
        assert!(t.contains(
            "\nremora-webhook\n--------------\n‼ certificate: expires in 3 days\n    fix: rotate\n"
        ));
        assert!(
            t.ends_with("Status check results are ✘ (1 of 3 checks failed)\n"),
            "{t}"
        );
    }
}
