//! A real kube-apiserver and etcd for Remora's integration tests, as controller-runtime's
//! envtest gives Go operators.
//!
//! ```no_run
//! # async fn example() -> Result<(), remora_testkit::Error> {
//! use remora_testkit::{ControlPlane, pod, require_control_plane};
//!
//! require_control_plane!(Ok(()));
//! let cp = ControlPlane::shared().await;
//! let ns = cp.namespace("inject").await?;
//! let stored = cp.create_pod(ns.name(), &pod("app", "registry.invalid/app:1")).await?;
//! assert!(stored.metadata.uid.is_some());
//! # Ok(())
//! # }
//! ```
//!
//! One control plane per test binary, started on first use and killed when the binary
//! exits. See the README for environment variables and debugging.

mod admission;
mod binaries;
mod control_plane;
mod error;
mod kubectl;
mod pki;
mod process;

pub use admission::{FailurePolicy, WebhookRegistration, pod};
pub use binaries::{repo_root, run_build_script};
pub use control_plane::{ControlPlane, TestNamespace, skip_requested_by};
pub use error::Error;
pub use kubectl::KubectlOutput;
pub use pki::{IssuedCert, TestCa, WebhookTls, webhook_serving_cert};

/// Returns early from the calling test, with a loud `SKIPPED` line on stderr, when
/// `REMORA_SKIP_CONTROL_PLANE=1`. Without that variable it does nothing, and a missing
/// control plane makes the test fail.
///
/// `require_control_plane!()` in tests returning `()`; `require_control_plane!(Ok(()))`
/// in tests returning a `Result`.
#[macro_export]
macro_rules! require_control_plane {
    () => {
        if $crate::ControlPlane::skip_requested() {
            return;
        }
    };
    ($skipped:expr) => {
        if $crate::ControlPlane::skip_requested() {
            return $skipped;
        }
    };
}
