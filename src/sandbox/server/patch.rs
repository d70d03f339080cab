//! Patches: server-side apply (`application/apply-patch+yaml`, which may create), JSON patch,
//! and merge patch (also for strategic merge on kinds without a schema), each ending in the
//! same commit as an update.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::write::{commit, create};
use super::{ApiError, Request, Target, WriteOptions, get_obj, json_response, with_type, writer};
use crate::sandbox::store::Store;
use crate::sandbox::{authz, events, ssa};

/// `PATCH` of one object (or its status).
pub(super) fn patch_request(req: &Request, opts: &WriteOptions) -> Result<Response, ApiError> {
    let ct = req
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut store = req.shared.store.lock();
    let (status, out) = if ct.starts_with("application/apply-patch") {
        apply(&mut store, req.target, req.body, req.query, opts)?
    } else {
        (
            StatusCode::OK,
            edit(&mut store, req.target, ct, req.body, opts)?,
        )
    };
    Ok(json_response(status, &with_type(&req.target.def, &out)))
}

/// Server-side apply by the request's `fieldManager`; creates the object when it does not
/// exist (which needs `create` as well as `patch`).
fn apply(
    store: &mut Store,
    t: &Target,
    body: &Bytes,
    q: &HashMap<String, String>,
    opts: &WriteOptions,
) -> Result<(StatusCode, Value), ApiError> {
    let (def, ns, name, subresource) = (&t.def, t.ns(), t.name(), t.subresource.as_deref());
    let existing = get_obj(store, def, ns, name).ok();
    // The field manager of the request is the one the query names (required here).
    if q.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return Err(ApiError::bad_request(
            "PATCH requests with apply content type require fieldManager",
        ));
    }
    let mut intent: Value = serde_yaml_ng::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !intent.is_object() {
        return Err(ApiError::bad_request(
            "the body of an apply patch must be an object",
        ));
    }
    if intent["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let force = q.get("force").is_some_and(|f| f == "true");
    if def.status_subresource
        && subresource.is_none()
        && def.plural != "customresourcedefinitions"
        && let Some(m) = intent.as_object_mut()
    {
        m.remove("status");
    }
    let w = writer(def, &opts.manager, subresource);
    let Some(old) = existing else {
        if subresource.is_some() {
            return Err(ApiError::not_found(def, name));
        }
        authz::authorize(
            store,
            &opts.caller.user,
            &authz::Attributes {
                verb: "create",
                group: &def.group,
                resource: &def.plural,
                subresource: "",
                namespace: ns,
                name: "",
            },
        )?;
        intent["metadata"]["name"] = json!(name);
        let applied = ssa::apply(None, &intent, &w, true)
            .map_err(|_| ApiError::new(500, "InternalError", "apply failed"))?;
        let mf = applied["metadata"]["managedFields"].clone();
        let namespace = Some(ns).filter(|_| def.namespaced);
        let (status, mut created) = create(store, def, namespace, applied, opts)?;
        // The applier owns what it applied (not an Update entry).
        created["metadata"]["managedFields"] = mf;
        if !opts.caller.dry_run {
            let real_ns = created["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(o) = store.objects.get_mut(&def.key()) {
                o.insert((real_ns, name.to_string()), Arc::new(created.clone()));
            }
        }
        return Ok((status, created));
    };
    let applied = ssa::apply(Some(&old), &intent, &w, force).map_err(conflict)?;
    Ok((StatusCode::OK, commit(store, t, &old, applied, opts)?))
}

/// 409 for an apply that would take fields other managers own.
fn conflict(conflicts: Vec<ssa::Conflict>) -> ApiError {
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
        .collect();
    let mut e = ApiError::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            lines.join("\n")
        ),
    );
    e.details = Some(
        json!({"causes": conflicts.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field})).collect::<Vec<_>>()}),
    );
    e
}

/// A JSON patch or a merge patch, applied to the object in the shape of the API it was sent to.
fn edit(
    store: &mut Store,
    t: &Target,
    ct: &str,
    body: &Bytes,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let (def, name) = (&t.def, t.name());
    let old = get_obj(store, def, t.ns(), name)?;
    let mut new = events::from_storage(def, &old);
    if ct.starts_with("application/json-patch+json") {
        let ops: Value = serde_json::from_slice(body).map_err(ApiError::unknown_format)?;
        // A `test` for null on a missing path passes, as in the apiserver.
        let ops: Vec<Value> = ops
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|op| {
                !(op["op"] == "test"
                    && op["value"].is_null()
                    && op["path"].as_str().and_then(|p| new.pointer(p)).is_none())
            })
            .collect();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
            .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
        json_patch::patch(&mut new, &patch).map_err(|e| {
            ApiError::new(
                422,
                "Invalid",
                format!("the server rejected our request due to an error in our request: {e}"),
            )
        })?;
    } else if ct.starts_with("application/merge-patch+json")
        || (ct.starts_with("application/strategic-merge-patch+json") && def.schema.is_none())
    {
        let p: Value = serde_json::from_slice(body).map_err(ApiError::unknown_format)?;
        json_patch::merge(&mut new, &p);
    } else {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {ct:?})"
            ),
        ));
    }
    let mut new = events::to_storage(def, new);
    if let Some(rv) = new["metadata"]["resourceVersion"].as_str()
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::modified(def, name));
    }
    let w = writer(def, &opts.manager, t.subresource.as_deref());
    ssa::record_update(Some(&old), &mut new, &w);
    commit(store, t, &old, new, opts)
}
