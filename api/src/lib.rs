//! Remora's API contract.
//!
//! - [`config`]: the sidecar config document, the versioned JSON that the
//!   operator renders and the sidecar reads. Always built; free of kube.
//! - [`crd`] (feature `crd`): the four custom resources of
//!   `mesh.remora.dev/v1alpha1`.
//! - [`labels`]: label, annotation and ConfigMap names shared by the
//!   operator and the webhook.
//!
//! Both sides share [`Duration`] (Go-style duration strings such as `250ms` or
//! `1h30m`, the form Kubernetes users already write) and [`FieldErrors`], which
//! collects every problem of a document at once, each under its field path.

pub mod config;
#[cfg(feature = "crd")]
pub mod crd;
mod duration;
mod field_errors;
pub mod labels;

pub use duration::{DURATION_PATTERN, Duration, ParseDurationError};
pub use field_errors::{FieldError, FieldErrors};
