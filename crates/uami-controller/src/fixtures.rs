//! Builders for the objects the plan tests feed in.

use serde_json::{Value, json};

use uami_api::GrantPolicy;

/// A condition as the API server returns it.
pub fn condition(type_: &str, status: &str, reason: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": "m",
        "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

/// One GrantPolicy `p` for namespace `team` with `spec` (besides `namespaces`).
pub fn policies(mut spec: Value) -> Vec<GrantPolicy> {
    spec["namespaces"] = json!(["team"]);
    let policy = json!({
        "apiVersion": "uami.dev/v1alpha1", "kind": "GrantPolicy",
        "metadata": {"name": "p"}, "spec": spec,
    });
    vec![serde_json::from_value(policy).unwrap()]
}
