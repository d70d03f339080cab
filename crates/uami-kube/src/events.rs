//! Events: every Event the controller and its watches publish is built and sent here.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use uami_api::text::{Limit, truncate};

/// Send an Event about the object `reference` names through `recorder`: every Event of the
/// controller is built here (its note cut to the 1 kB Kubernetes allows). A failure to publish
/// is logged, never fatal.
pub async fn send_event(
    recorder: &Recorder,
    reference: &ObjectReference,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(truncate(note, Limit::Bytes(1000), "...")),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}
