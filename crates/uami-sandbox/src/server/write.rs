//! Writes with admission: `create` (generated names, namespaces that must exist and not be
//! terminating, CRDs that start serving their kinds), `update`, and the commit every update,
//! patch and apply ends in (status subresource rules, schema admission, ValidatingAdmissionPolicy,
//! generation, no-op detection, finalization). A CRD whose CEL rules are over the cost budget is
//! refused on create and update. Also the create-only reviews ([`super::token`] answers
//! TokenRequest, [`super::admit`] holds schema admission).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::admit::{admit, refuse_unknown};
use super::delete::after_delete;
use super::{
    ApiError, FieldValidation, Request, Target, WriteOptions, get_obj, json_response, parse_body,
    with_type, writer,
};
use crate::UserInfo;
use crate::registry::{ResourceDef, from_crd, has_generation, normalize_secret};
use crate::store::Store;
use crate::{admission, authz, cel_cost, events, namespace, now, ssa, validate};

/// `POST` to a collection: the reviews answered about the caller, or a create.
pub(super) fn create_request(req: &Request, opts: &WriteOptions) -> Result<Response, ApiError> {
    let t = req.target;
    match t.def.plural.as_str() {
        "selfsubjectreviews" => {
            let mut out = parse_body(req.body, req.headers)?;
            out["status"] = json!({"userInfo": opts.caller.user.to_json()});
            Ok(json_response(StatusCode::CREATED, &with_type(&t.def, &out)))
        }
        "selfsubjectaccessreviews" => {
            let obj = parse_body(req.body, req.headers)?;
            let store = req.shared.store.lock();
            let out = authz::review(&store, &opts.caller.user, obj);
            Ok(json_response(StatusCode::CREATED, &with_type(&t.def, &out)))
        }
        _ => {
            let obj = parse_body(req.body, req.headers)?;
            let mut store = req.shared.store.lock();
            let (status, out) = create(&mut store, &t.def, t.namespace.as_deref(), obj, opts)?;
            Ok(json_response(status, &with_type(&t.def, &out)))
        }
    }
}

/// `PUT` of one object (or its status).
pub(super) fn update_request(req: &Request, opts: &WriteOptions) -> Result<Response, ApiError> {
    let obj = parse_body(req.body, req.headers)?;
    let mut store = req.shared.store.lock();
    let out = update(&mut store, req.target, obj, opts)?;
    Ok(json_response(
        StatusCode::OK,
        &with_type(&req.target.def, &out),
    ))
}

/// Create or replace objects from outside HTTP (the library API).
pub fn create_object(store: &mut Store, obj: Value) -> Result<Value, String> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let def = store
        .resources
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
        .cloned()
        .ok_or_else(|| format!("no resource serves {api_version} {kind}"))?;
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    let opts = WriteOptions {
        manager: "sandbox".into(),
        field_validation: FieldValidation::Ignore,
        caller: admission::Caller::new(UserInfo::admin("system:admin"), false),
    };
    create(store, &def, ns.as_deref(), obj, &opts)
        .map(|(_, v)| v)
        .map_err(|e| e.message)
}

fn random_suffix() -> String {
    use rand::Rng;
    let chars = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| chars[rng.random_range(0..chars.len())] as char)
        .collect()
}

fn spec_part(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    c
}

/// The namespace a create lands in: the request's, else the body's, else `default`; it must
/// exist and not be terminating ("" for a cluster-scoped kind).
fn namespace_of(
    store: &Store,
    def: &ResourceDef,
    ns: Option<&str>,
    obj: &Value,
) -> Result<String, ApiError> {
    if !def.namespaced {
        return Ok(String::new());
    }
    let body_ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    let ns = ns
        .map(str::to_string)
        .or(body_ns.clone())
        .unwrap_or_else(|| "default".into());
    if body_ns.is_some_and(|b| b != ns) {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if !store.namespace_exists(&ns) {
        let mut e = ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"));
        e.details = Some(json!({"name": ns, "kind": "namespaces"}));
        return Err(e);
    }
    if namespace::terminating(store, &ns) {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        return Err(namespace::forbidden(def, name, &ns));
    }
    Ok(ns)
}

/// A new CustomResourceDefinition: the kinds it declares are served from now on (not on a
/// dry run), and its status says its names are accepted.
fn establish_crd(
    store: &mut Store,
    def: &ResourceDef,
    obj: &mut Value,
    name: &str,
    dry_run: bool,
) -> Result<(), ApiError> {
    refuse_over_budget(def, obj, None, name)?;
    let defs = crd_defs(def, name, obj)?;
    if dry_run {
        return Ok(());
    }
    let accepted = obj["spec"]["names"].clone();
    obj["status"] = json!({
        "acceptedNames": accepted,
        "storedVersions": defs.iter().map(|d| d.version.clone()).collect::<Vec<_>>(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
        ],
    });
    serve(store, defs);
    Ok(())
}

/// The kinds the CRD `obj` defines, or why it is invalid.
fn crd_defs(def: &ResourceDef, name: &str, obj: &Value) -> Result<Vec<ResourceDef>, ApiError> {
    from_crd(obj).map_err(|m| ApiError::invalid_field(def, name, "FieldValueInvalid", "spec", m))
}

/// Serve the kind that `defs` define from now on, in place of what it was served as before.
fn serve(store: &mut Store, defs: Vec<ResourceDef>) {
    let Some(first) = defs.first() else { return };
    let (group, plural) = (first.group.clone(), first.plural.clone());
    store
        .resources
        .retain(|r| !(r.group == group && r.plural == plural));
    store.resources.extend(defs);
}

/// A CRD whose validation rules exceed the CEL cost budget is refused, as kube-apiserver refuses
/// it (`old` is the CRD an update replaces).
fn refuse_over_budget(
    def: &ResourceDef,
    crd: &Value,
    old: Option<&Value>,
    name: &str,
) -> Result<(), ApiError> {
    let causes = cel_cost::check_crd(crd, old);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(def, name, causes))
    }
}

