//! Status writes, for every kind and for the agent.
//!
//! The controller writes the fields it owns with one forced server-side apply patch under its
//! field manager, skipped when nothing it owns would change ([`write`]). The agent and the
//! controller's token exchange report their checks the same way under their own field managers
//! ([`report`]). Conditions are merged by [`set`], which keeps `lastTransitionTime` when the
//! status of a condition does not change.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ReconcileError;
use super::reasons;
use crate::api::binding::AccessPlane;
use crate::api::conditions::{self, NewCondition, set_condition, types};
use crate::api::grant::AccessStatus;
use crate::api::{
    IdentityBinding, IdentityBindingStatus, RoleGrant, RoleGrantStatus, UserAssignedIdentity,
    UserAssignedIdentityStatus,
};

/// The controller's field manager.
pub const FIELD_MANAGER: &str = "uami-controller";

/// A namespaced kind with a status subresource of conditions.
pub trait Reported:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
    /// The status type.
    type Status: Serialize + Default;
    /// The current status, if any.
    fn reported(&self) -> Option<&Self::Status>;
    /// The current conditions (empty without a status).
    fn conditions(&self) -> &[Condition];
}

/// A status with a list of conditions.
pub trait Conditioned {
    /// The conditions.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    /// The generation the status describes, which its conditions carry too.
    fn generation(&self) -> Option<i64>;
}

macro_rules! reported {
    ($kind:ty, $status:ty) => {
        impl Conditioned for $status {
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
            fn generation(&self) -> Option<i64> {
                self.observed_generation
            }
        }
        impl Reported for $kind {
            type Status = $status;
            fn reported(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn conditions(&self) -> &[Condition] {
                self.status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default()
            }
        }
    };
}
reported!(UserAssignedIdentity, UserAssignedIdentityStatus);
reported!(IdentityBinding, IdentityBindingStatus);
reported!(RoleGrant, RoleGrantStatus);

/// Set `c` in `conditions` for `generation` (the object's `metadata.generation`).
pub fn set_in(conditions: &mut Vec<Condition>, generation: Option<i64>, c: NewCondition) {
    set_condition(conditions, c, generation, now());
}

/// Set condition `type_` of `status` (True when `ok`) for the generation the status describes.
pub fn set<S: Conditioned>(status: &mut S, type_: &str, ok: bool, reason: &str, message: &str) {
    let generation = status.generation();
    set_in(
        status.conditions_mut(),
        generation,
        NewCondition::new(type_, ok, reason, message),
    );
}

/// Set each condition of `types` of `status` False with `reason`: what an object waiting for
/// something reports.
pub fn set_false<S: Conditioned>(status: &mut S, types: &[&str], reason: &str, message: &str) {
    for type_ in types {
        set(status, type_, false, reason, message);
    }
}

/// Whether `obj`'s `Ready` condition has `reason`: a Warning Event is sent only when a reason is
/// new.
pub fn ready_reason_is<K: Reported>(obj: &K, reason: &str) -> bool {
    conditions::find(obj.conditions(), types::READY).is_some_and(|c| c.reason == reason)
}

/// Write `desired` (only the fields the controller owns) as the status of `obj`, unless `obj`
/// already holds it. `owned` names the top-level fields the controller owns: one present now but
/// absent from `desired` is a removal, which needs a write too.
pub async fn write<K: Reported>(
    client: &Client,
    obj: &K,
    desired: &K::Status,
    owned: &[&str],
) -> Result<(), ReconcileError> {
    if !needs_update(desired, obj.reported(), owned) {
        return Ok(());
    }
    apply_status_as(&api_of(client, obj), obj, desired, FIELD_MANAGER)
        .await
        .map_err(ReconcileError::kube("PatchStatus"))
}

/// Report a check (`status`, holding only the reporter's fields) on `obj` under the reporter's
/// field manager, unless `compare` (`status`, or the part of it worth a write) is already
/// contained in the current status.
pub async fn report<K: Reported>(
    client: &Client,
    obj: &K,
    status: &serde_json::Value,
    compare: &serde_json::Value,
    manager: &str,
) -> kube::Result<()> {
    let current = match obj.reported() {
        Some(s) => serde_json::to_value(s),
        None => serde_json::to_value(K::Status::default()),
    }
    .unwrap_or_default();
    if contained_in(compare, &current) {
        return Ok(());
    }
    apply_status_as(&api_of(client, obj), obj, status, manager).await
}

/// The conditions of `c`'s type from `current`, with `c` merged: what a reporter that owns only
/// that condition applies.
pub fn own_condition(
    current: &[Condition],
    c: NewCondition,
    generation: Option<i64>,
) -> Vec<Condition> {
    let mut own: Vec<Condition> = current
        .iter()
        .filter(|x| x.type_ == c.type_)
        .cloned()
        .collect();
    set_in(&mut own, generation, c);
    own
}

/// `AccessVerified` and `access` of a grant whose scope `who` read with the identity's token on
/// `plane` and got HTTP `code`.
pub fn access_checked(
    who: &str,
    checked_by: String,
    scope: &str,
    plane: AccessPlane,
    code: u16,
) -> (NewCondition, AccessStatus) {
    let read = match plane {
        AccessPlane::Arm => format!("read {scope} through ARM"),
        AccessPlane::Blob => format!("listed blobs of {scope} on the Blob Storage data plane"),
        AccessPlane::KeyVault => format!("listed secrets of {scope} on the Key Vault data plane"),
    };
    let (reason, message) = match code {
        200 => (
            reasons::ACCESS_VERIFIED,
            format!("{who} {read} with the identity's token (HTTP 200)"),
        ),
        401 | 403 => (
            reasons::ACCESS_DENIED,
            format!(
                "{who} got HTTP {code}: it {read} with the identity's token; a new role assignment can take minutes to take effect"
            ),
        ),
        _ => (
            reasons::UNEXPECTED_STATUS,
            format!("{who} got HTTP {code}: it {read} with the identity's token"),
        ),
    };
    (
        NewCondition::new(types::ACCESS_VERIFIED, code == 200, reason, message),
        AccessStatus {
            verified: code == 200,
            http_status: Some(code.into()),
            checked_by: Some(checked_by),
            plane,
        },
    )
}

fn api_of<K: Reported>(client: &Client, obj: &K) -> Api<K> {
    Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default())
}

