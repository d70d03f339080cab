//! Events: core `v1` Event and `events.k8s.io/v1` Event are one store, as on the API server.
//! Objects are stored in the `events.k8s.io/v1` shape; the core API converts on the way in and
//! out (`involvedObject` is `regarding`, `message` is `note`, `source` is `deprecatedSource`,
//! `firstTimestamp`/`lastTimestamp`/`count` are the `deprecated*` fields, `reportingComponent`
//! is `reportingController`), so `kubectl describe` and `kubectl get events` (core) show what a
//! controller recorded through `events.k8s.io`, and the other way round.

use serde_json::{Map, Value, json};

use super::registry::ResourceDef;
use super::table::age;

/// The group both Event APIs are stored under.
pub const STORAGE_GROUP: &str = "events.k8s.io";

/// Whether `def` is one of the two Event APIs.
pub fn is_event(def: &ResourceDef) -> bool {
    def.plural == "events" && (def.group.is_empty() || def.group == STORAGE_GROUP)
}

/// Whether `def` is the core `v1` Event API (the one that converts).
pub fn is_core(def: &ResourceDef) -> bool {
    def.plural == "events" && def.group.is_empty()
}

/// (core field, events.k8s.io field) pairs that only change name.
const RENAMED: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(obj: &Value, from_core: bool) -> Value {
    let Some(m) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let renamed = RENAMED.iter().find_map(|(core, events)| {
            if from_core && k == core {
                Some(*events)
            } else if !from_core && k == events {
                Some(*core)
            } else {
                None
            }
        });
        if v.is_null() {
            continue;
        }
        out.insert(renamed.unwrap_or(k).to_string(), v.clone());
    }
    Value::Object(out)
}

/// A core `v1` Event in the stored (`events.k8s.io/v1`) shape; other kinds unchanged.
pub fn to_storage(def: &ResourceDef, obj: Value) -> Value {
    if !is_core(def) {
        return obj;
    }
    let mut out = rename(&obj, true);
    out["apiVersion"] = json!(format!("{STORAGE_GROUP}/v1"));
    out
}

/// A stored Event in the shape of `def`'s API; other kinds unchanged.
pub fn from_storage(def: &ResourceDef, obj: &Value) -> Value {
    if !is_core(def) {
        return obj.clone();
    }
    let mut out = rename(obj, false);
    out["apiVersion"] = json!("v1");
    out
}

/// The value of an Event field selector (`involvedObject.name`, `regarding.uid`, `reason`,
/// `type`, `source`, `reportingComponent`, ...) on a stored Event.
pub fn field(obj: &Value, key: &str) -> Option<String> {
    let (head, rest) = key.split_once('.').unwrap_or((key, ""));
    let head = RENAMED
        .iter()
        .find(|(core, _)| *core == head)
        .map(|(_, events)| *events)
        .unwrap_or(head);
    let v = match (head, rest) {
        ("deprecatedSource", "") => obj["deprecatedSource"]["component"].clone(),
        (h, "") => obj[h].clone(),
        (h, r) => obj[h][r].clone(),
    };
    match v {
        Value::String(s) => Some(s),
        Value::Null => Some(String::new()),
        other => Some(other.to_string()),
    }
}

/// The Table `kubectl get events` prints (core shape): last seen, type, reason, object,
/// message; the name with `-o wide`.
pub fn table(objects: &[Value], rv: &str) -> Value {
    let col = |name: &str, priority: i64| json!({"name": name, "type": "string", "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority});
    let columns = vec![
        col("Last Seen", 0),
        col("Type", 0),
        col("Reason", 0),
        col("Object", 0),
        col("Message", 0),
        col("Name", 1),
    ];
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let last = ["lastTimestamp", "deprecatedLastTimestamp", "eventTime"]
                .iter()
                .find_map(|k| o[*k].as_str())
                .or_else(|| o["series"]["lastObservedTime"].as_str())
                .map(age)
                .unwrap_or_else(|| "<unknown>".into());
            let regarding = if o["involvedObject"].is_object() {
                &o["involvedObject"]
            } else {
                &o["regarding"]
            };
            let object = format!(
                "{}/{}",
                regarding["kind"].as_str().unwrap_or_default().to_lowercase(),
                regarding["name"].as_str().unwrap_or_default()
            );
            let message = o["message"].as_str().or(o["note"].as_str()).unwrap_or("");
            let mut meta = o["metadata"].clone();
            if let Some(m) = meta.as_object_mut() {
                m.remove("managedFields");
            }
            json!({
                "cells": [last, o["type"], o["reason"], object, message, o["metadata"]["name"]],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
            })
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::builtins;

    #[test]
    fn core_and_events_shapes_convert_both_ways() {
        let defs = builtins();
        let core = defs
            .iter()
            .find(|d| d.plural == "events" && d.group.is_empty())
            .unwrap();
        let stored = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "regarding": {"kind": "RoleGrant", "name": "g", "uid": "u"}, "note": "granted", "reason": "Granted", "type": "Normal", "reportingController": "uami-controller", "eventTime": "2026-01-01T00:00:00.000000Z"});
        let c = from_storage(core, &stored);
        assert_eq!(c["involvedObject"]["name"], "g");
        assert_eq!(c["message"], "granted");
        assert_eq!(c["reportingComponent"], "uami-controller");
        assert_eq!(to_storage(core, c), stored);
        assert_eq!(field(&stored, "involvedObject.uid").as_deref(), Some("u"));
        assert_eq!(field(&stored, "reason").as_deref(), Some("Granted"));
    }
}
