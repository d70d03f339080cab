//! For the target writer: which bindings of a VM or scale set are about to want a write, so the
//! writer holds the target's first write until they can join it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::super::context::Stores;
use super::super::target_writer::WaitingSiblings;
use super::super::{binding, policy};
use uami_api::conditions::{self, types};
use uami_azure::compute::ComputeTarget;

/// How long one scan of the stores answers the writers' questions about waiting siblings: each
/// held VM asks every 500 ms, and one scan covers every VM.
const SIBLINGS_FRESH: std::time::Duration = std::time::Duration::from_millis(250);

/// For the target writer: the bindings of a target, from the shared stores, that wait for their
/// identity to be created (named by the identity's object), or whose identity is ready and that
/// have not been reconciled to a status yet (named by the identity's ARM id). One scan of the
/// stores, grouped by target, serves every target for [`SIBLINGS_FRESH`].
pub(super) fn waiting_siblings(
    stores: Stores,
    default_subscription: Option<String>,
) -> WaitingSiblings {
    let scanned: parking_lot::Mutex<Option<(Instant, WaitingByTarget)>> =
        parking_lot::Mutex::new(None);
    Arc::new(move |target: &ComputeTarget| {
        let mut scanned = scanned.lock();
        if scanned
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > SIBLINGS_FRESH)
        {
            let by_target = scan_waiting(&stores, default_subscription.as_deref());
            *scanned = Some((Instant::now(), by_target));
        }
        scanned
            .as_ref()
            .and_then(|(_, by_target)| by_target.get(&target.key()).cloned())
            .unwrap_or_default()
    })
}

/// The waiting bindings of each target, by target key.
type WaitingByTarget = HashMap<String, Vec<String>>;

/// The waiting bindings of every target. Only bindings a GrantPolicy allows count (another
/// namespace's binding that no policy allows never reaches the writer, and must not delay the
/// target's writes), and, of those whose identity has no Ready condition, only the ones whose
/// identity the controller has not answered yet (its creation is in flight).
fn scan_waiting(stores: &Stores, default_subscription: Option<&str>) -> WaitingByTarget {
    let policies = stores.policies();
    let identities = &stores.identities;
    let mut by_target = WaitingByTarget::new();
    for b in stores.bindings.state() {
        if b.meta().deletion_timestamp.is_some() {
            continue;
        }
        let (Some(target), Some(ns)) =
            (binding::target_of(&b, default_subscription), b.namespace())
        else {
            continue;
        };
        if !matches!(
            policy::check_binding(&policies, &ns, &target, default_subscription),
            policy::Decision::Allowed(_)
        ) {
            continue;
        }
        let name = &b.spec.identity_ref.name;
        let Some(identity) = identities.get(&ObjectRef::new(name).within(&ns)) else {
            continue;
        };
        if identity.meta().deletion_timestamp.is_some() {
            continue;
        }
        let status = identity.status.as_ref();
        let waiting = match status.and_then(|s| conditions::find(&s.conditions, types::READY)) {
            None if status.is_none() => Some(format!("{ns}/{name}")),
            None => None,
            Some(c) if c.status == conditions::status::TRUE && b.status.is_none() => {
                status.and_then(|s| s.resource_id.as_ref().map(|r| r.to_lowercase()))
            }
            Some(_) => None,
        };
        if let Some(w) = waiting {
            by_target.entry(target.key()).or_default().push(w);
        }
    }
    by_target
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn store_of<K>(objects: Vec<serde_json::Value>) -> reflector::Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
    {
        let (store, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&Event::Init);
        for o in objects {
            let obj: K = serde_json::from_value(o).expect("object");
            writer.apply_watcher_event(&Event::InitApply(obj));
        }
        writer.apply_watcher_event(&Event::InitDone);
        store
    }

    fn identity(ns: &str, status: Option<serde_json::Value>) -> serde_json::Value {
        let mut o = json!({
            "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
            "metadata": {"name": "id", "namespace": ns},
            "spec": {"resourceGroup": "DevTest", "location": "eastus"},
        });
        if let Some(s) = status {
            o["status"] = s;
        }
        o
    }

    fn binding(ns: &str) -> serde_json::Value {
        json!({
            "apiVersion": "uami.dev/v1alpha1", "kind": "IdentityBinding",
            "metadata": {"name": "b", "namespace": ns},
            "spec": {"identityRef": {"name": "id"},
                     "target": {"virtualMachine": {"resourceGroup": "DevTest", "name": "myVM"}}},
        })
    }

    #[test]
    fn only_allowed_bindings_whose_identity_is_being_created_hold_a_target() {
        let policy = json!({
            "apiVersion": "uami.dev/v1alpha1", "kind": "GrantPolicy",
            "metadata": {"name": "p"},
            "spec": {"namespaces": ["team-a", "team-c"],
                     "identityBindings": [{"virtualMachine": {"resourceGroup": "DevTest"}}]},
        });
        let stores = Stores {
            // team-a: being created; team-b: being created but no policy allows the binding;
            // team-c: answered (a status without Ready, as after a failed first attempt).
            identities: store_of(vec![
                identity("team-a", None),
                identity("team-b", None),
                identity("team-c", Some(json!({"conditions": []}))),
            ]),
            bindings: store_of(vec![
                binding("team-a"),
                binding("team-b"),
                binding("team-c"),
            ]),
            grants: store_of(vec![]),
            policies: store_of(vec![policy]),
        };
        let waiting = scan_waiting(&stores, Some("6a2bd3a4-59c6-4d4e-9e8b-5c5a2f0a1b2c"));
        let all: Vec<&String> = waiting.values().flatten().collect();
        assert_eq!(all, vec!["team-a/id"], "{waiting:?}");
    }
}
