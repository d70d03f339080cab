//! The HTTP side of the sandbox: discovery, OpenAPI v3, and the REST verbs on every served
//! resource, answering as kube-apiserver does (bodies, status codes, `Status` errors, Table
//! output for kubectl, newline-delimited watch streams).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::registry::{ResourceDef, from_crd};
use super::store::{Event, Store};
use super::{
    AuditRecord, Shared, UserInfo, admission, authz, events, namespace, now, ssa, table, validate,
};

/// A Kubernetes `Status` error.
#[derive(Debug)]
pub struct ApiError {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: String,
    pub(super) details: Option<Value>,
}

impl ApiError {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(super) fn not_found(def: &ResourceDef, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", def.qualified()),
        );
        e.details = Some(json!({"name": name, "group": def.group, "kind": def.plural}));
        e
    }

    fn body(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (status, axum::Json(v.clone())).into_response()
}

struct Target {
    def: ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Parsed {
    Discovery(Response),
    Resource(Box<Target>),
    NotFound,
}

fn find_def(store: &Store, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
    store.resource(group, version, plural)
}

fn parse(store: &Store, segs: &[&str], base: &str) -> Parsed {
    let (group, version, rest): (&str, &str, &[&str]) = match segs {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Parsed::NotFound,
    };
    if rest.is_empty() {
        let resources: Vec<Value> = store
            .resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .flat_map(|r| r.discovery())
            .collect();
        if resources.is_empty() {
            return Parsed::NotFound;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let _ = base;
        return Parsed::Discovery(json_response(
            StatusCode::OK,
            &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        ));
    }
    // namespaces/{ns}/{plural}/... for namespaced resources
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && let Some(def) = find_def(store, group, version, rest[2]).filter(|d| d.namespaced)
    {
        {
            return Parsed::Resource(Box::new(Target {
                def,
                namespace: Some(rest[1].to_string()),
                name: rest.get(3).map(|s| s.to_string()),
                subresource: rest.get(4).map(|s| s.to_string()),
            }));
        }
    }
    let Some(def) = find_def(store, group, version, rest[0]) else {
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
    if segs == ["openapi", "v2"] && !accepts_json(&headers) {
        // The OpenAPI v2 document is served as JSON only: a client asking for protobuf alone
        // is told so rather than handed JSON it would parse as protobuf.
        return ApiError::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json",
        )
        .into_response();
    }
    if let Some(resp) = discovery(&shared, &segs) {
        return resp;
    }
    let parsed = {
        let store = shared.store.lock();
        parse(&store, &segs, &shared.base)
    };
    let target = match parsed {
        Parsed::Discovery(r) => return r,
        Parsed::NotFound => {
            return ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
            .into_response();
        }
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
        (Ok(()), "watch") => watch(&shared, &target, &q),
        (Ok(()), _) => admission::with_user(&user, || {
            let mut resp = match dispatch(&shared, &method, &target, &q, &headers, &body, v) {
                Ok(r) => r,
                Err(e) => e.into_response(),
            };
            for w in admission::take_warnings() {
                if let Ok(h) = axum::http::HeaderValue::from_str(&format!("299 - {w:?}")) {
                    resp.headers_mut().append("warning", h);
                }
            }
            resp
        }),
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

fn discovery(shared: &Shared, segs: &[&str]) -> Option<Response> {
    let store = shared.store.lock();
    let r = match segs {
        ["version"] => {
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-uami-sandbox", "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "", "compiler": "rustc", "platform": "linux/amd64"})
        }
        ["api"] => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.base.trim_start_matches("http://").trim_end_matches('/')}]})
        }
        ["apis"] => {
            let mut groups: Vec<Value> = Vec::new();
            let mut seen: Vec<String> = Vec::new();
            for r in store.resources.iter().filter(|r| !r.group.is_empty()) {
                if seen.contains(&r.group) {
                    continue;
                }
                seen.push(r.group.clone());
                let versions: Vec<Value> = store
                    .resources
                    .iter()
                    .filter(|x| x.group == r.group)
                    .map(|x| x.version.clone())
                    .fold(Vec::new(), |mut acc: Vec<String>, v| {
                        if !acc.contains(&v) {
                            acc.push(v);
                        }
                        acc
                    })
                    .into_iter()
                    .map(|v| json!({"groupVersion": format!("{}/{v}", r.group), "version": v}))
                    .collect();
                let preferred = versions.first().cloned().unwrap_or(Value::Null);
                groups.push(
                    json!({"name": r.group, "versions": versions, "preferredVersion": preferred}),
                );
            }
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        ["apis", g] => {
            let versions: Vec<Value> = store
                .resources
                .iter()
                .filter(|x| x.group == *g)
                .map(
                    |x| json!({"groupVersion": format!("{g}/{}", x.version), "version": x.version}),
                )
                .collect();
            if versions.is_empty() {
                return None;
            }
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions, "preferredVersion": versions[0]})
        }
        [".well-known", "openid-configuration"] => shared.issuer.openid_configuration(),
        ["openid", "v1", "jwks"] => shared.issuer.jwks(),
        ["openapi", "v2"] => table::openapi_v2(&store.resources),
        ["openapi", "v3"] => {
            let mut paths = serde_json::Map::new();
            let mut gvs: Vec<(String, String)> = store
                .resources
                .iter()
                .map(|r| (r.group.clone(), r.version.clone()))
                .collect();
            gvs.dedup();
            for (g, v) in gvs {
                let key = if g.is_empty() {
                    format!("api/{v}")
                } else {
                    format!("apis/{g}/{v}")
                };
                paths.insert(
                    key.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", store.rv)}),
                );
            }
            json!({"paths": paths})
        }
        ["openapi", "v3", rest @ ..] => {
            let (g, v) = match rest {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return None,
            };
            table::openapi_v3(&store.resources, g, v)
        }
        _ => return None,
    };
    Some(json_response(StatusCode::OK, &r))
}

