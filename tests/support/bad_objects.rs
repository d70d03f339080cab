//! The apply-time validation table, `tests/api_validation/bad_objects.yaml`: each entry names a
//! valid object of a kind, the edits that make it bad (and for an update, the valid old object),
//! and the field the refusal names. `api_validation.rs` checks it against the CRD schemas,
//! `sandbox_differential` against the sandbox and the real API server.
#![allow(dead_code)]

use serde::Deserialize;
use serde_json::Value;

/// One entry of the table.
#[derive(Deserialize)]
pub struct BadObject {
    pub name: String,
    /// The kind of the object: `identity`, `binding`, `grant` or `policy`.
    pub object: String,
    /// `[path]` (remove) or `[path, value]` (replace), applied in order.
    #[serde(default)]
    pub object_edits: Vec<Vec<Value>>,
    /// For an update: the kind of the old object.
    pub old: Option<String>,
    #[serde(default)]
    pub old_edits: Vec<Vec<Value>>,
    /// The field the refusal names.
    pub field: String,
}

/// The entries of the table.
pub fn table() -> Vec<BadObject> {
    serde_yaml_ng::from_str(include_str!("../api_validation/bad_objects.yaml")).unwrap()
}

/// `base` with the JSON value at the dotted `path` replaced (or removed when `value` is None).
pub fn with(mut base: Value, path: &str, value: Option<Value>) -> Value {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = &mut base;
    for part in &parts[..parts.len() - 1] {
        cur = match part.parse::<usize>() {
            Ok(i) => &mut cur[i],
            Err(_) => &mut cur[*part],
        };
    }
    let last = parts[parts.len() - 1];
    match value {
        Some(v) => cur[last] = v,
        None => {
            cur.as_object_mut().unwrap().remove(last);
        }
    }
    base
}

/// `base` with `edits` (of [`BadObject`]) applied in order.
pub fn edited(base: Value, edits: &[Vec<Value>]) -> Value {
    edits.iter().fold(base, |object, edit| {
        with(object, edit[0].as_str().unwrap(), edit.get(1).cloned())
    })
}
