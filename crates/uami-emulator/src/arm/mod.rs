//! ARM: one handler that routes by the real URL shapes (`route.rs`), checks the api-version,
//! authenticates the bearer token, applies ARM's token buckets and the injected faults
//! (`gate.rs`), enforces RBAC (`authorization.rs`), and then runs the operation against the
//! state: resource groups (`groups.rs`), identities and their federated identity credentials
//! (`identities.rs`, `fic.rs`), VMs and scale sets with their long-running operations
//! (`compute.rs`, `lro.rs`), role assignments and definitions (`authorization.rs`), and the
//! other resources callers read (`resources.rs`). Lists are paged (`paging.rs`). Every answer
//! is counted under the spec's operationId.

mod authorization;
mod compute;
mod compute_put;
pub(super) mod fic;
mod gate;
mod groups;
mod identities;
mod lro;
mod paging;
mod resources;
mod route;
mod versions;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::faults::kind as fk;
use super::tokens::Claims;
use super::{Exchange, Inner};
use gate::Injected;
use identities::Ident;
use route::{Described, Route};

/// Whether an operation id is an ARM write or delete.
pub fn is_write(op: &str) -> bool {
    ["_CreateOrUpdate", "_Update", "_Delete", "_Create"]
        .iter()
        .any(|s| op.ends_with(s))
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The ARM error envelope.
pub fn arm_err(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"error": {"code": code, "message": message}}))
}

/// ARM's 400 with `code` and `message`.
pub fn bad_request(code: &str, message: &str) -> (StatusCode, Value) {
    arm_err(StatusCode::BAD_REQUEST, code, message)
}

/// 412 for a precondition (`If-Match = ...`, `If-None-Match = *`) the resource does not meet.
pub fn precondition_failed(precondition: &str) -> (StatusCode, Value) {
    arm_err(
        StatusCode::PRECONDITION_FAILED,
        "PreconditionFailed",
        &format!("The specified precondition '{precondition}' failed."),
    )
}

/// 400 for a body that is not a JSON object.
pub fn invalid_content() -> (StatusCode, Value) {
    bad_request(
        "InvalidRequestContent",
        "The request content was invalid and could not be deserialized.",
    )
}

/// ARM's 400 `InvalidResourceName` with `message`.
fn invalid_name(message: &str) -> (StatusCode, Value) {
    bad_request("InvalidResourceName", message)
}