fn kind_list(def: &ResourceDef) -> String {
    format!("{}List", def.kind)
}

fn with_type(def: &ResourceDef, obj: &Value) -> Value {
    let mut o = events::from_storage(def, obj);
    o["apiVersion"] = json!(def.api_version());
    o["kind"] = json!(def.kind);
    o
}

fn matches_labels(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(|v| v.as_str());
    let mut reqs: Vec<String> = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                reqs.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    reqs.push(cur);
    reqs.iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .all(|r| {
            if let Some((k, v)) = r.split_once("!=") {
                get(k.trim()) != Some(v.trim())
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                get(k.trim()) == Some(v.trim())
            } else if let Some((k, set)) = r.split_once(" notin ") {
                let set: Vec<&str> = set
                    .trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(str::trim)
                    .collect();
                get(k.trim()).is_none_or(|v| !set.contains(&v))
            } else if let Some((k, set)) = r.split_once(" in ") {
                let set: Vec<&str> = set
                    .trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(str::trim)
                    .collect();
                get(k.trim()).is_some_and(|v| set.contains(&v))
            } else if let Some(k) = r.strip_prefix('!') {
                get(k.trim()).is_none()
            } else {
                get(r).is_some()
            }
        })
}

fn matches_fields(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|r| {
            let (k, v, neg) = match r.split_once("!=") {
                Some((k, v)) => (k, v, true),
                None => match r.split_once("==").or_else(|| r.split_once('=')) {
                    Some((k, v)) => (k, v, false),
                    None => return true,
                },
            };
            let actual = match k.trim() {
                "metadata.name" => obj["metadata"]["name"].as_str().map(str::to_string),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str().map(str::to_string),
                "status.phase" => obj["status"]["phase"].as_str().map(str::to_string),
                k if obj["kind"] == "Event" => events::field(obj, k),
                _ => None,
            };
            (actual.as_deref() == Some(v.trim())) != neg
        })
}

fn selected(obj: &Value, q: &HashMap<String, String>) -> bool {
    q.get("labelSelector")
        .is_none_or(|s| matches_labels(obj, s))
        && q.get("fieldSelector")
            .is_none_or(|s| matches_fields(obj, s))
}

fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|a| a.contains("json") || a.contains("*/*") || a.trim().is_empty())
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    shared: &Shared,
    method: &Method,
    t: &Target,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    verb: &str,
) -> Result<Response, ApiError> {
    let ns = t.namespace.clone().unwrap_or_default();
    if t.def.namespaced && t.name.is_some() && t.namespace.is_none() {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    if t.subresource.as_deref() == Some("token")
        && t.def.group.is_empty()
        && t.def.plural == "serviceaccounts"
        && verb == "create"
    {
        return token_request(shared, t, body, headers, &ns);
    }
    if let Some(sub) = &t.subresource
        && !(sub == "status" && t.def.status_subresource)
    {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let dry_run = q.get("dryRun").is_some_and(|d| d == "All");
    STRICT.with(|s| s.set(q.get("fieldValidation").is_some_and(|f| f == "Strict")));
    match verb {
        "get" => {
            let store = shared.store.lock();
            let obj = get_obj(&store, &t.def, &ns, t.name.as_deref().unwrap_or_default())?;
            if wants_table(headers) {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(&t.def, &[obj.as_ref().clone()], &store.rv.to_string()),
                ));
            }
            Ok(json_response(StatusCode::OK, &with_type(&t.def, &obj)))
        }
        "list" => list(shared, t, q, headers),
        "create" if t.def.plural == "selfsubjectreviews" => {
            let mut out = parse_body(body, headers)?;
            out["status"] = json!({"userInfo": admission::current_user().to_json()});
            Ok(json_response(StatusCode::CREATED, &with_type(&t.def, &out)))
        }
        "create" if t.def.plural == "selfsubjectaccessreviews" => {
            let obj = parse_body(body, headers)?;
            let store = shared.store.lock();
            let out = authz::review(&store, &admission::current_user(), obj);
            Ok(json_response(StatusCode::CREATED, &with_type(&t.def, &out)))
        }
        "create" => {
            let obj = parse_body(body, headers)?;
            let mut store = shared.store.lock();
            let (status, out) = create(
                &mut store,
                &t.def,
                t.namespace.as_deref(),
                obj,
                &manager(q, headers),
                dry_run,
            )?;
            Ok(json_response(status, &with_type(&t.def, &out)))
        }
        "update" => {
            let obj = parse_body(body, headers)?;
            let mut store = shared.store.lock();
            let name = t.name.clone().unwrap_or_default();
            let out = update(
                &mut store,
                &t.def,
                &ns,
                &name,
                obj,
                t.subresource.as_deref(),
                &manager(q, headers),
                dry_run,
            )?;
            Ok(json_response(StatusCode::OK, &with_type(&t.def, &out)))
        }
        "patch" => {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let name = t.name.clone().unwrap_or_default();
            let mut store = shared.store.lock();
            let (status, out) = patch(
                &mut store,
                &t.def,
                &ns,
                &name,
                t.subresource.as_deref(),
                &ct,
                body,
                q,
                headers,
                dry_run,
            )?;
            Ok(json_response(status, &with_type(&t.def, &out)))
        }
        "delete" => {
            let mut store = shared.store.lock();
            let out = delete(
                &mut store,
                &t.def,
                &ns,
                t.name.as_deref().unwrap_or_default(),
                dry_run,
            )?;
            Ok(json_response(StatusCode::OK, &with_type(&t.def, &out)))
        }
        "deletecollection" => {
            let mut store = shared.store.lock();
            let names: Vec<(String, String)> = store
                .objects
                .get(&t.def.key())
                .map(|o| {
                    o.iter()
                        .filter(|((n, _), obj)| {
                            (t.namespace.is_none() || *n == ns) && selected(obj, q)
                        })
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            for (n, name) in names {
                delete(&mut store, &t.def, &n, &name, dry_run)?;
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ))
        }
        _ => {
            let _ = method;
            Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ))
        }
    }
}

/// `POST .../serviceaccounts/{name}/token`: a TokenRequest answered with a signed token.
fn token_request(
    shared: &Shared,
    t: &Target,
    body: &Bytes,
    headers: &HeaderMap,
    ns: &str,
) -> Result<Response, ApiError> {
    let request = parse_body(body, headers)?;
    let sa = {
        let store = shared.store.lock();
        get_obj(&store, &t.def, ns, t.name.as_deref().unwrap_or_default())?
    };
    match super::serviceaccount::token_request(&shared.issuer, &sa, &request) {
        Ok(out) => Ok(json_response(StatusCode::CREATED, &out)),
        Err((code, reason, message)) => Err(ApiError::new(code, reason, message)),
    }
}

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

fn parse_body(body: &Bytes, headers: &HeaderMap) -> Result<Value, ApiError> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if super::protobuf::is_protobuf(ct) {
        return super::protobuf::decode(body).map_err(|e| match e {
            super::protobuf::DecodeError::Malformed(m) => ApiError::new(
                400,
                "BadRequest",
                format!("the body of the request was in an unknown format: {m}"),
            ),
            super::protobuf::DecodeError::Unsupported(m) => {
                ApiError::new(415, "UnsupportedMediaType", m)
            }
        });
    }
    let parsed = if ct.contains("yaml") {
        serde_yaml_ng::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(ApiError::new(
            400,
            "BadRequest",
            "the body of the request was not an object",
        )),
        Err(e) => Err(ApiError::new(
            400,
            "BadRequest",
            format!("the body of the request was in an unknown format: {e}"),
        )),
    }
}

fn get_obj(store: &Store, def: &ResourceDef, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
    store
        .objects
        .get(&def.key())
        .and_then(|o| o.get(&(ns.to_string(), name.to_string())))
        .cloned()
        .ok_or_else(|| ApiError::not_found(def, name))
}

