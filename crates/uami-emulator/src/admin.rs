//! The router of the ARM and Entra ID listener: ARM itself, Entra ID's token endpoint and
//! discovery documents, the data planes of storage accounts and key vaults (under `/_data/`), and the administration endpoints under `/_emulator/` (counts, journal,
//! state, IMDS statistics, faults and knobs).

use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{Faults, Inner, Knobs, aad, aad_discovery, arm, data_plane};

/// The ARM + Entra ID + admin router.
pub(super) fn app(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/_emulator/counts", get(counts))
        .route("/_emulator/reset", post(reset))
        .route("/_emulator/state", get(state))
        .route("/_emulator/journal", get(journal))
        .route("/_emulator/imds", get(imds))
        .route("/_emulator/faults", get(faults).put(set_faults))
        .route("/_emulator/knobs", get(knobs).put(set_knobs))
        .route("/{tenant}/oauth2/v2.0/token", post(aad::token))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(aad_discovery::openid_configuration_of::<true>),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(aad_discovery::openid_configuration_of::<false>),
        )
        .route("/{tenant}/discovery/instance", get(aad_discovery::instance))
        .route("/{tenant}/discovery/v2.0/keys", get(aad_discovery::keys))
        .route("/{tenant}/discovery/keys", get(aad_discovery::keys))
        .route(
            "/_data/blob/{account}/{container}",
            get(data_plane::list_blobs),
        )
        .route("/_data/vault/{vault}/secrets", get(data_plane::get_secrets))
        .fallback(arm::handle)
        .with_state(inner)
}

type Inn = AxState<Arc<Inner>>;

async fn counts(AxState(inner): Inn) -> axum::Json<Value> {
    let c = inner.counts.lock().clone();
    let rows: Vec<Value> =
        c.0.iter()
            .map(|((o, s), n)| json!({"operation": o, "status": s, "count": n}))
            .collect();
    let injected = inner.injected.lock().clone();
    axum::Json(json!({"counts": rows, "writes": c.writes(), "injected": injected}))
}

async fn reset(AxState(inner): Inn) -> StatusCode {
    inner.reset();
    StatusCode::NO_CONTENT
}

async fn state(AxState(inner): Inn) -> axum::Json<Value> {
    axum::Json(inner.dump())
}

async fn journal(AxState(inner): Inn) -> axum::Json<Value> {
    axum::Json(serde_json::to_value(&*inner.journal.lock()).unwrap_or_default())
}

async fn imds(AxState(inner): Inn) -> axum::Json<Value> {
    axum::Json(serde_json::to_value(inner.imds_stats()).unwrap_or_default())
}

async fn knobs(AxState(inner): Inn) -> axum::Json<Knobs> {
    axum::Json(inner.knobs.lock().clone())
}

async fn set_knobs(AxState(inner): Inn, body: axum::body::Bytes) -> Response {
    if let Ok(k) = serde_json::from_slice::<Knobs>(&body)
        && let Err(e) = k.check()
    {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": e}))).into_response();
    }
    replace(&body, |k: &Knobs| *inner.knobs.lock() = k.clone())
}

async fn faults(AxState(inner): Inn) -> axum::Json<Faults> {
    axum::Json(inner.faults.lock().clone())
}

async fn set_faults(AxState(inner): Inn, body: axum::body::Bytes) -> Response {
    replace(&body, |f: &Faults| inner.set_faults(f.clone()))
}

/// Replace a setting with the JSON `body`: answers the new setting, or 400 with the reason.
fn replace<T: DeserializeOwned + Serialize>(body: &[u8], apply: impl FnOnce(&T)) -> Response {
    match serde_json::from_slice::<T>(body) {
        Ok(v) => {
            apply(&v);
            axum::Json(v).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}
