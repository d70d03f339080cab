//! What kubectl asks for besides objects: `Table` responses (the printer columns of a CRD, or
//! the built-in columns) and the OpenAPI v3 documents `kubectl explain` and client-side
//! validation read.

use serde_json::{Map, Value, json};

use super::registry::ResourceDef;

/// Evaluate the JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a[?(@.k=="v")].b`.
pub fn json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = vec![obj.clone()];
    let mut rest = path.trim().trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            cur = cur.iter().filter_map(|v| v.get(field).cloned()).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (k, v) = filter.split_once("==")?;
                let v = v.trim().trim_matches('"').trim_matches('\'');
                cur = cur
                    .iter()
                    .filter_map(|a| a.as_array())
                    .flatten()
                    .filter(|item| item.get(k.trim()).and_then(|x| x.as_str()) == Some(v))
                    .cloned()
                    .collect();
            } else if let Ok(i) = inner.parse::<usize>() {
                cur = cur.iter().filter_map(|a| a.get(i).cloned()).collect();
            } else if inner == "*" {
                cur = cur
                    .iter()
                    .filter_map(|a| a.as_array())
                    .flatten()
                    .cloned()
                    .collect();
            } else {
                return None;
            }
        } else {
            return None;
        }
    }
    match cur.len() {
        0 => None,
        1 => cur.pop(),
        _ => Some(Value::Array(cur)),
    }
}

/// `5s`, `3m12s`, `4h`, `2d` like kubectl.
pub fn age(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn cell(v: Option<Value>, type_: &str) -> Value {
    match v {
        None => Value::Null,
        Some(Value::String(s)) if type_ == "date" => json!(age(&s)),
        Some(Value::Array(a)) => json!(
            a.iter()
                .map(|x| x
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string()))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Some(v) => v,
    }
}

/// A `meta.k8s.io/v1` Table of `objects`.
pub fn table(def: &ResourceDef, objects: &[Value], rv: &str) -> Value {
    if super::events::is_event(def) {
        return super::events::table(objects, rv);
    }
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    let mut getters: Vec<(String, String)> = Vec::new();
    if def.schema.is_some() || !def.printer_columns.is_empty() {
        let mut has_age = false;
        for c in &def.printer_columns {
            let name = c["name"].as_str().unwrap_or_default();
            has_age |= name == "Age";
            columns.push(json!({"name": name, "type": c["type"].as_str().unwrap_or("string"), "format": c["format"].as_str().unwrap_or(""), "description": c["description"].as_str().unwrap_or(""), "priority": c["priority"].as_i64().unwrap_or(0)}));
            getters.push((
                c["jsonPath"].as_str().unwrap_or_default().to_string(),
                c["type"].as_str().unwrap_or("string").to_string(),
            ));
        }
        if !has_age {
            columns.push(json!({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0}));
            getters.push((".metadata.creationTimestamp".into(), "date".into()));
        }
    } else {
        let extra: &[(&str, &str)] = match def.plural.as_str() {
            "namespaces" => &[("Status", ".status.phase")],
            "configmaps" => &[],
            "secrets" => &[("Type", ".type")],
            "leases" => &[("Holder", ".spec.holderIdentity")],
            "customresourcedefinitions" => &[],
            _ => &[],
        };
        for (n, p) in extra {
            columns.push(json!({"name": n, "type": "string", "format": "", "description": "", "priority": 0}));
            getters.push((p.to_string(), "string".into()));
        }
        if def.plural == "configmaps" || def.plural == "secrets" {
            columns.push(json!({"name": "Data", "type": "integer", "format": "", "description": "", "priority": 0}));
            getters.push(("#data".into(), "integer".into()));
        }
        columns.push(json!({"name": "Age", "type": "string", "format": "", "description": "", "priority": 0}));
        getters.push((".metadata.creationTimestamp".into(), "date".into()));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for (path, t) in &getters {
                if path == "#data" {
                    cells.push(json!(o["data"].as_object().map(|m| m.len()).unwrap_or(0)));
                } else {
                    cells.push(cell(json_path(o, path), t));
                }
            }
            let mut meta = o["metadata"].clone();
            if let Some(m) = meta.as_object_mut() {
                m.remove("managedFields");
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "columnDefinitions": columns, "rows": rows})
}

fn reverse_group(group: &str) -> String {
    let mut parts: Vec<&str> = group.split('.').collect();
    parts.reverse();
    parts.join(".")
}

/// The schema name of a kind, as the apiserver names it (`dev.uami.v1alpha1.UserAssignedIdentity`).
pub fn schema_name(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        format!("io.k8s.api.core.{}.{}", def.version, def.kind)
    } else if def.crd.is_some() {
        format!("{}.{}.{}", reverse_group(&def.group), def.version, def.kind)
    } else {
        let short = def.group.split('.').next().unwrap_or_default();
        format!("io.k8s.api.{short}.{}.{}", def.version, def.kind)
    }
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn object_meta() -> Value {
    json!({
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "Name must be unique within a namespace."},
            "generateName": {"type": "string", "description": "An optional prefix used by the server to generate a unique name."},
            "namespace": {"type": "string", "description": "Namespace defines the space within which each name must be unique."},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Map of string keys and values that can be used to organize and categorize objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Annotations is an unstructured key value map."},
            "finalizers": {"type": "array", "items": {"type": "string"}, "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            "uid": {"type": "string"}, "resourceVersion": {"type": "string"}, "generation": {"type": "integer", "format": "int64"},
            "creationTimestamp": {"type": "string", "format": "date-time"}, "deletionTimestamp": {"type": "string", "format": "date-time"},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
        }
    })
}

