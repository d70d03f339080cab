//! `RoleGrant` reconciler: resolve (identity, scope, role, policy) -> read the role assignment by
//! its deterministic name -> create it when missing -> status.
//!
//! The assignment's name is a UUIDv5 over (scope, principalId, role definition GUID), so a crash
//! between the PUT and the status write never creates a second assignment. An assignment made by
//! someone else for the same (scope, principal, role) answers `RoleAssignmentExists`: it is
//! adopted, marked `adopted`, and never deleted.

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};

use super::context::{Context, object_key};
use super::error::{ReconcileError, backoff};
use super::policy::{self, Decision, ResolvedRole};
use super::reasons;
use super::status::{apply_status, arm_reason, needs_update, now, own_conditions};
use crate::api::conditions::{self, NewCondition, set_condition, types};
use crate::api::{DeletionPolicy, RoleGrant, RoleGrantStatus};
use crate::azure::roles::{RoleAssignment, RoleDefinition, assignment_name, role_definition_guid};
use crate::azure::scope::ArmScope;

/// Finalizer of grants.
pub const FINALIZER: &str = "uami.dev/grant";

/// Conditions this controller writes on a grant (the agent writes `AccessVerified`).
const OWN: &[&str] = &[types::GRANTED, types::READY];

/// Consecutive `PrincipalNotFound` answers retried with backoff before the grant waits for the
/// next resync instead (Entra replication normally takes seconds, rarely minutes).
pub const PRINCIPAL_NOT_FOUND_ATTEMPTS: u32 = 12;

/// Why a grant has no usable scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeProblem {
    /// No subscription in the spec and no default configured.
    NoSubscription,
    /// The scope is not a canonical ARM scope (message says why).
    Invalid(String),
}

/// The canonical ARM scope of a grant, with the subscription resolved. Every comparison, policy
/// check and ARM URL uses this value, never the spec's text.
pub fn scope_of(
    obj: &RoleGrant,
    default_subscription: Option<&str>,
) -> Result<ArmScope, ScopeProblem> {
    let s = &obj.spec.scope;
    let text = if let Some(rg) = &s.resource_group {
        let sub = rg
            .subscription_id
            .clone()
            .or_else(|| default_subscription.map(str::to_string))
            .ok_or(ScopeProblem::NoSubscription)?;
        format!("/subscriptions/{sub}/resourceGroups/{}", rg.name)
    } else if let Some(sub) = &s.subscription {
        format!("/subscriptions/{}", sub.subscription_id)
    } else if let Some(id) = &s.resource_id {
        id.clone()
    } else {
        return Err(ScopeProblem::Invalid(
            "exactly one of resourceGroup, subscription or resourceId must be set".into(),
        ));
    };
    ArmScope::parse(&text).map_err(|e| ScopeProblem::Invalid(e.to_string()))
}

/// The subscription of an ARM scope.
pub fn subscription_of(scope: &str) -> Option<&str> {
    let mut parts = scope.split('/').filter(|p| !p.is_empty());
    match (parts.next(), parts.next()) {
        (Some(s), Some(id)) if s.eq_ignore_ascii_case("subscriptions") => Some(id),
        _ => None,
    }
}

/// The role assignment id of `name` at `scope`.
pub fn assignment_id(scope: &str, name: &str) -> String {
    format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{name}")
}

/// Split a role assignment id into (scope, name).
pub fn split_assignment_id(id: &str) -> Option<(&str, &str)> {
    let marker = "/providers/microsoft.authorization/roleassignments/";
    let at = id.to_lowercase().rfind(marker)?;
    Some((&id[..at], &id[at + marker.len()..]))
}

/// Entry point: finalizer handling around apply and cleanup.
pub async fn reconcile(obj: Arc<RoleGrant>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<RoleGrant> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, obj.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(obj) => apply(obj, &ctx).await,
            FinalizerEvent::Cleanup(obj) => cleanup(obj, &ctx).await,
        }
    })
    .await
    .map_err(ReconcileError::from_finalizer);
    match &result {
        Ok(_) => {}
        Err(e) => {
            if let ReconcileError::Arm { source, .. } = e {
                let reason = arm_reason(source);
                let mut status = base(&obj);
                set(
                    &obj,
                    &mut status,
                    types::READY,
                    false,
                    &reason,
                    &e.to_string(),
                );
                let _ = write_status(&obj, &ctx, status).await;
            }
        }
    }
    result
}

