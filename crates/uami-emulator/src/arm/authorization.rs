//! Authorization: the access check on every ARM call, role assignments (GET, PUT, DELETE, list
//! with `$filter`) and the built-in role definitions (GET, list).

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::route::subscription_of;
use super::{arm_err, bad_request, eq};
use crate::faults::kind as fk;
use crate::state::{Assignment, State as Az};
use crate::tokens::Claims;
use crate::{Inner, rbac};

/// Whether `principal` may perform `action` at `scope`, from effective assignments.
pub(super) fn authorized(
    st: &Az,
    principal: &str,
    action: &str,
    scope: &str,
    now: Instant,
) -> bool {
    st.assignments.values().any(|a| {
        a.principal_id.eq_ignore_ascii_case(principal)
            && now >= a.effective_at
            && rbac::within(scope, &a.scope)
            && rbac::find(&a.role_guid).is_some_and(|r| rbac::allows(r, action))
    })
}

/// ARM's 403 for a caller without `action` at `scope`.
pub(super) fn forbidden(c: &Claims, action: &str, scope: &str) -> (StatusCode, Value) {
    arm_err(
        StatusCode::FORBIDDEN,
        "AuthorizationFailed",
        &format!(
            "The client '{}' with object id '{}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
            c.appid, c.oid
        ),
    )
}

fn assignment_key(scope: &str, name: &str) -> String {
    format!(
        "{}/providers/microsoft.authorization/roleassignments/{}",
        scope.trim_end_matches('/'),
        name
    )
    .to_lowercase()
}

fn assignment_missing() -> (StatusCode, Value) {
    arm_err(
        StatusCode::NOT_FOUND,
        "RoleAssignmentNotFound",
        "The role assignment does not exist.",
    )
}

/// `GET` of a role assignment.
pub(super) fn assignment_get(st: &Az, scope: &str, name: &str) -> (StatusCode, Value) {
    match st.assignments.get(&assignment_key(scope, name)) {
        Some(a) => (StatusCode::OK, a.json()),
        None => assignment_missing(),
    }
}

/// `PUT` of a role assignment: created (201) once the principal exists in the directory,
/// effective after `rbacPropagationSeconds`; the same assignment again answers 200.
pub(super) fn assignment_put(
    inner: &Inner,
    st: &mut Az,
    scope: &str,
    name: &str,
    body: Option<&Value>,
    now: Instant,
) -> (StatusCode, Value) {
    if uuid::Uuid::parse_str(name).is_err() {
        return bad_request(
            "InvalidRoleAssignmentId",
            &format!(
                "The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."
            ),
        );
    }
    let props = body.map(|b| &b["properties"]);
    let (Some(def_id), Some(principal)) = (
        props.and_then(|p| p["roleDefinitionId"].as_str()),
        props.and_then(|p| p["principalId"].as_str()),
    ) else {
        return bad_request(
            "InvalidRequestContent",
            "The request content was invalid: properties.roleDefinitionId and properties.principalId are required.",
        );
    };
    let principal_type = props
        .and_then(|p| p["principalType"].as_str())
        .unwrap_or("User")
        .to_string();
    let guid = def_id.rsplit('/').next().unwrap_or_default().to_lowercase();
    let Some(role) = rbac::find(&guid) else {
        return bad_request(
            "RoleDefinitionDoesNotExist",
            &format!("The specified role definition with ID '{guid}' does not exist."),
        );
    };
    let window = inner.faults.lock().principal_not_found_seconds;
    let young = st
        .identity_by_principal(principal)
        .is_some_and(|i| now.duration_since(i.created).as_secs_f64() < window);
    if young {
        inner.inject(fk::PRINCIPAL_NOT_FOUND);
    }
    if !st.principal_exists(principal) || young {
        return bad_request(
            "PrincipalNotFound",
            &format!(
                "Principal {} does not exist in the directory {}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay. In this case, set the role assignment principalType property to a value, such as ServicePrincipal, User, or Group.  See https://aka.ms/docs-principaltype",
                principal.replace('-', ""),
                inner.world.tenant_id
            ),
        );
    }
    let scope_norm = scope.trim_end_matches('/').to_string();
    let key = assignment_key(scope, name);
    if let Some(existing) = st.assignments.get(&key) {
        if existing.principal_id.eq_ignore_ascii_case(principal)
            && existing.role_guid == role.guid
            && eq(&existing.scope, &scope_norm)
        {
            return (StatusCode::OK, existing.json());
        }
        return bad_request(
            "RoleAssignmentUpdateNotPermitted",
            "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
        );
    }
    if st.assignments.values().any(|a| {
        a.principal_id.eq_ignore_ascii_case(principal)
            && a.role_guid == role.guid
            && eq(&a.scope, &scope_norm)
    }) {
        return arm_err(
            StatusCode::CONFLICT,
            "RoleAssignmentExists",
            "The role assignment already exists.",
        );
    }
    // Azure counts every assignment at the subscription and below it against a fixed limit and
    // refuses the next one with RoleAssignmentLimitExceeded
    // (https://learn.microsoft.com/azure/role-based-access-control/troubleshoot-limits).
    let sub = subscription_of(&scope_norm);
    if sub != "tenant" {
        let prefix = format!("/subscriptions/{sub}");
        let used = st
            .assignments
            .values()
            .filter(|a| rbac::within(&a.scope, &prefix))
            .count();
        if used >= inner.world.limits.role_assignments_per_subscription {
            return bad_request(
                "RoleAssignmentLimitExceeded",
                "No more role assignments can be created.",
            );
        }
    }
    let delay = Duration::from_secs_f64(inner.world.rbac_propagation_seconds.max(0.0));
    let a = Assignment {
        name: name.to_lowercase(),
        scope: scope_norm,
        role_guid: role.guid.to_string(),
        principal_id: principal.to_string(),
        principal_type,
        description: props
            .and_then(|p| p["description"].as_str())
            .map(str::to_string),
        effective_at: now + delay,
        created_on: jiff::Timestamp::now().to_string(),
    };
    let body = a.json();
    st.assignments.insert(key, a);
    (StatusCode::CREATED, body)
}

