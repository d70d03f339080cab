//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of client-go's
//! `leaderelection` package: the holder renews the lease every retry period; another candidate
//! takes over only when `renewTime + leaseDurationSeconds` has passed; every write carries the
//! lease's `resourceVersion`, so two candidates can never both win; on shutdown the holder
//! releases the lease so a standby takes over at once.
//!
//! Leadership fences Azure writes: the holder may act only until `renew_deadline` after the
//! start of its last successful renewal, well before the lease can expire for the others
//! (`lease_duration` after that renewal). The [`Fence`] carries that deadline to the ARM
//! client, which refuses to send, and abandons in flight, any request past it; losing the
//! lease, or failing to renew it in time, also stops the reconcilers, the per-VM writers and
//! their pollers. So no write of an old leader reaches ARM once a new one can have started.
//!
//! Written here rather than taken from a crate because the published leader-election crates
//! depend on older kube releases than this project's.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Settings of one candidate.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This candidate's identity (the pod name in a cluster).
    pub holder: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews and a standby retries.
    pub retry_period: Duration,
    /// How long after the start of a successful renewal the holder may still act (less than
    /// `lease_duration`: the margin covers requests in flight and clock granularity).
    pub renew_deadline: Duration,
    /// Shared with the ARM client: until when this candidate may write.
    pub fence: Fence,
}

/// Until when this replica may act as the leader. Cloned into the ARM client, which checks it
/// before every request.
#[derive(Clone, Debug, Default)]
pub struct Fence(Arc<parking_lot::Mutex<Option<tokio::time::Instant>>>);

impl Fence {
    /// A fence that allows nothing until leadership is granted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allow acting until `until`.
    pub fn grant_until(&self, until: tokio::time::Instant) {
        *self.0.lock() = Some(until);
    }

    /// Allow nothing from now on.
    pub fn revoke(&self) {
        *self.0.lock() = None;
    }

    /// The deadline, when it has not passed.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.0.lock().filter(|d| *d > tokio::time::Instant::now())
    }
}

impl uami_azure::client::WriteGate for Fence {
    fn deadline(&self) -> Option<tokio::time::Instant> {
        Fence::deadline(self)
    }
}

impl LeaseConfig {
    /// A config with client-go's proportions: retry every lease duration / 5 (at least 200 ms).
    pub fn new(name: &str, namespace: &str, holder: &str, lease_duration: Duration) -> Self {
        Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
            holder: holder.to_string(),
            lease_duration,
            retry_period: (lease_duration / 5).max(Duration::from_millis(200)),
            renew_deadline: lease_duration * 2 / 3,
            fence: Fence::new(),
        }
    }
}

/// Errors of the Lease API.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Reading or writing the Lease failed.
    #[error("lease {name}: {source}")]
    Lease {
        /// The lease.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Lease API did not answer within the retry period.
    #[error("lease {name}: no answer within the retry period")]
    Timeout {
        /// The lease.
        name: String,
    },
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn lease_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Whether the lease in `spec` is held by someone other than `me` and still valid at `at`.
fn held_by_other(spec: &LeaseSpec, me: &str, at: Timestamp) -> bool {
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return false;
    };
    if holder == me {
        return false;
    }
    let duration = k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
        spec.lease_duration_seconds.unwrap_or(0),
    ));
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(renewed) => renewed
            .0
            .checked_add(duration)
            .is_ok_and(|expiry| expiry > at),
        None => false,
    }
}

/// One step: try to acquire or renew. Returns whether this candidate holds the lease now.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
) -> Result<bool, LeaderError> {
    let err = |source| LeaderError::Lease {
        name: cfg.name.clone(),
        source,
    };
    let current = api.get_opt(&cfg.name).await.map_err(err)?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.holder.clone()),
                lease_duration_seconds: Some(lease_seconds(cfg.lease_duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(err(e)),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if held_by_other(spec, &cfg.holder, Timestamp::now()) {
        return Ok(false);
    }
    let mine = spec.holder_identity.as_deref() == Some(cfg.holder.as_str());
    if !mine {
        spec.holder_identity = Some(cfg.holder.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(lease_seconds(cfg.lease_duration));
    spec.renew_time = Some(now());
    // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(err(e)),
    }
}

/// Give the lease up if this candidate holds it, so a standby can take over immediately.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), LeaderError> {
    let err = |source| LeaderError::Lease {
        name: cfg.name.clone(),
        source,
    };
    let Some(mut lease) = api.get_opt(&cfg.name).await.map_err(err)? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(cfg.holder.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Campaign until `stop` is cancelled: publishes `true` on the returned channel while this
/// candidate leads. Leadership is given up (published `false`) when a renewal has not succeeded
/// within the lease duration; the lease is released when `stop` is cancelled.
pub fn campaign(
    client: kube::Client,
    cfg: LeaseConfig,
    stop: CancellationToken,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let fence = cfg.fence.clone();
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            let started = tokio::time::Instant::now();
            // A renewal that hangs must not keep a stale leader going: it gives up in time.
            let attempt =
                tokio::time::timeout(cfg.retry_period, try_acquire_or_renew(&api, &cfg)).await;
            let attempt = attempt.unwrap_or_else(|_| {
                Err(LeaderError::Timeout {
                    name: cfg.name.clone(),
                })
            });
            match attempt {
                Ok(true) => {
                    last_renewal = Some(started);
                    fence.grant_until(started + cfg.renew_deadline);
                    if !*tx.borrow() {
                        tracing::info!(lease = %cfg.name, holder = %cfg.holder, "became leader");
                    }
                    let _ = tx.send(true);
                }
                Ok(false) => {
                    fence.revoke();
                    last_renewal = None;
                    if *tx.borrow() {
                        tracing::warn!(lease = %cfg.name, "lost the lease to another candidate");
                    }
                    let _ = tx.send(false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    let expired = last_renewal.is_none_or(|t| t.elapsed() >= cfg.renew_deadline);
                    if expired && *tx.borrow() {
                        fence.revoke();
                        tracing::warn!(lease = %cfg.name, "leadership lapsed: no renewal within the renew deadline");
                        let _ = tx.send(false);
                    }
                }
            }
            // Sleep until the next attempt, but step down the moment the deadline passes.
            let lapse = last_renewal.map(|t| t + cfg.renew_deadline);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(started + cfg.retry_period) => {}
                _ = async {
                    match lapse {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if *tx.borrow() {
                        fence.revoke();
                        tracing::warn!(lease = %cfg.name, "leadership lapsed: no renewal within the renew deadline");
                        let _ = tx.send(false);
                    }
                    last_renewal = None;
                }
            }
        }
        fence.revoke();
        let _ = tx.send(false);
        if let Err(e) = release(&api, &cfg).await {
            tracing::warn!(error = %e, "could not release the lease");
        }
    });
    (rx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let t = Timestamp::from_second(Timestamp::now().as_second() - renewed_secs_ago).unwrap();
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(t)),
            ..Default::default()
        }
    }

    #[test]
    fn lease_validity() {
        let now = Timestamp::now();
        assert!(held_by_other(&spec(Some("a"), 1, 15), "b", now));
        assert!(
            !held_by_other(&spec(Some("a"), 20, 15), "b", now),
            "expired"
        );
        assert!(!held_by_other(&spec(Some("b"), 1, 15), "b", now), "mine");
        assert!(!held_by_other(&spec(None, 1, 15), "b", now), "released");
        assert!(!held_by_other(&spec(Some(""), 1, 15), "b", now), "released");
    }
}