async fn apply(obj: Arc<RoleGrant>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let key = object_key(&*obj);
    let resync = Action::requeue(ctx.settings.jittered_resync());
    // The scope is made canonical before anything compares it or sends it to ARM.
    let scope = match scope_of(&obj, ctx.settings.default_subscription.as_deref()) {
        Ok(scope) => scope,
        Err(ScopeProblem::NoSubscription) => {
            write_status(
                &obj,
                ctx,
                waiting(
                    &obj,
                    reasons::NO_SUBSCRIPTION,
                    "the scope has no subscriptionId and the controller has no default subscription",
                ),
            )
            .await?;
            return Ok(Action::await_change());
        }
        Err(ScopeProblem::Invalid(message)) => {
            if !reason_is(&obj, reasons::INVALID_SCOPE) {
                ctx.event(
                    &*obj,
                    true,
                    reasons::INVALID_SCOPE,
                    "CheckScope",
                    message.clone(),
                )
                .await;
            }
            write_status(&obj, ctx, waiting(&obj, reasons::INVALID_SCOPE, &message)).await?;
            return Ok(Action::await_change());
        }
    };
    let identity_name = &obj.spec.identity_ref.name;
    let Some(identity) = ctx.identity(&ns, identity_name) else {
        let message =
            format!("UserAssignedIdentity {identity_name} does not exist in namespace {ns}");
        write_status(
            &obj,
            ctx,
            waiting(&obj, reasons::IDENTITY_NOT_FOUND, &message),
        )
        .await?;
        // The identity's change wakes this object; the resync covers a missed event.
        return Ok(resync);
    };
    let Some(principal_id) = identity
        .status
        .as_ref()
        .and_then(|s| s.principal_id.clone())
        .filter(|p| !p.is_empty())
    else {
        if identity.status.is_none() && obj.status.is_none() {
            // The identity is being created right now and its change wakes this grant: a status
            // saying so would be stale before anyone reads it.
            return Ok(resync);
        }
        let message = format!("UserAssignedIdentity {identity_name} has no principalId yet");
        write_status(
            &obj,
            ctx,
            waiting(&obj, reasons::WAITING_FOR_IDENTITY, &message),
        )
        .await?;
        // The identity's change wakes this object; the resync covers a missed event.
        return Ok(resync);
    };
    let subscription = scope.subscription().to_string();
    let Some(role) = ctx
        .resolve_role(&subscription, &obj.spec.role)
        .await
        .map_err(ReconcileError::arm("ResolveRole"))?
    else {
        let message = format!(
            "role {} is not a role definition in subscription {subscription}",
            obj.spec.role
        );
        if !reason_is(&obj, reasons::ROLE_NOT_FOUND) {
            ctx.event(
                &*obj,
                true,
                reasons::ROLE_NOT_FOUND,
                "ResolveRole",
                message.clone(),
            )
            .await;
        }
        write_status(&obj, ctx, waiting(&obj, reasons::ROLE_NOT_FOUND, &message)).await?;
        return Ok(resync);
    };
    let guid = role_definition_guid(&role.id)
        .or_else(|| role_definition_guid(&role.name))
        .unwrap_or_default();
    let resolved = ResolvedRole {
        guid: guid.clone(),
        name: role.role_name.clone(),
    };
    let expected = Expected {
        name: assignment_name(scope.as_str(), &principal_id, &guid).to_string(),
        scope: scope.clone(),
        principal_id: principal_id.clone(),
        guid: guid.clone(),
    };
    if let Decision::Denied(message) = policy::check_grant(
        &ctx.policies(),
        &ns,
        &resolved,
        &scope,
        ctx.settings.default_subscription.as_deref(),
    ) {
        // A policy that stops allowing a grant revokes it: the assignment this controller made
        // is deleted (never an adopted one, never one another allowed grant still uses).
        let checked = format!("denied/{}", expected.name);
        let mut next = Action::await_change();
        let revoked = if ctx.recently_checked(&key, &checked) {
            false
        } else {
            match revoke(&obj, ctx, &expected).await {
                Ok(revoked) => {
                    ctx.mark_checked(&key, checked);
                    revoked
                }
                Err(e) => {
                    // Denied either way; whether something must be revoked is looked at again
                    // at the next resync (the scope may not even be readable by the controller).
                    tracing::warn!(grant = %key, error = %e, "could not check for an assignment to revoke");
                    next = resync.clone();
                    false
                }
            }
        };
        if revoked {
            ctx.event(
                &*obj,
                true,
                reasons::DENIED_BY_POLICY,
                "RevokeRoleAssignment",
                format!(
                    "{message}; deleted role assignment {} at {scope}",
                    expected.name
                ),
            )
            .await;
        } else if !reason_is(&obj, reasons::DENIED_BY_POLICY) {
            ctx.event(
                &*obj,
                true,
                reasons::DENIED_BY_POLICY,
                "CheckPolicy",
                message.clone(),
            )
            .await;
        }
        let mut status = waiting(&obj, reasons::DENIED_BY_POLICY, &message);
        status.scope = Some(scope.to_string());
        status.role_assignment_id = None;
        status.adopted = None;
        write_status(&obj, ctx, status).await?;
        return Ok(next);
    }

    let name = expected.name.clone();
    let fingerprint = format!(
        "{:?}/{}/{}/{}",
        obj.metadata.generation,
        principal_id,
        guid,
        scope.as_str().to_lowercase()
    );
    let scope_text = scope.to_string();
    let scope = scope_text.as_str();
    let granted_before = obj
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, types::GRANTED));
    if granted_before && ctx.recently_checked(&key, &fingerprint) {
        let adopted = obj.status.as_ref().and_then(|s| s.adopted).unwrap_or(false);
        // Our own assignment's id is recomputed, not copied from status.
        let ours = assignment_id(scope, &name);
        let id = match current_assignment_id(&obj) {
            Some(current) if adopted || current.eq_ignore_ascii_case(&ours) => Some(current),
            _ => Some(ours),
        };
        let status = granted(&obj, scope, &role, &principal_id, id, adopted);
        write_status(&obj, ctx, status).await?;
        return Ok(resync);
    }

    let roles = &ctx.azure.roles;
    // An adopted assignment lives under someone else's name: look it up among the principal's.
    let adopted_before = obj.status.as_ref().and_then(|s| s.adopted) == Some(true);
    if adopted_before && let Some(found) = find_matching(ctx, scope, &principal_id, &guid).await? {
        ctx.mark_checked(&key, fingerprint);
        write_status(
            &obj,
            ctx,
            granted(&obj, scope, &role, &principal_id, Some(found.id), true),
        )
        .await?;
        return Ok(resync);
    }
    if let Some(existing) = roles
        .get_role_assignment(scope, &name)
        .await
        .map_err(ReconcileError::arm("GetRoleAssignment"))?
    {
        ctx.record_success(&format!("{key}/principal"));
        ctx.mark_checked(&key, fingerprint);
        write_status(
            &obj,
            ctx,
            granted(&obj, scope, &role, &principal_id, Some(existing.id), false),
        )
        .await?;
        return Ok(resync);
    }
    if granted_before {
        ctx.event(&*obj, true, "DriftDetected", "CreateRoleAssignment", format!("the role assignment at {scope} was removed outside the controller; creating it again")).await;
    }
    ctx.forget_checked(&key);
    let definition_id = format!(
        "/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/{guid}"
    );
    match roles
        .create_role_assignment(scope, &name, &definition_id, &principal_id)
        .await
    {
        Ok(created) => {
            ctx.record_success(&format!("{key}/principal"));
            ctx.event(
                &*obj,
                false,
                reasons::GRANTED,
                "CreateRoleAssignment",
                format!("granted {} at {scope}", role.role_name),
            )
            .await;
            ctx.mark_checked(&key, fingerprint);
            let id = if created.id.is_empty() {
                assignment_id(scope, &name)
            } else {
                created.id
            };
            write_status(
                &obj,
                ctx,
                granted(&obj, scope, &role, &principal_id, Some(id), false),
            )
            .await?;
            Ok(resync)
        }
        Err(e) if e.code() == "RoleAssignmentExists" => {
            let Some(found) = find_matching(ctx, scope, &principal_id, &guid).await? else {
                return Err(ReconcileError::Arm {
                    step: "CreateRoleAssignment",
                    source: e,
                });
            };
            ctx.event(&*obj, false, reasons::ADOPTED, "AdoptRoleAssignment", format!("an assignment of {} at {scope} already existed ({}); adopted, it will not be deleted", role.role_name, found.name)).await;
            ctx.mark_checked(&key, fingerprint);
            write_status(
                &obj,
                ctx,
                granted(&obj, scope, &role, &principal_id, Some(found.id), true),
            )
            .await?;
            Ok(resync)
        }
        Err(e) if e.code() == "PrincipalNotFound" => {
            let attempts = ctx.record_failure(&format!("{key}/principal"));
            let (message, next) = if attempts < PRINCIPAL_NOT_FOUND_ATTEMPTS {
                (
                    format!(
                        "Entra ID does not know principal {principal_id} yet (new identities take a while to replicate); attempt {attempts}, retrying"
                    ),
                    Action::requeue(
                        backoff(attempts.saturating_sub(1), e.retry_after())
                            .min(std::time::Duration::from_secs(60)),
                    ),
                )
            } else {
                (
                    format!(
                        "Entra ID still does not know principal {principal_id} after {attempts} attempts; retrying at the next resync"
                    ),
                    resync,
                )
            };
            let mut status = waiting(&obj, reasons::PRINCIPAL_NOT_FOUND, &message);
            status.scope = Some(scope.to_string());
            status.principal_id = Some(principal_id);
            write_status(&obj, ctx, status).await?;
            Ok(next)
        }
        Err(e) => Err(ReconcileError::Arm {
            step: "CreateRoleAssignment",
            source: e,
        }),
    }
}

