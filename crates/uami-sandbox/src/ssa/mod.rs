//! Server-side apply and field ownership: field sets in the FieldsV1 form, the merge of an
//! applied configuration (list-maps merged by their keys, other lists atomic), conflicts between
//! managers, and `metadata.managedFields` bookkeeping for applies and plain writes.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

mod managed_fields;

pub use managed_fields::{Manager, managers, set_managers};

/// One element of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    /// An object field.
    F(String),
    /// A list-map entry, by its keys (canonical JSON object).
    K(String),
}

/// A field path.
pub type Path = Vec<Elem>;

/// A set of owned paths; a path to a list-map entry means the entry itself (".").
pub type FieldSet = BTreeSet<Path>;

const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

fn child_schema<'a>(schema: Option<&'a Value>, field: &str) -> Option<&'a Value> {
    let s = schema?;
    s["properties"]
        .get(field)
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

/// The keys of a list-map schema.
fn map_keys(schema: Option<&Value>) -> Option<Vec<String>> {
    let s = schema?;
    if s["x-kubernetes-list-type"] != json!("map") {
        return None;
    }
    Some(
        s["x-kubernetes-list-map-keys"]
            .as_array()?
            .iter()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
    )
}

fn key_of(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m).to_string()
}

/// The field set of `value` (an applied configuration or an object), below `path`.
pub fn fields(
    value: &Value,
    schema: Option<&Value>,
    path: &mut Path,
    out: &mut FieldSet,
    top: bool,
) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let metadata = is_metadata(path);
            for (k, v) in map.iter().filter(|(k, _)| is_owned(k, top, metadata)) {
                path.push(Elem::F(k.clone()));
                fields(v, child_schema(schema, k), path, out, false);
                path.pop();
            }
        }
        Value::Array(items) => match map_keys(schema) {
            Some(keys) => {
                let item_schema = schema.and_then(|s| s.get("items"));
                for item in items {
                    path.push(Elem::K(key_of(item, &keys)));
                    out.insert(path.clone());
                    fields(item, item_schema, path, out, false);
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// Whether `path` is the object's `metadata`.
fn is_metadata(path: &Path) -> bool {
    path.len() == 1 && path[0] == Elem::F("metadata".into())
}

/// Whether field `k` of an object has an owner: not `apiVersion` and `kind` at the top, nor the
/// fields of `metadata` nobody owns.
fn is_owned(k: &str, top: bool, metadata: bool) -> bool {
    !((top && matches!(k, "apiVersion" | "kind")) || (metadata && UNOWNED_META.contains(&k)))
}

/// The maps (objects with fields) in `value` below its top level, but `metadata` itself: what
/// an update that adds one owns as well as its fields.
fn map_nodes(value: &Value, schema: Option<&Value>, path: &mut Path, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let top = path.is_empty();
            let metadata = is_metadata(path);
            if !top && !metadata {
                out.insert(path.clone());
            }
            for (k, v) in map.iter().filter(|(k, _)| is_owned(k, top, metadata)) {
                path.push(Elem::F(k.clone()));
                map_nodes(v, child_schema(schema, k), path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            if let Some(keys) = map_keys(schema) {
                let item_schema = schema.and_then(|s| s.get("items"));
                for item in items {
                    path.push(Elem::K(key_of(item, &keys)));
                    // The entry itself is owned as an entry; only the maps inside it count.
                    if let Some(m) = item.as_object() {
                        for (k, v) in m {
                            path.push(Elem::F(k.clone()));
                            map_nodes(
                                v,
                                item_schema.and_then(|s| child_schema(Some(s), k)),
                                path,
                                out,
                            );
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

/// The value at `path`, if present.
pub fn get<'a>(value: &'a Value, path: &[Elem], schema: Option<&Value>) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(value);
    };
    match first {
        Elem::F(k) => get(value.get(k)?, rest, child_schema(schema, k)),
        Elem::K(key) => {
            let keys = map_keys(schema)?;
            let item = value
                .as_array()?
                .iter()
                .find(|i| key_of(i, &keys) == *key)?;
            get(item, rest, schema.and_then(|s| s.get("items")))
        }
    }
}

/// Remove the value at `path`.
pub fn remove(value: &mut Value, path: &[Elem], schema: Option<&Value>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match first {
        Elem::F(k) => {
            if rest.is_empty() {
                if let Some(m) = value.as_object_mut() {
                    m.remove(k);
                }
            } else if let Some(child) = value.get_mut(k) {
                remove(child, rest, child_schema(schema, k));
                // An object emptied by removing owned fields goes too.
                if child.as_object().is_some_and(|m| m.is_empty())
                    && let Some(m) = value.as_object_mut()
                {
                    m.remove(k);
                }
            }
        }
        Elem::K(key) => {
            let Some(keys) = map_keys(schema) else {
                return;
            };
            let item_schema = schema.and_then(|s| s.get("items"));
            if let Some(items) = value.as_array_mut() {
                if rest.is_empty() {
                    items.retain(|i| key_of(i, &keys) != *key);
                } else if let Some(pos) = items.iter().position(|i| key_of(i, &keys) == *key) {
                    remove(&mut items[pos], rest, item_schema);
                    // An entry emptied by removing owned fields goes too.
                    if items[pos].as_object().is_some_and(|m| m.is_empty()) {
                        items.remove(pos);
                    }
                }
            }
        }
    }
}

/// Merge `intent` into `target`: objects field by field, list-maps entry by entry, the rest
/// replaced.
pub fn merge(target: &mut Value, intent: &Value, schema: Option<&Value>) {
    if let (Some(t), Value::Object(i)) = (target.as_object_mut(), intent) {
        for (k, v) in i {
            let s = child_schema(schema, k);
            match t.get_mut(k) {
                Some(existing) => merge(existing, v, s),
                None => {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        return;
    }
    if let (Some(keys), Some(t), Some(i)) =
        (map_keys(schema), target.as_array_mut(), intent.as_array())
    {
        let item_schema = schema.and_then(|s| s.get("items"));
        for item in i {
            let key = key_of(item, &keys);
            match t.iter_mut().find(|x| key_of(x, &keys) == key) {
                Some(existing) => merge(existing, item, item_schema),
                None => t.push(item.clone()),
            }
        }
        return;
    }
    *target = intent.clone();
}

fn is_prefix(a: &[Elem], b: &[Elem]) -> bool {
    a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// A field another manager owns with a different value.
#[derive(Clone, Debug)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// Its operation (`Apply` or `Update`).
    pub operation: String,
    /// The API version of its entry.
    pub api_version: String,
    /// The subresource of its entry (`status` or "").
    pub subresource: String,
    /// The field, as `.status.conditions[type="Ready"].status`.
    pub field: String,
}

/// Render a path as the apiserver does in conflict messages.
pub fn render(path: &[Elem]) -> String {
    let mut s = String::new();
    for e in path {
        match e {
            Elem::F(f) => {
                s.push('.');
                s.push_str(f);
            }
            Elem::K(key) => {
                let v: Value = serde_json::from_str(key).unwrap_or(Value::Null);
                let parts: Vec<String> = v
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
        }
    }
    s
}

/// Who makes a change: the field manager, through which subresource and API version, when,
/// and the schema that says which lists are maps.
pub struct Writer<'a> {
    /// The object's schema (`None`: every list is atomic).
    pub schema: Option<&'a Value>,
    /// Field manager.
    pub manager: &'a str,
    /// `status` or "".
    pub subresource: &'a str,
    /// apiVersion of the write.
    pub api_version: String,
    /// Time of the write.
    pub time: String,
}

impl Writer<'_> {
    /// Its managedFields entry for `operation` (`Apply` or `Update`), owning `fields`.
    fn entry(&self, operation: &str, fields: FieldSet) -> Manager {
        Manager {
            manager: self.manager.to_string(),
            operation: operation.into(),
            subresource: self.subresource.to_string(),
            api_version: self.api_version.clone(),
            time: self.time.clone(),
            fields,
        }
    }
}

/// Server-side apply of `intent` by `writer` onto `live` (`None` when creating). Returns the new
/// object or the conflicts (when not forced).
pub fn apply(
    live: Option<&Value>,
    intent: &Value,
    writer: &Writer,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let (schema, manager, subresource) = (writer.schema, writer.manager, writer.subresource);
    let mut intent = intent.clone();
    // An apply to /status manages only status; to the main resource, everything but status
    // when status is a subresource (the caller strips it).
    if subresource == "status"
        && let Some(m) = intent.as_object_mut()
    {
        m.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "status" | "metadata"));
        if let Some(meta) = m.get_mut("metadata").and_then(|x| x.as_object_mut()) {
            meta.retain(|k, _| matches!(k.as_str(), "name" | "namespace"));
        }
    }
    let mut intent_set = FieldSet::new();
    fields(&intent, schema, &mut Vec::new(), &mut intent_set, true);
    let mut obj = live.cloned().unwrap_or_else(|| json!({}));
    let mut all = managers(&obj);
    // Conflicts: fields another manager owns, set here to a different value.
    let mut conflicts = Vec::new();
    for path in &intent_set {
        let mine = get(&intent, path, schema);
        let theirs = get(&obj, path, schema);
        if theirs.is_none() || theirs == mine || mine.is_some_and(|m| m.is_object()) {
            continue;
        }
        for m in &all {
            if (m.manager != manager || m.subresource != subresource) && m.fields.contains(path) {
                conflicts.push(Conflict {
                    manager: m.manager.clone(),
                    operation: m.operation.clone(),
                    api_version: m.api_version.clone(),
                    subresource: m.subresource.clone(),
                    field: render(path),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    if force {
        for m in all
            .iter_mut()
            .filter(|m| m.manager != manager || m.subresource != subresource)
        {
            // They lose the values forced to change; a list-map entry stays shared.
            m.fields.retain(|p| {
                let mine = get(&intent, p, schema);
                let differs = mine.is_some_and(|v| !v.is_object()) && mine != get(&obj, p, schema);
                !(intent_set.contains(p) && differs)
            });
        }
    }
    // Fields this manager owned before and no longer applies, owned by nobody else: removed.
    let previous: FieldSet = all
        .iter()
        .filter(|m| m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    let others: Vec<&Manager> = all
        .iter()
        .filter(|m| {
            !(m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
        })
        .collect();
    let mut dropped: Vec<&Path> = previous
        .iter()
        .filter(|p| !intent_set.contains(*p))
        .filter(|p| {
            !others
                .iter()
                .any(|o| o.fields.iter().any(|f| is_prefix(p, f)))
        })
        .collect();
    // Remove deepest first.
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        remove(&mut obj, p, schema);
    }
    merge(&mut obj, &intent, schema);
    let mut all: Vec<Manager> = all
        .into_iter()
        .filter(|m| {
            !(m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
        })
        .collect();
    all.push(writer.entry("Apply", intent_set));
    set_managers(&mut obj, &all);
    Ok(obj)
}

/// After a plain write (create, update, patch) by `writer`: it owns what it changed; fields
/// that no longer exist are owned by nobody.
pub fn record_update(old: Option<&Value>, new: &mut Value, writer: &Writer) {
    let (schema, manager, subresource) = (writer.schema, writer.manager, writer.subresource);
    let mut new_set = FieldSet::new();
    fields(new, schema, &mut Vec::new(), &mut new_set, true);
    let mut maps = FieldSet::new();
    map_nodes(new, schema, &mut Vec::new(), &mut maps);
    // What the write changed: the fields whose value differs, and the maps it added.
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| old.is_none_or(|o| get(o, p, schema) != get(new, p, schema)))
        .chain(
            maps.iter()
                .filter(|p| old.is_none_or(|o| get(o, p, schema).is_none_or(Value::is_null))),
        )
        .cloned()
        .collect();
    new_set.extend(maps);
    let mut all = old.map(managers).unwrap_or_default();
    for m in all.iter_mut() {
        m.fields.retain(|p| {
            new_set.contains(p)
                && !(changed.contains(p) && !(m.manager == manager && m.operation == "Update"))
        });
    }
    if !changed.is_empty() {
        match all.iter_mut().find(|m| {
            m.manager == manager && m.operation == "Update" && m.subresource == subresource
        }) {
            Some(m) => {
                m.fields.extend(changed);
                m.time = writer.time.clone();
            }
            None => all.push(writer.entry("Update", changed)),
        }
    }
    set_managers(new, &all);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"properties": {"status": {"properties": {
            "conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"], "items": {"properties": {"type": {}, "status": {}}}},
            "token": {"properties": {"expiresOn": {}}},
            "principalId": {}
        }}}})
    }

    /// `manager` writing through /status.
    fn by<'a>(schema: &'a Value, manager: &'a str) -> Writer<'a> {
        Writer {
            schema: Some(schema),
            manager,
            subresource: "status",
            api_version: "v".into(),
            time: "t".into(),
        }
    }

    #[test]
    fn two_managers_own_their_own_conditions() {
        let s = schema();
        let a = json!({"apiVersion": "v", "kind": "K", "status": {"conditions": [{"type": "Ready", "status": "True"}], "principalId": "p"}});
        let obj = apply(
            Some(&json!({"metadata": {"name": "x"}})),
            &a,
            &by(&s, "controller"),
            true,
        )
        .unwrap();
        let b = json!({"apiVersion": "v", "kind": "K", "status": {"conditions": [{"type": "TokenAcquired", "status": "True"}], "token": {"expiresOn": "t1"}}});
        let obj = apply(Some(&obj), &b, &by(&s, "agent"), true).unwrap();
        let conds = obj["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2, "{obj}");
        // The controller re-applies without principalId: only its own field goes.
        let a2 = json!({"apiVersion": "v", "kind": "K", "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let obj = apply(Some(&obj), &a2, &by(&s, "controller"), true).unwrap();
        assert!(obj["status"].get("principalId").is_none(), "{obj}");
        assert_eq!(obj["status"]["token"]["expiresOn"], "t1");
        let conds = obj["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 2);
        assert!(
            conds
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "False")
        );
        let ms = managers(&obj);
        assert_eq!(ms.len(), 2);
    }

    #[test]
    fn conflicts_without_force() {
        let s = schema();
        let a = json!({"status": {"principalId": "p"}});
        let obj = apply(Some(&json!({})), &a, &by(&s, "one"), false).unwrap();
        let b = json!({"status": {"principalId": "q"}});
        let err = apply(Some(&obj), &b, &by(&s, "two"), false).unwrap_err();
        assert_eq!(err[0].manager, "one");
        assert_eq!(err[0].field, ".status.principalId");
        let same = json!({"status": {"principalId": "p"}});
        assert!(
            apply(Some(&obj), &same, &by(&s, "two"), false).is_ok(),
            "equal values share ownership"
        );
    }
}
