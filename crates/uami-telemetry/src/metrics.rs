//! Reconcile metrics. Labels are bounded: the kind, the result and a static error category;
//! never an object name or an error's text.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Every metric the processes export, by name, with its help text: the one list a dashboard
/// author reads, and the text [`register`] gives each name.
const METRICS: &[(&str, &str)] = &[
    (
        "uami_time_to_ready_seconds",
        "Time from an object's creation (or the change of its spec) to its first Ready, once per generation",
    ),
    (
        "uami_objects",
        "Objects by kind, namespace and Ready condition (status and reason), from the controller's caches",
    ),
    (
        "uami_role_assignments",
        "Role assignments in the subscription (at it and below), from the controller's last count",
    ),
    (
        "uami_role_assignments_limit",
        "Role assignments the controller allows per subscription before it refuses (Azure's fixed limit is 4000)",
    ),
    (
        "uami_federated_credentials",
        "Federated identity credentials of the identity, from the controller's last count",
    ),
    (
        "uami_federated_credentials_limit",
        "Federated identity credentials Azure allows per identity",
    ),
    (
        "uami_reconciles",
        "Reconciles by kind and result (success or error category)",
    ),
    (
        "uami_reconcile_duration_seconds",
        "Reconcile duration by kind",
    ),
    ("uami_leader", "1 when this replica holds the leader lease"),
    (
        "uami_arm_ratelimit_remaining",
        "Requests ARM still allows, from the x-ms-ratelimit-remaining-subscription-* headers of its last answer",
    ),
    (
        "uami_arm_requests",
        "ARM requests by operation and HTTP status",
    ),
    ("uami_arm_request_duration_seconds", "ARM request latency"),
    ("uami_arm_throttled", "ARM answers 429 by operation"),
];

/// The help text of the metric `name` in [`METRICS`] (empty for a name not listed there).
fn help(name: &str) -> &'static str {
    METRICS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, h)| h)
}

/// Register `metric` as `name` with its help text from [`METRICS`], and hand it back.
pub fn register<M: Metric + Clone>(registry: &mut Registry, name: &'static str, metric: M) -> M {
    registry.register(name, help(name), metric.clone());
    metric
}

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
    time_to_ready: Family<KindLabels, Histogram>,
    /// Whether this replica holds the leader lease (1) or not (0).
    pub leader: Gauge,
    /// Azure's quotas as counted.
    pub quota: QuotaMetrics,
    /// The objects by kind, namespace and Ready state, read from the controller's caches at
    /// every scrape.
    pub objects: ObjectCounts,
}

impl ReconcileMetrics {
    /// Create the metrics and register them under `uami_`.
    pub fn register(r: &mut Registry) -> Self {
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let time_to_ready = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 13))
        });
        let time_to_ready = register(r, "uami_time_to_ready_seconds", time_to_ready);
        let objects = ObjectCounts::default();
        r.register_collector(Box::new(objects.clone()));
        let quota = QuotaMetrics::register(r);
        Self {
            reconciles: register(r, "uami_reconciles", Family::default()),
            duration: register(r, "uami_reconcile_duration_seconds", duration),
            time_to_ready,
            leader: register(r, "uami_leader", Gauge::default()),
            quota,
            objects,
        }
    }

    /// One object of `kind` became Ready `seconds` after its creation or spec change.
    pub fn observe_time_to_ready(&self, kind: &str, seconds: f64) {
        self.time_to_ready
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .observe(seconds.max(0.0));
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

/// Labels of an object count: bounded by the kinds, the namespaces and the condition reasons
/// (a fixed set), never an object's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    /// The kind.
    pub kind: String,
    /// The namespace.
    pub namespace: String,
    /// The `Ready` condition's status (`True`, `False`, `Unknown`; `Unknown` without one).
    pub ready: String,
    /// The `Ready` condition's reason (empty without one).
    pub reason: String,
}

/// What counts the objects at a scrape.
pub type ObjectSource = Arc<dyn Fn() -> Vec<(ObjectLabels, i64)> + Send + Sync>;

/// `uami_objects`, computed at every scrape from the source set while the controllers run (a
/// replica that does not lead has none and exports no series).
#[derive(Clone, Default)]
pub struct ObjectCounts {
    source: Arc<Mutex<Option<ObjectSource>>>,
}

