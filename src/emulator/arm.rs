//! ARM: one handler that routes by the real URL shapes, checks the api-version, authenticates the
//! bearer token, applies ARM's token buckets and the injected faults, enforces RBAC, and then runs
//! the operation against the state. Every answer is counted under the spec's operationId.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::aad::{self, Claims};
use super::faults::{arm_limits, kind as fk, take_next};
use super::knobs::LroForm;
use super::rbac;
use super::state::{
    Assignment, ComputeKind, IdentityChange, IdentityState, LRO_DEADLINE, Operation, Rg,
    State as Az,
};
use super::{Exchange, Inner, fic};
use super::{lro, paging, resources};

/// Whether an operation id is an ARM write or delete.
pub fn is_write(op: &str) -> bool {
    ["_CreateOrUpdate", "_Update", "_Delete", "_Create"]
        .iter()
        .any(|s| op.ends_with(s))
}

#[derive(Debug)]
enum Route {
    Subscription {
        sub: String,
    },
    ResourceGroup {
        sub: String,
        rg: String,
    },
    Identity {
        sub: String,
        rg: String,
        name: String,
    },
    IdentityList {
        sub: String,
        rg: Option<String>,
    },
    Fic {
        sub: String,
        rg: String,
        name: String,
        fic: String,
    },
    FicList {
        sub: String,
        rg: String,
        name: String,
    },
    Compute {
        kind: ComputeKind,
        sub: String,
        rg: String,
        name: String,
    },
    AsyncOp {
        sub: String,
        id: String,
    },
    /// A storage account or key vault (`resources.rs`).
    Resource {
        sub: String,
        rg: String,
        type_: &'static str,
        name: String,
    },
    Assignment {
        scope: String,
        name: String,
    },
    AssignmentList {
        scope: String,
    },
    Definition {
        guid: String,
    },
    DefinitionList {
        scope: String,
    },
    Unknown,
}

const MI_VERSIONS: &[&str] = &[
    "2018-11-30",
    "2021-09-30-preview",
    "2022-01-31-preview",
    "2023-01-31",
    "2023-07-31-preview",
    "2024-11-30",
    "2025-01-31-preview",
    "2026-04-30",
    "2026-05-31",
];
/// Federated identity credentials arrived with 2022-01-31-preview.
const FIC_VERSIONS: &[&str] = &[
    "2022-01-31-preview",
    "2023-01-31",
    "2023-07-31-preview",
    "2024-11-30",
    "2025-01-31-preview",
    "2026-04-30",
    "2026-05-31",
];
const FIC_ACTION: &str =
    "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials";
const AUTH_VERSIONS: &[&str] = &[
    "2015-07-01",
    "2018-01-01-preview",
    "2018-09-01-preview",
    "2020-04-01-preview",
    "2020-10-01-preview",
    "2022-04-01",
    "2022-05-01-preview",
];
const COMPUTE_VERSIONS: &[&str] = &[
    "2022-03-01",
    "2022-08-01",
    "2022-11-01",
    "2023-03-01",
    "2023-07-01",
    "2023-09-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
    "2025-02-01",
    "2025-04-01",
    "2025-11-01",
];
/// `Microsoft.Resources/subscriptions` (Subscriptions_Get) has releases of its own; not checked
/// against a stored specification.
const SUBSCRIPTION_VERSIONS: &[&str] = &[
    "2016-06-01",
    "2019-06-01",
    "2019-11-01",
    "2020-01-01",
    "2021-01-01",
    "2022-12-01",
];
const RESOURCES_VERSIONS: &[&str] = &[
    "2021-04-01",
    "2022-09-01",
    "2022-12-01",
    "2023-07-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
    "2025-03-01",
    "2025-04-01",
];

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // {scope}/providers/Microsoft.Authorization/...
    if let Some(i) = segs.iter().rposition(|s| eq(s, "Microsoft.Authorization"))
        && i >= 1
        && eq(segs[i - 1], "providers")
    {
        let scope = format!("/{}", segs[..i - 1].join("/"));
        let rest = &segs[i + 1..];
        return match rest {
            [t] if eq(t, "roleAssignments") => Route::AssignmentList { scope },
            [t, name] if eq(t, "roleAssignments") => Route::Assignment {
                scope,
                name: name.to_string(),
            },
            [t] if eq(t, "roleDefinitions") => Route::DefinitionList { scope },
            [t, guid] if eq(t, "roleDefinitions") => Route::Definition {
                guid: guid.to_string(),
            },
            _ => Route::Unknown,
        };
    }
    match segs.as_slice() {
        [s, sub] if eq(s, "subscriptions") => Route::Subscription {
            sub: sub.to_string(),
        },
        [s, sub, r, rg] if eq(s, "subscriptions") && eq(r, "resourceGroups") => {
            Route::ResourceGroup {
                sub: sub.to_string(),
                rg: rg.to_string(),
            }
        }
        [s, sub, p, ns, t]
            if eq(s, "subscriptions")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities") =>
        {
            Route::IdentityList {
                sub: sub.to_string(),
                rg: None,
            }
        }
        [s, sub, r, rg, p, ns, t]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities") =>
        {
            Route::IdentityList {
                sub: sub.to_string(),
                rg: Some(rg.to_string()),
            }
        }
        [s, sub, r, rg, p, ns, t, name]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities") =>
        {
            Route::Identity {
                sub: sub.to_string(),
                rg: rg.to_string(),
                name: name.to_string(),
            }
        }
        [s, sub, r, rg, p, ns, t, name, f, rest @ ..]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.ManagedIdentity")
                && eq(t, "userAssignedIdentities")
                && eq(f, "federatedIdentityCredentials")
                && rest.len() <= 1 =>
        {
            let (sub, rg, name) = (sub.to_string(), rg.to_string(), name.to_string());
            match rest.first() {
                Some(fic) => Route::Fic {
                    sub,
                    rg,
                    name,
                    fic: fic.to_string(),
                },
                None => Route::FicList { sub, rg, name },
            }
        }
        [s, sub, r, rg, p, ns, t, name]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.Compute")
                && (eq(t, "virtualMachines") || eq(t, "virtualMachineScaleSets")) =>
        {
            Route::Compute {
                kind: if eq(t, "virtualMachines") {
                    ComputeKind::Vm
                } else {
                    ComputeKind::ScaleSet
                },
                sub: sub.to_string(),
                rg: rg.to_string(),
                name: name.to_string(),
            }
        }
        [s, sub, r, rg, p, ns, t, name]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && resources::served(ns, t).is_some() =>
        {
            Route::Resource {
                sub: sub.to_string(),
                rg: rg.to_string(),
                type_: resources::served(ns, t).map(|x| x.0).unwrap_or_default(),
                name: name.to_string(),
            }
        }
        [s, sub, p, ns, l, _loc, o, id]
            if eq(s, "subscriptions")
                && eq(p, "providers")
                && eq(ns, "Microsoft.Compute")
                && eq(l, "locations")
                && eq(o, "operations") =>
        {
            Route::AsyncOp {
                sub: sub.to_string(),
                id: id.to_string(),
            }
        }
        _ => Route::Unknown,
    }
}

