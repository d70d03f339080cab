//! Deletes: one object (marked with `deletionTimestamp` while finalizers remain, else answered
//! with a `Success` Status; a namespace goes through its own lifecycle) and `deletecollection`
//! with selectors.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::read::selected;
use super::{ApiError, Request, WriteOptions, get_obj, json_response, with_type};
use crate::admission::Caller;
use crate::registry::ResourceDef;
use crate::store::Store;
use crate::{admission, namespace, now};

/// `DELETE` of one object.
pub(super) fn delete_request(req: &Request, opts: &WriteOptions) -> Result<Response, ApiError> {
    let t = req.target;
    let mut store = req.shared.store.lock();
    let out = delete(&mut store, &t.def, t.ns(), t.name(), &opts.caller)?;
    if store.get(&t.def, t.ns(), t.name()).is_some() {
        // Still there (held by finalizers, or a dry run): the object.
        return Ok(json_response(StatusCode::OK, &with_type(&t.def, &out)));
    }
    // Gone: a Status that names it, as the API server answers.
    let mut details =
        json!({"name": t.name(), "kind": t.def.plural, "uid": out["metadata"]["uid"]});
    if !t.def.group.is_empty() {
        details["group"] = json!(t.def.group);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
    ))
}

/// `DELETE` of a collection: every object the selectors match.
pub(super) fn delete_collection(req: &Request, opts: &WriteOptions) -> Result<Response, ApiError> {
    let t = req.target;
    let mut store = req.shared.store.lock();
    let names: Vec<(String, String)> = store
        .objects
        .get(&t.def.key())
        .map(|o| {
            o.iter()
                .filter(|((n, _), obj)| {
                    (t.namespace.is_none() || n == t.ns()) && selected(obj, req.query)
                })
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    for (n, name) in names {
        delete(&mut store, &t.def, &n, &name, &opts.caller)?;
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    ))
}

/// What goes with a deleted object: a CRD's kinds stop being served and their objects go.
pub(super) fn after_delete(store: &mut Store, def: &ResourceDef, obj: &Value) {
    if def.plural == "customresourcedefinitions" {
        let group = obj["spec"]["group"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let plural = obj["spec"]["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        store
            .resources
            .retain(|r| !(r.group == group && r.plural == plural));
        store.objects.remove(&(group, plural));
    }
}

/// Delete `ns`/`name` of `def` (also the namespace controller's path for a namespace's
/// content).
pub(super) fn delete(
    store: &mut Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    caller: &Caller,
) -> Result<Value, ApiError> {
    if def.group.is_empty() && def.plural == "namespaces" {
        return namespace::delete_namespace(store, def, name, caller, |store, d, n| {
            let _ = delete(store, d, name, n, caller);
        });
    }
    let old = get_obj(store, def, ns, name)?;
    admission::validate(store, def, "DELETE", None, None, Some(&old), caller)?;
    let dry_run = caller.dry_run;
    let has_finalizers = old["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if old["metadata"]["deletionTimestamp"].is_string() || dry_run {
            return Ok(old.as_ref().clone());
        }
        let mut new = old.as_ref().clone();
        new["metadata"]["deletionTimestamp"] = json!(now());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if let Some(g) = old["metadata"]["generation"].as_i64() {
            new["metadata"]["generation"] = json!(g + 1);
        }
        let rv = store.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.put(rv, def, ns, name, "MODIFIED", Arc::new(new.clone()));
        return Ok(new);
    }
    if dry_run {
        return Ok(old.as_ref().clone());
    }
    let rv = store.next_rv();
    let mut gone = old.as_ref().clone();
    gone["metadata"]["resourceVersion"] = json!(rv.to_string());
    store.take(rv, def, ns, name, Arc::new(gone.clone()));
    after_delete(store, def, &gone);
    namespace::content_changed(store, ns);
    Ok(gone)
}
