//! One reconcile pass of any kind, around the kind's own plan -> ensure -> settle -> conclude:
//! the tracing span that names the object, the metrics, the object's run of failures and its
//! memory ([`Memo`](super::memo::Memo), dropped once it is cleaned up), and the error policy that
//! decides when a failed pass runs again.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use super::context::Context;
use super::error::{RACE_RETRY, ReconcileError, Retry, backoff};
use super::memo::{Memo, ObjectKey, Run};
use crate::passing::{self, arm_reason};
use uami_kube::status::{self, Reported};

/// What the wrapper needs to know of a kind.
pub trait Kind: Reported {
    /// The finalizer kube's helper adds for the kind (`None`: the kind adds its own, or none).
    const FINALIZER: Option<&'static str>;
    /// The status fields the controller owns.
    const OWNED_FIELDS: &'static [&'static str];
    /// The status that shows a failed ARM step (`reason`, `message`); `None` leaves the status
    /// as it is.
    fn failed_status(&self, reason: &str, message: &str) -> Option<Self::Status>;
}

/// The span of one pass over `obj`: every log line of the pass carries its kind, namespace and
/// name.
pub fn span_of<K: Resource<DynamicType = ()>>(obj: &K) -> tracing::Span {
    tracing::info_span!(
        "reconcile",
        kind = %K::kind(&()),
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        name = obj.meta().name.as_deref().unwrap_or_default(),
    )
}

/// Run `reconcile` (the kind's plan -> ensure -> settle -> conclude) over `obj` as one pass: in
/// the object's span, with its failed ARM step shown in its status, its memory kept or dropped,
/// and the pass counted in the metrics.
pub async fn run<K, F, Fut>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action, ReconcileError>
where
    K: Kind,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, ReconcileError>>,
{
    let span = span_of(&*obj);
    async move {
        let started = Instant::now();
        let key = ObjectKey::of(&*obj);
        let version = obj.resource_version();
        if ctx.memo.take_superseded(&key, version.as_deref()) {
            // The last pass added the finalizer to this very version: the newer version is on
            // its way through the watch and triggers the next pass. Patching from this stale
            // copy would only fail its test.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let deleting = obj.meta().deletion_timestamp.is_some();
        // The pass that adds kube's finalizer patches the very copy it was given.
        let adds_finalizer =
            K::FINALIZER.is_some_and(|f| !deleting && !obj.finalizers().iter().any(|x| x == f));
        let result = reconcile(obj.clone(), ctx.clone()).await;
        if let Err(e @ ReconcileError::Arm { source, .. }) = &result
            && !passing::keep_on_passing_failure(&ctx, &key, &*obj, source)
            && let Some(failed) = obj.failed_status(&arm_reason(source), &e.to_string())
        {
            // Best effort: the error itself is what the controller acts on.
            let _ = status::write(&ctx.client, &*obj, &failed, K::OWNED_FIELDS).await;
        }
        let label = match &result {
            Ok(_) if deleting => {
                // Cleaned up: nothing about the object is worth keeping.
                ctx.forget_object(&key);
                "success"
            }
            Ok(_) => {
                // A success ends the object's runs of failures: the next failure starts the
                // backoff, and the count of passing ARM failures, from the beginning.
                ctx.memo.succeeded(&key, Run::Reconcile);
                ctx.memo.succeeded(&key, Run::Passing);
                if adds_finalizer && let Some(v) = version {
                    ctx.memo.note_superseded(&key, v);
                }
                "success"
            }
            // Waiting (for dependents, for Azure) is not a failure.
            Err(ReconcileError::Waiting { .. }) => "waiting",
            Err(e) => e.category(),
        };
        ctx.metrics.observe(&K::kind(&()), label, started.elapsed());
        result
    }
    .instrument(span)
    .await
}

/// When a failed pass over the object `key` runs again: a wait after [`Retry::Waiting`], the
/// resync after a terminal error, [`RACE_RETRY`] after a race (not counted), else a backoff
/// that grows with the object's failures in a row (counted here).
pub fn retry_in(err: &ReconcileError, memo: &Memo, key: &ObjectKey, resync: Duration) -> Duration {
    match err.retry() {
        Retry::Waiting(wait) => wait,
        Retry::Resync => resync,
        Retry::Soon => RACE_RETRY,
        Retry::Backoff => {
            let attempts = memo.failed(key, Run::Reconcile);
            backoff(attempts.saturating_sub(1), err.retry_after())
        }
    }
}

/// The error policy of every kind's controller.
pub fn error_policy<K>(obj: Arc<K>, err: &ReconcileError, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let _span = span_of(&*obj).entered();
    let key = ObjectKey::of(&*obj);
    let wait = retry_in(err, &ctx.memo, &key, ctx.settings.jittered_resync());
    match (err.retry(), err) {
        (Retry::Waiting(_), ReconcileError::Waiting { message, .. }) => {
            tracing::info!(%message, "waiting");
        }
        (Retry::Waiting(_), _) => {}
        // Retrying will not help until something changes: the object's spec (a new generation
        // triggers a reconcile), a related object (its trigger), or Azure (seen at the resync).
        (Retry::Resync, _) => {
            tracing::warn!(step = err.category(), error = %err, "reconcile failed; not retrying before a change or the resync");
        }
        // A patch raced a cache that had not seen the object's last change.
        (Retry::Soon, _) => {
            tracing::debug!(step = err.category(), error = %err, "patch raced the cache");
        }
        (Retry::Backoff, _) => {
            tracing::warn!(step = err.category(), error = %err, retry_in = ?wait, "reconcile failed");
        }
    }
    Action::requeue(wait)
}

/// At every resync, forget what is kept about objects that left their caches without a cleanup
/// ([`Context::sweep`]).
pub async fn sweep_periodically(ctx: Arc<Context>, stop: impl Future<Output = ()> + Send) {
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(ctx.settings.jittered_resync()) => ctx.sweep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finalizer_failure(code: u16) -> ReconcileError {
        ReconcileError::Finalizer {
            step: "AddFinalizer",
            source: kube::Error::Api(
                kube::core::Status::failure("refused", "Refused")
                    .with_code(code)
                    .boxed(),
            ),
        }
    }

    #[test]
    fn a_persistent_finalizer_failure_backs_off_and_a_race_retries_soon_uncounted() {
        let memo = Memo::default();
        let key = ObjectKey {
            kind: "RoleGrant".into(),
            namespace: "team-a".into(),
            name: "g".into(),
        };
        let resync = Duration::from_secs(600);
        // Races: soon, every time, and never counted.
        for code in [409, 422, 409] {
            assert_eq!(
                retry_in(&finalizer_failure(code), &memo, &key, resync),
                RACE_RETRY
            );
        }
        assert!(memo.is_empty(), "a race is not a failure");
        // A persistent 403 (or 5xx): counted, each wait at least twice the one before.
        let waits: Vec<Duration> = (0..6)
            .map(|i| {
                let code = if i % 2 == 0 { 403 } else { 503 };
                retry_in(&finalizer_failure(code), &memo, &key, resync)
            })
            .collect();
        assert!(waits[0] >= Duration::from_secs(1) && waits[0] < Duration::from_secs(2));
        assert!(waits[5] >= Duration::from_secs(32), "{waits:?}");
        assert_eq!(memo.failed(&key, Run::Reconcile), 7, "six failures counted");
        // A success ends the run: the next failure starts from the beginning.
        memo.succeeded(&key, Run::Reconcile);
        let again = retry_in(&finalizer_failure(500), &memo, &key, resync);
        assert!(again < Duration::from_secs(2), "{again:?}");
    }
}