/// (operationId, RBAC action, RBAC scope, accepted api-versions, bucket kind)
fn describe(
    method: &Method,
    r: &Route,
) -> Option<(
    &'static str,
    Option<String>,
    String,
    &'static [&'static str],
)> {
    let m = method.as_str();
    Some(match (m, r) {
        ("GET", Route::Subscription { sub }) => (
            "Subscriptions_Get",
            Some("Microsoft.Resources/subscriptions/read".into()),
            format!("/subscriptions/{sub}"),
            SUBSCRIPTION_VERSIONS,
        ),
        (
            "GET",
            Route::Resource {
                sub,
                rg,
                type_,
                name,
            },
        ) => {
            let (_, op, versions) = resources::by_type(type_);
            (
                op,
                Some(format!("{type_}/read")),
                format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{type_}/{name}"),
                versions,
            )
        }
        ("GET", Route::ResourceGroup { sub, rg }) => (
            "ResourceGroups_Get",
            Some("Microsoft.Resources/subscriptions/resourceGroups/read".into()),
            format!("/subscriptions/{sub}/resourceGroups/{rg}"),
            RESOURCES_VERSIONS,
        ),
        ("PUT", Route::ResourceGroup { sub, rg }) => (
            "ResourceGroups_CreateOrUpdate",
            Some("Microsoft.Resources/subscriptions/resourceGroups/write".into()),
            format!("/subscriptions/{sub}/resourceGroups/{rg}"),
            RESOURCES_VERSIONS,
        ),
        ("GET", Route::Identity { sub, rg, name }) => (
            "UserAssignedIdentities_Get",
            Some("Microsoft.ManagedIdentity/userAssignedIdentities/read".into()),
            identity_scope(sub, rg, name),
            MI_VERSIONS,
        ),
        ("PUT", Route::Identity { sub, rg, name }) => (
            "UserAssignedIdentities_CreateOrUpdate",
            Some("Microsoft.ManagedIdentity/userAssignedIdentities/write".into()),
            identity_scope(sub, rg, name),
            MI_VERSIONS,
        ),
        ("PATCH", Route::Identity { sub, rg, name }) => (
            "UserAssignedIdentities_Update",
            Some("Microsoft.ManagedIdentity/userAssignedIdentities/write".into()),
            identity_scope(sub, rg, name),
            MI_VERSIONS,
        ),
        ("DELETE", Route::Identity { sub, rg, name }) => (
            "UserAssignedIdentities_Delete",
            Some("Microsoft.ManagedIdentity/userAssignedIdentities/delete".into()),
            identity_scope(sub, rg, name),
            MI_VERSIONS,
        ),
        ("GET", Route::IdentityList { sub, rg: Some(rg) }) => (
            "UserAssignedIdentities_ListByResourceGroup",
            None,
            format!("/subscriptions/{sub}/resourceGroups/{rg}"),
            MI_VERSIONS,
        ),
        ("GET", Route::IdentityList { sub, rg: None }) => (
            "UserAssignedIdentities_ListBySubscription",
            None,
            format!("/subscriptions/{sub}"),
            MI_VERSIONS,
        ),
        ("GET", Route::Fic { sub, rg, name, .. }) => (
            "FederatedIdentityCredentials_Get",
            Some(format!("{FIC_ACTION}/read")),
            identity_scope(sub, rg, name),
            FIC_VERSIONS,
        ),
        ("PUT", Route::Fic { sub, rg, name, .. }) => (
            "FederatedIdentityCredentials_CreateOrUpdate",
            Some(format!("{FIC_ACTION}/write")),
            identity_scope(sub, rg, name),
            FIC_VERSIONS,
        ),
        ("DELETE", Route::Fic { sub, rg, name, .. }) => (
            "FederatedIdentityCredentials_Delete",
            Some(format!("{FIC_ACTION}/delete")),
            identity_scope(sub, rg, name),
            FIC_VERSIONS,
        ),
        ("GET", Route::FicList { sub, rg, name }) => (
            "FederatedIdentityCredentials_List",
            Some(format!("{FIC_ACTION}/read")),
            identity_scope(sub, rg, name),
            FIC_VERSIONS,
        ),
        ("GET", Route::Compute { kind, .. }) => (
            if *kind == ComputeKind::Vm {
                "VirtualMachines_Get"
            } else {
                "VirtualMachineScaleSets_Get"
            },
            Some(format!("Microsoft.Compute/{}/read", compute_type(*kind))),
            compute_scope(r),
            COMPUTE_VERSIONS,
        ),
        ("PATCH", Route::Compute { kind, .. }) => (
            if *kind == ComputeKind::Vm {
                "VirtualMachines_Update"
            } else {
                "VirtualMachineScaleSets_Update"
            },
            Some(format!("Microsoft.Compute/{}/write", compute_type(*kind))),
            compute_scope(r),
            COMPUTE_VERSIONS,
        ),
        // The caller that started an operation may poll it.
        ("GET", Route::AsyncOp { sub, .. }) => (
            "AsyncOperation_Get",
            None,
            format!("/subscriptions/{sub}"),
            COMPUTE_VERSIONS,
        ),
        ("GET", Route::Assignment { scope, .. }) => (
            "RoleAssignments_Get",
            Some("Microsoft.Authorization/roleAssignments/read".into()),
            scope.clone(),
            AUTH_VERSIONS,
        ),
        ("PUT", Route::Assignment { scope, .. }) => (
            "RoleAssignments_Create",
            Some("Microsoft.Authorization/roleAssignments/write".into()),
            scope.clone(),
            AUTH_VERSIONS,
        ),
        ("DELETE", Route::Assignment { scope, .. }) => (
            "RoleAssignments_Delete",
            Some("Microsoft.Authorization/roleAssignments/delete".into()),
            scope.clone(),
            AUTH_VERSIONS,
        ),
        ("GET", Route::AssignmentList { scope }) => (
            "RoleAssignments_ListForScope",
            Some("Microsoft.Authorization/roleAssignments/read".into()),
            scope.clone(),
            AUTH_VERSIONS,
        ),
        // Every principal of the tenant may read role definitions.
        ("GET", Route::Definition { .. }) => {
            ("RoleDefinitions_Get", None, "/".into(), AUTH_VERSIONS)
        }
        ("GET", Route::DefinitionList { scope }) => {
            ("RoleDefinitions_List", None, scope.clone(), AUTH_VERSIONS)
        }
        _ => return None,
    })
}