async fn find_matching(
    ctx: &Context,
    scope: &str,
    principal_id: &str,
    guid: &str,
) -> Result<Option<RoleAssignment>, ReconcileError> {
    let list = ctx
        .azure
        .roles
        .list_role_assignments_for_principal(scope, principal_id)
        .await
        .map_err(ReconcileError::arm("ListRoleAssignments"))?;
    Ok(list.into_iter().find(|a| {
        a.scope
            .trim_end_matches('/')
            .eq_ignore_ascii_case(scope.trim_end_matches('/'))
            && role_definition_guid(&a.role_definition_id)
                .is_some_and(|g| g.eq_ignore_ascii_case(guid))
            && a.principal_id.eq_ignore_ascii_case(principal_id)
    }))
}

/// The role assignment a grant stands for, recomputed from its spec and its identity: never
/// taken from status, which another writer could have changed.
struct Expected {
    scope: ArmScope,
    principal_id: String,
    guid: String,
    name: String,
}

/// Recompute what `obj` would have created. `None` when it cannot have created anything (no
/// canonical scope, no identity with a principal, no such role).
async fn expected(obj: &RoleGrant, ctx: &Context) -> Result<Option<Expected>, ReconcileError> {
    let Ok(scope) = scope_of(obj, ctx.settings.default_subscription.as_deref()) else {
        return Ok(None);
    };
    let ns = obj.namespace().unwrap_or_default();
    let Some(principal_id) = ctx
        .identity_or_fetch(&ns, &obj.spec.identity_ref.name)
        .await
        .map_err(ReconcileError::kube("GetIdentity"))?
        .and_then(|i| i.status.as_ref().and_then(|s| s.principal_id.clone()))
        .filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    let Some(role) = ctx
        .resolve_role(scope.subscription(), &obj.spec.role)
        .await
        .map_err(ReconcileError::arm("ResolveRole"))?
    else {
        return Ok(None);
    };
    let Some(guid) = role_definition_guid(&role.id).or_else(|| role_definition_guid(&role.name))
    else {
        return Ok(None);
    };
    Ok(Some(Expected {
        name: assignment_name(scope.as_str(), &principal_id, &guid).to_string(),
        scope,
        principal_id,
        guid,
    }))
}

