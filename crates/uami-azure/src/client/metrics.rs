//! [`ArmMetrics`]: ARM requests by operation and status code, latency, throttling, budget.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use uami_telemetry::metrics::{ArmBudgetMetrics, register};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

/// ARM request metrics: by operation and status code, latency, throttling.
#[derive(Clone)]
pub struct ArmMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram>,
    throttled: Family<OperationLabels, Counter>,
    pub(super) budget: ArmBudgetMetrics,
}

impl ArmMetrics {
    /// Create and register under `uami_arm_`.
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::unregistered();
        Self {
            budget: ArmBudgetMetrics::register(r),
            requests: register(r, "uami_arm_requests", m.requests),
            latency: register(r, "uami_arm_request_duration_seconds", m.latency),
            throttled: register(r, "uami_arm_throttled", m.throttled),
        }
    }

    pub(super) fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            throttled: Family::default(),
            budget: ArmBudgetMetrics::default(),
        }
    }

    fn operation(operation: &str) -> OperationLabels {
        OperationLabels {
            operation: operation.into(),
        }
    }

    /// One request of `operation` took `seconds`.
    pub(super) fn latency(&self, operation: &str, seconds: f64) {
        self.latency
            .get_or_create(&Self::operation(operation))
            .observe(seconds);
    }

    /// One answer of `operation`: the HTTP status, or `transport` when none came.
    pub(super) fn answered(&self, operation: &str, code: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                operation: operation.into(),
                code: code.into(),
            })
            .inc();
    }

    /// ARM answered 429 to `operation`.
    pub(super) fn throttled(&self, operation: &str) {
        self.throttled
            .get_or_create(&Self::operation(operation))
            .inc();
    }
}
