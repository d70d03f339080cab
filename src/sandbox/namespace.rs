//! Namespace lifecycle as the API server and its namespace controller run it: a new namespace
//! carries the `kubernetes` finalizer in `spec.finalizers`; deleting it sets
//! `deletionTimestamp` and `status.phase: Terminating`, refuses new content, and deletes every
//! object in it through the normal delete path (objects with finalizers wait for their
//! controllers); the conditions `NamespaceContentRemaining` and `NamespaceFinalizersRemaining`
//! say what is left; when nothing is left the `kubernetes` finalizer is removed and the
//! namespace disappears.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::now;
use super::registry::ResourceDef;
use super::server::{ApiError, delete};
use super::store::Store;

/// The finalizer the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";

fn namespaces_key() -> (String, String) {
    (String::new(), "namespaces".into())
}

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
        .objects
        .get(&namespaces_key())
        .and_then(|o| o.get(&(String::new(), ns.to_string())))
        .is_some_and(|n| n["metadata"]["deletionTimestamp"].is_string())
}

/// The refusal of new content in a terminating namespace.
pub fn forbidden(ns: &str) -> ApiError {
    let message =
        format!("unable to create new content in namespace {ns} because it is being terminated");
    let mut e = ApiError::new(403, "Forbidden", message.clone());
    e.details = Some(
        json!({"name": ns, "kind": "namespaces", "causes": [{"reason": "NamespaceTerminating", "message": message, "field": "metadata.namespace"}]}),
    );
    e
}

/// `DELETE` of a namespace: mark it Terminating, delete its content, and finish when empty.
pub fn delete_namespace(
    store: &mut Store,
    def: &ResourceDef,
    name: &str,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let old = store
        .objects
        .get(&namespaces_key())
        .and_then(|o| o.get(&(String::new(), name.to_string())))
        .cloned()
        .ok_or_else(|| ApiError::not_found(def, name))?;
    super::admission::validate(store, def, "DELETE", None, None, Some(&old), dry_run)?;
    if dry_run || old["metadata"]["deletionTimestamp"].is_string() {
        return Ok(old.as_ref().clone());
    }
    let mut new = old.as_ref().clone();
    new["metadata"]["deletionTimestamp"] = json!(now());
    new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    new["status"]["phase"] = json!("Terminating");
    let rv = store.next_rv();
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    let arc = Arc::new(new.clone());
    store
        .objects
        .entry(namespaces_key())
        .or_default()
        .insert((String::new(), name.to_string()), arc.clone());
    store.emit(rv, def, "", "MODIFIED", arc);
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
        let _ = delete(store, &d, name, &n, false);
    }
    refresh(store, def, name);
    Ok(store
        .objects
        .get(&namespaces_key())
        .and_then(|o| o.get(&(String::new(), name.to_string())))
        .map(|o| o.as_ref().clone())
        .unwrap_or(new))
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
    let Some(old) = store
        .objects
        .get(&namespaces_key())
        .and_then(|o| o.get(&(String::new(), name.to_string())))
        .cloned()
    else {
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
            *remaining.entry(r.qualified()).or_default() += 1;
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
            if let Some(o) = store.objects.get_mut(&namespaces_key()) {
                o.remove(&(String::new(), name.to_string()));
            }
            store.emit(rv, def, "", "DELETED", arc);
        } else {
            store
                .objects
                .entry(namespaces_key())
                .or_default()
                .insert((String::new(), name.to_string()), arc.clone());
            store.emit(rv, def, "", "MODIFIED", arc);
        }
        return;
    }
    let conds = conditions(&remaining, &finalizers);
    if old["status"]["conditions"] == conds {
        return;
    }
    new["status"]["conditions"] = conds;
    let arc = Arc::new(new);
    store
        .objects
        .entry(namespaces_key())
        .or_default()
        .insert((String::new(), name.to_string()), arc.clone());
    store.emit(rv, def, "", "MODIFIED", arc);
}

fn conditions(remaining: &BTreeMap<String, usize>, finalizers: &BTreeMap<String, usize>) -> Value {
    let t = now();
    let content = if remaining.is_empty() {
        json!({"type": "NamespaceContentRemaining", "status": "False", "reason": "ContentRemoved", "message": "All content successfully removed", "lastTransitionTime": t})
    } else {
        let list: Vec<String> = remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        json!({"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain", "message": format!("Some resources are remaining: {}", list.join(", ")), "lastTransitionTime": t})
    };
    let fin = if finalizers.is_empty() {
        json!({"type": "NamespaceFinalizersRemaining", "status": "False", "reason": "ContentHasNoFinalizers", "message": "All content-preserving finalizers finished", "lastTransitionTime": t})
    } else {
        let list: Vec<String> = finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        json!({"type": "NamespaceFinalizersRemaining", "status": "True", "reason": "SomeFinalizersRemain", "message": format!("Some content in the namespace has finalizers remaining: {}", list.join(", ")), "lastTransitionTime": t})
    };
    json!([content, fin])
}