/// Another live grant, allowed by policy, that stands for the same assignment: deleting this one
/// must not revoke the other's access.
async fn shared_with(
    obj: &RoleGrant,
    ctx: &Context,
    exp: &Expected,
) -> Result<Option<String>, ReconcileError> {
    let default_sub = ctx.settings.default_subscription.as_deref();
    for other in ctx.stores.grants.state() {
        if other.uid() == obj.uid() || other.meta().deletion_timestamp.is_some() {
            continue;
        }
        let Ok(scope) = scope_of(&other, default_sub) else {
            continue;
        };
        if !scope.same_as(&exp.scope) {
            continue;
        }
        let ns = other.namespace().unwrap_or_default();
        let same_principal = ctx
            .identity(&ns, &other.spec.identity_ref.name)
            .and_then(|i| i.status.as_ref().and_then(|s| s.principal_id.clone()))
            .is_some_and(|p| p.eq_ignore_ascii_case(&exp.principal_id));
        if !same_principal {
            continue;
        }
        let Some(role) = ctx
            .resolve_role(scope.subscription(), &other.spec.role)
            .await
            .map_err(ReconcileError::arm("ResolveRole"))?
        else {
            continue;
        };
        let resolved = ResolvedRole {
            guid: role_definition_guid(&role.id).unwrap_or_default(),
            name: role.role_name.clone(),
        };
        if !resolved.guid.eq_ignore_ascii_case(&exp.guid) {
            continue;
        }
        if policy::check_grant(&ctx.policies(), &ns, &resolved, &scope, default_sub).is_allowed() {
            return Ok(Some(format!("{ns}/{}", other.name_any())));
        }
    }
    Ok(None)
}