/// `DELETE` of a role assignment: 200 with it when it existed, 204 when not.
pub(super) fn assignment_delete(st: &mut Az, scope: &str, name: &str) -> (StatusCode, Value) {
    match st.assignments.remove(&assignment_key(scope, name)) {
        Some(a) => (StatusCode::OK, a.json()),
        None => (StatusCode::NO_CONTENT, Value::Null),
    }
}

/// The role assignments at, above and below `scope`, with `$filter` `atScope()` or
/// `principalId eq '...'`.
pub(super) fn assignment_list(st: &Az, scope: &str, filter: Option<&str>) -> (StatusCode, Value) {
    let filter = filter.map(str::trim);
    let principal = filter
        .and_then(|f| f.strip_prefix("principalId eq '"))
        .and_then(|f| f.strip_suffix('\''));
    let at_scope = filter == Some("atScope()");
    if filter.is_some() && principal.is_none() && !at_scope {
        return bad_request(
            "UnsupportedQuery",
            &format!(
                "The filter '{}' is not supported.",
                filter.unwrap_or_default()
            ),
        );
    }
    let value: Vec<Value> = st
        .assignments
        .values()
        .filter(|a| {
            let above = rbac::within(scope, &a.scope);
            let below = rbac::within(&a.scope, scope);
            if at_scope {
                above
            } else {
                (above || below) && principal.is_none_or(|p| a.principal_id.eq_ignore_ascii_case(p))
            }
        })
        .map(Assignment::json)
        .collect();
    (StatusCode::OK, json!({"value": value}))
}

/// `GET` of a built-in role definition.
pub(super) fn definition_get(guid: &str) -> (StatusCode, Value) {
    match rbac::find(guid).filter(|r| r.guid.eq_ignore_ascii_case(guid)) {
        Some(r) => (StatusCode::OK, rbac::definition_json(r, None)),
        None => arm_err(
            StatusCode::NOT_FOUND,
            "RoleDefinitionDoesNotExist",
            &format!("The role definition '{guid}' could not be found."),
        ),
    }
}

/// The built-in role definitions, with `$filter` `roleName eq '...'`.
pub(super) fn definition_list(scope: &str, filter: Option<&str>) -> (StatusCode, Value) {
    let name = filter
        .map(str::trim)
        .and_then(|f| f.strip_prefix("roleName eq '"))
        .and_then(|f| f.strip_suffix('\''))
        .map(|n| n.replace("''", "'"));
    let sub = {
        let s = subscription_of(scope);
        (s != "tenant").then_some(s)
    };
    let value: Vec<Value> = rbac::BUILT_IN
        .iter()
        .filter(|r| name.as_deref().is_none_or(|n| eq(&r.name, n)))
        .map(|r| rbac::definition_json(r, sub.as_deref()))
        .collect();
    (StatusCode::OK, json!({"value": value}))
}
