//! Custom resource admission as kube-apiserver does it: prune unknown fields, apply schema
//! defaults, validate against the `openAPIV3Schema` (types, required, enum, pattern, lengths,
//! formats) and the `x-kubernetes-validations` CEL rules (transition rules see the old object),
//! and report each failure as a cause with the field path and the apiserver's phrasing.

use serde_json::{Map, Value, json};

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: String,
    /// Field path such as `spec.target`.
    pub field: String,
    /// Message such as `Invalid value: "x": ...`.
    pub message: String,
}

impl Cause {
    /// `field: message`.
    pub fn line(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// Remove fields the schema does not declare (except where it preserves unknown fields).
pub fn prune(value: &mut Value, schema: &Value, root: bool) {
    if schema["x-kubernetes-preserve-unknown-fields"] == json!(true)
        && schema["properties"].is_null()
    {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                let keep_unknown = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
                let keys: Vec<String> = map.keys().cloned().collect();
                for k in keys {
                    if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    match props.get(&k) {
                        Some(s) => {
                            if let Some(v) = map.get_mut(&k) {
                                prune(v, s, false);
                            }
                        }
                        None if !keep_unknown => {
                            map.remove(&k);
                        }
                        None => {}
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for v in map.values_mut() {
                    prune(v, ap, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for i in items {
                    prune(i, s, false);
                }
            }
        }
        _ => {}
    }
}

/// Fields the schema does not declare (what pruning would drop), as `spec.foo` paths.
pub fn unknown_fields(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in map {
                    if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    let p = join_path(path, k);
                    match props.get(k) {
                        Some(s) => unknown_fields(v, s, &p, out),
                        None => out.push(p),
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, v) in map {
                    unknown_fields(v, ap, &join_path(path, k), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item, s, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Fill `default`s of missing properties, recursively into present objects.
pub fn default(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    if !map.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                    if let Some(v) = map.get_mut(k) {
                        default(v, s);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for i in items {
                    default(i, s);
                }
            }
        }
        _ => {}
    }
}

/// OpenAPI's `nullable` as JSON Schema, and the embedded ObjectMeta opened up.
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if k.starts_with("x-kubernetes-") {
                    continue;
                }
                out.insert(k.clone(), to_json_schema(v));
            }
            if out.remove("nullable") == Some(Value::Bool(true))
                && let Some(Value::String(t)) = out.get("type").cloned()
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

fn quote(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn join_path(base: &str, prop: &str) -> String {
    if base.is_empty() {
        prop.to_string()
    } else {
        format!("{base}.{prop}")
    }
}

/// A CRD schema compiled once: the JSON Schema validator and the CEL rules.
pub struct Compiled {
    json: Result<jsonschema::Validator, String>,
    cel: kube_cel::CompiledSchema,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled")
    }
}

/// Compile `schema` (an `openAPIV3Schema`).
pub fn compile(schema: &Value) -> Compiled {
    let mut js = to_json_schema(schema);
    // metadata is checked by the server itself, not by the CRD schema.
    if let Some(props) = js.get_mut("properties").and_then(|p| p.as_object_mut()) {
        props.remove("metadata");
    }
    Compiled {
        json: jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(true)
            .build(&js)
            .map_err(|e| e.to_string()),
        cel: kube_cel::compile_schema(schema),
    }
}

/// Validate `object` (and `old` for transition rules) against the compiled schema.
pub fn validate(object: &Value, old: Option<&Value>, compiled: &Compiled) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut for_schema = object.clone();
    if let Some(m) = for_schema.as_object_mut() {
        m.remove("metadata");
    }
    match &compiled.json {
        Ok(validator) => {
            for e in validator.iter_errors(&for_schema) {
                let path = e
                    .instance_path()
                    .to_string()
                    .trim_start_matches('/')
                    .replace('/', ".");
                let instance = e.instance().clone().into_owned();
                use jsonschema::error::ValidationErrorKind as K;
                let cause = match e.kind() {
                    K::Required { property } => {
                        let prop = property.as_str().unwrap_or_default();
                        Cause {
                            reason: "FieldValueRequired".into(),
                            field: join_path(&path, prop),
                            message: "Required value".into(),
                        }
                    }
                    K::Enum { options } => {
                        let supported: Vec<String> = options
                            .as_array()
                            .map(|a| a.iter().map(quote).collect())
                            .unwrap_or_default();
                        Cause {
                            reason: "FieldValueNotSupported".into(),
                            field: path.clone(),
                            message: format!(
                                "Unsupported value: {}: supported values: {}",
                                quote(&instance),
                                supported.join(", ")
                            ),
                        }
                    }
                    K::Pattern { pattern } => Cause {
                        reason: "FieldValueInvalid".into(),
                        field: path.clone(),
                        message: format!(
                            "Invalid value: {}: {path} in body should match '{pattern}'",
                            quote(&instance)
                        ),
                    },
                    K::MaxLength { limit } => Cause {
                        reason: "FieldValueTooLong".into(),
                        field: path.clone(),
                        message: format!("Too long: may not be more than {limit} bytes"),
                    },
                    K::MinLength { limit } => Cause {
                        reason: "FieldValueInvalid".into(),
                        field: path.clone(),
                        message: format!(
                            "Invalid value: {}: {path} in body should be at least {limit} chars long",
                            quote(&instance)
                        ),
                    },
                    K::MaxItems { limit } => Cause {
                        reason: "FieldValueTooMany".into(),
                        field: path.clone(),
                        message: format!(
                            "Too many: {}: must have at most {limit} items",
                            instance.as_array().map(|a| a.len()).unwrap_or(0)
                        ),
                    },
                    K::Type { .. } => Cause {
                        reason: "FieldValueTypeInvalid".into(),
                        field: path.clone(),
                        message: format!(
                            "Invalid value: {}: {path} in body must be of type {}",
                            quote(&instance),
                            e.to_string().rsplit(' ').next().unwrap_or("")
                        ),
                    },
                    K::Format { format } => Cause {
                        reason: "FieldValueInvalid".into(),
                        field: path.clone(),
                        message: format!(
                            "Invalid value: {}: {path} in body must be of type {format}",
                            quote(&instance)
                        ),
                    },
                    _ => Cause {
                        reason: "FieldValueInvalid".into(),
                        field: path.clone(),
                        message: format!("Invalid value: {}: {e}", quote(&instance)),
                    },
                };
                causes.push(cause);
            }
        }
        Err(e) => causes.push(Cause {
            reason: "InternalError".into(),
            field: String::new(),
            message: format!("schema could not be compiled: {e}"),
        }),
    }
    if causes.is_empty()
        && let Err(errors) = kube_cel::validate_compiled(&compiled.cel, object, old)
    {
        for e in errors.into_vec() {
            let field = e.field_path.trim_start_matches('.').to_string();
            let reason = e
                .reason
                .clone()
                .unwrap_or_else(|| "FieldValueInvalid".into());
            let value = lookup(object, &field);
            let message = match reason.as_str() {
                "FieldValueForbidden" => format!("Forbidden: {}", e.message),
                "FieldValueRequired" => format!("Required value: {}", e.message),
                "FieldValueDuplicate" => format!("Duplicate value: {}", e.message),
                _ => format!(
                    "Invalid value: {}: {}",
                    value
                        .map(|v| quote(&v))
                        .unwrap_or_else(|| "\"object\"".into()),
                    e.message
                ),
            };
            causes.push(Cause {
                reason,
                field,
                message,
            });
        }
    }
    causes
}

fn lookup(v: &Value, path: &str) -> Option<Value> {
    let mut cur = v;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        cur = cur.get(seg)?;
    }
    Some(cur.clone())
}
