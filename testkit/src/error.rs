use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything a testkit helper can fail with, once the control plane is up.
///
/// Failing to *start* the control plane is not an error value: it panics with a message
/// that says what is missing, so that a test can never pass without having run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),

    #[error("cannot build a client from the test kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    #[error("cannot generate a test certificate: {0}")]
    Certificate(#[from] rcgen::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "cannot run `{program}` (set REMORA_KUBECTL to its path if it is not on PATH): {source}"
    )]
    Spawn {
        program: String,
        source: std::io::Error,
    },

    #[error("`kubectl {args}` exited with {status}: {stderr}")]
    Kubectl {
        args: String,
        status: ExitStatus,
        stderr: String,
    },

    #[error("{dir}: no CustomResourceDefinition was applied from this directory")]
    NoCrds { dir: PathBuf },

    #[error("CustomResourceDefinition {name} has a non-structural schema: {message}")]
    NonStructuralSchema { name: String, message: String },

    #[error(
        "CustomResourceDefinition {name} is not Established after {seconds} s; conditions: {conditions}"
    )]
    CrdNotEstablished {
        name: String,
        seconds: u64,
        conditions: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
