//! How two answers are compared: the view of an answer each [`Cmp`] takes (status code, reason,
//! causes, chosen fields, managed fields, conditions, token claims, warnings), the differences
//! between the real server's and the sandbox's, and an answer shown for a report.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Answer, Cmp, Step};

/// The text of a `Warning` header (`299 - "text"`).
pub(super) fn warning_text(h: &str) -> String {
    let rest = h.splitn(3, ' ').nth(2).unwrap_or(h);
    serde_json::from_str::<String>(rest).unwrap_or_else(|_| rest.to_string())
}

/// The claims of a JWT.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// Every number in `s` replaced by `N`.
fn shape(s: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

pub(super) fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer).unwrap_or(&Value::Null)
}

/// The causes as sorted (field, reason) pairs.
fn causes(body: &Value) -> Vec<(Value, Value)> {
    let mut out: Vec<(Value, Value)> = at(body, "/details/causes")
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["field"].clone(), c["reason"].clone()))
        .collect();
    out.sort_by_key(|(f, r)| format!("{f} {r}"));
    out
}

fn is_status(body: &Value) -> bool {
    body["kind"] == "Status"
}

/// The managed fields without their times, sorted by manager.
fn managed_fields(body: &Value) -> Value {
    let mut out: Vec<Value> = at(body, "/metadata/managedFields")
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            json!({"manager": m["manager"], "operation": m["operation"],
                   "subresource": m["subresource"], "fieldsV1": m["fieldsV1"]})
        })
        .collect();
    out.sort_by_key(|m| m.to_string());
    Value::Array(out)
}

/// The conditions as (type, status, reason, message), sorted by type.
fn conditions(body: &Value) -> Value {
    let mut out: Vec<Value> = at(body, "/status/conditions")
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!([c["type"], c["status"], c["reason"], c["message"]]))
        .collect();
    out.sort_by_key(|c| c.to_string());
    Value::Array(out)
}

/// What one comparison sees in one answer.
fn view(c: &Cmp, a: &Answer, vars: &BTreeMap<String, String>) -> Value {
    match c {
        Cmp::Field(p) => at(&a.body, p).clone(),
        Cmp::Present(p) => json!(a.body.pointer(p).is_some()),
        Cmp::Message => at(&a.body, "/message").clone(),
        Cmp::MessageShape(p) => json!(shape(at(&a.body, p).as_str().unwrap_or_default())),
        Cmp::MessageAfter(marker) => {
            let m = at(&a.body, "/message").as_str().unwrap_or_default();
            json!(m.rfind(marker).map_or(m, |i| &m[i..]))
        }
        Cmp::MessageUntil(marker) => {
            let m = at(&a.body, "/message").as_str().unwrap_or_default();
            json!(m.find(marker).map_or(m, |i| &m[..i + marker.len()]))
        }
        Cmp::Warnings => json!(a.warnings),
        Cmp::ItemNames => json!(
            at(&a.body, "/items")
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["metadata"]["name"].clone())
                .collect::<Vec<_>>()
        ),
        Cmp::EqualsVar(p, var) => {
            let want = vars.get(*var).cloned().unwrap_or_default();
            let v = at(&a.body, p);
            json!(v == &json!(want) || v == &json!([want]))
        }
        Cmp::Claim(p) => {
            let token = at(&a.body, "/status/token").as_str().unwrap_or_default();
            at(&claims(token), p).clone()
        }
        Cmp::ClaimEqualsVar(p, var) => {
            let token = at(&a.body, "/status/token").as_str().unwrap_or_default();
            let c = claims(token);
            let want = vars.get(*var).cloned().unwrap_or_default();
            let v = at(&c, p);
            json!(v == &json!(want) || v == &json!([want]))
        }
        Cmp::TokenLifetime => {
            let token = at(&a.body, "/status/token").as_str().unwrap_or_default();
            let c = claims(token);
            json!(c["exp"].as_i64().unwrap_or(0) - c["iat"].as_i64().unwrap_or(0))
        }
        Cmp::ManagedFields => managed_fields(&a.body),
        Cmp::Conditions => conditions(&a.body),
    }
}

fn label(c: &Cmp) -> String {
    match c {
        Cmp::Field(p) => (*p).to_string(),
        Cmp::Present(p) => format!("{p} present"),
        Cmp::Message => "message".into(),
        Cmp::MessageShape(p) => format!("{p} (shape)"),
        Cmp::MessageUntil(m) => format!("message up to {m:?}"),
        Cmp::MessageAfter(m) => format!("message from {m:?}"),
        Cmp::Warnings => "warnings".into(),
        Cmp::ItemNames => "item names".into(),
        Cmp::EqualsVar(p, v) => format!("{p} == {{{v}}}"),
        Cmp::Claim(p) => format!("token claim {p}"),
        Cmp::ClaimEqualsVar(p, v) => format!("token claim {p} == {{{v}}}"),
        Cmp::TokenLifetime => "token lifetime".into(),
        Cmp::ManagedFields => "managedFields".into(),
        Cmp::Conditions => "conditions".into(),
    }
}

/// The differences between the real answer and the sandbox's.
pub(super) fn differences(
    step: &Step,
    real: &Answer,
    sandbox: &Answer,
    real_vars: &BTreeMap<String, String>,
    sandbox_vars: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    if real.code != sandbox.code {
        out.push(format!(
            "code: real {} / sandbox {}",
            real.code, sandbox.code
        ));
    }
    if is_status(&real.body) || is_status(&sandbox.body) {
        let (r, s) = (at(&real.body, "/reason"), at(&sandbox.body, "/reason"));
        if r != s {
            out.push(format!("reason: real {r} / sandbox {s}"));
        }
    }
    let (rc, sc) = (causes(&real.body), causes(&sandbox.body));
    if rc != sc {
        out.push(format!(
            "causes (field, reason): real {rc:?} / sandbox {sc:?}"
        ));
    }
    for c in &step.compare {
        let (r, s) = (view(c, real, real_vars), view(c, sandbox, sandbox_vars));
        if r != s {
            out.push(format!("{}: real {r} / sandbox {s}", label(c)));
        }
    }
    out
}

/// The answer for the report: its code, warnings and body (without managed fields, at most
/// 3000 characters).
pub(super) fn show(a: &Answer) -> String {
    let mut body = a.body.clone();
    // Long fields (managed fields, tokens) make the report unreadable.
    if let Some(m) = body
        .pointer_mut("/metadata")
        .and_then(|m| m.as_object_mut())
    {
        m.remove("managedFields");
    }
    if let Some(items) = body.pointer_mut("/items").and_then(|i| i.as_array_mut()) {
        for i in items {
            if let Some(m) = i.pointer_mut("/metadata").and_then(|m| m.as_object_mut()) {
                m.remove("managedFields");
            }
        }
    }
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    let text: String = text.chars().take(3000).collect();
    let warnings = if a.warnings.is_empty() {
        String::new()
    } else {
        format!(" warnings {:?}", a.warnings)
    };
    format!("{}{warnings}\n{}", a.code, indent(&text))
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
