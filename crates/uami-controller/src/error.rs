//! Reconcile errors, named after the step that failed. Each has a static category: the Event
//! reason and the metric label.

use std::time::Duration;

use uami_azure::ArmError;

/// A failed reconcile step.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading or writing a Kubernetes object failed.
    #[error("{step}: {source}")]
    Kube {
        /// The step, such as `PatchStatus`.
        step: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// An Azure Resource Manager call failed.
    #[error("{step}: {source}")]
    Arm {
        /// The step, such as `CreateIdentity` or `PatchVmIdentity`.
        step: &'static str,
        /// The ARM error (code and message; never a token).
        #[source]
        source: ArmError,
    },
    /// Cleanup must wait (for dependents, or for an Azure change in flight); the finalizer stays
    /// and the object is looked at again after `retry`.
    #[error("{step}: {message}")]
    Waiting {
        /// The step, such as `WaitingForDependents`.
        step: &'static str,
        /// What it waits for.
        message: String,
        /// When to look again.
        retry: Duration,
    },
    /// A patch that adds or removes this controller's finalizer failed (`AddFinalizer`,
    /// `RemoveFinalizer`, or `RecordAssignment`, which adds a binding's finalizer with its record).
    #[error("{step}: {source}")]
    Finalizer {
        /// The step.
        step: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// kube's finalizer helper refused the object (it has no name, or the finalizer's name is
    /// not a valid JSON pointer token): a bug, not a condition of the cluster.
    #[error("finalizer: {0}")]
    FinalizerHelper(#[source] kube::runtime::finalizer::Error<std::convert::Infallible>),
}

/// How the controller retries a failed reconcile (see [`ReconcileError::retry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Not a failure: look again after this long.
    Waiting(Duration),
    /// Retrying cannot help before something changes: look again at the resync.
    Resync,
    /// A write raced a cache that had not seen the object's last change: look again soon
    /// ([`RACE_RETRY`]), without counting a failure.
    Soon,
    /// A failure: counted, and retried after an exponential [`backoff`].
    Backoff,
}

/// How soon a write that raced the cache is tried again.
pub const RACE_RETRY: Duration = Duration::from_millis(500);

impl ReconcileError {
    /// A Kubernetes error at `step`.
    pub fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| ReconcileError::Kube { step, source }
    }

    /// An ARM error at `step`.
    pub fn arm(step: &'static str) -> impl FnOnce(ArmError) -> Self {
        move |source| ReconcileError::Arm { step, source }
    }

    /// Unwrap the finalizer helper's error into the step error it carries.
    pub fn from_finalizer(e: kube::runtime::finalizer::Error<ReconcileError>) -> Self {
        use kube::runtime::finalizer::Error;
        match e {
            Error::ApplyFailed(e) | Error::CleanupFailed(e) => e,
            Error::AddFinalizer(source) => ReconcileError::Finalizer {
                step: "AddFinalizer",
                source,
            },
            Error::RemoveFinalizer(source) => ReconcileError::Finalizer {
                step: "RemoveFinalizer",
                source,
            },
            Error::UnnamedObject => ReconcileError::FinalizerHelper(Error::UnnamedObject),
            Error::InvalidFinalizer => ReconcileError::FinalizerHelper(Error::InvalidFinalizer),
        }
    }

    /// How to retry after this error. A finalizer patch answered 409 Conflict or 422 (its
    /// `test` failed) raced a cache behind the object, and is tried again soon without counting;
    /// any other failure of it (403, 5xx, ...) counts and backs off like every other error.
    pub fn retry(&self) -> Retry {
        match self {
            ReconcileError::Waiting { retry, .. } => Retry::Waiting(*retry),
            e if e.is_terminal() => Retry::Resync,
            ReconcileError::Finalizer {
                source: kube::Error::Api(status),
                ..
            } if matches!(status.code, 409 | 422) => Retry::Soon,
            _ => Retry::Backoff,
        }
    }

    /// Static category: the step that failed.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Kube { step, .. }
            | ReconcileError::Arm { step, .. }
            | ReconcileError::Waiting { step, .. }
            | ReconcileError::Finalizer { step, .. } => step,
            ReconcileError::FinalizerHelper(_) => "Finalizer",
        }
    }

    /// Whether retrying cannot succeed before something changes: an ARM answer that is not
    /// retryable (a 4xx other than throttling and the transient codes, such as invalid input or
    /// a conflict with a resource the controller does not own).
    pub fn is_terminal(&self) -> bool {
        match self {
            ReconcileError::Arm { source, .. } => !source.is_retryable(),
            _ => false,
        }
    }

    /// The wait the server asked for (`Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ReconcileError::Arm { source, .. } => source.retry_after(),
            ReconcileError::Waiting { retry, .. } => Some(*retry),
            _ => None,
        }
    }
}

/// Exponential backoff for the `attempt`-th consecutive failure: 1 s doubling up to 5 min, with
/// up to 20% jitter, and never shorter than the server's `Retry-After`.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.min(8)).min(Duration::from_secs(300));
    let jitter = base.mul_f64(rand::random::<f64>() * 0.2);
    (base + jitter).max(retry_after.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        assert!(backoff(0, None) >= Duration::from_secs(1));
        assert!(backoff(0, None) <= Duration::from_millis(1200));
        assert!(backoff(3, None) >= Duration::from_secs(8));
        assert!(backoff(30, None) <= Duration::from_secs(360));
        assert!(backoff(0, Some(Duration::from_secs(42))) >= Duration::from_secs(42));
    }

    fn finalizer_failure(step: &'static str, code: u16) -> ReconcileError {
        let status = kube::core::Status::failure("refused", "Refused").with_code(code);
        ReconcileError::Finalizer {
            step,
            source: kube::Error::Api(status.boxed()),
        }
    }

    #[test]
    fn finalizer_races_retry_soon_and_other_finalizer_failures_back_off() {
        // A patch that raced the cache: its test failed (422) or the object changed (409).
        for step in ["AddFinalizer", "RemoveFinalizer", "RecordAssignment"] {
            assert_eq!(finalizer_failure(step, 409).retry(), Retry::Soon);
            assert_eq!(finalizer_failure(step, 422).retry(), Retry::Soon);
        }
        // Anything else is a failure like any other: counted, with a growing wait.
        for code in [400, 403, 404, 429, 500, 503] {
            let e = finalizer_failure("AddFinalizer", code);
            assert_eq!(e.retry(), Retry::Backoff, "{code}");
            assert_eq!(e.category(), "AddFinalizer");
        }
        // The source is kept, not flattened into a string.
        let e = finalizer_failure("RemoveFinalizer", 403);
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert!(source.is_some_and(|s| s.contains("refused")), "{e}");
        // Races are never counted; a persistent 403 waits longer at every attempt.
        assert!(backoff(5, None) >= Duration::from_secs(32));
        let waiting = ReconcileError::Waiting {
            step: "WaitingForDependents",
            message: "x".into(),
            retry: Duration::from_secs(7),
        };
        assert_eq!(waiting.retry(), Retry::Waiting(Duration::from_secs(7)));
        let kube = ReconcileError::Kube {
            step: "PatchStatus",
            source: kube::Error::Api(
                kube::core::Status::failure("conflict", "Conflict")
                    .with_code(409)
                    .boxed(),
            ),
        };
        assert_eq!(kube.retry(), Retry::Backoff);
    }
}
