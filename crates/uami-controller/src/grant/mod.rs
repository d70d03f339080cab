//! `RoleGrant` reconciler: resolve (identity, scope, role, policy) -> plan (pure, [`plan`]) ->
//! ensure the role assignment (read it by its deterministic name, create it when missing) ->
//! status (one patch).
//!
//! The assignment's name is a UUIDv5 over (scope, principalId, role definition GUID), so a crash
//! between the PUT and the status write never creates a second assignment. An assignment made by
//! someone else for the same (scope, principal, role) answers `RoleAssignmentExists`: it is
//! adopted, marked `adopted`, and never deleted.

pub mod plan;
mod revoke;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::azure_identity;
use super::binding::plan::identity_ready;
use super::budget::{Room, count_role_assignments, room_for_one};
use super::context::Context;
use super::error::ReconcileError;
use super::memo::{ObjectKey, Run};
use super::outcome::{Next, Report, conclude, finalized};
use super::pass::Kind;
use super::reasons;
use plan::{Ensure, Expected, Found, Plan};
pub use plan::{PRINCIPAL_NOT_FOUND_ATTEMPTS, ScopeProblem, assignment_id, scope_of};
use revoke::{expected, find_matching, revoke};
use uami_api::conditions::types;
use uami_api::{DeletionPolicy, RoleGrant, RoleGrantStatus};
use uami_azure::roles::NewRoleAssignment;
use uami_kube::status::set;

/// Finalizer of grants.
pub const FINALIZER: &str = "uami.dev/grant";

/// The status fields the controller owns.
const OWNED_FIELDS: &[&str] = &[
    "scope",
    "roleAssignmentId",
    "roleDefinitionId",
    "principalId",
    "adopted",
    "observedGeneration",
];

impl Kind for RoleGrant {
    const FINALIZER: Option<&'static str> = Some(FINALIZER);
    const OWNED_FIELDS: &'static [&'static str] = OWNED_FIELDS;

    fn failed_status(&self, reason: &str, message: &str) -> Option<RoleGrantStatus> {
        let mut status = plan::base(self);
        set(&mut status, types::READY, false, reason, message);
        Some(status)
    }
}

/// Entry point (see [`super::pass::run`]): finalizer handling around apply and cleanup.
pub async fn reconcile(obj: Arc<RoleGrant>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    finalized(&ctx, FINALIZER, obj, apply, cleanup).await
}

/// Resolve, plan, and carry the plan out.
async fn apply(obj: Arc<RoleGrant>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let key = ObjectKey::of(&*obj);
    let default_sub = ctx.settings.default_subscription.as_deref();
    let identity = ctx.identity(&ns, &obj.spec.identity_ref.name);
    // The principal granted is the identity's as Azure has it, never what its status names.
    let azure = match identity.as_deref().filter(|i| identity_ready(i)) {
        Some(i) => azure_identity::resolve(ctx, i).await?,
        None => None,
    };
    let planned = match plan::resolve(&obj, default_sub, identity.as_deref(), azure.as_ref()) {
        Err(plan) => plan,
        Ok(resolved) => {
            let role = ctx
                .resolve_role(resolved.scope.subscription(), &obj.spec.role)
                .await
                .map_err(ReconcileError::arm("ResolveRole"))?;
            plan::plan(
                &obj,
                resolved,
                role.as_ref(),
                &ctx.policies(),
                default_sub,
                |fingerprint| ctx.recently_checked(&key, fingerprint),
            )
        }
    };
    let report = match planned {
        Plan::Report(report) => report,
        Plan::Revoke {
            expected,
            message,
            recently,
            status,
        } => {
            let mut next = Next::AwaitChange;
            let revoked = !recently
                && match revoke(&obj, ctx, &expected).await {
                    Ok(revoked) => {
                        ctx.memo.mark_checked(&key, expected.denied_fingerprint());
                        revoked
                    }
                    Err(e) => {
                        // Denied either way; whether something must be revoked is looked at
                        // again at the next resync (the scope may not even be readable).
                        tracing::warn!(error = %e, "could not check for an assignment to revoke");
                        next = Next::Resync;
                        false
                    }
                };
            let note = plan::denied_note(&obj, &message, &expected, revoked);
            Report::new(status, note, next)
        }
        Plan::Ensure(e) => {
            let replaced = azure.as_ref().and_then(|a| a.replaced_principal_id.clone());
            let (found, room) = ensure(&obj, ctx, &e, replaced.is_some()).await?;
            if !matches!(
                found,
                Found::PrincipalNotFound { .. } | Found::LimitReached { .. }
            ) {
                if let Some(old) = replaced {
                    revoke_replaced(&obj, ctx, &e, old).await?;
                }
                ctx.memo.mark_checked(&key, e.fingerprint);
            }
            let created = matches!(found, Found::Created { .. });
            let report = plan::settle(&obj, &e, found);
            plan::budgeted(&obj, &e, report, room, created)
        }
    };
    conclude(ctx, &*obj, report, OWNED_FIELDS).await
}

