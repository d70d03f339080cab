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

/// Labels of a remaining ARM request budget.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// The subscription (lower case) the answer came from.
    pub subscription: String,
    /// What the budget counts: `reads`, `writes`, `deletes`, `global-reads`, ...
    pub kind: String,
}

/// The budgets ARM reports in `x-ms-ratelimit-remaining-subscription-*` headers that are
/// exported; anything else is ignored so that the label stays bounded.
const BUDGET_KINDS: [&str; 7] = [
    "reads",
    "writes",
    "deletes",
    "global-reads",
    "global-writes",
    "resource-requests",
    "resource-entities-read",
];

/// The remaining ARM request budget, from the `x-ms-ratelimit-remaining-subscription-*` headers
/// of the last answer per subscription and kind: a dashboard sees throttling coming before the
/// first 429.
#[derive(Clone, Default)]
pub struct ArmBudgetMetrics {
    remaining: Family<BudgetLabels, Gauge>,
}

impl ArmBudgetMetrics {
    /// Create the gauge and register it as `uami_arm_ratelimit_remaining`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "uami_arm_ratelimit_remaining",
            "Requests ARM still allows, from the x-ms-ratelimit-remaining-subscription-* headers of its last answer",
            m.remaining.clone(),
        );
        m
    }

    /// Record the budget headers of one ARM answer for `subscription`.
    pub fn observe(&self, subscription: &str, headers: &http::HeaderMap) {
        const PREFIX: &str = "x-ms-ratelimit-remaining-subscription-";
        for (name, value) in headers {
            let Some(kind) = name.as_str().strip_prefix(PREFIX) else {
                continue;
            };
            if !BUDGET_KINDS.contains(&kind) {
                continue;
            }
            let Some(n) = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
            else {
                continue;
            };
            self.remaining
                .get_or_create(&BudgetLabels {
                    subscription: subscription.to_string(),
                    kind: kind.to_string(),
                })
                .set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_headers_become_gauges_and_other_headers_are_ignored() {
        let mut registry = Registry::default();
        let m = ArmBudgetMetrics::register(&mut registry);
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-ms-ratelimit-remaining-subscription-reads",
            http::HeaderValue::from_static("249"),
        );
        h.insert(
            "x-ms-ratelimit-remaining-subscription-made-up",
            http::HeaderValue::from_static("7"),
        );
        h.insert(
            "x-ms-ratelimit-remaining-subscription-writes",
            http::HeaderValue::from_static("not a number"),
        );
        m.observe("sub-1", &h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        assert!(
            text.contains(r#"uami_arm_ratelimit_remaining{subscription="sub-1",kind="reads"} 249"#),
            "{text}"
        );
        assert!(!text.contains("made-up"), "{text}");
        assert!(!text.contains(r#"kind="writes""#), "{text}");
    }
}
