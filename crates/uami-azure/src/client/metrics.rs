//! [`ArmMetrics`]: ARM requests by operation and status code, latency, throttling, budget.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use uami_telemetry::metrics::ArmBudgetMetrics;

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
    pub fn register(registry: &mut Registry) -> Self {
        let mut m = Self::unregistered();
        m.budget = ArmBudgetMetrics::register(registry);
        registry.register(
            "uami_arm_requests",
            "ARM requests by operation and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "uami_arm_request_duration_seconds",
            "ARM request latency",
            m.latency.clone(),
        );
        registry.register(
            "uami_arm_throttled",
            "ARM answers 429 by operation",
            m.throttled.clone(),
        );
        m
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