/// The identity was deleted and created again: the assignment this grant made for the old
/// principal (which no longer exists) is deleted, once the new one stands. The old principal is
/// the one this controller read from ARM before, never a status field; the assignment goes only
/// under its deterministic name, with its principal, role and scope checked ([`revoke`]).
async fn revoke_replaced(
    obj: &RoleGrant,
    ctx: &Context,
    e: &Ensure,
    old: String,
) -> Result<(), ReconcileError> {
    let key = ObjectKey::of(obj);
    if ctx.memo.replaced_principal(&key).as_deref() == Some(old.as_str()) {
        return Ok(());
    }
    let exp = &e.expected;
    let stale = Expected::new(exp.scope.clone(), old.clone(), exp.guid.clone());
    if revoke(obj, ctx, &stale).await? {
        ctx.event(
            obj,
            true,
            reasons::IDENTITY_RECREATED,
            "DeleteRoleAssignment",
            format!(
                "the identity was deleted and created again: role {} at {} is assigned to its new principal {}, and the assignment {} to the old principal {old} was deleted",
                obj.spec.role, exp.scope, exp.principal_id, stale.name
            ),
        )
        .await;
    }
    ctx.memo.set_replaced_principal(&key, old);
    Ok(())
}

/// Read the assignment and create it when missing: what ARM said, and where the subscription's
/// count of role assignments stands with this one (`None`: not counted). `recreated`: the
/// identity was deleted and created again, so a missing assignment is no drift.
async fn ensure(
    obj: &RoleGrant,
    ctx: &Context,
    e: &Ensure,
    recreated: bool,
) -> Result<(Found, Option<Room>), ReconcileError> {
    let key = ObjectKey::of(obj);
    let exp = &e.expected;
    let scope_text = exp.scope.to_string();
    let scope = scope_text.as_str();
    let subscription = exp.scope.subscription().to_string();
    let limit = ctx.budgets.role_assignment_limit;
    // With the assignment in place, the subscription holds `n` including it.
    let standing = |n: Option<usize>| {
        n.map(|n| match room_for_one(n.saturating_sub(1), limit) {
            Room::Full { .. } => Room::Near {
                used: n.saturating_sub(1),
                limit,
            },
            room => room,
        })
    };
    let roles = &ctx.azure.roles;
    // An adopted assignment lives under someone else's name: look it up among the principal's.
    if e.adopted_before
        && let Some(found) = find_matching(ctx, scope, &exp.principal_id, &exp.guid).await?
    {
        let found = Found::Exists {
            id: found.id,
            adopted: true,
        };
        return Ok((found, standing(ctx.budgets.role_assignments(&subscription))));
    }
    if let Some(existing) = roles
        .get_role_assignment(scope, &exp.name)
        .await
        .map_err(ReconcileError::arm("GetRoleAssignment"))?
    {
        ctx.memo.succeeded(&key, Run::PrincipalNotFound);
        let found = Found::Exists {
            id: existing.id,
            adopted: false,
        };
        return Ok((found, standing(ctx.budgets.role_assignments(&subscription))));
    }
    // One more assignment: refused here, before ARM, when the subscription is full. A full
    // count is read again first, so that assignments removed since the last count are seen.
    let mut used = match ctx.budgets.role_assignments(&subscription) {
        Some(n) => Some(n),
        None if !ctx.budgets.unreadable(&subscription) => {
            count_role_assignments(ctx, &subscription).await
        }
        None => None,
    };
    if used.is_some_and(|n| n >= limit) {
        used = count_role_assignments(ctx, &subscription).await.or(used);
    }
    let room = used.map(|n| room_for_one(n, limit));
    if let Some(Room::Full { used, limit }) = room {
        return Ok((Found::LimitReached { used, limit }, room));
    }
    if e.granted_before && !recreated {
        ctx.event(obj, true, reasons::DRIFT_DETECTED, "CreateRoleAssignment", format!("the role assignment at {scope} was removed outside the controller; creating it again")).await;
    }
    ctx.memo.forget_checked(&key);
    let found = match roles
        .create_role_assignment(NewRoleAssignment {
            scope,
            name: &exp.name,
            role_definition_id: &e.definition_id,
            principal_id: &exp.principal_id,
        })
        .await
    {
        Ok(created) => {
            ctx.memo.succeeded(&key, Run::PrincipalNotFound);
            ctx.budgets.role_assignment_written(&subscription, true);
            Found::Created { id: created.id }
        }
        Err(err) if err.code() == "RoleAssignmentExists" => {
            match find_matching(ctx, scope, &exp.principal_id, &exp.guid).await? {
                Some(found) => Found::Taken(found),
                None => {
                    return Err(ReconcileError::Arm {
                        step: "CreateRoleAssignment",
                        source: err,
                    });
                }
            }
        }
        Err(err) if err.code() == "RoleAssignmentLimitExceeded" => {
            // Azure counted more than this controller did (or the count was unknown).
            ctx.budgets.set_role_assignments(&subscription, limit);
            let used = used.map_or(limit, |n| n.max(limit));
            return Ok((
                Found::LimitReached { used, limit },
                Some(Room::Full { used, limit }),
            ));
        }
        Err(err) if err.code() == "PrincipalNotFound" => Found::PrincipalNotFound {
            attempts: ctx.memo.failed(&key, Run::PrincipalNotFound),
            retry_after: err.retry_after(),
        },
        Err(err) => {
            return Err(ReconcileError::Arm {
                step: "CreateRoleAssignment",
                source: err,
            });
        }
    };
    let room = match found {
        Found::Created { .. } => room,
        _ => None,
    };
    Ok((found, room))
}

async fn cleanup(obj: Arc<RoleGrant>, ctx: &Context) -> Result<Action, ReconcileError> {
    ctx.memo.forget_checked(&ObjectKey::of(&*obj));
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