/// Apply `status` to `obj` with the named field manager, forced: each manager is the only writer
/// of its fields.
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

/// The conditions of the given types from `obj`: the ones this field manager owns. Applying only
/// these keeps the agent's conditions the agent's.
pub fn own_conditions<K: Reported>(obj: &K, types: &[&str]) -> Vec<Condition> {
    obj.conditions()
        .iter()
        .filter(|c| types.contains(&c.type_.as_str()))
        .cloned()
        .collect()
}

/// Whether a failed pass over `obj` should leave its status as it is: the failure is ARM's and
/// passing (a server error, throttling, a dropped connection: [`ArmError::is_retryable`]), and
/// `obj` is Ready at its current generation or the failure has not repeated
/// [`PASSING_FAILURES_SHOWN`] times in a row. Such a pass is retried with backoff; `Ready` turns
/// False only on a definitive answer, so it does not flap with Azure's transient faults.
///
/// [`ArmError::is_retryable`]: crate::azure::ArmError::is_retryable
pub fn keep_on_passing_failure<K: Reported>(
    ctx: &super::context::Context,
    obj: &K,
    e: &crate::azure::ArmError,
) -> bool {
    if !e.is_retryable() {
        return false;
    }
    // The copy a pass starts from can be older than this controller's own last write (the
    // watch has not delivered it yet), so a Ready just written may not show: a passing failure
    // is also kept out of status until it repeats.
    let key = format!("{}/passing", super::context::object_key(obj));
    let in_a_row = ctx.record_failure(&key);
    in_a_row < PASSING_FAILURES_SHOWN
        || obj.conditions().iter().any(|c| {
            c.type_ == types::READY
                && c.status == conditions::status::TRUE
                && c.observed_generation == obj.meta().generation
        })
}

/// The passing failures in a row after which one is shown in the status of an object that is
/// not Ready.
pub const PASSING_FAILURES_SHOWN: u32 = 3;

/// A pass of `obj` succeeded: its passing failures start again from none.
pub fn passed<K: Reported>(ctx: &super::context::Context, obj: &K) {
    ctx.record_success(&format!("{}/passing", super::context::object_key(obj)));
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
        reasons::AZURE_ERROR.to_string()
    } else {
        code
    }
}

/// The current time as a condition timestamp.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
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