fn list(
    shared: &Shared,
    t: &Target,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let store = shared.store.lock();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let after: Option<(String, String, u64)> = match q.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            let decoded =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
            let Some((rv, key)) = decoded.as_deref().and_then(|d| d.split_once('|')) else {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "continue key is not valid",
                ));
            };
            if rv.parse::<u64>().unwrap_or(0) < store.oldest {
                return Err(ApiError::new(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            let (n, name) = key.split_once('/').unwrap_or(("", key));
            Some((
                n.to_string(),
                name.to_string(),
                rv.parse::<u64>().unwrap_or(0),
            ))
        }
    };
    // Every page of one list reports the resourceVersion of its first page, as kube-apiserver
    // does. The pages are not a snapshot (there is no MVCC here), but a watch started from that
    // resourceVersion replays every change made while the pages were read, so nothing is lost.
    let list_rv = after.as_ref().map_or(store.rv, |(_, _, rv)| *rv);
    let after = after.map(|(n, name, _)| (n, name));
    let ns = t.namespace.clone();
    let mut items: Vec<Value> = Vec::new();
    let mut next: Option<String> = None;
    if let Some(objs) = store.objects.get(&t.def.key()) {
        let iter = objs
            .iter()
            .filter(|((n, _), _)| ns.as_ref().is_none_or(|x| x == n))
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a));
        for ((n, name), obj) in iter {
            if !selected(obj, q) {
                continue;
            }
            if items.len() == limit {
                break;
            }
            items.push(with_type(&t.def, obj));
            next = Some(format!("{n}/{name}"));
        }
        // A continue token only when more items follow.
        if items.len() == limit {
            let last = next.clone().unwrap_or_default();
            let (ln, lname) = last.split_once('/').unwrap_or(("", ""));
            let more = objs
                .iter()
                .filter(|((n, _), _)| ns.as_ref().is_none_or(|x| x == n))
                .any(|((n, name), obj)| {
                    (n.as_str(), name.as_str()) > (ln, lname) && selected(obj, q)
                });
            next = more.then(|| {
                base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    format!("{list_rv}|{last}"),
                )
            });
        } else {
            next = None;
        }
    }
    let rv = list_rv.to_string();
    if wants_table(headers) {
        let raw: Vec<Value> = items;
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&t.def, &raw, &rv),
        ));
    }
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = next {
        meta["continue"] = json!(c);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"apiVersion": t.def.api_version(), "kind": kind_list(&t.def), "metadata": meta, "items": items}),
    ))
}

fn random_suffix() -> String {
    use rand::Rng;
    let chars = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| chars[rng.random_range(0..chars.len())] as char)
        .collect()
}

fn invalid(def: &ResourceDef, name: &str, causes: Vec<validate::Cause>) -> ApiError {
    let lines: Vec<String> = causes.iter().map(|c| c.line()).collect();
    let joined = if lines.len() == 1 {
        lines[0].clone()
    } else {
        format!("[{}]", lines.join(", "))
    };
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("{} \"{name}\" is invalid: {joined}", def.qualified_kind()),
    );
    e.details = Some(json!({
        "name": name, "group": def.group, "kind": def.kind,
        "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
    }));
    e
}

thread_local! {
    /// `fieldValidation=Strict` of the request being handled (requests are handled
    /// synchronously under the store lock, so one thread sees one request at a time).
    static STRICT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Admission of a custom resource: prune, default, validate.
fn admit(
    def: &ResourceDef,
    obj: &mut Value,
    old: Option<&Value>,
    name: &str,
) -> Result<(), ApiError> {
    let Some(schema) = &def.schema else {
        return Ok(());
    };
    if STRICT.with(|s| s.get()) {
        let mut unknown = Vec::new();
        validate::unknown_fields(obj, schema, "", &mut unknown);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|u| format!("unknown field \"{u}\""))
                .collect();
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "{} in body: strict decoding error: {}",
                    def.qualified_kind(),
                    list.join(", ")
                ),
            ));
        }
    }
    validate::prune(obj, schema, true);
    validate::default(obj, schema);
    let causes = match &def.compiled {
        Some(c) => validate::validate(obj, old, c),
        None => validate::validate(obj, old, &validate::compile(schema)),
    };
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(def, name, causes))
    }
}

fn spec_part(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    c
}

