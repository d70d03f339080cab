//! Reconcile metrics. Labels are bounded: the kind, the result and a static error category;
//! never an object name or an error's text.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind reconciled.
    pub kind: String,
}

/// Labels of a reconcile outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The kind reconciled.
    pub kind: String,
    /// `success` or the static error category.
    pub result: String,
}

/// The controller's reconcile metrics.
#[derive(Clone)]
pub struct ReconcileMetrics {
    reconciles: Family<ResultLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    /// Whether this replica holds the leader lease (1) or not (0).
    pub leader: Gauge,
}

impl ReconcileMetrics {
    /// Create the metrics and register them under `uami_`.
    pub fn register(registry: &mut Registry) -> Self {
        let reconciles = Family::<ResultLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let leader = Gauge::default();
        registry.register(
            "uami_reconciles",
            "Reconciles by kind and result (success or error category)",
            reconciles.clone(),
        );
        registry.register(
            "uami_reconcile_duration_seconds",
            "Reconcile duration by kind",
            duration.clone(),
        );
        registry.register(
            "uami_leader",
            "1 when this replica holds the leader lease",
            leader.clone(),
        );
        Self {
            reconciles,
            duration,
            leader,
        }
    }

    /// Count one reconcile of `kind` with `result` (`success` or a static error category).
    pub fn observe(&self, kind: &str, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels {
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}
