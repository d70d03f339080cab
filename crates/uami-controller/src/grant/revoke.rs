//! Revocation: the assignment a grant stands for, recomputed from the spec and the identity as
//! Azure has it (never taken from status), deleted only when it really is that assignment and no
//! other allowed grant still uses it.

use kube::{Resource, ResourceExt};

use super::super::azure_identity;
use super::super::context::Context;
use super::super::error::ReconcileError;
use super::super::policy::{self, ResolvedRole};
use super::plan::{Expected, guid_of, scope_of};
use uami_api::RoleGrant;
use uami_azure::roles::{RoleAssignment, role_definition_guid};
use uami_azure::scope::ArmScope;

/// The principal's assignment of role `guid` at `scope`, under whatever name.
pub(super) async fn find_matching(
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

/// Recompute what `obj` would have created. `None` when it cannot have created anything (no
/// canonical scope, no identity with a principal, no such role).
pub(super) async fn expected(
    obj: &RoleGrant,
    ctx: &Context,
) -> Result<Option<Expected>, ReconcileError> {
    let Ok(scope) = scope_of(obj, ctx.settings.default_subscription.as_deref()) else {
        return Ok(None);
    };
    let ns = obj.namespace().unwrap_or_default();
    let Some(identity) = ctx.identity(&ns, &obj.spec.identity_ref.name) else {
        return Ok(None);
    };
    let Some(principal_id) = azure_identity::resolve(ctx, &identity)
        .await?
        .map(|a| a.principal_id)
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
    let Some(guid) = guid_of(&role) else {
        return Ok(None);
    };
    Ok(Some(Expected::new(scope, principal_id, guid)))
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
        let Some(identity) = ctx.identity(&ns, &other.spec.identity_ref.name) else {
            continue;
        };
        let same_principal = azure_identity::resolve(ctx, &identity)
            .await?
            .is_some_and(|a| a.principal_id.eq_ignore_ascii_case(&exp.principal_id));
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
pub(super) async fn revoke(
    obj: &RoleGrant,
    ctx: &Context,
    exp: &Expected,
) -> Result<bool, ReconcileError> {
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
    ctx.budgets
        .role_assignment_written(exp.scope.subscription(), false);
    Ok(true)
}