fn create(
    store: &mut Store,
    def: &ResourceDef,
    ns: Option<&str>,
    obj: Value,
    mgr: &str,
    dry_run: bool,
) -> Result<(StatusCode, Value), ApiError> {
    let mut obj = events::to_storage(def, obj);
    let ns = if def.namespaced {
        let body_ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let ns = ns
            .map(str::to_string)
            .or(body_ns.clone())
            .unwrap_or_else(|| "default".into());
        if body_ns.is_some_and(|b| b != ns) {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if !store.namespace_exists(&ns) {
            let mut e = ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"));
            e.details = Some(json!({"name": ns, "kind": "namespaces"}));
            return Err(e);
        }
        if namespace::terminating(store, &ns) {
            return Err(namespace::forbidden(&ns));
        }
        ns
    } else {
        String::new()
    };
    let mut name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        match obj["metadata"]["generateName"].as_str() {
            Some(prefix) => name = format!("{prefix}{}", random_suffix()),
            None => {
                return Err(invalid(
                    def,
                    "",
                    vec![validate::Cause {
                        reason: "FieldValueRequired".into(),
                        field: "metadata.name".into(),
                        message: "Required value: name or generateName is required".into(),
                    }],
                ));
            }
        }
    }
    let key = def.key();
    if store
        .objects
        .get(&key)
        .is_some_and(|o| o.contains_key(&(ns.clone(), name.clone())))
    {
        let mut e = ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", def.qualified()),
        );
        e.details = Some(json!({"name": name, "group": def.group, "kind": def.plural}));
        return Err(e);
    }
    obj["apiVersion"] = json!(def.api_version());
    obj["kind"] = json!(def.kind);
    admit(def, &mut obj, None, &name)?;
    if def.plural == "customresourcedefinitions" {
        let defs = from_crd(&obj).map_err(|m| {
            invalid(
                def,
                &name,
                vec![validate::Cause {
                    reason: "FieldValueInvalid".into(),
                    field: "spec".into(),
                    message: m,
                }],
            )
        })?;
        if !dry_run {
            let accepted = obj["spec"]["names"].clone();
            obj["status"] = json!({
                "acceptedNames": accepted,
                "storedVersions": defs.iter().map(|d| d.version.clone()).collect::<Vec<_>>(),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
                ],
            });
            store
                .resources
                .retain(|r| !(r.group == defs[0].group && r.plural == defs[0].plural));
            store.resources.extend(defs);
        }
    }
    if def.group.is_empty() && def.plural == "namespaces" {
        namespace::on_create(&mut obj, &name);
    }
    if def.group.is_empty() && def.plural == "secrets" {
        super::registry::normalize_secret(&mut obj);
    }
    if def.status_subresource
        && def.plural != "customresourcedefinitions"
        && def.plural != "namespaces"
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    let meta = obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::new(400, "BadRequest", "metadata must be an object"))?;
    meta.insert("name".into(), json!(name));
    if def.namespaced {
        meta.insert("namespace".into(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now()));
    meta.insert("generation".into(), json!(1));
    meta.remove("deletionTimestamp");
    meta.remove("managedFields");
    admission::validate(store, def, "CREATE", None, Some(&obj), None, dry_run)?;
    ssa::record_update(
        None,
        &mut obj,
        def.schema.as_ref(),
        mgr,
        "",
        &def.api_version(),
        &now(),
    );
    if dry_run {
        return Ok((StatusCode::CREATED, obj));
    }
    let rv = store.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    let arc = Arc::new(obj.clone());
    store
        .objects
        .entry(key)
        .or_default()
        .insert((ns.clone(), name), arc.clone());
    store.emit(rv, def, &ns, "ADDED", arc);
    Ok((StatusCode::CREATED, obj))
}

