//! VMs and scale sets: GET of their model, PATCH (the model at once, identities checked as
//! Compute checks them, applied by the long-running operation it starts, answered 200 with the
//! new model and an `Azure-AsyncOperation` to poll), and that operation's status. PUT and
//! restart are in `compute_put.rs`, the `Location` form of operations in `lro.rs`.

use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::authorization::authorized;
use super::gate::server_error;
use super::{Answer, arm_err, bad_request, lro};
use crate::Inner;
use crate::faults::{kind as fk, take_next};
use crate::state::{Compute, IdentityChange, LRO_DEADLINE, Operation, Progress, State as Az};
use crate::tokens::Claims;

/// `GET` of a VM or scale set, with its etag.
pub(super) fn compute_get(inner: &Inner, st: &Az, scope: &str) -> Answer {
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

/// 409 `AnotherOperationInProgress` for operation `op` on `c`, when the fault is on and one of
/// its operations is pending.
pub(super) fn another_operation(
    inner: &Inner,
    c: &Compute,
    op: &str,
) -> Option<(StatusCode, Value)> {
    if c.pending.is_none() || !inner.faults.lock().another_operation_in_progress {
        return None;
    }
    inner.inject(fk::ANOTHER_OPERATION);
    Some(arm_err(
        StatusCode::CONFLICT,
        "AnotherOperationInProgress",
        &format!(
            "Operation '{op}' is not allowed on '{}' since another operation is in progress.",
            c.name
        ),
    ))
}

pub(super) fn compute_missing(scope: &str) -> (StatusCode, Value) {
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

/// `PATCH` of a VM or scale set (with `If-Match`): changes the model at once (its tags,
/// properties and identities) and starts the operation that brings the VM to it.
pub(super) fn compute_patch(
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
        return super::precondition_failed(&format!("If-Match = {m}")).into();
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return super::invalid_content().into();
    };
    if let Some(busy) = another_operation(inner, &c, "Update") {
        return busy.into();
    }
    let change = match requested_change(st, claims, scope, &c, body, now) {
        Ok(change) => change,
        Err(refused) => return refused.into(),
    };
    // The model changes at once (ARM's model); the identity when the operation applies it.
    if let Some(cm) = st.computes.get_mut(&key) {
        cm.model.patch(body);
        cm.model.running_state = "Updating";
    }
    let op_id = start_operation(inner, st, &key, &c, change.clone(), now);
    // VirtualMachines_Update and VirtualMachineScaleSets_Update answer only 200 (Compute
    // 2024-11-01): the updated model, `Updating`, and the operation to poll.
    written(inner, st, &key, &op_id, &change, StatusCode::OK)
}

/// The answer to a write that started operation `op_id` on the VM or scale set at `key`: the
/// model it asked for (`Creating` or `Updating`) with the `Azure-AsyncOperation` to poll.
pub(super) fn written(
    inner: &Inner,
    st: &Az,
    key: &str,
    op_id: &str,
    goal: &IdentityChange,
    status: StatusCode,
) -> Answer {
    let Some(c) = st.computes.get(key) else {
        return compute_missing(key).into();
    };
    let op_url = lro::operation_url(inner, &c.subscription, &c.location, op_id, false);
    let mut a: Answer = (
        status,
        c.json_with(&st.identities, &inner.world.tenant_id, Some(goal)),
    )
        .into();
    a.headers.push(("azure-asyncoperation", op_url));
    a.headers.push((
        "retry-after",
        inner.world.lro_retry_after_seconds.to_string(),
    ));
    a
}

/// The identity state a PATCH asks for, checked as Compute checks it: the identity types, that
/// each added identity exists, and that the caller may assign it (`assign/action`).
pub(super) fn requested_change(
    st: &Az,
    claims: &Claims,
    scope: &str,
    c: &Compute,
    body: &Value,
    now: Instant,
) -> Result<IdentityChange, (StatusCode, Value)> {
    // As in ARM, a PATCH updates the model at once and the operation brings the VM to it: an
    // update accepted while another runs builds on that one's goal, not on the state the
    // running one has not applied yet (which would silently drop the running change).
    let mut change = running_goal(st, c);
    if let Some(identity) = body.get("identity").filter(|v| !v.is_null()) {
        let Some(t) = identity["type"].as_str() else {
            return Err(bad_request(
                "InvalidParameter",
                "Property 'identity.type' is required.",
            ));
        };
        if !IDENTITY_TYPES.contains(&t) {
            return Err(bad_request(
                "InvalidParameter",
                &format!(
                    "The value '{t}' of parameter 'identity.type' is not valid. Allowed values are 'SystemAssigned', 'UserAssigned', 'SystemAssigned, UserAssigned', 'None'."
                ),
            ));
        }
        let map = identity["userAssignedIdentities"].as_object();
        // Compute refuses any `userAssignedIdentities` next to `SystemAssigned` or `None`, null
        // entries included: removing the last user-assigned identity is the type alone
        // (ARM-NOTES §2.4, D2). The code and target follow the answer Compute gave for the
        // older list form ("ResourceIdentity identityIds should not be provided if the type is
        // \"SystemAssigned\"", Azure/aad-pod-identity#214); the wording for the dictionary form
        // is unverified.
        if matches!(t, "SystemAssigned" | "None") && !identity["userAssignedIdentities"].is_null() {
            return Err(identity_type_refused(t));
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
                        return Err(bad_request(
                            "FailedIdentityOperation",
                            &format!(
                                "Identity '{id}' does not exist or is not a user assigned identity."
                            ),
                        ));
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
                        return Err(arm_err(
                            StatusCode::FORBIDDEN,
                            "LinkedAuthorizationFailed",
                            &format!(
                                "The client '{}' with object id '{}' has permission to perform action 'Microsoft.Compute/{}/write' on scope '{scope}'; however, it does not have permission to perform action(s) 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) '{id}' (respectively) or the linked scope(s) are invalid.",
                                claims.appid,
                                claims.oid,
                                c.kind.type_name()
                            ),
                        ));
                    }
                    change
                        .user_assigned
                        .entry(lower)
                        .or_insert_with(|| id.clone());
                }
            }
        }
        if t.contains("UserAssigned") && change.user_assigned.is_empty() {
            return Err(bad_request(
                "InvalidParameter",
                &format!("The identity type '{t}' requires at least one user assigned identity."),
            ));
        }
    }
    Ok(change)
}

