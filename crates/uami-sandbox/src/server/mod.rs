//! The HTTP side of the sandbox: discovery, OpenAPI v3, and the REST verbs on every served
//! resource, answering as kube-apiserver does (bodies, status codes, `Status` errors, Table
//! output for kubectl, newline-delimited watch streams).
//!
//! This module authenticates, resolves the path to a resource, authorizes, dispatches by verb
//! and records the audit log; each verb lives in its own module: [`discovery`], [`read`] (get,
//! list, selectors), [`write`] (create, update and the commit with admission), [`patch`],
//! [`delete`] and [`watch`]; `crate::error` holds the `Status` errors.

mod admit;
mod delete;
mod discovery;
mod patch;
mod read;
#[cfg(test)]
mod tests;
mod token;
mod watch;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use crate::error::ApiError;
pub use write::create_object;

use super::registry::ResourceDef;
use super::store::Store;
use super::{AuditRecord, Shared, UserInfo, admission, authz, events, protobuf, ssa};

fn json_response(status: StatusCode, v: &Value) -> Response {
    (status, axum::Json(v.clone())).into_response()
}

/// The resource a path names.
struct Target {
    def: ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    /// The namespace, or "".
    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }

    /// The name, or "".
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

enum Parsed {
    Discovery(Response),
    Resource(Box<Target>),
    NotFound,
}

fn parse(store: &Store, segs: &[&str]) -> Parsed {
    let (group, version, rest): (&str, &str, &[&str]) = match segs {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Parsed::NotFound,
    };
    if rest.is_empty() {
        return discovery::resource_list(store, group, version)
            .map_or(Parsed::NotFound, Parsed::Discovery);
    }
    // namespaces/{ns}/{plural}/... for namespaced resources
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && let Some(def) = store
            .resource(group, version, rest[2])
            .filter(|d| d.namespaced)
    {
        return Parsed::Resource(Box::new(Target {
            def,
            namespace: Some(rest[1].to_string()),
            name: rest.get(3).map(|s| s.to_string()),
            subresource: rest.get(4).map(|s| s.to_string()),
        }));
    }
    let Some(def) = store.resource(group, version, rest[0]) else {
        return Parsed::NotFound;
    };
    Parsed::Resource(Box::new(Target {
        def,
        namespace: None,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    }))
}

fn verb(method: &Method, t: &Target, q: &HashMap<String, String>) -> &'static str {
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method.as_str(), t.name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// Handle any request.
pub async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let q: HashMap<String, String> =
        serde_urlencoded::from_str(uri.query().unwrap_or_default()).unwrap_or_default();
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    // kubectl sends no bearer token to a plain-HTTP server: on loopback such requests are served
    // as `system:anonymous` in `system:masters` (like an insecure local port); a wrong token is
    // still refused.
    let user = match token {
        Some(t) => shared.users.lock().get(&t).cloned(),
        None => Some(UserInfo::admin("system:anonymous")),
    };
    let Some(user) = user else {
        return ApiError::new(401, "Unauthorized", "Unauthorized").into_response();
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(resp) = discovery::serve(&shared, &segs, &headers) {
        return resp;
    }
    let parsed = {
        let store = shared.store.lock();
        parse(&store, &segs)
    };
    let target = match parsed {
        Parsed::Discovery(r) => return r,
        Parsed::NotFound => return ApiError::no_resource().into_response(),
        Parsed::Resource(t) => t,
    };
    let v = verb(&method, &target, &q);
    let allowed = if user.is_admin() {
        Ok(())
    } else {
        authz::authorize(
            &shared.store.lock(),
            &user,
            &authz::Attributes {
                verb: v,
                group: &target.def.group,
                resource: &target.def.plural,
                subresource: target.subresource.as_deref().unwrap_or_default(),
                // A request on a namespace object is in that namespace, as for the API server.
                namespace: match (target.def.group.as_str(), target.def.plural.as_str()) {
                    ("", "namespaces") => target.name.as_deref().unwrap_or_default(),
                    _ => target.namespace.as_deref().unwrap_or_default(),
                },
                name: target.name.as_deref().unwrap_or_default(),
            },
        )
    };
    let resp = match (allowed, v) {
        (Err(e), _) => e.into_response(),
        (Ok(()), "watch") => watch::watch(&shared, &user.username, &target, &q),
        (Ok(()), _) => {
            let req = Request {
                shared: &shared,
                target: &target,
                query: &q,
                headers: &headers,
                body: &body,
            };
            let opts = WriteOptions::of(&req, &user);
            let mut resp = match dispatch(&req, &opts, v) {
                Ok(r) => r,
                Err(e) => e.into_response(),
            };
            for w in opts.caller.take_warnings() {
                if let Ok(h) = axum::http::HeaderValue::from_str(&format!("299 - {w:?}")) {
                    resp.headers_mut().append("warning", h);
                }
            }
            resp
        }
    };
    shared.audit.lock().push(AuditRecord {
        user: user.username,
        verb: v.to_string(),
        group: target.def.group.clone(),
        version: target.def.version.clone(),
        resource: target.def.plural.clone(),
        subresource: target.subresource.clone().unwrap_or_default(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
        code: resp.status().as_u16(),
    });
    resp
}

/// One request on a resource, as the verb handlers see it.
struct Request<'a> {
    shared: &'a Shared,
    target: &'a Target,
    query: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

/// What a write does with fields its kind does not declare (`fieldValidation`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum FieldValidation {
    /// Dropped silently.
    Ignore,
    /// Dropped with a warning each (the default).
    Warn,
    /// The request is refused.
    Strict,
    /// A value that is none of these: the request is refused.
    Unknown(String),
}