/// Delete the assignment `exp` stands for, if it exists under the deterministic name and really
/// is that assignment (principal, role and scope checked), and no other allowed grant uses it.
/// Returns whether something was deleted.
async fn revoke(obj: &RoleGrant, ctx: &Context, exp: &Expected) -> Result<bool, ReconcileError> {
    let roles = &ctx.azure.roles;
    let Some(found) = roles
        .get_role_assignment(exp.scope.as_str(), &exp.name)
        .await
        .map_err(ReconcileError::arm("GetRoleAssignment"))?
    else {
        return Ok(false);
    };
    let same_scope = ArmScope::parse(&found.scope).is_ok_and(|s| s.same_as(&exp.scope));
    let same_role = role_definition_guid(&found.role_definition_id)
        .is_some_and(|g| g.eq_ignore_ascii_case(&exp.guid));
    let same_principal = found.principal_id.eq_ignore_ascii_case(&exp.principal_id);
    if !(same_scope && same_role && same_principal) {
        tracing::warn!(assignment = %found.id, "the assignment under this grant's name is not the one it stands for; left alone");
        return Ok(false);
    }
    if let Some(other) = shared_with(obj, ctx, exp).await? {
        tracing::info!(assignment = %found.id, %other, "assignment still used by another grant; kept");
        return Ok(false);
    }
    roles
        .delete_role_assignment(exp.scope.as_str(), &exp.name)
        .await
        .map_err(ReconcileError::arm("DeleteRoleAssignment"))?;
    Ok(true)
}

async fn cleanup(obj: Arc<RoleGrant>, ctx: &Context) -> Result<Action, ReconcileError> {
    ctx.forget_checked(&object_key(&*obj));
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        return Ok(Action::await_change());
    }
    // Only the assignment this grant would have created under its deterministic name is ever
    // deleted: an adopted one lives under another name, and status is not evidence.
    let Some(exp) = expected(&obj, ctx).await? else {
        return Ok(Action::await_change());
    };
    if revoke(&obj, ctx, &exp).await? {
        ctx.event(
            &*obj,
            false,
            "Revoked",
            "DeleteRoleAssignment",
            format!("deleted role assignment {} at {}", exp.name, exp.scope),
        )
        .await;
    }
    Ok(Action::await_change())
}

fn current_assignment_id(obj: &RoleGrant) -> Option<String> {
    obj.status
        .as_ref()
        .and_then(|s| s.role_assignment_id.clone())
}