fn identity_scope(sub: &str, rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

fn compute_type(kind: ComputeKind) -> &'static str {
    match kind {
        ComputeKind::Vm => "virtualMachines",
        ComputeKind::ScaleSet => "virtualMachineScaleSets",
    }
}

fn compute_scope(r: &Route) -> String {
    match r {
        Route::Compute {
            kind,
            sub,
            rg,
            name,
        } => format!(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/{}/{name}",
            compute_type(*kind)
        ),
        _ => String::new(),
    }
}

fn subscription_of(scope: &str) -> String {
    let segs: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [s, sub, ..] if eq(s, "subscriptions") => sub.to_lowercase(),
        _ => "tenant".into(),
    }
}

/// The ARM error envelope.
pub fn arm_err(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"error": {"code": code, "message": message}}))
}

pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) body: Value,
    pub(super) headers: Vec<(&'static str, String)>,
}

impl From<(StatusCode, Value)> for Answer {
    fn from((status, body): (StatusCode, Value)) -> Self {
        Answer {
            status,
            body,
            headers: Vec::new(),
        }
    }
}

/// Handle any ARM request.
pub async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at_ms = inner.elapsed_ms();
    let client = ["x-ms-client-request-id", "user-agent"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(str::to_string);
    let path = percent_encoding::percent_decode_str(uri.path())
        .decode_utf8_lossy()
        .to_string();
    let query_string = uri.query().unwrap_or_default().to_string();
    let query: HashMap<String, String> =
        serde_urlencoded::from_str(&query_string).unwrap_or_default();
    let request: Option<Value> = serde_json::from_slice(&body).ok();
    let r = route(&path);
    let Some((mut op, action, scope, versions)) = describe(&method, &r) else {
        let (status, body) = match r {
            Route::Unknown => arm_err(
                StatusCode::NOT_FOUND,
                "NoRegisteredProviderFound",
                &format!("No registered resource provider found for path '{path}'."),
            ),
            _ => arm_err(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("The method '{method}' is not allowed on '{path}'."),
            ),
        };
        return finish(
            &inner,
            Meta {
                op: "Unknown",
                method: &method,
                path: &path,
                query: &query_string,
                client,
                at_ms,
                fault: None,
            },
            request,
            Answer::from((status, body)),
            None,
        );
    };
    if matches!(r, Route::AsyncOp { .. }) && query.get("monitor").is_some_and(|m| m == "true") {
        op = "LocationOperation_Get";
    }
    let answer = run(
        &inner,
        &method,
        &r,
        action,
        &scope,
        versions,
        &headers,
        &query,
        request.as_ref(),
    )
    .await;
    match answer {
        Err(fault) => {
            inner.count(Exchange {
                operation: op.into(),
                method: method.to_string(),
                path,
                query: query_string,
                status: 0,
                request,
                response: None,
                fault: Some(fault.into()),
                client,
                at_ms,
            });
            dropped()
        }
        Ok((mut answer, remaining, fault)) => {
            if op.contains("_List")
                && answer.status == StatusCode::OK
                && let Err(refused) = paging::page(&inner, &path, &query, &mut answer.body)
            {
                answer = refused.into();
            }
            let resp = finish(
                &inner,
                Meta {
                    op,
                    method: &method,
                    path: &path,
                    query: &query_string,
                    client,
                    at_ms,
                    fault,
                },
                request,
                answer,
                remaining,
            );
            if fault == Some(fk::APPLIED_THEN_SLOW) {
                let slow = inner.faults.lock().slow_answer();
                tokio::time::sleep(slow).await;
            }
            resp
        }
    }
}

/// What the journal records about a request besides its bodies and status.
struct Meta<'a> {
    op: &'a str,
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    client: Option<String>,
    at_ms: u64,
    fault: Option<&'static str>,
}

fn dropped() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection dropped",
        ))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn finish(
    inner: &Inner,
    meta: Meta<'_>,
    request: Option<Value>,
    mut a: Answer,
    remaining: Option<(&'static str, u64)>,
) -> Response {
    if a.status.as_u16() >= 400 && inner.knobs.lock().inner_errors {
        super::knobs::add_inner_error(&mut a.body);
    }
    inner.count(Exchange {
        operation: meta.op.into(),
        method: meta.method.to_string(),
        path: meta.path.to_string(),
        query: meta.query.to_string(),
        status: a.status.as_u16(),
        request,
        response: if a.body.is_null() {
            None
        } else {
            Some(a.body.clone())
        },
        fault: meta.fault.map(str::to_string),
        client: meta.client,
        at_ms: meta.at_ms,
    });
    let mut resp = if a.body.is_null() {
        a.status.into_response()
    } else {
        (a.status, axum::Json(a.body)).into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        "x-ms-request-id",
        HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .unwrap_or(HeaderValue::from_static("0")),
    );
    if let Some((kind, n)) = remaining {
        let name = format!("x-ms-ratelimit-remaining-subscription-{kind}");
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&n.to_string()),
        ) {
            h.insert(k, v);
        }
    }
    for (k, v) in a.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    resp
}

/// Take one token from the (subscription, principal, kind) bucket.
fn take(inner: &Inner, sub: &str, principal: &str, kind: &'static str) -> Result<u64, Duration> {
    let scale = inner
        .faults
        .lock()
        .throttling
        .as_ref()
        .map(|t| t.scale.max(0.0001));
    let (size, rate) = arm_limits(kind);
    let (size, rate) = (size * scale.unwrap_or(1.0), rate * scale.unwrap_or(1.0));
    let mut buckets = inner.buckets.lock();
    let now = Instant::now();
    let entry = buckets
        .entry((sub.to_string(), principal.to_lowercase(), kind))
        .or_insert((size, now));
    entry.0 = (entry.0 + now.duration_since(entry.1).as_secs_f64() * rate).min(size);
    entry.1 = now;
    if entry.0 >= 1.0 {
        entry.0 -= 1.0;
        Ok(entry.0.floor() as u64)
    } else if scale.is_none() {
        Ok(0)
    } else {
        Err(Duration::from_secs_f64(
            ((1.0 - entry.0) / rate).ceil().max(1.0),
        ))
    }
}

/// Whether `principal` may perform `action` at `scope`, from effective assignments.
fn authorized(st: &Az, principal: &str, action: &str, scope: &str, now: Instant) -> bool {
    st.assignments.values().any(|a| {
        a.principal_id.eq_ignore_ascii_case(principal)
            && now >= a.effective_at
            && rbac::within(scope, &a.scope)
            && rbac::find(&a.role_guid).is_some_and(|r| rbac::allows(r, action))
    })
}

fn forbidden(c: &Claims, action: &str, scope: &str) -> (StatusCode, Value) {
    arm_err(
        StatusCode::FORBIDDEN,
        "AuthorizationFailed",
        &format!(
            "The client '{}' with object id '{}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
            c.appid, c.oid
        ),
    )
}