/// The identity state a VM or scale set is going to: the goal of its running operation, or
/// its state when none runs.
pub(super) fn running_goal(st: &Az, c: &Compute) -> IdentityChange {
    c.pending
        .as_ref()
        .and_then(|p| st.operations.get(p))
        .filter(|o| o.outcome.is_none())
        .map(|o| o.change.clone())
        .unwrap_or_else(|| IdentityChange {
            system: c.system_principal.is_some(),
            user_assigned: c.user_assigned.clone(),
        })
}

/// Start the operation that brings the VM or scale set at `key` to `change`: the model changes
/// at once (a new etag), the operation finishes when polled or at its deadline. Its id.
pub(super) fn start_operation(
    inner: &Inner,
    st: &mut Az,
    key: &str,
    c: &Compute,
    change: IdentityChange,
    now: Instant,
) -> String {
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
            compute: key.to_string(),
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
    if let Some(cm) = st.computes.get_mut(key) {
        cm.pending = Some(op_id.clone());
        // A new operation on the model (its order, `seq`, is the etag): a writer holding
        // the old etag gets 412.
        cm.etag += 1;
    }
    op_id
}

/// A poll of the `Azure-AsyncOperation` URL. While the operation runs the answer says when to
/// poll again (`Retry-After`), as ARM's asynchronous operations do; without it clients fall back
/// to their own interval (the Azure SDKs wait 30 s).
pub(super) fn async_op(inner: &Inner, st: &mut Az, id: &str) -> Answer {
    let (op, status) = match st.progress(id) {
        Progress::Unknown => return lro::unknown(id).into(),
        // The status endpoint fails while the operation runs; it finishes on its own.
        Progress::Late => return server_error().into(),
        Progress::Running(op) => {
            let mut a: Answer = (
                StatusCode::OK,
                json!({"name": id, "status": "InProgress", "startTime": op.started}),
            )
                .into();
            a.headers.push((
                "retry-after",
                inner.world.lro_retry_after_seconds.to_string(),
            ));
            return a;
        }
        Progress::Done(op) => (op, "Succeeded"),
    };
    let mut body = json!({"name": id, "status": status, "startTime": op.started, "endTime": jiff::Timestamp::now().to_string()});
    if let Some(Err((code, message))) = &op.outcome {
        body["status"] = json!("Failed");
        body["error"] = json!({"code": code, "message": message});
    }
    (StatusCode::OK, body).into()
}
