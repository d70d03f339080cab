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
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

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
            other => ReconcileError::Finalizer(other.to_string()),
        }
    }

    /// Static category: the step that failed.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Kube { step, .. }
            | ReconcileError::Arm { step, .. }
            | ReconcileError::Waiting { step, .. } => step,
            ReconcileError::Finalizer(_) => "Finalizer",
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
}
