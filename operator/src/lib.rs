//! Remora's control plane.
//!
//! - [`render`]: the pure function from the mesh's custom resources to a
//!   namespace's sidecar config, shared with `remoractl render`.
//! - [`acceptance`]: what is refused, and what the sidecar does not enforce
//!   yet; rendering and status agree through it.
//! - [`ca`]: the mesh CA (certificate issuing, no Kubernetes).
//! - [`controller`]: the kube-runtime controllers.
//! - [`run`]: everything together, as the binary and the tests start it.

pub use remora_ca as ca;
pub mod acceptance;
pub mod controller;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod render;

use std::sync::Arc;

use controller::{Context, OperatorConfig};
use remora_api::crd::{RateLimitPolicy, SidecarTemplate};

/// Loads (or creates) the CA and runs every controller until the process stops.
pub async fn run(
    client: kube::Client,
    config: OperatorConfig,
    metrics: Arc<metrics::Metrics>,
) -> Result<(), controller::Error> {
    let health = Arc::new(health::Health::new(health::Role::Leader));
    run_with_health(client, config, metrics, health).await
}

/// [`run`], reporting each controller's cache sync to `health` (`/readyz`).
pub async fn run_with_health(
    client: kube::Client,
    config: OperatorConfig,
    metrics: Arc<metrics::Metrics>,
    health: Arc<health::Health>,
) -> Result<(), controller::Error> {
    let ca = Arc::new(controller::certificate::load_or_create_ca(client.clone(), &config).await?);
    let ctx = Context::new(client, config, ca, metrics, health);
    futures::join!(
        controller::mesh_config::run(ctx.clone()),
        controller::service_route::run(ctx.clone()),
        controller::certificate::run(ctx.clone()),
        controller::revocations::run(ctx.clone()),
        controller::policy_status::run::<SidecarTemplate>(ctx.clone()),
        controller::policy_status::run::<RateLimitPolicy>(ctx),
    );
    Ok(())
}
