//! The real `kubectl`, pointed at the test control plane, and CRD installation through it.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use tokio::io::AsyncWriteExt;

use crate::{ControlPlane, Error};

/// Path of the kubectl binary, if `kubectl` on PATH is not the one to use.
const KUBECTL_ENV: &str = "REMORA_KUBECTL";
/// How long a freshly applied CRD may take to become Established.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);
const CRD_PREFIX: &str = "customresourcedefinition.apiextensions.k8s.io/";

/// What one kubectl run printed.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl ControlPlane {
    /// Runs `kubectl --kubeconfig <this control plane> <args>`. `Err` only when kubectl
    /// could not be run; a non-zero exit is in the returned status.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<KubectlOutput, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_kubectl(args, None).await
    }

    /// Like [`ControlPlane::kubectl`], feeding `stdin` (for `apply -f -`).
    pub async fn kubectl_with_stdin<I, S>(
        &self,
        args: I,
        stdin: &str,
    ) -> Result<KubectlOutput, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_kubectl(args, Some(stdin)).await
    }

    /// Runs kubectl and returns its stdout, or [`Error::Kubectl`] if it exited non-zero.
    pub async fn kubectl_ok<I, S>(&self, args: I) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let output = self.run_kubectl(&args, None).await?;
        if output.success() {
            Ok(output.stdout)
        } else {
            Err(Error::Kubectl {
                args: display_args(&args),
                status: output.status,
                stderr: output.stderr,
            })
        }
    }

    /// Applies every manifest in `dir` with `kubectl apply --server-side -f <dir>` (what a
    /// user does) and waits until each CustomResourceDefinition it applied is Established.
    /// Returns the names of those CRDs.
    pub async fn install_crds(&self, dir: impl AsRef<Path>) -> Result<Vec<String>, Error> {
        let dir = dir.as_ref();
        let args = [
            OsStr::new("apply"),
            OsStr::new("--server-side"),
            OsStr::new("-o"),
            OsStr::new("name"),
            OsStr::new("-f"),
            dir.as_os_str(),
        ];
        let stdout = self.kubectl_ok(args).await?;
        let names: Vec<String> = stdout
            .lines()
            .filter_map(|line| line.trim().strip_prefix(CRD_PREFIX))
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            return Err(Error::NoCrds {
                dir: dir.to_path_buf(),
            });
        }
        let crds: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        for name in &names {
            wait_established(&crds, name).await?;
        }
        // kubectl's discovery cache predates these CRDs; drop it so the new
        // kinds, short names and categories resolve.
        let _ = std::fs::remove_dir_all(self.dir().join("kubectl-cache"));
        Ok(names)
    }

    async fn run_kubectl<I, S>(&self, args: I, stdin: Option<&str>) -> Result<KubectlOutput, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = std::env::var(KUBECTL_ENV).unwrap_or_else(|_| "kubectl".to_string());
        let mut command = tokio::process::Command::new(&program);
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .args(args)
            // Keep kubectl's discovery cache with this control plane, not in ~/.kube.
            .env("KUBECACHEDIR", self.dir().join("kubectl-cache"))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawn_error = |source| Error::Spawn {
            program: program.clone(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(spawn_error)?;
        }
        let output = child.wait_with_output().await.map_err(spawn_error)?;
        Ok(KubectlOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

async fn wait_established(crds: &Api<CustomResourceDefinition>, name: &str) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let crd = crds.get(name).await?;
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        let is_true = |kind: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == kind && c.status == "True")
        };
        if let Some(c) = is_true("NonStructuralSchema") {
            return Err(Error::NonStructuralSchema {
                name: name.to_string(),
                message: c.message.clone().unwrap_or_default(),
            });
        }
        if is_true("Established").is_some() {
            return Ok(());
        }
        if started.elapsed() > ESTABLISH_TIMEOUT {
            let conditions = conditions
                .iter()
                .map(|c| {
                    format!(
                        "{}={} ({})",
                        c.type_,
                        c.status,
                        c.message.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Error::CrdNotEstablished {
                name: name.to_string(),
                seconds: ESTABLISH_TIMEOUT.as_secs(),
                conditions,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn display_args<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