/// Store `new` in place of `old` (the result of an update, patch or apply), with the status
/// subresource rules, admission, generation, no-op detection and finalization.
#[allow(clippy::too_many_arguments)]
fn commit(
    store: &mut Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    old: &Value,
    mut new: Value,
    subresource: Option<&str>,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let status_sub = subresource == Some("status");
    if def.status_subresource && def.plural != "customresourcedefinitions" {
        if status_sub {
            // Only status changes through /status.
            let status = new.get("status").cloned();
            let mf = new["metadata"]["managedFields"].clone();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new["metadata"]["managedFields"] = mf;
        } else {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
    }
    new["apiVersion"] = json!(def.api_version());
    new["kind"] = json!(def.kind);
    for k in [
        "uid",
        "creationTimestamp",
        "name",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old["metadata"].get(k) {
            Some(v) => new["metadata"][k] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    if new["metadata"]["managedFields"].is_null()
        && let Some(m) = new["metadata"].as_object_mut()
    {
        m.remove("managedFields");
    }
    admit(def, &mut new, Some(old), name)?;
    if def.group.is_empty() && def.plural == "secrets" {
        super::registry::normalize_secret(&mut new);
    }
    admission::validate(
        store,
        def,
        "UPDATE",
        subresource,
        Some(&new),
        Some(old),
        dry_run,
    )?;
    if old["metadata"]["deletionTimestamp"].is_string() {
        let old_f: Vec<Value> = old["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let new_f: Vec<Value> = new["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if new_f.iter().any(|f| !old_f.contains(f)) {
            return Err(invalid(
                def,
                name,
                vec![validate::Cause {
                    reason: "FieldValueForbidden".into(),
                    field: "metadata.finalizers".into(),
                    message:
                        "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                }],
            ));
        }
    }
    let old_gen = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let generation = if spec_part(old) != spec_part(&new) {
        old_gen + 1
    } else {
        old_gen
    };
    new["metadata"]["generation"] = json!(generation);
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    // No-op: nothing but managedFields times changed.
    let strip = |v: &Value| {
        let mut c = v.clone();
        if let Some(mf) = c["metadata"]["managedFields"].as_array_mut() {
            for m in mf {
                if let Some(o) = m.as_object_mut() {
                    o.remove("time");
                }
            }
        }
        c
    };
    if strip(old) == strip(&new) {
        return Ok(old.clone());
    }
    if dry_run {
        return Ok(new);
    }
    let rv = store.next_rv();
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    let key = def.key();
    let finalized = new["metadata"]["deletionTimestamp"].is_string()
        && new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
    let arc = Arc::new(new.clone());
    if finalized {
        if let Some(o) = store.objects.get_mut(&key) {
            o.remove(&(ns.to_string(), name.to_string()));
        }
        store.emit(rv, def, ns, "DELETED", arc);
        after_delete(store, def, &new);
        namespace::content_changed(store, ns);
    } else {
        store
            .objects
            .entry(key)
            .or_default()
            .insert((ns.to_string(), name.to_string()), arc.clone());
        store.emit(rv, def, ns, "MODIFIED", arc);
    }
    Ok(new)
}

#[allow(clippy::too_many_arguments)]
fn update(
    store: &mut Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    obj: Value,
    subresource: Option<&str>,
    mgr: &str,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let old = get_obj(store, def, ns, name)?;
    let mut obj = events::to_storage(def, obj);
    if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "the name of the object does not match the name on the URL",
        ));
    }
    match obj["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            let mut e = ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    def.qualified()
                ),
            );
            e.details = Some(json!({"name": name, "group": def.group, "kind": def.plural}));
            return Err(e);
        }
        _ => {}
    }
    if obj["metadata"]["managedFields"].is_null() {
        obj["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
    }
    let mut merged = obj;
    ssa::record_update(
        Some(&old),
        &mut merged,
        def.schema.as_ref(),
        mgr,
        subresource.unwrap_or_default(),
        &def.api_version(),
        &now(),
    );
    commit(store, def, ns, name, &old, merged, subresource, dry_run)
}

#[allow(clippy::too_many_arguments)]
fn patch(
    store: &mut Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    subresource: Option<&str>,
    ct: &str,
    body: &Bytes,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    dry_run: bool,
) -> Result<(StatusCode, Value), ApiError> {
    let existing = get_obj(store, def, ns, name).ok();
    if ct.starts_with("application/apply-patch") {
        let Some(mgr) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "PATCH requests with apply content type require fieldManager",
            ));
        };
        let mut intent: Value = serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("error decoding YAML: {e}")))?;
        if !intent.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body of an apply patch must be an object",
            ));
        }
        if intent["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != name)
        {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
            ));
        }
        let force = q.get("force").is_some_and(|f| f == "true");
        if def.status_subresource
            && subresource.is_none()
            && def.plural != "customresourcedefinitions"
            && let Some(m) = intent.as_object_mut()
        {
            m.remove("status");
        }
        let sub = subresource.unwrap_or_default();
        match existing {
            None => {
                if subresource.is_some() {
                    return Err(ApiError::not_found(def, name));
                }
                // An apply that creates needs `create` as well as `patch`.
                authz::authorize(
                    store,
                    &admission::current_user(),
                    &authz::Attributes {
                        verb: "create",
                        group: &def.group,
                        resource: &def.plural,
                        subresource: "",
                        namespace: ns,
                        name: "",
                    },
                )?;
                intent["metadata"]["name"] = json!(name);
                let applied = ssa::apply(
                    None,
                    &intent,
                    def.schema.as_ref(),
                    mgr,
                    sub,
                    &def.api_version(),
                    &now(),
                    true,
                )
                .map_err(|_| ApiError::new(500, "InternalError", "apply failed"))?;
                let mf = applied["metadata"]["managedFields"].clone();
                let (status, mut created) = create(
                    store,
                    def,
                    Some(ns).filter(|_| def.namespaced),
                    applied,
                    mgr,
                    dry_run,
                )?;
                // The applier owns what it applied (not an Update entry).
                created["metadata"]["managedFields"] = mf;
                if !dry_run {
                    let key = def.key();
                    let real_ns = created["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if let Some(o) = store.objects.get_mut(&key) {
                        o.insert((real_ns, name.to_string()), Arc::new(created.clone()));
                    }
                }
                Ok((status, created))
            }
            Some(old) => {
                let applied = ssa::apply(Some(&old), &intent, def.schema.as_ref(), mgr, sub, &def.api_version(), &now(), force).map_err(|conflicts| {
                    let lines: Vec<String> = conflicts.iter().map(|c| format!("conflict with \"{}\": {}", c.manager, c.field)).collect();
                    let mut e = ApiError::new(409, "Conflict", format!("Apply failed with {} conflict{}: {}", conflicts.len(), if conflicts.len() == 1 { "" } else { "s" }, lines.join("\n")));
                    e.details = Some(json!({"causes": conflicts.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field})).collect::<Vec<_>>()}));
                    e
                })?;
                Ok((
                    StatusCode::OK,
                    commit(store, def, ns, name, &old, applied, subresource, dry_run)?,
                ))
            }
        }
    } else {
        let old = existing.ok_or_else(|| ApiError::not_found(def, name))?;
        // A patch applies to the object in the shape of the API it was sent to.
        let mut new = events::from_storage(def, &old);
        if ct.starts_with("application/json-patch+json") {
            let ops: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::new(
                    400,
                    "BadRequest",
                    format!("the body of the request was in an unknown format: {e}"),
                )
            })?;
            // A `test` for null on a missing path passes, as in the apiserver.
            let ops: Vec<Value> = ops
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|op| {
                    !(op["op"] == "test"
                        && op["value"].is_null()
                        && op["path"].as_str().and_then(|p| new.pointer(p)).is_none())
                })
                .collect();
            let patch: json_patch::Patch =
                serde_json::from_value(Value::Array(ops)).map_err(|e| {
                    ApiError::new(400, "BadRequest", format!("invalid JSON patch: {e}"))
                })?;
            json_patch::patch(&mut new, &patch).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        } else if ct.starts_with("application/merge-patch+json")
            || (ct.starts_with("application/strategic-merge-patch+json") && def.schema.is_none())
        {
            let p: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::new(
                    400,
                    "BadRequest",
                    format!("the body of the request was in an unknown format: {e}"),
                )
            })?;
            json_patch::merge(&mut new, &p);
        } else {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {ct:?})"
                ),
            ));
        }
        let mut new = events::to_storage(def, new);
        if let Some(rv) = new["metadata"]["resourceVersion"].as_str()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    def.qualified()
                ),
            ));
        }
        ssa::record_update(
            Some(&old),
            &mut new,
            def.schema.as_ref(),
            &manager(q, headers),
            subresource.unwrap_or_default(),
            &def.api_version(),
            &now(),
        );
        Ok((
            StatusCode::OK,
            commit(store, def, ns, name, &old, new, subresource, dry_run)?,
        ))
    }
}

