//! The `Location` form of long-running operations (D3): the write answers 202 with a
//! `Location` URL, which answers 202 (with `Retry-After`) while the operation runs, 200 with the
//! resource when it succeeded, and the operation's error with a 5xx status when it failed. The
//! `Azure-AsyncOperation` form lives beside the compute PATCH in `arm.rs`; the `lroForms` knob
//! picks one per operation.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::Inner;
use super::arm::Answer;
use super::state::State;

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

/// A poll of the `Location` URL.
pub(super) fn poll(inner: &Inner, st: &mut State, id: &str) -> Answer {
    let Some(op) = st.operations.get_mut(id) else {
        return Answer {
            status: StatusCode::NOT_FOUND,
            body: json!({"error": {"code": "NotFound", "message": format!("The operation '{id}' was not found.")}}),
            headers: Vec::new(),
        };
    };
    if op.outcome.is_none() {
        if op.late {
            // The status endpoint fails while the operation runs; it finishes on its own.
            return Answer {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: json!({"error": {"code": "InternalServerError", "message": "Encountered internal server error."}}),
                headers: Vec::new(),
            };
        }
        if op.polls_left > 0 {
            op.polls_left -= 1;
            let (sub, location) = (op.subscription.clone(), op.location.clone());
            return Answer {
                status: StatusCode::ACCEPTED,
                body: Value::Null,
                headers: vec![
                    ("location", operation_url(inner, &sub, &location, id, true)),
                    (
                        "retry-after",
                        inner.world.lro_retry_after_seconds.to_string(),
                    ),
                ],
            };
        }
        st.finish(id);
    }
    let Some(op) = st.operations.get(id) else {
        return Answer {
            status: StatusCode::NOT_FOUND,
            body: json!({"error": {"code": "NotFound", "message": "The operation was not found."}}),
            headers: Vec::new(),
        };
    };
    match &op.outcome {
        Some(Err((code, message))) => Answer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: json!({"error": {"code": code, "message": message}}),
            headers: Vec::new(),
        },
        _ => match st.computes.get(&op.compute) {
            Some(c) => Answer {
                status: StatusCode::OK,
                body: c.json(&st.identities, &inner.world.tenant_id),
                headers: Vec::new(),
            },
            None => Answer {
                status: StatusCode::NO_CONTENT,
                body: Value::Null,
                headers: Vec::new(),
            },
        },
    }
}
