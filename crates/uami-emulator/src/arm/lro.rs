//! The `Location` form of long-running operations (D3): the write answers 202 with a
//! `Location` URL, which answers 202 (with `Retry-After`) while the operation runs, 200 with the
//! resource when it succeeded, and the operation's error with a 5xx status when it failed. The
//! `Azure-AsyncOperation` form lives beside the compute PATCH in `compute.rs`; the `lroForms` knob
//! picks one per operation.

use axum::http::StatusCode;
use serde_json::Value;

use super::{Answer, arm_err};
use crate::Inner;
use crate::state::{Progress, State};

/// The URL an operation is polled at: the Compute operations path, `monitor=true` for the
/// `Location` form.
pub(super) fn operation_url(
    inner: &Inner,
    sub: &str,
    location: &str,
    id: &str,
    monitor: bool,
) -> String {
    let base = inner
        .knobs
        .lock()
        .link_base
        .clone()
        .unwrap_or_else(|| inner.arm_base.lock().clone());
    let base = if base.ends_with('/') {
        base
    } else {
        format!("{base}/")
    };
    format!(
        "{base}subscriptions/{sub}/providers/Microsoft.Compute/locations/{location}/operations/{id}?{}api-version=2024-11-01",
        if monitor { "monitor=true&" } else { "" }
    )
}

/// The 202 answer of a write that runs as an operation in the `Location` form.
pub(super) fn accepted(inner: &Inner, sub: &str, location: &str, id: &str) -> Answer {
    Answer {
        status: StatusCode::ACCEPTED,
        body: Value::Null,
        headers: vec![
            ("location", operation_url(inner, sub, location, id, true)),
            (
                "retry-after",
                inner.world.lro_retry_after_seconds.to_string(),
            ),
        ],
    }
}

/// The answer for an operation id that was never issued.
pub(super) fn unknown(id: &str) -> (StatusCode, Value) {
    arm_err(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("The operation '{id}' was not found."),
    )
}

/// A poll of the `Location` URL.
pub(super) fn poll(inner: &Inner, st: &mut State, id: &str) -> Answer {
    let (compute, outcome) = match st.progress(id) {
        Progress::Unknown => return unknown(id).into(),
        // The status endpoint fails while the operation runs; it finishes on its own.
        Progress::Late => {
            return arm_err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "Encountered internal server error.",
            )
            .into();
        }
        Progress::Running(op) => return accepted(inner, &op.subscription, &op.location, id),
        Progress::Done(op) => (op.compute.clone(), op.outcome.clone()),
    };
    match outcome {
        Some(Err((code, message))) => {
            arm_err(StatusCode::INTERNAL_SERVER_ERROR, &code, &message).into()
        }
        _ => match st.computes.get(&compute) {
            Some(c) => (
                StatusCode::OK,
                c.json(&st.identities, &inner.world.tenant_id),
            )
                .into(),
            None => (StatusCode::NO_CONTENT, Value::Null).into(),
        },
    }
}