fn after_delete(store: &mut Store, def: &ResourceDef, obj: &Value) {
    if def.plural == "customresourcedefinitions" {
        let group = obj["spec"]["group"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let plural = obj["spec"]["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        store
            .resources
            .retain(|r| !(r.group == group && r.plural == plural));
        store.objects.remove(&(group, plural));
    }
}

pub(super) fn delete(
    store: &mut Store,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    dry_run: bool,
) -> Result<Value, ApiError> {
    if def.group.is_empty() && def.plural == "namespaces" {
        return namespace::delete_namespace(store, def, name, dry_run);
    }
    let old = get_obj(store, def, ns, name)?;
    admission::validate(store, def, "DELETE", None, None, Some(&old), dry_run)?;
    let has_finalizers = old["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if old["metadata"]["deletionTimestamp"].is_string() || dry_run {
            return Ok(old.as_ref().clone());
        }
        let mut new = old.as_ref().clone();
        new["metadata"]["deletionTimestamp"] = json!(now());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        new["metadata"]["generation"] =
            json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        let rv = store.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        let arc = Arc::new(new.clone());
        store
            .objects
            .entry(def.key())
            .or_default()
            .insert((ns.to_string(), name.to_string()), arc.clone());
        store.emit(rv, def, ns, "MODIFIED", arc);
        return Ok(new);
    }
    if dry_run {
        return Ok(old.as_ref().clone());
    }
    if let Some(o) = store.objects.get_mut(&def.key()) {
        o.remove(&(ns.to_string(), name.to_string()));
    }
    let rv = store.next_rv();
    let mut gone = old.as_ref().clone();
    gone["metadata"]["resourceVersion"] = json!(rv.to_string());
    store.emit(rv, def, ns, "DELETED", Arc::new(gone.clone()));
    after_delete(store, def, &gone);
    namespace::content_changed(store, ns);
    Ok(gone)
}

fn watch(shared: &Arc<Shared>, t: &Target, q: &HashMap<String, String>) -> Response {
    let rv: Option<u64> = q
        .get("resourceVersion")
        .filter(|r| !r.is_empty())
        .and_then(|r| r.parse().ok());
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let initial = q.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1024);
    let def = t.def.clone();
    let ns = t.namespace.clone();
    let name = t.name.clone();
    let q = q.clone();
    let shared = shared.clone();
    let line = |v: Value| -> Result<Bytes, std::io::Error> {
        let mut s = v.to_string();
        s.push('\n');
        Ok(Bytes::from(s))
    };
    let key = def.key();
    let matches = {
        let ns = ns.clone();
        let name = name.clone();
        let q = q.clone();
        move |e: &Event| -> bool {
            e.resource == key
                && ns.as_ref().is_none_or(|n| *n == e.namespace)
                && name
                    .as_ref()
                    .is_none_or(|n| e.object["metadata"]["name"].as_str() == Some(n))
                && selected(&e.object, &q)
        }
    };
    // Subscribe first, then replay: nothing falls in between.
    let (mut live, replay, start_rv, gone) = {
        let store = shared.store.lock();
        let live = store.tx.subscribe();
        let mut replay: Vec<Value> = Vec::new();
        let mut gone = false;
        match rv {
            Some(rv) if rv != 0 && !initial => {
                if rv < store.oldest {
                    gone = true;
                } else {
                    for e in store.log.iter().filter(|e| e.rv > rv && matches(e)) {
                        replay.push(json!({"type": e.kind, "object": with_type(&def, &e.object)}));
                    }
                }
            }
            _ => {
                if let Some(objs) = store.objects.get(&def.key()) {
                    for ((n, nm), obj) in objs {
                        if ns.as_ref().is_none_or(|x| x == n)
                            && name.as_ref().is_none_or(|x| x == nm)
                            && selected(obj, &q)
                        {
                            replay.push(json!({"type": "ADDED", "object": with_type(&def, obj)}));
                        }
                    }
                }
                if initial {
                    replay.push(json!({"type": "BOOKMARK", "object": {"apiVersion": def.api_version(), "kind": def.kind, "metadata": {"resourceVersion": store.rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}));
                }
            }
        }
        (live, replay, store.rv, gone)
    };
    let mut epoch = shared.disconnect.subscribe();
    let (gone, close_after) = watch_chaos(&shared, gone, rv.is_some_and(|r| r != 0) && !initial);
    tokio::spawn(async move {
        if gone {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {} ({})", rv.unwrap_or(0), start_rv), "reason": "Expired", "code": 410});
            let _ = tx
                .send(line(json!({"type": "ERROR", "object": status})))
                .await;
            return;
        }
        let mut last = rv.unwrap_or(0);
        for ev in replay {
            if let Some(r) = ev["object"]["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse::<u64>().ok())
            {
                last = last.max(r);
            }
            if tx.send(line(ev)).await.is_err() {
                return;
            }
        }
        let last_seen = start_rv;
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        let mut current = last_seen;
        let chaos =
            tokio::time::sleep(close_after.unwrap_or(Duration::from_secs(u64::from(u32::MAX))));
        tokio::pin!(chaos);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = &mut chaos => {
                    shared.watch_chaos.lock().closed += 1;
                    break;
                }
                _ = epoch.changed() => break,
                _ = tick.tick() => {
                    if bookmarks {
                        let b = json!({"type": "BOOKMARK", "object": {"apiVersion": def.api_version(), "kind": def.kind, "metadata": {"resourceVersion": current.to_string()}}});
                        if tx.send(line(b)).await.is_err() { return; }
                    }
                }
                ev = live.recv() => {
                    match ev {
                        Ok(e) => {
                            current = current.max(e.rv);
                            if e.rv <= last_seen || !matches(&e) { continue; }
                            let v = json!({"type": e.kind, "object": with_type(&def, &e.object)});
                            if tx.send(line(v)).await.is_err() { return; }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "watch fell behind", "reason": "Expired", "code": 410});
                            let _ = tx.send(line(json!({"type": "ERROR", "object": status}))).await;
                            return;
                        }
                        Err(_) => return,
                    }
                }
            }
        }
        let _ = last;
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Roll the watch faults for a new watch: whether a resume is answered 410 Gone, and when the
/// watch will be closed.
fn watch_chaos(shared: &Shared, gone: bool, resume: bool) -> (bool, Option<Duration>) {
    use rand::Rng;
    let mut c = shared.watch_chaos.lock();
    let c = &mut *c;
    let rate = c.faults.gone_rate;
    let gone_now = !gone && resume && rate > 0.0 && c.rng.random::<f64>() < rate;
    if gone_now {
        c.gone += 1;
    }
    let within = c.faults.close_within;
    let close = (!within.is_zero()).then(|| within.mul_f64(c.rng.random::<f64>().max(0.01)));
    (gone || gone_now, close)
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Self {
        e.into_response()
    }
}

/// Create or replace objects from outside HTTP (the library API).
pub fn create_object(store: &mut Store, obj: Value) -> Result<Value, String> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let def = store
        .resources
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
        .cloned()
        .ok_or_else(|| format!("no resource serves {api_version} {kind}"))?;
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    create(store, &def, ns.as_deref(), obj, "sandbox", false)
        .map(|(_, v)| v)
        .map_err(|e| e.message)
}