#[allow(clippy::too_many_arguments)]
async fn run(
    inner: &Inner,
    method: &Method,
    r: &Route,
    action: Option<String>,
    scope: &str,
    versions: &[&str],
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Option<&Value>,
) -> Result<(Answer, Option<(&'static str, u64)>, Option<&'static str>), &'static str> {
    let latency = inner.faults.lock().latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    // AsyncOperation URLs carry their own api-version; every other call needs a supported one.
    match query.get("api-version") {
        None => {
            return Ok((
                arm_err(
                    StatusCode::BAD_REQUEST,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                )
                .into(),
                None,
                None,
            ));
        }
        Some(v) if !versions.contains(&v.as_str()) => {
            return Ok((
                arm_err(
                    StatusCode::BAD_REQUEST,
                    "InvalidApiVersionParameter",
                    &format!(
                        "The api-version '{v}' is invalid. The supported versions are '{}'.",
                        versions.join(",")
                    ),
                )
                .into(),
                None,
                None,
            ));
        }
        _ => {}
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return Ok((
            arm_err(
                StatusCode::UNAUTHORIZED,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
            .into(),
            None,
            None,
        ));
    };
    let claims = match aad::verify(inner, token) {
        Ok(c) => c,
        Err((code, message)) => {
            return Ok((
                arm_err(StatusCode::UNAUTHORIZED, code, &message).into(),
                None,
                None,
            ));
        }
    };
    let aud = claims.aud.trim_end_matches('/');
    if !(eq(aud, "https://management.azure.com") || eq(aud, "https://management.core.windows.net"))
    {
        return Ok((arm_err(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", "The access token has been obtained for wrong audience or resource. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.azure.com/'.").into(), None, None));
    }
    let kind: &'static str = match *method {
        Method::GET => "reads",
        Method::DELETE => "deletes",
        _ => "writes",
    };
    let sub = subscription_of(scope);
    let remaining = match take(inner, &sub, &claims.oid, kind) {
        Ok(n) => n,
        Err(wait) => {
            let mut a: Answer = arm_err(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "The request is being throttled as the limit has been reached for operation type. For more information, see https://aka.ms/armthrottling").into();
            a.headers.push(("retry-after", wait.as_secs().to_string()));
            inner.inject(fk::THROTTLED);
            return Ok((a, Some((kind, 0)), Some(fk::THROTTLED)));
        }
    };
    let remaining = Some((kind, remaining));
    {
        let (drop_now, rate) = {
            let mut f = inner.faults.lock();
            (
                take_next(&mut f.drop_connection_next),
                f.drop_connection_rate,
            )
        };
        if drop_now || inner.chance(rate) {
            inner.inject(fk::DROP_CONNECTION);
            return Err(fk::DROP_CONNECTION);
        }
        let (fail_now, rate) = {
            let mut f = inner.faults.lock();
            (take_next(&mut f.server_error_next), f.server_error_rate)
        };
        if fail_now || inner.chance(rate) {
            inner.inject(fk::SERVER_ERROR);
            return Ok((server_error().into(), remaining, Some(fk::SERVER_ERROR)));
        }
    }
    let now = Instant::now();
    if let Route::Fic { .. } | Route::FicList { .. } = r {
        let step = {
            let mut st = inner.state.lock();
            match &action {
                Some(action) if !authorized(&st, &claims.oid, action, scope, now) => {
                    FicStep::Done(forbidden(&claims, action, scope))
                }
                _ => fic_begin(inner, &mut st, method, r, body),
            }
        };
        let answer = match step {
            FicStep::Done(a) => a,
            FicStep::Write(guard) => fic_write(inner, guard, method, r, body).await,
        };
        return Ok((answer.into(), remaining, None));
    }
    let answer = {
        let mut st = inner.state.lock();
        st.settle(now);
        if let Some(action) = &action
            && !authorized(&st, &claims.oid, action, scope, now)
        {
            return Ok((forbidden(&claims, action, scope).into(), remaining, None));
        }
        match (method.as_str(), r) {
            ("GET", Route::Subscription { sub }) => subscription_get(inner, sub).into(),
            ("GET", Route::ResourceGroup { sub, rg }) => rg_get(&st, sub, rg).into(),
            ("PUT", Route::ResourceGroup { sub, rg }) => rg_put(&mut st, sub, rg, body).into(),
            ("GET", Route::Identity { sub, rg, name }) => identity_get(&st, sub, rg, name).into(),
            ("PUT", Route::Identity { sub, rg, name }) => {
                identity_put(inner, &mut st, sub, rg, name, headers, body).into()
            }
            ("PATCH", Route::Identity { sub, rg, name }) => {
                identity_patch(&mut st, sub, rg, name, body).into()
            }
            ("DELETE", Route::Identity { sub, rg, name }) => {
                identity_delete(&mut st, sub, rg, name).into()
            }
            ("GET", Route::IdentityList { sub, rg }) => {
                identity_list(&st, &claims, sub, rg.as_deref(), now).into()
            }
            ("GET", Route::Compute { .. }) => compute_get(inner, &st, scope),
            ("PATCH", Route::Compute { .. }) => {
                compute_patch(inner, &mut st, &claims, scope, headers, body, now)
            }
            ("GET", Route::AsyncOp { id, .. })
                if query.get("monitor").is_some_and(|m| m == "true") =>
            {
                lro::poll(inner, &mut st, id)
            }
            ("GET", Route::AsyncOp { id, .. }) => async_op(&mut st, id).into(),
            (
                "GET",
                Route::Resource {
                    sub,
                    rg,
                    type_,
                    name,
                },
            ) => resources::get(inner, sub, rg, type_, name).into(),
            ("GET", Route::Assignment { scope, name }) => assignment_get(&st, scope, name).into(),
            ("PUT", Route::Assignment { scope, name }) => {
                assignment_put(inner, &mut st, scope, name, body, now).into()
            }
            ("DELETE", Route::Assignment { scope, name }) => {
                assignment_delete(&mut st, scope, name).into()
            }
            ("GET", Route::AssignmentList { scope }) => {
                assignment_list(&st, scope, query.get("$filter").map(String::as_str)).into()
            }
            ("GET", Route::Definition { guid }) => definition_get(guid).into(),
            ("GET", Route::DefinitionList { scope }) => {
                definition_list(scope, query.get("$filter").map(String::as_str)).into()
            }
            _ => arm_err(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "The method is not allowed.",
            )
            .into(),
        }
    };
    // Failures after the write was applied: the caller cannot tell that it happened.
    if *method != Method::GET && answer.status.is_success() {
        let (drop_now, drop_rate, err_now, err_rate, slow_now, slow_rate) = {
            let mut f = inner.faults.lock();
            (
                take_next(&mut f.applied_then_drop_next),
                f.applied_then_drop_rate,
                take_next(&mut f.applied_then_error_next),
                f.applied_then_error_rate,
                take_next(&mut f.applied_then_slow_next),
                f.applied_then_slow_rate,
            )
        };
        if drop_now || inner.chance(drop_rate) {
            inner.inject(fk::APPLIED_THEN_DROP);
            return Err(fk::APPLIED_THEN_DROP);
        }
        if err_now || inner.chance(err_rate) {
            inner.inject(fk::APPLIED_THEN_ERROR);
            return Ok((
                server_error().into(),
                remaining,
                Some(fk::APPLIED_THEN_ERROR),
            ));
        }
        if slow_now || inner.chance(slow_rate) {
            // Recorded now, answered after `slow` (see `handle`): a caller that gives up or
            // dies meanwhile still leaves the applied write in the journal.
            inner.inject(fk::APPLIED_THEN_SLOW);
            return Ok((answer, remaining, Some(fk::APPLIED_THEN_SLOW)));
        }
    }
    Ok((answer, remaining, None))
}

fn server_error() -> (StatusCode, Value) {
    arm_err(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
        "Encountered internal server error. Diagnostic information: timestamp, subscription id, tracking id, request correlation id.",
    )
}

fn subscription_get(inner: &Inner, sub: &str) -> (StatusCode, Value) {
    match inner.world.subscriptions.iter().find(|s| eq(&s.id, sub)) {
        Some(s) => (
            StatusCode::OK,
            json!({"id": format!("/subscriptions/{}", s.id), "subscriptionId": s.id, "tenantId": inner.world.tenant_id, "displayName": "Emulated subscription", "state": "Enabled"}),
        ),
        None => arm_err(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            &format!("The subscription '{sub}' could not be found."),
        ),
    }
}

fn rg_json(r: &Rg) -> Value {
    json!({
        "id": format!("/subscriptions/{}/resourceGroups/{}", r.subscription, r.name),
        "name": r.name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": r.location,
        "tags": r.tags,
        "properties": {"provisioningState": "Succeeded"},
    })
}

fn rg_missing(rg: &str) -> (StatusCode, Value) {
    arm_err(
        StatusCode::NOT_FOUND,
        "ResourceGroupNotFound",
        &format!("Resource group '{rg}' could not be found."),
    )
}

fn rg_get(st: &Az, sub: &str, rg: &str) -> (StatusCode, Value) {
    match st.rgs.get(&(sub.to_lowercase(), rg.to_lowercase())) {
        Some(r) => (StatusCode::OK, rg_json(r)),
        None => rg_missing(rg),
    }
}

fn rg_put(st: &mut Az, sub: &str, rg: &str, body: Option<&Value>) -> (StatusCode, Value) {
    let Some(location) = body.and_then(|b| b["location"].as_str()) else {
        return arm_err(
            StatusCode::BAD_REQUEST,
            "LocationRequired",
            "The location property is required for this definition.",
        );
    };
    let key = (sub.to_lowercase(), rg.to_lowercase());
    let tags = body
        .map(|b| b["tags"].clone())
        .filter(|t| t.is_object())
        .unwrap_or(json!({}));
    let existed = st.rgs.contains_key(&key);
    let entry = st.rgs.entry(key).or_insert_with(|| Rg {
        subscription: sub.to_string(),
        name: rg.to_string(),
        location: location.to_string(),
        tags: json!({}),
    });
    if existed && !eq(&entry.location.replace(' ', ""), &location.replace(' ', "")) {
        return arm_err(
            StatusCode::CONFLICT,
            "InvalidResourceGroupLocation",
            &format!(
                "Invalid resource group location '{location}'. The Resource group already exists in location '{}'.",
                entry.location
            ),
        );
    }
    entry.tags = tags;
    (
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        rg_json(entry),
    )
}

fn identity_key(sub: &str, rg: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourcegroups/{rg}/providers/microsoft.managedidentity/userassignedidentities/{name}").to_lowercase()
}

fn identity_missing(rg: &str, name: &str) -> (StatusCode, Value) {
    arm_err(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

fn identity_get(st: &Az, sub: &str, rg: &str, name: &str) -> (StatusCode, Value) {
    if !st
        .rgs
        .contains_key(&(sub.to_lowercase(), rg.to_lowercase()))
    {
        return rg_missing(rg);
    }
    match st.identities.get(&identity_key(sub, rg, name)) {
        Some(i) => (StatusCode::OK, i.json()),
        None => identity_missing(rg, name),
    }
}

fn valid_identity_name(name: &str) -> bool {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (3..=128).contains(&name.len())
        && ok_chars
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

fn identity_put(
    inner: &Inner,
    st: &mut Az,
    sub: &str,
    rg: &str,
    name: &str,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    if !valid_identity_name(name) {
        return arm_err(
            StatusCode::BAD_REQUEST,
            "InvalidResourceName",
            &format!(
                "Resource name {name} is invalid. The name can be between 3 and 128 characters long, must start with a letter or number, and can contain only letters, numbers, hyphens and underscores."
            ),
        );
    }
    let Some(rg_state) = st.rgs.get(&(sub.to_lowercase(), rg.to_lowercase())) else {
        return rg_missing(rg);
    };
    let rg_name = rg_state.name.clone();
    let Some(body) = body.filter(|b| b.is_object()) else {
        return arm_err(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.",
        );
    };
    let Some(location) = body["location"].as_str() else {
        return arm_err(
            StatusCode::BAD_REQUEST,
            "LocationRequired",
            "The location property is required for this definition.",
        );
    };
    let tags = if body["tags"].is_object() {
        body["tags"].clone()
    } else {
        json!({})
    };
    let key = identity_key(sub, rg, name);
    // As ARM: `If-None-Match: *` creates only; an existing resource answers 412.
    let create_only = headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*");
    if create_only && st.identities.contains_key(&key) {
        return arm_err(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "The condition specified using HTTP conditional header(s) is not met.",
        );
    }
    if let Some(existing) = st.identities.get_mut(&key) {
        if !eq(
            &existing.location.replace(' ', ""),
            &location.replace(' ', ""),
        ) {
            return arm_err(
                StatusCode::BAD_REQUEST,
                "InvalidResourceLocation",
                &format!(
                    "The resource '{name}' already exists in location '{}' in resource group '{rg}'. A resource with the same name cannot be created in location '{location}'. Please select a new resource name.",
                    existing.location
                ),
            );
        }
        existing.tags = tags;
        return (StatusCode::OK, existing.json());
    }
    let identity = IdentityState {
        subscription: sub.to_string(),
        resource_group: rg_name,
        name: name.to_string(),
        location: location.to_string(),
        tags,
        client_id: uuid::Uuid::new_v4().to_string(),
        principal_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: inner.world.tenant_id.clone(),
        created: Instant::now(),
    };
    let body = identity.json();
    st.identities.insert(key, identity);
    (StatusCode::CREATED, body)
}

fn identity_patch(
    st: &mut Az,
    sub: &str,
    rg: &str,
    name: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let Some(existing) = st.identities.get_mut(&identity_key(sub, rg, name)) else {
        return identity_missing(rg, name);
    };
    if let Some(tags) = body.map(|b| &b["tags"]).filter(|t| t.is_object()) {
        existing.tags = tags.clone();
    }
    (StatusCode::OK, existing.json())
}

enum FicStep<'a> {
    Done((StatusCode, Value)),
    Write(fic::WriteGuard<'a>),
}

/// Federated identity credentials of an identity: reads answer at once; a write (PUT or DELETE)
/// marks the identity busy for `ficWriteMs`, and a second write meanwhile is refused as Azure
/// refuses it.
fn fic_begin<'a>(
    inner: &'a Inner,
    st: &mut Az,
    method: &Method,
    r: &Route,
    _body: Option<&Value>,
) -> FicStep<'a> {
    let (Route::Fic { sub, rg, name, .. } | Route::FicList { sub, rg, name }) = r else {
        return FicStep::Done(arm_err(StatusCode::NOT_FOUND, "NotFound", "Not found."));
    };
    let key = identity_key(sub, rg, name);
    let Some(identity) = st.identities.get(&key).cloned() else {
        return FicStep::Done(identity_missing(rg, name));
    };
    FicStep::Done(match (method.as_str(), r) {
        ("GET", Route::Fic { fic: f, .. }) => fic::get(st, &identity, &key, f),
        ("GET", Route::FicList { .. }) => fic::list(st, &identity, &key),
        ("PUT" | "DELETE", Route::Fic { .. }) => {
            return match fic::WriteGuard::begin(inner, st, &key) {
                Some(guard) => FicStep::Write(guard),
                None => FicStep::Done(fic::concurrent_write(&identity.name)),
            };
        }
        _ => arm_err(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The method is not allowed.",
        ),
    })
}

async fn fic_write(
    inner: &Inner,
    guard: fic::WriteGuard<'_>,
    method: &Method,
    r: &Route,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let Route::Fic {
        sub,
        rg,
        name,
        fic: f,
    } = r
    else {
        return arm_err(StatusCode::NOT_FOUND, "NotFound", "Not found.");
    };
    let delay = inner.faults.lock().fic_write_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let key = identity_key(sub, rg, name);
    let answer = {
        let mut st = inner.state.lock();
        match st.identities.get(&key).cloned() {
            None => identity_missing(rg, name),
            Some(identity) if method == Method::PUT => fic::put(&mut st, &identity, &key, f, body),
            Some(_) => fic::delete(&mut st, &key, f),
        }
    };
    drop(guard);
    answer
}

fn identity_delete(st: &mut Az, sub: &str, rg: &str, name: &str) -> (StatusCode, Value) {
    // Its federated identity credentials go with it.
    st.fics.remove(&identity_key(sub, rg, name));
    // As in Azure, VMs keep listing a deleted identity until they are updated.
    match st.identities.remove(&identity_key(sub, rg, name)) {
        Some(_) => (StatusCode::OK, Value::Null),
        None => (StatusCode::NO_CONTENT, Value::Null),
    }
}

fn identity_list(
    st: &Az,
    claims: &Claims,
    sub: &str,
    rg: Option<&str>,
    now: Instant,
) -> (StatusCode, Value) {
    if let Some(rg) = rg
        && !st
            .rgs
            .contains_key(&(sub.to_lowercase(), rg.to_lowercase()))
    {
        return rg_missing(rg);
    }
    let value: Vec<Value> = st
        .identities
        .values()
        .filter(|i| eq(&i.subscription, sub) && rg.is_none_or(|rg| eq(&i.resource_group, rg)))
        .filter(|i| {
            authorized(
                st,
                &claims.oid,
                "Microsoft.ManagedIdentity/userAssignedIdentities/read",
                &identity_scope(&i.subscription, &i.resource_group, &i.name),
                now,
            )
        })
        .map(IdentityState::json)
        .collect();
    (StatusCode::OK, json!({"value": value}))
}

fn compute_get(inner: &Inner, st: &Az, scope: &str) -> Answer {
    match st.computes.get(&scope.to_lowercase()) {
        Some(c) => {
            let mut a: Answer = (
                StatusCode::OK,
                c.json(&st.identities, &inner.world.tenant_id),
            )
                .into();
            a.headers.push(("etag", c.etag()));
            a
        }
        None => compute_missing(scope).into(),
    }
}

fn compute_missing(scope: &str) -> (StatusCode, Value) {
    let name = scope.rsplit('/').next().unwrap_or_default();
    arm_err(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "The Resource '{name}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

fn identity_type_refused(t: &str) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({"error": {
            "code": "InvalidParameter",
            "message": format!("ResourceIdentity userAssignedIdentities should not be provided if the type is \"{t}\"."),
            "target": "resourceIdentity.userAssignedIdentities",
        }}),
    )
}

const IDENTITY_TYPES: &[&str] = &[
    "SystemAssigned",
    "UserAssigned",
    "SystemAssigned, UserAssigned",
    "None",
];

#[allow(clippy::too_many_arguments)]
fn compute_patch(
    inner: &Inner,
    st: &mut Az,
    claims: &Claims,
    scope: &str,
    headers: &HeaderMap,
    body: Option<&Value>,
    now: Instant,
) -> Answer {
    let key = scope.to_lowercase();
    let Some(c) = st.computes.get(&key).cloned() else {
        return compute_missing(scope).into();
    };
    if let Some(m) = headers.get("if-match").and_then(|v| v.to_str().ok())
        && m != "*"
        && m != c.etag()
    {
        return arm_err(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            &format!("The specified precondition 'If-Match = {m}' failed."),
        )
        .into();
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return arm_err(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.",
        )
        .into();
    };
    if c.pending.is_some() && inner.faults.lock().another_operation_in_progress {
        inner.inject(fk::ANOTHER_OPERATION);
        return arm_err(
            StatusCode::CONFLICT,
            "AnotherOperationInProgress",
            &format!(
                "Operation 'Update' is not allowed on '{}' since another operation is in progress.",
                c.name
            ),
        )
        .into();
    }
    // As in ARM, a PATCH updates the model at once and the operation brings the VM to it: an
    // update accepted while another runs builds on that one's goal, not on the state the
    // running one has not applied yet (which would silently drop the running change).
    let running = c
        .pending
        .as_ref()
        .and_then(|p| st.operations.get(p))
        .filter(|o| o.outcome.is_none())
        .map(|o| o.change.clone());
    let mut change = running.unwrap_or_else(|| IdentityChange {
        system: c.system_principal.is_some(),
        user_assigned: c.user_assigned.clone(),
    });
    if let Some(identity) = body.get("identity").filter(|v| !v.is_null()) {
        let Some(t) = identity["type"].as_str() else {
            return arm_err(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                "Property 'identity.type' is required.",
            )
            .into();
        };
        if !IDENTITY_TYPES.contains(&t) {
            return arm_err(StatusCode::BAD_REQUEST, "InvalidParameter", &format!("The value '{t}' of parameter 'identity.type' is not valid. Allowed values are 'SystemAssigned', 'UserAssigned', 'SystemAssigned, UserAssigned', 'None'.")).into();
        }
        let map = identity["userAssignedIdentities"].as_object();
        // Compute refuses any `userAssignedIdentities` next to `SystemAssigned` or `None`, null
        // entries included: removing the last user-assigned identity is the type alone
        // (ARM-NOTES §2.4, D2). The code and target follow the answer Compute gave for the
        // older list form ("ResourceIdentity identityIds should not be provided if the type is
        // \"SystemAssigned\"", Azure/aad-pod-identity#214); the wording for the dictionary form
        // is unverified.
        if matches!(t, "SystemAssigned" | "None") && !identity["userAssignedIdentities"].is_null() {
            return identity_type_refused(t).into();
        }
        change.system = t.contains("SystemAssigned");
        if matches!(t, "SystemAssigned" | "None") {
            change.user_assigned.clear();
        } else if let Some(map) = map {
            for (id, v) in map {
                let lower = id.to_lowercase();
                if v.is_null() {
                    change.user_assigned.remove(&lower);
                } else {
                    if !st.identities.contains_key(&lower) {
                        return arm_err(
                            StatusCode::BAD_REQUEST,
                            "FailedIdentityOperation",
                            &format!(
                                "Identity '{id}' does not exist or is not a user assigned identity."
                            ),
                        )
                        .into();
                    }
                    if !c.user_assigned.contains_key(&lower)
                        && !authorized(
                            st,
                            &claims.oid,
                            "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
                            id,
                            now,
                        )
                    {
                        return arm_err(StatusCode::FORBIDDEN, "LinkedAuthorizationFailed", &format!("The client '{}' with object id '{}' has permission to perform action 'Microsoft.Compute/{}/write' on scope '{scope}'; however, it does not have permission to perform action(s) 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) '{id}' (respectively) or the linked scope(s) are invalid.", claims.appid, claims.oid, compute_type(c.kind))).into();
                    }
                    change
                        .user_assigned
                        .entry(lower)
                        .or_insert_with(|| id.clone());
                }
            }
        }
        if t.contains("UserAssigned") && change.user_assigned.is_empty() {
            return arm_err(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                &format!("The identity type '{t}' requires at least one user assigned identity."),
            )
            .into();
        }
    }
    let op_id = uuid::Uuid::new_v4().to_string();
    let (fail, late_now, late_rate) = {
        let mut f = inner.faults.lock();
        (
            take_next(&mut f.lro_fail_next),
            take_next(&mut f.lro_late_next),
            f.lro_late_rate,
        )
    };
    let late = !fail && (late_now || inner.chance(late_rate));
    if fail {
        inner.inject(fk::LRO_FAIL);
    }
    if late {
        inner.inject(fk::LRO_LATE);
    }
    st.operations.insert(
        op_id.clone(),
        Operation {
            compute: key.clone(),
            location: c.location.clone(),
            subscription: c.subscription.clone(),
            change,
            polls_left: inner.world.lro_polls,
            fail,
            late,
            seq: c.etag + 1,
            due: now + LRO_DEADLINE,
            started: jiff::Timestamp::now().to_string(),
            outcome: None,
        },
    );
    if let Some(cm) = st.computes.get_mut(&key) {
        cm.pending = Some(op_id.clone());
        // The model changed: a writer holding the old etag gets 412.
        cm.etag += 1;
    }
    let Some(cm) = st.computes.get(&key) else {
        return compute_missing(scope).into();
    };
    let operation = match c.kind {
        ComputeKind::Vm => "VirtualMachines_Update",
        ComputeKind::ScaleSet => "VirtualMachineScaleSets_Update",
    };
    if inner.knobs.lock().lro_form(operation) == LroForm::Location {
        return lro::accepted(inner, &c.subscription, &c.location, &op_id);
    }
    let op_url = lro::operation_url(inner, &c.subscription, &c.location, &op_id, false);
    let mut a: Answer = (
        StatusCode::OK,
        cm.json(&st.identities, &inner.world.tenant_id),
    )
        .into();
    a.headers.push(("azure-asyncoperation", op_url));
    a.headers.push((
        "retry-after",
        inner.world.lro_retry_after_seconds.to_string(),
    ));
    a
}

fn async_op(st: &mut Az, id: &str) -> (StatusCode, Value) {
    let Some(op) = st.operations.get_mut(id) else {
        return arm_err(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("The operation '{id}' was not found."),
        );
    };
    if op.outcome.is_none() {
        if op.late {
            // The status endpoint fails while the operation runs; it finishes on its own.
            return server_error();
        }
        if op.polls_left > 0 {
            op.polls_left -= 1;
            return (
                StatusCode::OK,
                json!({"name": id, "status": "InProgress", "startTime": op.started}),
            );
        }
        st.finish(id);
    }
    let Some(op) = st.operations.get(id) else {
        return arm_err(
            StatusCode::NOT_FOUND,
            "NotFound",
            "The operation was not found.",
        );
    };
    let end = jiff::Timestamp::now().to_string();
    match &op.outcome {
        Some(Err((code, message))) => (
            StatusCode::OK,
            json!({"name": id, "status": "Failed", "startTime": op.started, "endTime": end, "error": {"code": code, "message": message}}),
        ),
        _ => (
            StatusCode::OK,
            json!({"name": id, "status": "Succeeded", "startTime": op.started, "endTime": end}),
        ),
    }
}

fn assignment_key(scope: &str, name: &str) -> String {
    format!(
        "{}/providers/microsoft.authorization/roleassignments/{}",
        scope.trim_end_matches('/'),
        name
    )
    .to_lowercase()
}

fn assignment_missing() -> (StatusCode, Value) {
    arm_err(
        StatusCode::NOT_FOUND,
        "RoleAssignmentNotFound",
        "The role assignment does not exist.",
    )
}

fn assignment_get(st: &Az, scope: &str, name: &str) -> (StatusCode, Value) {
    match st.assignments.get(&assignment_key(scope, name)) {
        Some(a) => (StatusCode::OK, a.json()),
        None => assignment_missing(),
    }
}

fn assignment_put(
    inner: &Inner,
    st: &mut Az,
    scope: &str,
    name: &str,
    body: Option<&Value>,
    now: Instant,
) -> (StatusCode, Value) {
    if uuid::Uuid::parse_str(name).is_err() {
        return arm_err(
            StatusCode::BAD_REQUEST,
            "InvalidRoleAssignmentId",
            &format!(
                "The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."
            ),
        );
    }
    let props = body.map(|b| &b["properties"]);
    let (Some(def_id), Some(principal)) = (
        props.and_then(|p| p["roleDefinitionId"].as_str()),
        props.and_then(|p| p["principalId"].as_str()),
    ) else {
        return arm_err(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "The request content was invalid: properties.roleDefinitionId and properties.principalId are required.",
        );
    };
    let principal_type = props
        .and_then(|p| p["principalType"].as_str())
        .unwrap_or("User")
        .to_string();
    let guid = def_id.rsplit('/').next().unwrap_or_default().to_lowercase();
    let Some(role) = rbac::find(&guid) else {
        return arm_err(
            StatusCode::BAD_REQUEST,
            "RoleDefinitionDoesNotExist",
            &format!("The specified role definition with ID '{guid}' does not exist."),
        );
    };
    let window = inner.faults.lock().principal_not_found_seconds;
    let young = st
        .identity_by_principal(principal)
        .is_some_and(|i| now.duration_since(i.created).as_secs_f64() < window);
    if young {
        inner.inject(fk::PRINCIPAL_NOT_FOUND);
    }
    if !st.principal_exists(principal) || young {
        return arm_err(
            StatusCode::BAD_REQUEST,
            "PrincipalNotFound",
            &format!(
                "Principal {} does not exist in the directory {}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype",
                principal.replace('-', ""),
                inner.world.tenant_id
            ),
        );
    }
    let scope_norm = scope.trim_end_matches('/').to_string();
    let key = assignment_key(scope, name);
    if let Some(existing) = st.assignments.get(&key) {
        if existing.principal_id.eq_ignore_ascii_case(principal)
            && existing.role_guid == role.guid
            && eq(&existing.scope, &scope_norm)
        {
            return (StatusCode::OK, existing.json());
        }
        return arm_err(
            StatusCode::BAD_REQUEST,
            "RoleAssignmentUpdateNotPermitted",
            "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
        );
    }
    if st.assignments.values().any(|a| {
        a.principal_id.eq_ignore_ascii_case(principal)
            && a.role_guid == role.guid
            && eq(&a.scope, &scope_norm)
    }) {
        return arm_err(
            StatusCode::CONFLICT,
            "RoleAssignmentExists",
            "The role assignment already exists.",
        );
    }
    let delay = Duration::from_secs_f64(inner.world.rbac_propagation_seconds.max(0.0));
    let a = Assignment {
        name: name.to_lowercase(),
        scope: scope_norm,
        role_guid: role.guid.to_string(),
        principal_id: principal.to_string(),
        principal_type,
        description: props
            .and_then(|p| p["description"].as_str())
            .map(str::to_string),
        effective_at: now + delay,
        created_on: jiff::Timestamp::now().to_string(),
    };
    let body = a.json();
    st.assignments.insert(key, a);
    (StatusCode::CREATED, body)
}

fn assignment_delete(st: &mut Az, scope: &str, name: &str) -> (StatusCode, Value) {
    match st.assignments.remove(&assignment_key(scope, name)) {
        Some(a) => (StatusCode::OK, a.json()),
        None => (StatusCode::NO_CONTENT, Value::Null),
    }
}

fn assignment_list(st: &Az, scope: &str, filter: Option<&str>) -> (StatusCode, Value) {
    let filter = filter.map(str::trim);
    let principal = filter
        .and_then(|f| f.strip_prefix("principalId eq '"))
        .and_then(|f| f.strip_suffix('\''));
    let at_scope = filter == Some("atScope()");
    if filter.is_some() && principal.is_none() && !at_scope {
        return arm_err(
            StatusCode::BAD_REQUEST,
            "UnsupportedQuery",
            &format!(
                "The filter '{}' is not supported.",
                filter.unwrap_or_default()
            ),
        );
    }
    let value: Vec<Value> = st
        .assignments
        .values()
        .filter(|a| {
            let above = rbac::within(scope, &a.scope);
            let below = rbac::within(&a.scope, scope);
            if at_scope {
                above
            } else {
                (above || below) && principal.is_none_or(|p| a.principal_id.eq_ignore_ascii_case(p))
            }
        })
        .map(Assignment::json)
        .collect();
    (StatusCode::OK, json!({"value": value}))
}

fn definition_get(guid: &str) -> (StatusCode, Value) {
    match rbac::find(guid).filter(|r| r.guid.eq_ignore_ascii_case(guid)) {
        Some(r) => (StatusCode::OK, rbac::definition_json(r, None)),
        None => arm_err(
            StatusCode::NOT_FOUND,
            "RoleDefinitionDoesNotExist",
            &format!("The role definition '{guid}' could not be found."),
        ),
    }
}

fn definition_list(scope: &str, filter: Option<&str>) -> (StatusCode, Value) {
    let name = filter
        .map(str::trim)
        .and_then(|f| f.strip_prefix("roleName eq '"))
        .and_then(|f| f.strip_suffix('\''))
        .map(|n| n.replace("''", "'"));
    let sub = {
        let s = subscription_of(scope);
        (s != "tenant").then_some(s)
    };
    let value: Vec<Value> = rbac::BUILT_IN
        .iter()
        .filter(|r| name.as_deref().is_none_or(|n| eq(r.name, n)))
        .map(|r| rbac::definition_json(r, sub.as_deref()))
        .collect();
    (StatusCode::OK, json!({"value": value}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_arm_url_shapes() {
        assert!(matches!(
            route("/subscriptions/s/resourcegroups/DevTest"),
            Route::ResourceGroup { .. }
        ));
        assert!(matches!(
            route(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1"
            ),
            Route::Identity { .. }
        ));
        assert!(matches!(
            route("/subscriptions/s/providers/Microsoft.ManagedIdentity/userAssignedIdentities"),
            Route::IdentityList { rg: None, .. }
        ));
        assert!(matches!(
            route(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
            ),
            Route::Compute {
                kind: ComputeKind::Vm,
                ..
            }
        ));
        assert!(matches!(
            route(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/x"
            ),
            Route::Assignment { .. }
        ));
        assert!(matches!(
            route("/providers/Microsoft.Authorization/roleDefinitions/g"),
            Route::Definition { .. }
        ));
        assert!(matches!(
            route("/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions"),
            Route::DefinitionList { .. }
        ));
        assert!(matches!(
            route("/subscriptions/s/providers/Microsoft.Compute/locations/eastus/operations/o"),
            Route::AsyncOp { .. }
        ));
        assert!(matches!(route("/nothing/here"), Route::Unknown));
    }
}