/// The name rule of user-assigned identities and their federated identity credentials: 3 to
/// `max` letters, digits, hyphens and underscores, starting with a letter or digit.
fn valid_name(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && (3..=max).contains(&name.len())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An answer: status, JSON body (none when null) and headers.
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

/// An answer with what goes with it: the tokens left in the caller's bucket and the fault
/// injected, if any.
pub(super) struct Ran {
    answer: Answer,
    remaining: Option<(&'static str, u64)>,
    fault: Option<&'static str>,
}

impl From<(StatusCode, Value)> for Ran {
    fn from(answer: (StatusCode, Value)) -> Self {
        Ran {
            answer: answer.into(),
            remaining: None,
            fault: None,
        }
    }
}

/// A request as the operations see it.
struct Call<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
    body: Option<&'a Value>,
}

/// Handle any ARM request.
pub async fn handle(
    State(inner): State<std::sync::Arc<Inner>>,
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
    let r = route::route(&path);
    let mut meta = Meta {
        op: "Unknown",
        method: &method,
        path: &path,
        query: &query_string,
        client,
        at_ms,
        fault: None,
    };
    let Some(described) = route::describe(&method, &r) else {
        let refused = match r {
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
        return finish(&inner, meta, request, refused.into(), None);
    };
    meta.op = described.op;
    if matches!(r, Route::AsyncOp { .. }) && query.get("monitor").is_some_and(|m| m == "true") {
        meta.op = "LocationOperation_Get";
    }
    let call = Call {
        method: &method,
        headers: &headers,
        query: &query,
        body: request.as_ref(),
    };
    match run(&inner, &call, &r, &described).await {
        Err(fault) => {
            meta.fault = Some(fault);
            inner.count(meta.exchange(0, request, None));
            dropped()
        }
        Ok(Ran {
            mut answer,
            remaining,
            fault,
        }) => {
            if meta.op.contains("_List")
                && answer.status == StatusCode::OK
                && let Err(refused) = paging::page(&inner, &path, &query, &mut answer.body)
            {
                answer = refused.into();
            }
            meta.fault = fault;
            let resp = finish(&inner, meta, request, answer, remaining);
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

impl Meta<'_> {
    fn exchange(self, status: u16, request: Option<Value>, response: Option<Value>) -> Exchange {
        Exchange {
            operation: self.op.into(),
            method: self.method.to_string(),
            path: self.path.to_string(),
            query: self.query.to_string(),
            status,
            request,
            response,
            fault: self.fault.map(str::to_string),
            client: self.client,
            at_ms: self.at_ms,
        }
    }
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
    let response = (!a.body.is_null()).then(|| a.body.clone());
    inner.count(meta.exchange(a.status.as_u16(), request, response));
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

/// The answer with an injected fault: `Err` (the fault's kind) for a dropped connection.
fn injected(
    fault: Injected,
    answer: Answer,
    remaining: Option<(&'static str, u64)>,
) -> Result<Ran, &'static str> {
    match fault {
        Injected::Drop(kind) => Err(kind),
        Injected::ServerError(kind) => Ok(Ran {
            answer: gate::server_error().into(),
            remaining,
            fault: Some(kind),
        }),
        Injected::Slow => Ok(Ran {
            answer,
            remaining,
            fault: Some(fk::APPLIED_THEN_SLOW),
        }),
    }
}

/// Where ARM routes a request (the body's `location`, else its resource group's, else
/// `global`) and the locations of the world's resource groups: what a refused api-version names.
fn routed_location(inner: &Inner, r: &Route, body: Option<&Value>) -> (String, Vec<String>) {
    let st = inner.state.lock();
    let mut locations: Vec<String> = st.rgs.values().map(|g| g.location.to_lowercase()).collect();
    locations.sort();
    locations.dedup();
    let location = body
        .and_then(|b| b["location"].as_str())
        .map(str::to_string)
        .or_else(|| {
            let (sub, rg) = r.group()?;
            st.rgs
                .get(&(sub.to_lowercase(), rg.to_lowercase()))
                .map(|g| g.location.clone())
        })
        .unwrap_or_else(|| "global".into());
    (location, locations)
}

/// Check, run and answer one operation; `Err` (the fault's kind) when the connection drops.
async fn run(
    inner: &Inner,
    call: &Call<'_>,
    r: &Route,
    d: &Described,
) -> Result<Ran, &'static str> {
    let latency = inner.faults.lock().latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    // AsyncOperation URLs carry their own api-version; every other call needs a supported one.
    let routed = || routed_location(inner, r, call.body);
    let claims = match gate::api_version(call.query, d.versions, routed)
        .and_then(|()| gate::authenticate(inner, call.headers))
    {
        Ok(c) => c,
        Err(refused) => return Ok(refused.into()),
    };
    let remaining = match gate::throttle(inner, call.method, &d.scope, &claims.oid) {
        Ok(left) => Some(left),
        Err(throttled) => return Ok(throttled),
    };
    if let Some(fault) = gate::before(inner) {
        return injected(fault, (StatusCode::OK, Value::Null).into(), remaining);
    }
    let now = Instant::now();
    let scope = d.scope.as_str();
    if let Route::Fic { .. } | Route::FicList { .. } = r {
        let step = {
            let mut st = inner.state.lock();
            match &d.action {
                Some(action)
                    if !authorization::authorized(&st, &claims.oid, action, scope, now) =>
                {
                    fic::Step::Done(authorization::forbidden(&claims, action, scope))
                }
                _ => fic::begin(inner, &mut st, call.method, r),
            }
        };
        let answer = match step {
            fic::Step::Done(a) => a,
            fic::Step::Write(guard) => fic::write(inner, guard, call.method, r, call.body).await,
        };
        return Ok(Ran {
            answer: answer.into(),
            remaining,
            fault: None,
        });
    }
    let answer = {
        let mut st = inner.state.lock();
        st.settle(now);
        if let Some(action) = &d.action
            && !authorization::authorized(&st, &claims.oid, action, scope, now)
        {
            return Ok(Ran {
                answer: authorization::forbidden(&claims, action, scope).into(),
                remaining,
                fault: None,
            });
        }
        dispatch(inner, &mut st, call, r, &claims, scope, now)
    };
    if *call.method != Method::GET
        && answer.status.is_success()
        && let Some(fault) = gate::after(inner)
    {
        return injected(fault, answer, remaining);
    }
    Ok(Ran {
        answer,
        remaining,
        fault: None,
    })
}

/// Run the operation against the state (the caller is authorized).
fn dispatch(
    inner: &Inner,
    st: &mut super::state::State,
    call: &Call<'_>,
    r: &Route,
    claims: &Claims,
    scope: &str,
    now: Instant,
) -> Answer {
    let (body, filter) = (call.body, call.query.get("$filter").map(String::as_str));
    match (call.method.as_str(), r) {
        ("GET", Route::Subscription { sub }) => groups::subscription_get(inner, sub).into(),
        ("GET", Route::ResourceGroup { sub, rg }) => groups::rg_get(st, sub, rg).into(),
        ("PUT", Route::ResourceGroup { sub, rg }) => groups::rg_put(st, sub, rg, body).into(),
        (m, Route::Identity { sub, rg, name }) => {
            let id = Ident { sub, rg, name };
            match m {
                "GET" => identities::get(st, id),
                "PUT" => identities::put(inner, st, id, call.headers, body),
                "PATCH" => identities::patch(st, id, body),
                _ => identities::delete(st, id),
            }
            .into()
        }
        ("GET", Route::IdentityList { sub, rg }) => {
            identities::list(st, claims, sub, rg.as_deref(), now).into()
        }
        ("GET", Route::Compute { .. }) => compute::compute_get(inner, st, scope),
        ("PATCH", Route::Compute { .. }) => {
            compute::compute_patch(inner, st, claims, scope, call.headers, body, now)
        }
        (
            "PUT",
            Route::Compute {
                kind,
                sub,
                rg,
                name,
            },
        ) => {
            let target = compute_put::Target {
                kind: *kind,
                sub,
                rg,
                name,
                scope,
            };
            compute_put::compute_put(inner, st, claims, &target, call.headers, body, now)
        }
        ("POST", Route::ComputeRestart { .. }) => {
            compute_put::compute_restart(inner, st, scope, now)
        }
        ("GET", Route::AsyncOp { id, .. })
            if call.query.get("monitor").is_some_and(|m| m == "true") =>
        {
            lro::poll(inner, st, id)
        }
        ("GET", Route::AsyncOp { id, .. }) => compute::async_op(inner, st, id),
        ("GET", Route::Resource { sub, rg, ty, name }) => {
            resources::get(inner, sub, rg, ty, name).into()
        }
        ("GET", Route::Assignment { scope, name }) => {
            authorization::assignment_get(st, scope, name).into()
        }
        ("PUT", Route::Assignment { scope, name }) => {
            authorization::assignment_put(inner, st, scope, name, body, now).into()
        }
        ("DELETE", Route::Assignment { scope, name }) => {
            authorization::assignment_delete(st, scope, name).into()
        }
        ("GET", Route::AssignmentList { scope }) => {
            authorization::assignment_list(st, scope, filter).into()
        }
        ("GET", Route::Definition { guid }) => authorization::definition_get(guid).into(),
        ("GET", Route::DefinitionList { scope }) => {
            authorization::definition_list(scope, filter).into()
        }
        _ => arm_err(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The method is not allowed.",
        )
        .into(),
    }
}
