//! Namespace lifecycle as the API server and its namespace controller run it: a new namespace
//! carries the `kubernetes` finalizer in `spec.finalizers`; deleting it sets
//! `deletionTimestamp` and `status.phase: Terminating`, refuses new content, and deletes every
//! object in it through the normal delete path (objects with finalizers wait for their
//! controllers); the namespace controller's five conditions report its work, and
//! `NamespaceContentRemaining` and `NamespaceFinalizersRemaining` say what is left; when nothing
//! is left the `kubernetes` finalizer is removed and the namespace disappears.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::admission::Caller;
use super::error::ApiError;
use super::now;
use super::registry::ResourceDef;
use super::store::Store;

/// The finalizer the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";

/// Fill in what the API server sets on a new namespace.
pub fn on_create(obj: &mut Value, name: &str) {
    obj["status"] = json!({"phase": "Active"});
    obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    let finalizers = obj["spec"]["finalizers"].as_array().cloned();
    if finalizers.is_none() {
        obj["spec"]["finalizers"] = json!([FINALIZER]);
    }
}

/// Whether the namespace is being deleted.
pub fn terminating(store: &Store, ns: &str) -> bool {
    store
        .namespace(ns)
        .is_some_and(|n| n["metadata"]["deletionTimestamp"].is_string())
}

/// The refusal of a new object `name` of `def` in the terminating namespace `ns`.
pub fn forbidden(def: &ResourceDef, name: &str, ns: &str) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            def.qualified()
        ),
    )
    .about_field(
        def,
        name,
        "NamespaceTerminating",
        "metadata.namespace",
        &format!("namespace {ns} is being terminated"),
    )
}

/// `DELETE` of a namespace: set it Terminating, delete its content with `delete_one` (the
/// server's delete path, so finalizers hold objects), and finish when empty.
pub fn delete_namespace(
    store: &mut Store,
    def: &ResourceDef,
    name: &str,
    caller: &Caller,
    mut delete_one: impl FnMut(&mut Store, &ResourceDef, &str),
) -> Result<Value, ApiError> {
    let old = store
        .namespace(name)
        .ok_or_else(|| ApiError::not_found(def, name))?;
    super::admission::validate(store, def, "DELETE", None, None, Some(&old), caller)?;
    if caller.dry_run || old["metadata"]["deletionTimestamp"].is_string() {
        return Ok(old.as_ref().clone());
    }
    let mut new = old.as_ref().clone();
    new["metadata"]["deletionTimestamp"] = json!(now());
    new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    new["status"]["phase"] = json!("Terminating");
    let rv = store.next_rv();
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    store.put(rv, def, "", name, "MODIFIED", Arc::new(new.clone()));
    // Delete the content, kind by kind, through the normal path (finalizers hold objects).
    let content: Vec<(ResourceDef, String)> = store
        .resources
        .iter()
        .filter(|r| r.namespaced)
        .fold(Vec::<ResourceDef>::new(), |mut acc, r| {
            if !acc.iter().any(|d| d.key() == r.key()) {
                acc.push(r.clone());
            }
            acc
        })
        .into_iter()
        .flat_map(|d| {
            let names: Vec<String> = store
                .objects
                .get(&d.key())
                .map(|o| {
                    o.keys()
                        .filter(|(n, _)| n == name)
                        .map(|(_, x)| x.clone())
                        .collect()
                })
                .unwrap_or_default();
            names.into_iter().map(move |n| (d.clone(), n))
        })
        .collect();
    for (d, n) in content {
        delete_one(store, &d, &n);
    }
    refresh(store, def, name);
    // The answer is the namespace as the DELETE marked it: the namespace controller's work
    // (conditions, the end) comes after.
    Ok(new)
}

