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
    /// A cause of `reason` at `field`.
    pub fn new(reason: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            field: field.into(),
            message: message.into(),
        }
    }

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
        Value::Array(items) => each_item(items, schema, path, |item, s, p| {
            unknown_fields(item, s, p, out)
        }),
        _ => {}
    }
}

/// Call `f` with each of `items`, the `items` schema of `schema` and the item's path (nothing
/// without an `items` schema).
fn each_item(items: &[Value], schema: &Value, path: &str, mut f: impl FnMut(&Value, &Value, &str)) {
    if let Some(s) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            f(item, s, &format!("{path}[{i}]"));
        }
    }
}

/// Integers beyond the range of their `format` (`int32`, `uint32`, `uint64`, else `int64`), as
/// the API server checks them: a cause on the top-level field that names the path below it.
fn integer_ranges(value: &Value, schema: &Value, path: &str, out: &mut Vec<Cause>) {
    match value {
        Value::Number(n) if schema["type"] == json!("integer") => {
            let format = schema["format"].as_str().unwrap_or_default();
            let fits = match format {
                "int32" => n.as_i64().is_some_and(|v| i32::try_from(v).is_ok()),
                "uint32" => n.as_u64().is_some_and(|v| u32::try_from(v).is_ok()),
                "uint64" => n.as_u64().is_some(),
                _ => n.as_i64().is_some() || n.as_f64().is_some_and(|f| f.fract() != 0.0),
            };
            if fits {
                return;
            }
            let (top, below) = path.split_once('.').unwrap_or((path, path));
            let kind = match format {
                "" => "integer (default format)".to_string(),
                f => format!("integer with format {f}"),
            };
            out.push(Cause {
                reason: "FieldValueInvalid".into(),
                field: top.to_string(),
                message: format!(
                    "Invalid value: \"\": Checked value must be of type {kind} in {below}"
                ),
            });
        }
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                if path.is_empty() && k == "metadata" {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                    integer_ranges(v, s, &join_path(path, k), out);
                }
            }
        }
        Value::Array(items) => each_item(items, schema, path, |item, s, p| {
            integer_ranges(item, s, p, out)
        }),
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
    /// The schema as given, for the checks JSON Schema does not make (integer formats).
    schema: Value,
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
        schema: schema.clone(),
    }
}

/// The message of the cause the API server adds when schema errors stop it from evaluating the
/// CEL rules.
const RULES_NOT_CHECKED: &str = "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

/// Causes after which the API server does not evaluate the CEL rules (a value of the wrong type,
/// missing, too long, too many, or not one of the enum).
fn blocks_rules(reason: &str) -> bool {
    matches!(
        reason,
        "FieldValueNotSupported"
            | "FieldValueRequired"
            | "FieldValueTooLong"
            | "FieldValueTooMany"
            | "FieldValueTypeInvalid"
    )
}

/// The field path of a schema error as the API server writes it (`spec.items[0].name`): the
/// location's segments, an index in brackets where the value there is a list.
fn field_path(object: &Value, location: &jsonschema::paths::Location) -> String {
    use jsonschema::paths::LocationSegment;
    let mut out = String::new();
    let mut cur = Some(object);
    for seg in location.iter() {
        match seg {
            LocationSegment::Index(i) if cur.is_some_and(Value::is_array) => {
                out.push_str(&format!("[{i}]"));
                cur = cur.and_then(|c| c.get(i));
            }
            LocationSegment::Index(i) => {
                let key = i.to_string();
                out = join_path(&out, &key);
                cur = cur.and_then(|c| c.get(&key));
            }
            LocationSegment::Property(p) => {
                out = join_path(&out, &p);
                cur = cur.and_then(|c| c.get(p.as_ref()));
            }
        }
    }
    out
}

/// The JSON type name of a value, as the API server's schema errors name it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Of a string's length and pattern checks the API server reports only the first that fails,
/// in this order.
fn string_check_rank(kind: &jsonschema::error::ValidationErrorKind) -> Option<u8> {
    use jsonschema::error::ValidationErrorKind as K;
    match kind {
        K::MaxLength { .. } => Some(0),
        K::MinLength { .. } => Some(1),
        K::Pattern { .. } => Some(2),
        _ => None,
    }
}

