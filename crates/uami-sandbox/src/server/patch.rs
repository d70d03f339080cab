//! Patches: server-side apply (`application/apply-patch+yaml`, which may create), JSON patch,
//! and merge patch (also for strategic merge on kinds without a schema), each ending in the
//! same commit as an update.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::admit::unknown_fields;
use super::write::{commit, create};
use super::{
    ApiError, FieldValidation, Request, Target, WriteOptions, get_obj, json_response, with_type,
    writer,
};
use crate::store::Store;
use crate::{authz, events, ssa, validate};

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
        return Err(ApiError::invalid_kind(
            "PatchOptions",
            "meta.k8s.io",
            "",
            vec![validate::Cause::new(
                "FieldValueRequired",
                "fieldManager",
                "Required value: is required for apply patch",
            )],
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
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            intent["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    // The applied configuration must fit the schema: a field it does not declare fails to
    // make the typed patch (500, as the API server answers).
    let unknown: Vec<String> = unknown_fields(def, &intent)
        .into_iter()
        .filter(|u| !u.starts_with("metadata."))
        .collect();
    if !unknown.is_empty() {
        let errors: Vec<String> = unknown
            .iter()
            .map(|u| format!(".{u}: field not declared in schema"))
            .collect();
        let errors = match errors.as_slice() {
            [one] => one.clone(),
            more => format!("errors:\n  {}", more.join("\n  ")),
        };
        return Err(ApiError::new(
            500,
            "",
            format!(
                "failed to create typed patch object ({}/{}; {}/{}, Kind={}): {errors}",
                intent["metadata"]["namespace"].as_str().unwrap_or_default(),
                intent["metadata"]["name"].as_str().unwrap_or_default(),
                def.group,
                def.version,
                def.kind
            ),
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

/// A manager as a conflict names it: with its subresource, and an updater with the API version
/// it wrote.
fn conflict_manager(c: &ssa::Conflict) -> String {
    let mut s = format!("{:?}", c.manager);
    if !c.subresource.is_empty() {
        s.push_str(&format!(" with subresource {:?}", c.subresource));
    }
    if c.operation == "Update" {
        s.push_str(&format!(" using {}", c.api_version));
    }
    s
}

/// 409 for an apply that would take fields other managers own: one cause per field, and a
/// message that lists the fields by manager.
fn conflict(conflicts: Vec<ssa::Conflict>) -> ApiError {
    let message = match conflicts.as_slice() {
        [c] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflict_manager(c),
            c.field
        ),
        _ => {
            let mut managers: Vec<(&str, &str, String)> = conflicts
                .iter()
                .map(|c| {
                    (
                        c.manager.as_str(),
                        c.operation.as_str(),
                        conflict_manager(c),
                    )
                })
                .collect();
            managers.sort();
            managers.dedup();
            let mut lines = Vec::new();
            for (_, _, shown) in &managers {
                lines.push(format!("conflicts with {shown}:"));
                for c in conflicts.iter().filter(|c| conflict_manager(c) == *shown) {
                    lines.push(format!("- {}", c.field));
                }
            }
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                lines.join("\n")
            )
        }
    };
    let mut e = ApiError::new(409, "Conflict", message);
    e.details = Some(
        json!({"causes": conflicts.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", conflict_manager(c)), "field": c.field})).collect::<Vec<_>>()}),
    );
    e
}

/// 400 for a patch body of the wrong JSON type (`go_type` is what the API server decodes it
/// into, as its message names it).
fn undecodable_patch(body: &Value, go_type: &str) -> ApiError {
    let found = match body {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Null => "null",
    };
    ApiError::bad_request(format!(
        "error decoding patch: json: cannot unmarshal {found} into Go value of type {go_type}"
    ))
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
        let Value::Array(ops) = ops else {
            return Err(undecodable_patch(&ops, "[]handlers.jsonPatchOp"));
        };
        // A `test` for null of a missing key passes when the object holding it exists, as in
        // the API server.
        let ops: Vec<Value> = ops
            .into_iter()
            .filter(|op| {
                let path = op["path"].as_str().unwrap_or_default();
                let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                !(op["op"] == "test"
                    && op["value"].is_null()
                    && new.pointer(path).is_none()
                    && new
                        .pointer(parent)
                        .is_some_and(|p| p.is_object() || p.is_array()))
            })
            .collect();
        // An operation that is not one or does not apply: the API server says no more.
        let rejected = || {
            let mut e = ApiError::new(
                422,
                "Invalid",
                "the server rejected our request due to an error in our request",
            );
            e.details = Some(json!({}));
            e
        };
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops)).map_err(|_| rejected())?;
        json_patch::patch(&mut new, &patch).map_err(|_| rejected())?;
    } else if ct.starts_with("application/merge-patch+json")
        || (ct.starts_with("application/strategic-merge-patch+json") && def.schema.is_none())
    {
        let p: Value = serde_json::from_slice(body).map_err(ApiError::unknown_format)?;
        if !p.is_object() {
            return Err(undecodable_patch(&p, "map[string]interface {}"));
        }
        json_patch::merge(&mut new, &p);
    } else {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ));
    }
    if opts.field_validation == FieldValidation::Strict {
        let unknown = unknown_fields(def, &new);
        if !unknown.is_empty() {
            // As the API server words it: the patched object, then the fields.
            let list: Vec<String> = unknown
                .iter()
                .map(|u| format!("unknown field \"{u}\""))
                .collect();
            let message = format!(
                "Invalid value: {:?}: strict decoding error: {}",
                new.to_string(),
                list.join(", ")
            );
            let cause = validate::Cause::new("FieldValueInvalid", "patch", message);
            return Err(ApiError::invalid_kind("", "", "", vec![cause]));
        }
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
