//! Status writes: one server-side apply patch per reconcile with the controller's field manager,
//! skipped when nothing the controller owns would change.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The controller's field manager.
pub const FIELD_MANAGER: &str = "uami-controller";

/// Apply `status` (only the fields the controller owns) to `obj` with the controller's field
/// manager, forced: the controller is the only writer of these fields.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> kube::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    apply_status_as(api, obj, status, FIELD_MANAGER).await
}

/// Apply `status` with the named field manager.
pub async fn apply_status_as<K, S>(
    api: &Api<K>,
    obj: &K,
    status: &S,
    manager: &str,
) -> kube::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Whether `desired` (the controller's fields, serialized) is already contained in `current`
/// (the whole current status, serialized): every field of `desired` equal in `current`, and list
/// entries of `desired` present in the matching list of `current` (list-maps keyed by `type` or
/// `instanceId` are matched by key).
pub fn contained_in(desired: &serde_json::Value, current: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (desired, current) {
        (Value::Object(d), Value::Object(c)) => d
            .iter()
            .all(|(k, v)| c.get(k).is_some_and(|cv| contained_in(v, cv))),
        (Value::Array(d), Value::Array(c)) => {
            let keyed = |v: &Value| -> Option<(String, Value)> {
                for key in ["type", "instanceId"] {
                    if let Some(k) = v.get(key) {
                        return Some((key.to_string(), k.clone()));
                    }
                }
                None
            };
            if d.iter().all(|v| keyed(v).is_some()) {
                d.iter().all(|dv| {
                    let Some((key, kv)) = keyed(dv) else {
                        return false;
                    };
                    c.iter()
                        .find(|cv| cv.get(&key) == Some(&kv))
                        .is_some_and(|cv| contained_in(dv, cv))
                })
            } else {
                d == c
            }
        }
        (d, c) => d == c,
    }
}

/// Whether the controller-owned `desired` status differs from what `current` holds, so that a
/// status patch is needed. Fields the controller used to own but no longer sends are detected
/// by `owned_keys`: a key present in `current` but absent from `desired` means a removal.
pub fn needs_update(
    desired: &impl Serialize,
    current: Option<&impl Serialize>,
    owned_keys: &[&str],
) -> bool {
    let Ok(desired) = serde_json::to_value(desired) else {
        return true;
    };
    let current = match current.map(serde_json::to_value) {
        Some(Ok(v)) => v,
        _ => return true,
    };
    if !contained_in(&desired, &current) {
        return true;
    }
    owned_keys
        .iter()
        .any(|k| current.get(*k).is_some() && desired.get(*k).is_none())
}

/// The conditions of the given types from `current`: the ones this field manager owns. Applying
/// only these keeps the agent's conditions the agent's.
pub fn own_conditions(
    current: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
    types: &[&str],
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    current
        .map(|cs| {
            cs.iter()
                .filter(|c| types.contains(&c.type_.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A condition reason for an ARM error: `Throttled` for 429, `Forbidden` for 401/403, else the
/// ARM error code (CamelCase already), else `AzureError`.
pub fn arm_reason(e: &crate::azure::ArmError) -> String {
    match e.status() {
        Some(429) => return super::reasons::THROTTLED.to_string(),
        Some(401) | Some(403) => return super::reasons::FORBIDDEN.to_string(),
        _ => {}
    }
    let code: String = e
        .code()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if code.is_empty() || !code.starts_with(|c: char| c.is_ascii_alphabetic()) {
        "AzureError".to_string()
    } else {
        code
    }
}

/// The current time as a condition timestamp.
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containment_matches_list_maps_by_key() {
        let current = json!({"conditions": [
            {"type": "Ready", "status": "True", "reason": "Ready"},
            {"type": "AccessVerified", "status": "True", "reason": "Verified"}],
            "principalId": "p", "access": {"verified": true}});
        let desired = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}], "principalId": "p"});
        assert!(contained_in(&desired, &current));
        let changed = json!({"conditions": [{"type": "Ready", "status": "False", "reason": "X"}], "principalId": "p"});
        assert!(!contained_in(&changed, &current));
        let missing = json!({"conditions": [{"type": "Granted", "status": "True"}]});
        assert!(!contained_in(&missing, &current));
        let unchanged = needs_update(
            &json!({"principalId": "p"}),
            Some(&current),
            &["roleAssignmentId"],
        );
        assert!(!unchanged);
        let with_owned = json!({"roleAssignmentId": "x", "principalId": "p"});
        assert!(needs_update(
            &json!({"principalId": "p"}),
            Some(&with_owned),
            &["roleAssignmentId"]
        ));
    }
}