/// Create `obj` (in namespace `ns`, else the body's) with admission, and store it unless
/// `opts.caller.dry_run`.
pub(super) fn create(
    store: &mut Store,
    def: &ResourceDef,
    ns: Option<&str>,
    obj: Value,
    opts: &WriteOptions,
) -> Result<(StatusCode, Value), ApiError> {
    refuse_unknown(def, &obj, opts)?;
    let mut obj = events::to_storage(def, obj);
    let ns = namespace_of(store, def, ns, &obj)?;
    let mut name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        match obj["metadata"]["generateName"].as_str() {
            Some(prefix) => name = format!("{prefix}{}", random_suffix()),
            None => {
                return Err(ApiError::invalid_field(
                    def,
                    "",
                    "FieldValueRequired",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
        }
    }
    obj["apiVersion"] = json!(def.api_version());
    obj["kind"] = json!(def.kind);
    admit(def, &mut obj, None, &name, opts)?;
    // An object that is not valid is refused as such, whether or not its name is taken.
    if store.get(def, &ns, &name).is_some() {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", def.qualified()),
        )
        .about(def, &name));
    }
    if def.plural == "customresourcedefinitions" {
        establish_crd(store, def, &mut obj, &name, opts.caller.dry_run)?;
    }
    if def.group.is_empty() && def.plural == "namespaces" {
        namespace::on_create(&mut obj, &name);
    }
    if def.group.is_empty() && def.plural == "secrets" {
        normalize_secret(&mut obj);
    }
    if def.status_subresource
        && def.plural != "customresourcedefinitions"
        && def.plural != "namespaces"
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    let meta = obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    meta.insert("name".into(), json!(name));
    if def.namespaced {
        meta.insert("namespace".into(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));
    if has_generation(def) {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    meta.remove("deletionTimestamp");
    meta.remove("managedFields");
    admission::validate(store, def, "CREATE", None, Some(&obj), None, &opts.caller)?;
    ssa::record_update(None, &mut obj, &writer(def, &opts.manager, None));
    if opts.caller.dry_run {
        return Ok((StatusCode::CREATED, obj));
    }
    let rv = store.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    store.put(rv, def, &ns, &name, "ADDED", Arc::new(obj.clone()));
    Ok((StatusCode::CREATED, obj))
}

/// Set `key` of `obj` to `value`, or remove it when `value` is `None`.
fn set_or_remove(obj: &mut Value, key: &str, value: Option<Value>) {
    match value {
        Some(v) => obj[key] = v,
        None => {
            if let Some(m) = obj.as_object_mut() {
                m.remove(key);
            }
        }
    }
}

/// What a write cannot change: status through the main resource and everything else through
/// `/status` (for kinds with the status subresource), identity and deletion metadata.
fn keep_server_fields(def: &ResourceDef, old: &Value, new: &mut Value, subresource: Option<&str>) {
    if def.status_subresource && def.plural != "customresourcedefinitions" {
        if subresource == Some("status") {
            // Only status changes through /status.
            let status = new.get("status").cloned();
            let mf = new["metadata"]["managedFields"].clone();
            *new = old.clone();
            set_or_remove(new, "status", status);
            new["metadata"]["managedFields"] = mf;
        } else {
            set_or_remove(new, "status", old.get("status").cloned());
        }
    }
    new["apiVersion"] = json!(def.api_version());
    new["kind"] = json!(def.kind);
    for k in [
        "uid",
        "creationTimestamp",
        "name",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        set_or_remove(&mut new["metadata"], k, old["metadata"].get(k).cloned());
    }
    if new["metadata"]["managedFields"].is_null()
        && let Some(m) = new["metadata"].as_object_mut()
    {
        m.remove("managedFields");
    }
}

/// Store `new` in place of `old` (the result of an update, patch or apply), with the status
/// subresource rules, admission, generation, no-op detection and finalization.
pub(super) fn commit(
    store: &mut Store,
    t: &Target,
    old: &Value,
    mut new: Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let (def, ns, name, subresource) = (&t.def, t.ns(), t.name(), t.subresource.as_deref());
    keep_server_fields(def, old, &mut new, subresource);
    admit(def, &mut new, Some(old), name, opts)?;
    if def.plural == "customresourcedefinitions" && subresource.is_none() {
        refuse_over_budget(def, &new, Some(old), name)?;
    }
    if def.group.is_empty() && def.plural == "secrets" {
        normalize_secret(&mut new);
    }
    admission::validate(
        store,
        def,
        "UPDATE",
        subresource,
        Some(&new),
        Some(old),
        &opts.caller,
    )?;
    if old["metadata"]["deletionTimestamp"].is_string() {
        let old_f: Vec<Value> = old["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let new_f: Vec<Value> = new["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let added: Vec<String> = new_f
            .iter()
            .filter(|f| !old_f.contains(f))
            .map(|f| format!("{:?}", f.as_str().unwrap_or_default()))
            .collect();
        if !added.is_empty() {
            // The API server checks this twice (object metadata, then the kind's own update
            // validation), so the cause comes twice.
            let cause = validate::Cause {
                reason: "FieldValueForbidden".into(),
                field: "metadata.finalizers".into(),
                message: format!(
                    "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    added.join(", ")
                ),
            };
            return Err(ApiError::invalid(def, name, vec![cause.clone(), cause]));
        }
    }
    if has_generation(def) {
        let old_gen = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let generation = if spec_part(old) != spec_part(&new) {
            old_gen + 1
        } else {
            old_gen
        };
        new["metadata"]["generation"] = json!(generation);
    } else if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("generation");
    }
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    // No-op: nothing but managedFields times changed.
    let strip = |v: &Value| {
        let mut c = v.clone();
        if let Some(mf) = c["metadata"]["managedFields"].as_array_mut() {
            for m in mf {
                if let Some(o) = m.as_object_mut() {
                    o.remove("time");
                }
            }
        }
        c
    };
    if strip(old) == strip(&new) {
        return Ok(old.clone());
    }
    if opts.caller.dry_run {
        return Ok(new);
    }
    // A CRD's new schema (or versions, names) is what its kind is served with from now on;
    // objects already stored stay as they were written.
    if def.plural == "customresourcedefinitions"
        && subresource.is_none()
        && new["metadata"]["deletionTimestamp"].is_null()
    {
        let defs = crd_defs(def, name, &new)?;
        serve(store, defs);
    }
    let rv = store.next_rv();
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    let finalized = new["metadata"]["deletionTimestamp"].is_string()
        && new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
    let arc = Arc::new(new.clone());
    if finalized {
        store.take(rv, def, ns, name, arc);
        after_delete(store, def, &new);
        namespace::content_changed(store, ns);
    } else {
        store.put(rv, def, ns, name, "MODIFIED", arc);
    }
    Ok(new)
}

/// 422 for an update without a resourceVersion of a kind that needs one.
fn resource_version_required(def: &ResourceDef, name: &str) -> ApiError {
    let message = "Invalid value: 0: must be specified for an update";
    ApiError::new(
        422,
        "Invalid",
        format!(
            "{} \"{name}\" is invalid: metadata.resourceVersion: {message}",
            def.qualified()
        ),
    )
    .about_field(
        def,
        name,
        "FieldValueInvalid",
        "metadata.resourceVersion",
        message,
    )
}

fn update(
    store: &mut Store,
    t: &Target,
    obj: Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let (def, name) = (&t.def, t.name());
    refuse_unknown(def, &obj, opts)?;
    let old = get_obj(store, def, t.ns(), name)?;
    let mut obj = events::to_storage(def, obj);
    if let Some(n) = obj["metadata"]["name"].as_str().filter(|n| *n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    match obj["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            return Err(ApiError::modified(def, name).about(def, name));
        }
        Some(rv) if !rv.is_empty() => {}
        // Custom resources and CRDs are never updated unconditionally.
        _ if def.crd.is_some() || def.plural == "customresourcedefinitions" => {
            return Err(resource_version_required(def, name));
        }
        _ => {}
    }
    if obj["metadata"]["managedFields"].is_null() {
        obj["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
    }
    let mut merged = obj;
    ssa::record_update(
        Some(&old),
        &mut merged,
        &writer(def, &opts.manager, t.subresource.as_deref()),
    );
    commit(store, t, &old, merged, opts)
}
