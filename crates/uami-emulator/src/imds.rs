//! IMDS of one VM or scale set instance: `/metadata/identity/oauth2/token` (managed identity
//! tokens for the identities assigned to this VM) and `/metadata/instance/compute`. Like the real
//! IMDS it wants `Metadata: true`, answers every value as a string, and refuses with 429 beyond
//! 20 token requests per second or 5 at once; it records how close callers came to those limits.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::faults::take_next;
use super::state::ComputeKind;
use super::{Exchange, ImdsStats, Inner, tokens};

/// Rate and concurrency bookkeeping of one IMDS.
#[derive(Default)]
pub struct Limiter {
    pub stats: ImdsStats,
    in_flight: u64,
    recent: VecDeque<Instant>,
}

#[derive(Clone)]
struct Imds {
    inner: Arc<Inner>,
    name: String,
    compute: String,
}

/// The router of one IMDS.
pub fn app(inner: Arc<Inner>, name: String, compute: String) -> Router {
    Router::new()
        .route("/metadata/identity/oauth2/token", get(token))
        .route("/metadata/instance/compute", get(compute_meta))
        .route("/metadata/instance", get(instance))
        .with_state(Imds {
            inner,
            name,
            compute,
        })
}

fn err(status: StatusCode, error: &str, description: &str) -> (StatusCode, Value) {
    (
        status,
        json!({"error": error, "error_description": description}),
    )
}

fn metadata_ok(headers: &HeaderMap) -> bool {
    headers.get("metadata").and_then(|v| v.to_str().ok()) == Some("true")
}

struct Guard<'a> {
    imds: &'a Imds,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.imds.inner.imds_stats.lock().get_mut(&self.imds.name) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
    }
}

/// Admit a token request within IMDS's limits, or refuse it.
fn admit(imds: &Imds) -> Result<Guard<'_>, ()> {
    let now = Instant::now();
    let mut all = imds.inner.imds_stats.lock();
    let Some(l) = all.get_mut(&imds.name) else {
        return Err(());
    };
    l.stats.requests += 1;
    while l
        .recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        l.recent.pop_front();
    }
    if l.in_flight >= 5 || l.recent.len() >= 20 {
        l.stats.limited += 1;
        return Err(());
    }
    l.in_flight += 1;
    l.recent.push_back(now);
    l.stats.max_concurrent = l.stats.max_concurrent.max(l.in_flight);
    l.stats.max_per_second = l.stats.max_per_second.max(l.recent.len() as u64);
    Ok(Guard { imds })
}

async fn token(
    State(imds): State<Imds>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let query = serde_urlencoded::to_string(&q).unwrap_or_default();
    let (status, body) = token_answer(&imds, &headers, &q).await;
    let mut recorded = body.clone();
    if recorded.get("access_token").is_some() {
        recorded["access_token"] = json!("<redacted>");
    }
    imds.inner.count(Exchange {
        operation: "Imds_Token".into(),
        method: "GET".into(),
        path: format!("{}:/metadata/identity/oauth2/token", imds.name),
        query,
        status: status.as_u16(),
        request: None,
        response: Some(recorded),
        ..Exchange::default()
    });
    (status, axum::Json(body)).into_response()
}

