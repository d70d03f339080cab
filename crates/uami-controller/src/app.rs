//! Assemble a running controller from its options: the HTTP client, the credential, the ARM
//! client, metrics, and the controllers under leader election. `uami-controller run`, the demo
//! and the tests all start it through [`start`], so they run the same code.

use std::sync::Arc;

use std::time::Duration;
use uami_azure::http::{AzureCa, http_client, http_client_with, user_agent};

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::context::{AzureApis, Settings};
use super::leader::LeaseConfig;
use super::run::{ControllerParts, run_with_leadership};
use super::target_writer::WriterConfig;
use super::workload::WorkloadSettings;
use uami_azure::auth::{CredentialConfig, build_credential};
use uami_azure::throttle::{Pacing, ThrottleConfig};
use uami_azure::{ArmClient, ArmClientOptions};
use uami_telemetry::metrics::ReconcileMetrics;

/// Everything a controller needs besides the Kubernetes client.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// ARM endpoint.
    pub arm_endpoint: url::Url,
    /// Token scope for ARM.
    pub arm_scope: String,
    /// How to sign in.
    pub credential: CredentialConfig,
    /// Name of this cluster, written into the owner tag of every identity.
    pub cluster_name: String,
    /// Subscription used where a spec names none.
    pub default_subscription: Option<String>,
    /// Drift check period (jittered).
    pub resync_period: Duration,
    /// Role assignments per subscription before grants are refused.
    pub role_assignment_limit: usize,
    /// Concurrent reconciles per kind.
    pub concurrency: u16,
    /// ARM reads per second per subscription: (floor, ceiling). The pace falls from the
    /// ceiling to the floor as the remaining budget ARM reports runs low.
    pub reads: (f64, f64),
    /// ARM writes (and deletes) per second per subscription: (floor, ceiling).
    pub writes: (f64, f64),
    /// Leader election, when several replicas run.
    pub lease: Option<LeaseConfig>,
    /// Per-target writer tuning.
    pub writer: WriterConfig,
    /// The cluster's OIDC issuer URL, for service account bindings (workload identity).
    pub oidc_issuer: Option<String>,
    /// Entra ID's authority host, where service account tokens are exchanged.
    pub authority_host: url::Url,
    /// Where the token check of service account bindings reads grants of data roles: Blob
    /// Storage and Key Vault.
    pub data_planes: uami_azure::DataPlanes,
    /// This replica's name (the pod name), sent in the `User-Agent` of every ARM request so
    /// that ARM's request logs tell replicas apart; defaults to the Lease holder.
    pub instance: Option<String>,
    /// How long one ARM request may take before the client gives up on it.
    pub arm_timeout: Duration,
    /// Certificate authorities trusted for ARM and Entra ID besides the system's: none with
    /// Azure; a private endpoint's, such as the emulator's.
    pub azure_ca: AzureCa,
}

/// Start the controller with its admin endpoints (`/metrics`, `/healthz`, `/readyz`) on
/// `listen`: `/readyz` answers 200 once the caches have synced and leadership is settled. Returns
/// the admin address and the controller's task, which ends once `stop` is cancelled.
pub async fn serve(
    client: kube::Client,
    opts: ControllerOptions,
    listen: std::net::SocketAddr,
    stop: CancellationToken,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let state = uami_telemetry::admin::AdminState::new(Registry::default());
    let readiness = state.clone();
    let handle = start(
        client,
        opts,
        &mut state.registry.lock(),
        stop.clone(),
        move |ready| readiness.set_ready(ready),
    );
    let cancelled = stop.cancelled_owned();
    let addr = uami_telemetry::admin::serve(listen, state, cancelled).await?;
    Ok((addr, handle))
}

/// Start the controller; it runs until `stop` is cancelled (then finishes in-flight reconciles
/// and releases its Lease). `ready` is told when it may serve.
pub fn start(
    client: kube::Client,
    opts: ControllerOptions,
    registry: &mut Registry,
    stop: CancellationToken,
    ready: impl Fn(bool) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let instance = opts
        .instance
        .clone()
        .or_else(|| opts.lease.as_ref().map(|l| l.holder.clone()));
    let http = http_client_with(
        &user_agent(instance.as_deref()),
        opts.arm_timeout,
        &opts.azure_ca,
    );
    let credential = build_credential(
        opts.credential.clone(),
        http.clone(),
        Duration::from_secs(300),
    );
    let defaults = ThrottleConfig::default();
    let pacing = |(floor, ceiling): (f64, f64), assumed: Pacing| Pacing {
        floor: floor.max(0.1),
        ceiling: ceiling.max(floor.max(0.1)),
        budget: assumed.budget,
    };
    let arm = ArmClient::new(
        http,
        ArmClientOptions {
            scope: opts.arm_scope.clone(),
            throttle: ThrottleConfig {
                reads: pacing(opts.reads, defaults.reads),
                writes: pacing(opts.writes, defaults.writes),
                deletes: pacing(opts.writes, defaults.deletes),
            },
            ..ArmClientOptions::new(opts.arm_endpoint.clone())
        },
        credential,
        Some(registry),
    );
    let arm = Arc::new(match &opts.lease {
        Some(lease) => arm.with_fence(lease.fence.clone()),
        None => arm,
    });
    let metrics = ReconcileMetrics::register(registry);
    let parts = ControllerParts {
        azure: AzureApis {
            identities: arm.clone(),
            roles: arm.clone(),
            compute: arm.clone(),
            federated: arm,
        },
        settings: Settings {
            cluster_name: opts.cluster_name.clone(),
            default_subscription: opts.default_subscription.clone(),
            resync_period: opts.resync_period,
            role_assignment_limit: opts.role_assignment_limit,
            workload: opts
                .oidc_issuer
                .clone()
                .map(|oidc_issuer| WorkloadSettings {
                    oidc_issuer,
                    authority_host: opts.authority_host.clone(),
                    arm_endpoint: opts.arm_endpoint.clone(),
                    data_planes: opts.data_planes.clone(),
                    http: http_client(&opts.azure_ca),
                }),
        },
        metrics,
        concurrency: opts.concurrency,
        writer: opts.writer.clone(),
    };
    tokio::spawn(run_with_leadership(client, parts, opts.lease, stop, ready))
}