impl ObjectCounts {
    /// Count with `source` from now on (`None`: stop exporting).
    pub fn set_source(&self, source: Option<ObjectSource>) {
        *self.source.lock() = source;
    }
}

impl std::fmt::Debug for ObjectCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectCounts")
    }
}

impl Collector for ObjectCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = Family::<ObjectLabels, Gauge>::default();
        let source = self.source.lock().clone();
        if let Some(source) = source {
            for (labels, n) in source() {
                family.get_or_create(&labels).inc_by(n);
            }
        }
        let metric = encoder.encode_descriptor(
            "uami_objects",
            help("uami_objects"),
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

/// Labels of a subscription's count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// The subscription (lower case).
    pub subscription: String,
}

/// Labels of an identity's count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    /// The identity's ARM id (lower case).
    pub identity: String,
}

/// Azure's fixed quotas as the controller counts them: role assignments per subscription and
/// federated identity credentials per identity, with the limits they count against.
#[derive(Clone, Default)]
pub struct QuotaMetrics {
    role_assignments: Family<SubscriptionLabels, Gauge>,
    role_assignments_limit: Gauge,
    federated_credentials: Family<IdentityLabels, Gauge>,
    federated_credentials_limit: Gauge,
}

impl QuotaMetrics {
    /// Create the gauges and register them under `uami_`.
    pub fn register(r: &mut Registry) -> Self {
        Self {
            role_assignments: register(r, "uami_role_assignments", Family::default()),
            role_assignments_limit: register(r, "uami_role_assignments_limit", Gauge::default()),
            federated_credentials: register(r, "uami_federated_credentials", Family::default()),
            federated_credentials_limit: register(
                r,
                "uami_federated_credentials_limit",
                Gauge::default(),
            ),
        }
    }

    /// The limits counted against.
    pub fn set_limits(&self, role_assignments: usize, federated_credentials: usize) {
        self.role_assignments_limit.set(as_i64(role_assignments));
        self.federated_credentials_limit
            .set(as_i64(federated_credentials));
    }

    /// A count of a subscription's role assignments.
    pub fn set_role_assignments(&self, subscription: &str, count: usize) {
        self.role_assignments
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_string(),
            })
            .set(as_i64(count));
    }

    /// A count of an identity's federated identity credentials.
    pub fn set_federated_credentials(&self, identity: &str, count: usize) {
        self.federated_credentials
            .get_or_create(&IdentityLabels {
                identity: identity.to_string(),
            })
            .set(as_i64(count));
    }
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
    pub fn register(r: &mut Registry) -> Self {
        Self {
            remaining: register(r, "uami_arm_ratelimit_remaining", Family::default()),
        }
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

    /// Budget headers: `x-ms-ratelimit-remaining-subscription-{kind}: {value}`.
    fn headers(budgets: &[(&str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (kind, value) in budgets {
            if let Ok(name) =
                http::HeaderName::try_from(format!("x-ms-ratelimit-remaining-subscription-{kind}"))
            {
                h.insert(name, http::HeaderValue::from_static(value));
            }
        }
        h
    }

    #[test]
    fn every_registered_metric_has_its_help_text() {
        let mut registry = Registry::default();
        let m = ReconcileMetrics::register(&mut registry);
        m.observe("Kind", "success", Duration::from_millis(5));
        m.observe_time_to_ready("Kind", 1.0);
        m.quota.set_role_assignments("sub-1", 1);
        m.quota.set_federated_credentials("id-1", 1);
        let budget = ArmBudgetMetrics::register(&mut registry);
        budget.observe("sub-1", &headers(&[("reads", "1")]));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        // The other `uami_arm_` metrics are uami-azure's.
        let here = |n: &str| n == "uami_arm_ratelimit_remaining" || !n.starts_with("uami_arm_");
        for (name, help) in METRICS.iter().filter(|(n, _)| here(n)) {
            assert!(
                text.contains(&format!("# HELP {name} {help}")),
                "{name}: {text}"
            );
        }
    }

    #[test]
    fn budget_headers_become_gauges_and_other_headers_are_ignored() {
        let mut registry = Registry::default();
        let m = ArmBudgetMetrics::register(&mut registry);
        let h = headers(&[
            ("reads", "249"),
            ("made-up", "7"),
            ("writes", "not a number"),
        ]);
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
