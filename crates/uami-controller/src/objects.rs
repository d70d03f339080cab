//! Object-state metrics from the controller's own caches, so that dashboards need no
//! kube-state-metrics: `uami_objects` (counted from the reflector stores at every scrape) and
//! `uami_time_to_ready_seconds` (observed from the watch, once per object generation).
//!
//! Time to Ready runs from the object's creation (generation 1) or from when this controller
//! first saw the generation (a spec change) to the first time it saw the object Ready for that
//! generation. An object already Ready when the controller starts, whose Ready condition changed
//! before then, is not observed again; nor is a later generation whose change it did not see.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use parking_lot::Mutex;

use super::context::Stores;
use uami_api::conditions::{self, types};
use uami_kube::status::Reported;
use uami_telemetry::metrics::{ObjectLabels, ObjectSource, ReconcileMetrics};

/// The `uami_objects` labels of one object.
fn labels_of<K: Reported>(kind: &str, obj: &K) -> ObjectLabels {
    let ready = conditions::find(obj.conditions(), types::READY);
    ObjectLabels {
        kind: kind.to_string(),
        namespace: obj.namespace().unwrap_or_default(),
        ready: ready
            .map_or(conditions::status::UNKNOWN, |c| c.status.as_str())
            .to_string(),
        reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
    }
}

fn count_into<K: Reported>(kind: &str, store: &Store<K>, out: &mut HashMap<ObjectLabels, i64>) {
    for obj in store.state() {
        *out.entry(labels_of(kind, &*obj)).or_default() += 1;
    }
}

/// What `uami_objects` counts at a scrape: the objects in the stores, by kind, namespace and
/// Ready condition.
pub fn source(stores: Stores) -> ObjectSource {
    Arc::new(move || {
        let mut counts = HashMap::new();
        count_into("UserAssignedIdentity", &stores.identities, &mut counts);
        count_into("IdentityBinding", &stores.bindings, &mut counts);
        count_into("RoleGrant", &stores.grants, &mut counts);
        counts.into_iter().collect()
    })
}

/// What is known of one object's current generation.
struct Seen {
    generation: i64,
    /// When the generation began, when known.
    since: Option<Timestamp>,
    /// Observed (or never to be).
    done: bool,
}

/// Whether `obj` is Ready for its current generation; when, if the condition says.
fn ready_at<K: Reported>(obj: &K, generation: i64) -> Option<Option<Timestamp>> {
    let c = conditions::find(obj.conditions(), types::READY)?;
    let current = c.observed_generation.is_none_or(|g| g >= generation);
    (c.status == conditions::status::TRUE && current)
        .then(|| Timestamp::from_second(c.last_transition_time.0.as_second()).ok())
}

/// The time-to-Ready clock of one kind.
pub struct ReadyClock {
    kind: &'static str,
    started: Timestamp,
    seen: Mutex<HashMap<String, Seen>>,
}

impl ReadyClock {
    /// A clock of `kind` for a controller that started at `started`.
    pub fn new(kind: &'static str, started: Timestamp) -> Self {
        Self {
            kind,
            started,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Look at one object as the watch delivered it (`now`): the seconds to observe, if this
    /// is its first Ready for the generation.
    pub fn look<K: Reported>(&self, obj: &K, now: Timestamp) -> Option<f64> {
        let uid = obj.uid()?;
        if obj.meta().deletion_timestamp.is_some() {
            self.seen.lock().remove(&uid);
            return None;
        }
        let generation = obj.meta().generation.unwrap_or(1);
        let created = obj
            .meta()
            .creation_timestamp
            .as_ref()
            .and_then(|t| Timestamp::from_second(t.0.as_second()).ok());
        let ready = ready_at(obj, generation);
        let mut seen = self.seen.lock();
        let entry = seen.entry(uid).or_insert_with(|| {
            // First sight in this process: only generation 1 has a known start, and an object
            // that turned Ready before this controller started was counted by its predecessor.
            let before_start = matches!(ready, Some(Some(t)) if t < self.started);
            Seen {
                generation,
                since: (generation == 1).then_some(created).flatten(),
                done: before_start,
            }
        });
        if entry.generation != generation {
            *entry = Seen {
                generation,
                since: Some(now),
                done: false,
            };
        }
        if entry.done {
            return None;
        }
        let at = ready?;
        entry.done = true;
        let since = entry.since?;
        let end = at.filter(|t| *t >= since).unwrap_or(now);
        Some(end.duration_since(since).as_secs_f64())
    }

    /// Observe every object of `objects` into `metrics` until the stream ends.
    pub async fn run<K: Reported>(
        self,
        objects: impl Stream<Item = Arc<K>> + Send,
        metrics: ReconcileMetrics,
    ) {
        let mut objects = std::pin::pin!(objects);
        while let Some(obj) = objects.next().await {
            if let Some(seconds) = self.look(&*obj, Timestamp::now()) {
                metrics.observe_time_to_ready(self.kind, seconds);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uami_api::RoleGrant;

    fn grant(generation: i64, ready: Option<(&str, i64, &str)>) -> RoleGrant {
        let mut o = json!({
            "apiVersion": "uami.dev/v1alpha1", "kind": "RoleGrant",
            "metadata": {"name": "g", "namespace": "ns", "uid": "u1", "generation": generation,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"identityRef": {"name": "id"}, "role": "Reader",
                     "scope": {"resourceGroup": {"name": "DevTest"}}},
        });
        if let Some((status, og, at)) = ready {
            o["status"] = json!({"conditions": [{"type": "Ready", "status": status,
                "reason": "Ready", "message": "", "observedGeneration": og,
                "lastTransitionTime": at}]});
        }
        serde_json::from_value(o).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn observed_once_per_generation_from_creation_or_the_change() {
        let clock = ReadyClock::new("RoleGrant", ts("2026-01-01T00:00:00Z"));
        let now = ts("2026-01-01T00:00:30Z");
        assert_eq!(clock.look(&grant(1, None), now), None);
        let ready = grant(1, Some(("True", 1, "2026-01-01T00:00:12Z")));
        assert_eq!(clock.look(&ready, now), Some(12.0));
        assert_eq!(clock.look(&ready, now), None, "once per generation");
        // A spec change seen at :40, Ready for it (the condition did not change) seen at :45.
        let changed = grant(2, Some(("True", 1, "2026-01-01T00:00:12Z")));
        assert_eq!(clock.look(&changed, ts("2026-01-01T00:00:40Z")), None);
        let caught_up = grant(2, Some(("True", 2, "2026-01-01T00:00:12Z")));
        assert_eq!(
            clock.look(&caught_up, ts("2026-01-01T00:00:45Z")),
            Some(5.0)
        );
    }

    #[test]
    fn objects_ready_before_the_start_or_of_an_unseen_generation_are_not_observed() {
        let clock = ReadyClock::new("RoleGrant", ts("2026-01-02T00:00:00Z"));
        let now = ts("2026-01-02T00:00:05Z");
        let old = grant(1, Some(("True", 1, "2026-01-01T00:00:12Z")));
        assert_eq!(clock.look(&old, now), None);
        let clock = ReadyClock::new("RoleGrant", ts("2026-01-01T00:00:00Z"));
        let unseen_change = grant(3, Some(("True", 3, "2026-01-01T00:00:12Z")));
        assert_eq!(clock.look(&unseen_change, now), None);
    }
}
