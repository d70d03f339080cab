//! `metadata.managedFields`: each manager's entry with its field set in the FieldsV1 form
//! (`f:name` for a field, `k:{...}` for a list-map entry, `.` for the entry itself).

use serde_json::{Value, json};

use super::{Elem, FieldSet, Path};

/// A managedFields entry.
#[derive(Clone, Debug)]
pub struct Manager {
    /// Manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `status` or "".
    pub subresource: String,
    /// apiVersion of the write.
    pub api_version: String,
    /// Time of the last change.
    pub time: String,
    /// Owned fields.
    pub fields: FieldSet,
}

fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = json!({});
    for path in set {
        let mut cur = &mut root;
        for (i, e) in path.iter().enumerate() {
            let k = match e {
                Elem::F(f) => format!("f:{f}"),
                Elem::K(key) => format!("k:{key}"),
            };
            let Some(obj) = cur.as_object_mut() else {
                break;
            };
            cur = obj.entry(k).or_insert_with(|| json!({}));
            if i == path.len() - 1
                && matches!(e, Elem::K(_))
                && let Some(o) = cur.as_object_mut()
            {
                o.insert(".".into(), json!({}));
            }
        }
    }
    // A field owned itself as well as some of its children (a map an update added) says so
    // with `.`.
    for path in set.iter().filter(|p| matches!(p.last(), Some(Elem::F(_)))) {
        let mut cur = Some(&mut root);
        for e in path {
            let k = match e {
                Elem::F(f) => format!("f:{f}"),
                Elem::K(key) => format!("k:{key}"),
            };
            cur = cur.and_then(|c| c.get_mut(&k));
        }
        if let Some(o) = cur.and_then(Value::as_object_mut)
            && !o.is_empty()
        {
            o.insert(".".into(), json!({}));
        }
    }
    root
}

fn from_fields_v1(v: &Value, path: &mut Path, out: &mut FieldSet) {
    let Some(map) = v.as_object() else { return };
    if (map.is_empty() || map.contains_key(".")) && !path.is_empty() {
        out.insert(path.clone());
    }
    for (k, child) in map {
        let elem = if let Some(f) = k.strip_prefix("f:") {
            Elem::F(f.to_string())
        } else if let Some(key) = k.strip_prefix("k:") {
            Elem::K(key.to_string())
        } else {
            continue;
        };
        path.push(elem);
        from_fields_v1(child, path, out);
        path.pop();
    }
}

/// Parse `metadata.managedFields`.
pub fn managers(obj: &Value) -> Vec<Manager> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let mut set = FieldSet::new();
                    from_fields_v1(&m["fieldsV1"], &mut Vec::new(), &mut set);
                    Manager {
                        manager: m["manager"].as_str().unwrap_or_default().to_string(),
                        operation: m["operation"].as_str().unwrap_or("Update").to_string(),
                        subresource: m["subresource"].as_str().unwrap_or_default().to_string(),
                        api_version: m["apiVersion"].as_str().unwrap_or_default().to_string(),
                        time: m["time"].as_str().unwrap_or_default().to_string(),
                        fields: set,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Write `managers` into `metadata.managedFields`.
pub fn set_managers(obj: &mut Value, managers: &[Manager]) {
    let list: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    if obj.get("metadata").is_none()
        && let Some(o) = obj.as_object_mut()
    {
        o.insert("metadata".into(), json!({}));
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}