fn reason_is(obj: &RoleGrant, reason: &str) -> bool {
    obj.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, types::READY))
        .is_some_and(|c| c.reason == reason)
}

fn base(obj: &RoleGrant) -> RoleGrantStatus {
    let current = obj.status.as_ref();
    RoleGrantStatus {
        observed_generation: obj.metadata.generation,
        conditions: own_conditions(current.map(|s| &s.conditions), OWN),
        scope: current.and_then(|s| s.scope.clone()),
        role_assignment_id: current.and_then(|s| s.role_assignment_id.clone()),
        role_definition_id: current.and_then(|s| s.role_definition_id.clone()),
        principal_id: current.and_then(|s| s.principal_id.clone()),
        adopted: current.and_then(|s| s.adopted),
        access: None,
    }
}

fn set(
    obj: &RoleGrant,
    status: &mut RoleGrantStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
) {
    set_condition(
        &mut status.conditions,
        NewCondition::new(type_, ok, reason, message),
        obj.metadata.generation,
        now(),
    );
}

fn waiting(obj: &RoleGrant, reason: &str, message: &str) -> RoleGrantStatus {
    let mut status = base(obj);
    set(obj, &mut status, types::GRANTED, false, reason, message);
    set(obj, &mut status, types::READY, false, reason, message);
    status
}

fn granted(
    obj: &RoleGrant,
    scope: &str,
    role: &RoleDefinition,
    principal_id: &str,
    id: Option<String>,
    adopted: bool,
) -> RoleGrantStatus {
    let mut status = base(obj);
    status.scope = Some(scope.to_string());
    status.role_assignment_id = id;
    status.role_definition_id = Some(role.id.clone());
    status.principal_id = Some(principal_id.to_string());
    status.adopted = Some(adopted);
    let message = if adopted {
        format!(
            "{} at {scope} was already assigned; adopted, never deleted by this controller",
            role.role_name
        )
    } else {
        format!("{} is assigned at {scope}", role.role_name)
    };
    set(
        obj,
        &mut status,
        types::GRANTED,
        true,
        reasons::GRANTED,
        &message,
    );
    let (ok, reason, message) = if !obj.spec.verify_access {
        (true, reasons::READY.to_string(), message)
    } else {
        match obj.status.as_ref().and_then(|s| conditions::find(&s.conditions, types::ACCESS_VERIFIED)) {
            Some(c) if c.status == conditions::status::TRUE => (true, reasons::READY.to_string(), format!("{message}; the agent verified access with the identity's token")),
            Some(c) => (false, c.reason.clone(), format!("granted, but the agent's access check did not pass yet: {}", c.message)),
            None => (false, reasons::AWAITING_ACCESS_CHECK.to_string(), "granted; waiting for an agent on a VM bound to this identity to verify access (or set verifyAccess: false)".to_string()),
        }
    };
    set(obj, &mut status, types::READY, ok, &reason, &message);
    status
}

async fn write_status(
    obj: &RoleGrant,
    ctx: &Context,
    status: RoleGrantStatus,
) -> Result<(), ReconcileError> {
    let owned = [
        "scope",
        "roleAssignmentId",
        "roleDefinitionId",
        "principalId",
        "adopted",
        "observedGeneration",
    ];
    if !needs_update(&status, obj.status.as_ref(), &owned) {
        return Ok(());
    }
    let api: Api<RoleGrant> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    apply_status(&api, obj, &status)
        .await
        .map_err(ReconcileError::kube("PatchStatus"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_ids() {
        assert_eq!(
            subscription_of("/subscriptions/abc/resourceGroups/x"),
            Some("abc")
        );
        assert_eq!(subscription_of("/providers/x"), None);
        let id = assignment_id("/subscriptions/s/resourceGroups/DevTest", "n1");
        assert_eq!(
            split_assignment_id(&id),
            Some(("/subscriptions/s/resourceGroups/DevTest", "n1"))
        );
        assert_eq!(
            split_assignment_id(
                "/subscriptions/s/providers/microsoft.authorization/roleassignments/n2"
            ),
            Some(("/subscriptions/s", "n2"))
        );
    }
}