/// After an object of namespace `ns` went away: update the conditions of a terminating
/// namespace, and remove it once it is empty.
pub fn content_changed(store: &mut Store, ns: &str) {
    if ns.is_empty() || !terminating(store, ns) {
        return;
    }
    let Some(def) = store
        .resources
        .iter()
        .find(|r| r.group.is_empty() && r.plural == "namespaces")
        .cloned()
    else {
        return;
    };
    refresh(store, &def, ns);
}

fn refresh(store: &mut Store, def: &ResourceDef, name: &str) {
    let Some(old) = store.namespace(name) else {
        return;
    };
    // What remains, by resource, and the finalizers holding it.
    let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
    let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
    for r in store.resources.iter().filter(|r| r.namespaced) {
        if r.key() != (r.group.clone(), r.plural.clone()) {
            continue;
        }
        let Some(objs) = store.objects.get(&r.key()) else {
            continue;
        };
        for ((n, _), o) in objs.iter() {
            if n != name {
                continue;
            }
            // `resource.group`, the core group's as `configmaps.`, as the controller writes it.
            *remaining
                .entry(format!("{}.{}", r.plural, r.group))
                .or_default() += 1;
            for f in o["metadata"]["finalizers"].as_array().into_iter().flatten() {
                if let Some(f) = f.as_str() {
                    *finalizers.entry(f.to_string()).or_default() += 1;
                }
            }
        }
    }
    let mut new = old.as_ref().clone();
    let rv = store.next_rv();
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    if remaining.is_empty() {
        if let Some(f) = new["spec"]["finalizers"].as_array_mut() {
            f.retain(|x| x != FINALIZER);
        }
        new["status"]["conditions"] = conditions(&remaining, &finalizers);
        let spec_done = new["spec"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        let meta_done = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        let arc = Arc::new(new);
        if spec_done && meta_done {
            store.take(rv, def, "", name, arc);
        } else {
            store.put(rv, def, "", name, "MODIFIED", arc);
        }
        return;
    }
    let conds = conditions(&remaining, &finalizers);
    if old["status"]["conditions"] == conds {
        return;
    }
    new["status"]["conditions"] = conds;
    store.put(rv, def, "", name, "MODIFIED", Arc::new(new));
}

/// The namespace's conditions about what is left in it.
fn conditions(remaining: &BTreeMap<String, usize>, finalizers: &BTreeMap<String, usize>) -> Value {
    let t = now();
    // `False` with `done` when nothing is counted, else `True` with `left` and the counts.
    let condition = |kind: &str,
                     counts: &BTreeMap<String, usize>,
                     done: [&str; 2],
                     left: [&str; 2],
                     verb: &str| {
        if counts.is_empty() {
            return json!({"type": kind, "status": "False", "reason": done[0], "message": done[1], "lastTransitionTime": t});
        }
        let list: Vec<String> = counts
            .iter()
            .map(|(what, n)| format!("{what} {verb} {n} resource instances"))
            .collect();
        json!({"type": kind, "status": "True", "reason": left[0], "message": format!("{}: {}", left[1], list.join(", ")), "lastTransitionTime": t})
    };
    // What the namespace controller reports about its own work: it always succeeds here.
    let ok = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "False", "reason": reason, "message": message, "lastTransitionTime": t});
    json!([
        ok(
            "NamespaceDeletionDiscoveryFailure",
            "ResourcesDiscovered",
            "All resources successfully discovered"
        ),
        ok(
            "NamespaceDeletionGroupVersionParsingFailure",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed"
        ),
        ok(
            "NamespaceDeletionContentFailure",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization"
        ),
        condition(
            "NamespaceContentRemaining",
            remaining,
            ["ContentRemoved", "All content successfully removed"],
            ["SomeResourcesRemain", "Some resources are remaining"],
            "has",
        ),
        condition(
            "NamespaceFinalizersRemaining",
            finalizers,
            [
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished"
            ],
            [
                "SomeFinalizersRemain",
                "Some content in the namespace has finalizers remaining"
            ],
            "in",
        ),
    ])
}