async fn token_answer(
    imds: &Imds,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> (StatusCode, Value) {
    if !metadata_ok(headers) {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_request_102",
            "Required metadata header not specified",
        );
    }
    let Ok(_guard) = admit(imds) else {
        return err(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "Too many requests; IMDS allows 20 per second and 5 at once for managed identity.",
        );
    };
    {
        let mut faults = imds.inner.faults.lock();
        let f = &mut *faults;
        let injected = [
            (
                &mut f.imds_throttle_next,
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Too many requests.",
            ),
            (
                &mut f.imds_gone_next,
                StatusCode::GONE,
                "service_unavailable",
                "IMDS is going through updates.",
            ),
            (
                &mut f.imds_server_error_next,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "An unexpected error occurred.",
            ),
        ];
        for (next, status, error, description) in injected {
            if take_next(next) {
                return err(status, error, description);
            }
        }
    }
    if q.get("api-version").is_none_or(|v| v.is_empty()) {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    let selectors = ["client_id", "object_id", "msi_res_id"]
        .iter()
        .filter(|k| q.contains_key(**k))
        .count();
    if selectors > 1 {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Only one of client_id, object_id or msi_res_id may be given",
        );
    }
    let (oid, appid, client_id) = {
        let mut st = imds.inner.state.lock();
        st.settle(Instant::now());
        let Some(c) = st.computes.get(&imds.compute) else {
            return err(StatusCode::NOT_FOUND, "not_found", "The VM is not known");
        };
        // An identity deleted and created again since it was assigned is unknown here.
        let assigned = st.working_identities(c);
        let found = if let Some(id) = q.get("client_id") {
            assigned
                .iter()
                .find(|i| i.client_id.eq_ignore_ascii_case(id))
                .map(|i| (i.principal_id.clone(), i.client_id.clone()))
        } else if let Some(id) = q.get("object_id") {
            assigned
                .iter()
                .find(|i| i.principal_id.eq_ignore_ascii_case(id))
                .map(|i| (i.principal_id.clone(), i.client_id.clone()))
        } else if let Some(id) = q.get("msi_res_id") {
            assigned
                .iter()
                .find(|i| i.id().eq_ignore_ascii_case(id))
                .map(|i| (i.principal_id.clone(), i.client_id.clone()))
        } else if let Some(p) = &c.system_principal {
            Some((p.clone(), p.clone()))
        } else if assigned.len() == 1 {
            assigned
                .first()
                .map(|i| (i.principal_id.clone(), i.client_id.clone()))
        } else if assigned.len() > 1 {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request",
            );
        } else {
            None
        };
        let Some((oid, appid)) = found else {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Identity not found",
            );
        };
        (oid, appid.clone(), appid)
    };
    let token = tokens::issue(&imds.inner, &oid, &appid, resource);
    let now = jiff::Timestamp::now().as_second();
    let lifetime = imds.inner.world.token_lifetime_seconds as i64;
    let mut body = json!({
        "access_token": token,
        "refresh_token": "",
        "expires_in": (lifetime - 1).to_string(),
        "expires_on": (now + lifetime).to_string(),
        "ext_expires_in": (lifetime - 1).to_string(),
        "not_before": (now - 5).to_string(),
        "resource": resource,
        "token_type": "Bearer",
    });
    if q.contains_key("client_id") {
        body["client_id"] = json!(client_id);
    }
    for k in ["object_id", "msi_res_id"] {
        if let Some(v) = q.get(k) {
            body[k] = json!(v);
        }
    }
    (StatusCode::OK, body)
}

fn compute_json(imds: &Imds) -> Option<Value> {
    let st = imds.inner.state.lock();
    let c = st.computes.get(&imds.compute)?;
    let (name, ss) = match c.kind {
        ComputeKind::Vm => (c.name.clone(), String::new()),
        ComputeKind::ScaleSet => (imds.name.clone(), c.name.clone()),
    };
    let resource_id = match c.kind {
        ComputeKind::Vm => c.id(),
        ComputeKind::ScaleSet => format!(
            "{}/virtualMachines/{}",
            c.id(),
            imds.name.rsplit('_').next().unwrap_or("0")
        ),
    };
    Some(json!({
        "azEnvironment": "AzurePublicCloud",
        "location": c.location,
        "name": name,
        "osType": "Linux",
        "resourceGroupName": c.resource_group,
        "resourceId": resource_id,
        "subscriptionId": c.subscription,
        "vmId": c.vm_id,
        "vmScaleSetName": ss,
        "vmSize": "Standard_D2s_v3",
    }))
}

async fn compute_meta(State(imds): State<Imds>, headers: HeaderMap) -> Response {
    instance_answer(imds, headers, false)
}

async fn instance(State(imds): State<Imds>, headers: HeaderMap) -> Response {
    instance_answer(imds, headers, true)
}

fn instance_answer(imds: Imds, headers: HeaderMap, wrap: bool) -> Response {
    let (status, body) = if !metadata_ok(&headers) {
        err(
            StatusCode::BAD_REQUEST,
            "bad_request_102",
            "Required metadata header not specified",
        )
    } else {
        match compute_json(&imds) {
            Some(c) if wrap => (StatusCode::OK, json!({"compute": c})),
            Some(c) => (StatusCode::OK, c),
            None => err(StatusCode::NOT_FOUND, "not_found", "The VM is not known"),
        }
    };
    imds.inner.count(Exchange {
        operation: "Imds_Instance".into(),
        method: "GET".into(),
        path: format!("{}:/metadata/instance", imds.name),
        query: String::new(),
        status: status.as_u16(),
        request: None,
        response: Some(body.clone()),
        ..Exchange::default()
    });
    (status, axum::Json(body)).into_response()
}