fn builtin_schema(def: &ResourceDef) -> Value {
    let body = match def.plural.as_str() {
        "configmaps" => {
            json!({"data": {"type": "object", "additionalProperties": {"type": "string"}}, "binaryData": {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}}, "immutable": {"type": "boolean"}})
        }
        "namespaces" => {
            json!({"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}})
        }
        _ => json!({}),
    };
    let mut props = body.as_object().cloned().unwrap_or_default();
    if props.is_empty() {
        return json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"$ref": format!("#/components/schemas/{OBJECT_META}")}}});
    }
    props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
    props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
    props.insert(
        "metadata".into(),
        json!({"$ref": format!("#/components/schemas/{OBJECT_META}")}),
    );
    json!({"type": "object", "properties": props})
}

/// The OpenAPI v3 document of one group/version.
pub fn openapi_v3(resources: &[ResourceDef], group: &str, version: &str) -> Value {
    let mut schemas = Map::new();
    schemas.insert(OBJECT_META.into(), object_meta());
    for def in resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut s = match &def.schema {
            Some(s) => {
                let mut s = s.clone();
                if let Some(p) = s.get_mut("properties").and_then(|p| p.as_object_mut()) {
                    p.insert(
                        "metadata".into(),
                        json!({"$ref": format!("#/components/schemas/{OBJECT_META}")}),
                    );
                }
                s
            }
            None => builtin_schema(def),
        };
        s["x-kubernetes-group-version-kind"] =
            json!([{"group": def.group, "version": def.version, "kind": def.kind}]);
        schemas.insert(schema_name(def), s);
    }
    // Operations carry their kind and the `fieldValidation` parameter: kubectl reads them to
    // learn that the server validates fields itself.
    let mut paths = Map::new();
    for def in resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let prefix = if def.group.is_empty() {
            format!("/api/{}", def.version)
        } else {
            format!("/apis/{}/{}", def.group, def.version)
        };
        let collection = if def.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", def.plural)
        } else {
            format!("{prefix}/{}", def.plural)
        };
        let gvk = json!({"group": def.group, "version": def.version, "kind": def.kind});
        let op = |action: &str| {
            json!({
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(def))}}}}},
            })
        };
        paths.insert(collection.clone(), json!({"post": op("post")}));
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"put": op("put"), "patch": op("patch")}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn refs_to_v2(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                *r = r.replace("#/components/schemas/", "#/definitions/");
            }
            for x in m.values_mut() {
                refs_to_v2(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(refs_to_v2),
        _ => {}
    }
}

/// The OpenAPI v2 (Swagger) document of every served kind.
pub fn openapi_v2(resources: &[ResourceDef]) -> Value {
    let mut definitions = Map::new();
    let mut gvs: Vec<(String, String)> = resources
        .iter()
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    for (g, v) in gvs {
        let doc = openapi_v3(resources, &g, &v);
        if let Some(schemas) = doc["components"]["schemas"].as_object() {
            for (k, s) in schemas {
                let mut s = s.clone();
                refs_to_v2(&mut s);
                definitions.insert(k.clone(), s);
            }
        }
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": definitions})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths() {
        let o = json!({"status": {"conditions": [{"type": "Other", "status": "False"}, {"type": "Ready", "status": "True", "reason": "Ok"}]}, "spec": {"a": {"b": "c"}}});
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(json!("True"))
        );
        assert_eq!(json_path(&o, ".spec.a.b"), Some(json!("c")));
        assert_eq!(json_path(&o, ".spec.missing"), None);
    }
}
