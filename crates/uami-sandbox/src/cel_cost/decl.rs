//! What CEL sees of an `openAPIV3Schema` node: its type and, for the cost estimate, the largest
//! size a value of it can have in a request (characters of a string, items of a list, entries of
//! a map) and the smallest it can be serialized to.
//!
//! The rules are kube-apiserver's (1.36): a `maxLength` counts four bytes per character; a string
//! without one is only bounded by the 3 MiB request, unless it has an `enum` (the longest value)
//! or a time format; a list or map without `maxItems` / `maxProperties` holds as many of its
//! smallest elements as fit in a request. Map keys carry no size at all.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value;

/// The largest request the API server accepts; every unbounded size is derived from it.
pub const MAX_REQUEST_BYTES: i64 = 3 * 1024 * 1024;

/// The longest RFC 3339 date-time or duration, quoted.
const MAX_TIME_JSON: i64 = 32;
/// `"YYYY-MM-DD"`.
const DATE_JSON: i64 = 12;
/// The shortest date-time, quoted.
const MIN_DATETIME_JSON: i64 = 21;
/// `"0"`, the shortest duration.
const MIN_DURATION_JSON: i64 = 3;
/// `""`.
const MIN_STRING: i64 = 2;

/// The CEL view of a schema node.
#[derive(Clone, Debug, PartialEq)]
pub struct Decl {
    /// What the node holds.
    pub kind: DeclKind,
    /// The largest size a value can have (0 where size means nothing, as for objects and
    /// scalars).
    pub max_elements: u64,
    /// The fewest bytes a value serializes to in JSON.
    pub min_size: i64,
}

/// The type of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum DeclKind {
    Bool,
    Int,
    Double,
    String,
    Bytes,
    Timestamp,
    Duration,
    /// `x-kubernetes-int-or-string`.
    Dyn,
    List(Rc<Decl>),
    /// Keys, values.
    Map(Rc<Decl>, Rc<Decl>),
    /// Fields by their CEL name.
    Object(BTreeMap<String, Rc<Decl>>),
}

impl Decl {
    fn simple(kind: DeclKind, min_size: i64) -> Self {
        Self {
            kind,
            max_elements: 0,
            min_size,
        }
    }

    /// The element of a list, or the value of a map.
    pub fn element(&self) -> Option<&Rc<Decl>> {
        match &self.kind {
            DeclKind::List(e) | DeclKind::Map(_, e) => Some(e),
            _ => None,
        }
    }

    /// The key of a map.
    pub fn key(&self) -> Option<&Rc<Decl>> {
        match &self.kind {
            DeclKind::Map(k, _) => Some(k),
            _ => None,
        }
    }

    /// A field of an object.
    pub fn field(&self, name: &str) -> Option<&Rc<Decl>> {
        match &self.kind {
            DeclKind::Object(fields) => fields.get(name),
            _ => None,
        }
    }
}

fn non_negative(v: Option<i64>) -> Option<u64> {
    v.map(|v| u64::try_from(v).unwrap_or(0))
}