impl FieldValidation {
    fn of(q: &HashMap<String, String>) -> Self {
        match q.get("fieldValidation").map(String::as_str) {
            None | Some("") | Some("Warn") => Self::Warn,
            Some("Ignore") => Self::Ignore,
            Some("Strict") => Self::Strict,
            Some(other) => Self::Unknown(other.to_string()),
        }
    }
}

/// Who writes and what the request asks for besides its body.
struct WriteOptions {
    /// The field manager its changes are recorded under.
    manager: String,
    /// What happens to unknown fields.
    field_validation: FieldValidation,
    /// The user and `dryRun=All` (admit and answer, store nothing), as admission sees them.
    caller: admission::Caller,
}

impl WriteOptions {
    fn of(req: &Request, user: &UserInfo) -> Self {
        Self {
            manager: manager(req.query, req.headers),
            field_validation: FieldValidation::of(req.query),
            caller: admission::Caller::new(
                user.clone(),
                req.query.get("dryRun").is_some_and(|d| d == "All"),
            ),
        }
    }
}

fn dispatch(req: &Request, opts: &WriteOptions, verb: &str) -> Result<Response, ApiError> {
    let t = req.target;
    if t.def.namespaced && t.name.is_some() && t.namespace.is_none() {
        return Err(ApiError::no_resource());
    }
    if t.subresource.as_deref() == Some("token")
        && t.def.group.is_empty()
        && t.def.plural == "serviceaccounts"
        && verb == "create"
    {
        return token::token_request(req);
    }
    if let Some(sub) = &t.subresource
        && !(sub == "status" && t.def.status_subresource)
    {
        return Err(ApiError::no_resource());
    }
    if let FieldValidation::Unknown(v) = &opts.field_validation {
        let options = match verb {
            "create" => "CreateOptions",
            "update" => "UpdateOptions",
            "patch" => "PatchOptions",
            _ => "",
        };
        if !options.is_empty() {
            return Err(ApiError::invalid_kind(
                options,
                "meta.k8s.io",
                "",
                vec![super::validate::Cause {
                    reason: "FieldValueNotSupported".into(),
                    field: "fieldValidation".into(),
                    message: format!(
                        "Unsupported value: {v:?}: supported values: \"\", \"Ignore\", \"Strict\", \"Warn\""
                    ),
                }],
            ));
        }
    }
    match verb {
        "get" => read::get(req),
        "list" => read::list(req),
        "create" => write::create_request(req, opts),
        "update" => write::update_request(req, opts),
        "patch" => patch::patch_request(req, opts),
        "delete" => delete::delete_request(req, opts),
        "deletecollection" => delete::delete_collection(req, opts),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

/// The field manager of a write: `fieldManager`, else the client's name from `User-Agent`.
fn manager(q: &HashMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(m) = q.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.split('/').next().unwrap_or(ua).to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The body as a JSON object (sent as JSON, YAML or Kubernetes protobuf).
fn parse_body(body: &Bytes, headers: &HeaderMap) -> Result<Value, ApiError> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if protobuf::is_protobuf(ct) {
        return protobuf::decode(body).map_err(|e| match e {
            protobuf::DecodeError::Malformed(m) => ApiError::unknown_format(m),
            protobuf::DecodeError::Unsupported(m) => ApiError::new(415, "UnsupportedMediaType", m),
        });
    }
    let parsed = if ct.contains("yaml") {
        serde_yaml_ng::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(ApiError::bad_request(
            "the body of the request was not an object",
        )),
        Err(e) => Err(ApiError::unknown_format(e)),
    }
}

/// The object `ns`/`name` of `def`, or 404.
fn get_obj(store: &Store, def: &ResourceDef, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
    store
        .get(def, ns, name)
        .ok_or_else(|| ApiError::not_found(def, name))
}

/// The object as its API serves it, with `apiVersion` and `kind`.
fn with_type(def: &ResourceDef, obj: &Value) -> Value {
    let mut o = events::from_storage(def, obj);
    o["apiVersion"] = json!(def.api_version());
    o["kind"] = json!(def.kind);
    o
}

/// The writer of a change by `manager`, for its managedFields entry.
fn writer<'a>(
    def: &'a ResourceDef,
    manager: &'a str,
    subresource: Option<&'a str>,
) -> ssa::Writer<'a> {
    ssa::Writer {
        schema: def.schema.as_ref(),
        manager,
        subresource: subresource.unwrap_or_default(),
        api_version: def.api_version(),
        time: super::now(),
    }
}
