//! Remora's control plane.
//!
//! [`render`] turns the mesh's custom resources into the sidecar config
//! document. It is a pure function, shared by the operator's controllers and
//! `remoractl render`.

pub mod render;