fn int(schema: &Value, key: &str) -> Option<i64> {
    schema.get(key).and_then(Value::as_i64)
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn unbounded_string_length(format: &str) -> u64 {
    match format {
        "duration" | "date-time" => MAX_TIME_JSON as u64,
        "date" => DATE_JSON as u64,
        _ => (MAX_REQUEST_BYTES - 2) as u64,
    }
}

/// The CEL view of `schema`, or `None` when CEL does not see the node (no type, a list without
/// items, a map whose values CEL does not see). `resource_root` is true at the root of the
/// custom resource and of embedded resources, where `apiVersion`, `kind`, `metadata.name` and
/// `metadata.generateName` are always visible.
pub fn decl_of(schema: &Value, resource_root: bool) -> Option<Rc<Decl>> {
    decl(schema, resource_root).map(Rc::new)
}

fn decl(schema: &Value, resource_root: bool) -> Option<Decl> {
    if flag(schema, "x-kubernetes-int-or-string") {
        let max = match non_negative(int(schema, "maxLength")) {
            Some(n) => n.saturating_mul(4),
            None => (MAX_REQUEST_BYTES - 2) as u64,
        };
        return Some(Decl {
            max_elements: max,
            ..Decl::simple(DeclKind::Dyn, 1)
        });
    }
    let with_meta;
    let schema = if resource_root && !declares_type_and_object_meta(schema) {
        with_meta = with_type_and_object_meta(schema);
        &with_meta
    } else {
        schema
    };
    let embedded = |s: &Value| flag(s, "x-kubernetes-embedded-resource");
    match schema.get("type").and_then(Value::as_str)? {
        "array" => {
            let items = schema.get("items").filter(|i| i.is_object())?;
            let elem = decl(items, embedded(items))?;
            let max = non_negative(int(schema, "maxItems"))
                .unwrap_or(((MAX_REQUEST_BYTES - 2) / (elem.min_size + 1)) as u64);
            Some(Decl {
                kind: DeclKind::List(Rc::new(elem)),
                max_elements: max,
                min_size: 2,
            })
        }
        "object" => {
            if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                let value = decl(values, embedded(values))?;
                let max = non_negative(int(schema, "maxProperties"))
                    .unwrap_or(((MAX_REQUEST_BYTES - 2) / (value.min_size + 6)) as u64);
                let key = Decl::simple(DeclKind::String, MIN_STRING);
                return Some(Decl {
                    kind: DeclKind::Map(Rc::new(key), Rc::new(value)),
                    max_elements: max,
                    min_size: 2,
                });
            }
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut fields = BTreeMap::new();
            let mut min_size = 2;
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    let Some(field) = decl(prop, embedded(prop)) else {
                        continue;
                    };
                    if required.contains(&name.as_str()) && prop.get("default").is_none() {
                        min_size += name.len() as i64 + field.min_size + 4;
                    }
                    if let Some(cel_name) = escape(name) {
                        fields.insert(cel_name, Rc::new(field));
                    }
                }
            }
            Some(Decl {
                kind: DeclKind::Object(fields),
                max_elements: 0,
                min_size,
            })
        }
        "string" => {
            let format = schema.get("format").and_then(Value::as_str).unwrap_or("");
            let max_length = non_negative(int(schema, "maxLength"));
            let d = match format {
                "byte" => Decl {
                    max_elements: max_length.unwrap_or(unbounded_string_length(format)),
                    ..Decl::simple(DeclKind::Bytes, MIN_STRING)
                },
                "duration" => Decl {
                    max_elements: unbounded_string_length(format),
                    ..Decl::simple(DeclKind::Duration, MIN_DURATION_JSON)
                },
                "date" => Decl {
                    max_elements: unbounded_string_length(format),
                    ..Decl::simple(DeclKind::Timestamp, DATE_JSON)
                },
                "date-time" => Decl {
                    max_elements: unbounded_string_length(format),
                    ..Decl::simple(DeclKind::Timestamp, MIN_DATETIME_JSON)
                },
                _ => {
                    let enum_max = schema
                        .get("enum")
                        .and_then(Value::as_array)
                        .filter(|e| !e.is_empty())
                        .map(|e| {
                            e.iter()
                                .filter_map(Value::as_str)
                                .map(|s| s.len() as u64)
                                .max()
                                .unwrap_or(0)
                        });
                    let max = match (max_length, enum_max) {
                        (Some(n), _) => n.saturating_mul(4),
                        (None, Some(longest)) => longest,
                        (None, None) => unbounded_string_length(format),
                    };
                    Decl {
                        max_elements: max,
                        ..Decl::simple(DeclKind::String, MIN_STRING)
                    }
                }
            };
            Some(d)
        }
        "boolean" => Some(Decl::simple(DeclKind::Bool, 4)),
        "number" => Some(Decl::simple(DeclKind::Double, 1)),
        "integer" => Some(Decl::simple(DeclKind::Int, 1)),
        _ => None,
    }
}

fn prop_type<'a>(schema: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = schema;
    for p in path {
        cur = cur.get("properties")?.get(*p)?;
    }
    cur.get("type").and_then(Value::as_str)
}

/// Whether a resource root declares `apiVersion`, `kind`, `metadata.name` and
/// `metadata.generateName` itself; only then are its own bounds on them used.
fn declares_type_and_object_meta(schema: &Value) -> bool {
    prop_type(schema, &["kind"]) == Some("string")
        && prop_type(schema, &["apiVersion"]) == Some("string")
        && prop_type(schema, &["metadata"]) == Some("object")
        && prop_type(schema, &["metadata", "name"]) == Some("string")
        && prop_type(schema, &["metadata", "generateName"]) == Some("string")
}

/// `schema` with `apiVersion`, `kind` and `metadata.{name,generateName}` as unbounded strings.
fn with_type_and_object_meta(schema: &Value) -> Value {
    let mut out = schema.clone();
    let string = serde_json::json!({"type": "string"});
    if let Some(obj) = out.as_object_mut() {
        let props = obj
            .entry("properties")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(props) = props.as_object_mut() {
            props.insert("kind".into(), string.clone());
            props.insert("apiVersion".into(), string.clone());
            props.insert(
                "metadata".into(),
                serde_json::json!({"type": "object", "properties": {"name": string, "generateName": string}}),
            );
        }
    }
    out
}

/// Words CEL reserves; a property so named is `__word__` in rules.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// The name rules use for property `name`, or `None` when rules cannot name it.
pub fn escape(name: &str) -> Option<String> {
    let first = name.chars().next()?;
    if first.is_ascii_digit() {
        return None;
    }
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
    {
        return None;
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("__") {
            out.push_str("__underscores__");
            rest = after;
            continue;
        }
        match c {
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    Some(out)
}