/// One schema error as the API server reports it.
fn schema_cause(e: &jsonschema::ValidationError, path: String) -> Cause {
    use jsonschema::error::ValidationErrorKind as K;
    let instance = e.instance().clone().into_owned();
    let invalid = |message: String| Cause {
        reason: "FieldValueInvalid".into(),
        field: path.clone(),
        message,
    };
    match e.kind() {
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
        K::Pattern { pattern } => invalid(format!(
            "Invalid value: {}: {path} in body should match '{pattern}'",
            quote(&instance)
        )),
        K::MaxLength { limit } => Cause {
            reason: "FieldValueTooLong".into(),
            field: path.clone(),
            message: format!("Too long: may not be more than {limit} bytes"),
        },
        K::MinLength { limit } => invalid(format!(
            "Invalid value: {}: {path} in body should be at least {limit} chars long",
            quote(&instance)
        )),
        K::MaxItems { limit } | K::MaxProperties { limit } => Cause {
            reason: "FieldValueTooMany".into(),
            field: path.clone(),
            message: format!(
                "Too many: {}: must have at most {limit} items",
                instance
                    .as_array()
                    .map(Vec::len)
                    .or_else(|| instance.as_object().map(Map::len))
                    .unwrap_or(0)
            ),
        },
        K::MinItems { limit } => invalid(format!(
            "Invalid value: {}: {path} in body should have at least {limit} items",
            instance.as_array().map(Vec::len).unwrap_or(0)
        )),
        K::Minimum { limit } => invalid(format!(
            "Invalid value: {instance}: {path} in body should be greater than or equal to {limit}"
        )),
        K::Maximum { limit } => invalid(format!(
            "Invalid value: {instance}: {path} in body should be less than or equal to {limit}"
        )),
        K::Type { kind } => {
            use jsonschema::error::TypeKind;
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| t.to_string())
                    .find(|t| t != "null")
                    .unwrap_or_default(),
            };
            let actual = type_name(&instance);
            Cause {
                reason: "FieldValueTypeInvalid".into(),
                field: path.clone(),
                message: format!(
                    "Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""
                ),
            }
        }
        K::Format { format } => invalid(format!(
            "Invalid value: {}: {path} in body must be of type {format}",
            quote(&instance)
        )),
        _ => invalid(format!("Invalid value: {}: {e}", quote(&instance))),
    }
}

/// Validate `object` (and `old` for transition rules) against the compiled schema, as the API
/// server does: the schema errors, then the CEL rules unless a schema error blocks them.
pub fn validate(object: &Value, old: Option<&Value>, compiled: &Compiled) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut for_schema = object.clone();
    if let Some(m) = for_schema.as_object_mut() {
        m.remove("metadata");
    }
    match &compiled.json {
        Ok(validator) => {
            // (path, rank) of the string checks reported so far: only the first per value.
            let mut string_checks: Vec<(String, u8, usize)> = Vec::new();
            for e in validator.iter_errors(&for_schema) {
                let path = field_path(&for_schema, e.instance_path());
                if let Some(rank) = string_check_rank(e.kind()) {
                    if let Some(seen) = string_checks.iter_mut().find(|(p, _, _)| *p == path) {
                        if rank < seen.1 {
                            causes[seen.2] = schema_cause(&e, path);
                            seen.1 = rank;
                        }
                        continue;
                    }
                    string_checks.push((path.clone(), rank, causes.len()));
                }
                causes.push(schema_cause(&e, path));
            }
        }
        Err(e) => causes.push(Cause {
            reason: "InternalError".into(),
            field: String::new(),
            message: format!("schema could not be compiled: {e}"),
        }),
    }
    integer_ranges(object, &compiled.schema, "", &mut causes);
    if causes.iter().any(|c| blocks_rules(&c.reason)) {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            field: "<nil>".into(),
            message: RULES_NOT_CHECKED.into(),
        });
        return causes;
    }
    if let Err(errors) = kube_cel::validate_compiled(&compiled.cel, object, old) {
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
                // The value of an object or a list is left out of the message.
                _ => match value.filter(|v| !v.is_object() && !v.is_array()) {
                    Some(v) => format!("Invalid value: {}: {}", quote(&v), e.message),
                    None => format!("Invalid value: {}", e.message),
                },
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

/// The value at a field path such as `spec.items[0].name`.
fn lookup(v: &Value, path: &str) -> Option<Value> {
    let mut cur = v;
    for part in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        for index in indexes.split(']').filter_map(|s| s.strip_prefix('[')) {
            cur = match index.parse::<usize>() {
                Ok(i) if cur.is_array() => cur.get(i)?,
                _ => cur.get(index.trim_matches('"'))?,
            };
        }
    }
    Some(cur.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integer_beyond_its_format_is_refused_as_the_api_server_does() {
        let schema = json!({"type": "object", "properties": {"status": {"type": "object",
            "properties": {"access": {"type": "array", "items": {"type": "object",
                "properties": {"httpStatus": {"type": "integer", "format": "int32"}}}}}}}});
        let compiled = compile(&schema);
        let object = |n: i64| json!({"status": {"access": [{"httpStatus": n}]}});
        assert!(validate(&object(i64::from(i32::MAX)), None, &compiled).is_empty());
        let causes = validate(&object(9_999_999_999), None, &compiled);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].reason, "FieldValueInvalid");
        assert_eq!(causes[0].field, "status");
        assert_eq!(
            causes[0].message,
            "Invalid value: \"\": Checked value must be of type integer with format int32 in access[0].httpStatus"
        );
    }
}
