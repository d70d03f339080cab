//! Schema admission of a written object: fields its kind does not declare refused (`fieldValidation=Strict`), warned about or dropped, then for a custom resource pruning, defaults and validation.

use serde_json::Value;

use super::{ApiError, FieldValidation, WriteOptions};
use crate::registry::{
    OBJECT_META_FIELDS, ResourceDef, builtin_empty_omitted, builtin_fields, default_crd,
};
use crate::validate;

/// The fields of `obj` its kind does not declare, as `spec.foo` paths, sorted: in `metadata`,
/// and those the schema of a custom resource (or the field list of a built-in kind) leaves out.
pub(super) fn unknown_fields(def: &ResourceDef, obj: &Value) -> Vec<String> {
    let mut unknown: Vec<String> = obj["metadata"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .filter(|k| !OBJECT_META_FIELDS.contains(&k.as_str()))
        .map(|k| format!("metadata.{k}"))
        .collect();
    match (&def.schema, builtin_fields(def)) {
        (Some(schema), _) => validate::unknown_fields(obj, schema, "", &mut unknown),
        (None, Some(fields)) => unknown.extend(
            obj.as_object()
                .into_iter()
                .flat_map(|m| m.keys())
                .filter(|k| {
                    !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                        && !fields.contains(&k.as_str())
                })
                .cloned(),
        ),
        (None, None) => {}
    }
    unknown.sort();
    unknown
}

/// Fields the API server leaves out when they are empty: in `metadata`, and in the built-in
/// kinds that declare them so.
const OMITTED_WHEN_EMPTY: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Drop what [`unknown_fields`] found (the schema's pruning does it for a custom resource), and
/// the empty fields the API server does not keep.
fn drop_unknown(def: &ResourceDef, obj: &mut Value) {
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.retain(|k, v| {
            OBJECT_META_FIELDS.contains(&k.as_str())
                && !(OMITTED_WHEN_EMPTY.contains(&k.as_str()) && is_empty(v))
        });
    }
    if let (Some(fields), Some(m)) = (builtin_empty_omitted(def), obj.as_object_mut()) {
        m.retain(|k, v| !(fields.contains(&k.as_str()) && is_empty(v)));
    }
    if def.schema.is_none()
        && let (Some(fields), Some(m)) = (builtin_fields(def), obj.as_object_mut())
    {
        m.retain(|k, _| {
            matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || fields.contains(&k.as_str())
        });
    }
}

/// Under `fieldValidation=Strict`, 400 for a body with unknown fields (as the API server's
/// decoder answers, before anything else).
pub(super) fn refuse_unknown(
    def: &ResourceDef,
    obj: &Value,
    opts: &WriteOptions,
) -> Result<(), ApiError> {
    if opts.field_validation != FieldValidation::Strict {
        return Ok(());
    }
    let unknown = unknown_fields(def, obj);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|u| format!("unknown field \"{u}\""))
        .collect();
    Err(ApiError::bad_request(format!(
        "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
        def.version,
        list.join(", "),
        kind = def.kind,
    )))
}

/// Admission of an object: unknown fields refused (`Strict`) or dropped (with a warning each
/// under `Warn`); for a custom resource then pruning, defaults and validation.
pub(super) fn admit(
    def: &ResourceDef,
    obj: &mut Value,
    old: Option<&Value>,
    name: &str,
    opts: &WriteOptions,
) -> Result<(), ApiError> {
    refuse_unknown(def, obj, opts)?;
    if opts.field_validation == FieldValidation::Warn {
        for u in unknown_fields(def, obj) {
            opts.caller.warn(format!("unknown field \"{u}\""));
        }
    }
    drop_unknown(def, obj);
    if def.plural == "customresourcedefinitions" {
        default_crd(obj);
    }
    let Some(schema) = &def.schema else {
        return Ok(());
    };
    validate::prune(obj, schema, true);
    validate::default(obj, schema);
    let causes = match &def.compiled {
        Some(c) => validate::validate(obj, old, c),
        None => validate::validate(obj, old, &validate::compile(schema)),
    };
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(def, name, causes))
    }
}
