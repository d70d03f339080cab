//! `IdentityBinding` reconciler: resolve (target, policy, identity) -> plan (pure, [`plan`]) ->
//! read the VM or scale set and submit the missing change to the target's writer -> status.
//!
//! The binding never PATCHes the target itself; [`TargetWriter`](super::target_writer) merges
//! the changes of every binding of one target into one write. `Ready` also needs the agent on the
//! VM to report a token (`TokenAcquired`, written by the agent's own field manager). Bindings to a
//! service account (workload identity) take their own path in [`workload`](super::workload).

pub mod plan;
mod removal;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::azure_identity;
use super::context::Context;
use super::error::ReconcileError;
use super::memo::{ObjectKey, Run};
use super::outcome::{conclude, finalized};
use super::pass::Kind;
use super::target_writer::{Outcome, Want};
use super::workload;
pub use plan::{ASSIGNED_ANNOTATION, recorded_identity, target_of};
use plan::{Ensure, Found, Plan, Removal, recorded};
use removal::{
    label_target, labelled, owned_identity, read_target, record_identity, remove_finalizer,
    remove_identity,
};
use uami_api::conditions::types;
use uami_api::{DeletionPolicy, IdentityBinding, IdentityBindingStatus};

/// Finalizer of bindings.
pub const FINALIZER: &str = "uami.dev/binding";

/// The status fields the controller owns on a binding to a VM or scale set.
pub(super) const OWNED_FIELDS: &[&str] = &[
    "targetResourceId",
    "assigned",
    "adopted",
    "observedGeneration",
    "clientId",
    "accessChecks",
];

impl Kind for IdentityBinding {
    // A binding to a VM or scale set adds its finalizer with its record (see
    // [`reconcile_target`]); one to a service account through kube's helper, before anything
    // else, and its next pass reads the object again.
    const FINALIZER: Option<&'static str> = None;
    const OWNED_FIELDS: &'static [&'static str] = OWNED_FIELDS;

    fn failed_status(&self, reason: &str, message: &str) -> Option<IdentityBindingStatus> {
        Some(plan::not_ready(self, types::READY, reason, message))
    }
}

/// Entry point (see [`super::pass::run`]): finalizer handling around apply and cleanup.
pub async fn reconcile(
    obj: Arc<IdentityBinding>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if workload::is_service_account(&obj) {
        // Service accounts (workload identity) have their own path; their finalizer comes first.
        let shared = ctx.clone();
        let apply = async move |obj, _: &Context| workload::apply(obj, shared).await;
        finalized(&ctx, FINALIZER, obj, apply, workload::cleanup).await
    } else {
        reconcile_target(obj, &ctx).await
    }
}

/// A binding to a VM or scale set: apply, or on deletion clean up and remove the finalizer. Its
/// finalizer is added with its first record of an identity ([`record_identity`]), in the same
/// patch and before the target is written: until then, deleting it has nothing to undo.
async fn reconcile_target(
    obj: Arc<IdentityBinding>,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    if obj.meta().deletion_timestamp.is_none() {
        return apply(obj, ctx).await;
    }
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let action = cleanup(obj.clone(), ctx).await?;
    remove_finalizer(ctx, &obj).await?;
    Ok(action)
}

/// Plan, and carry the plan out.
async fn apply(obj: Arc<IdentityBinding>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let key = ObjectKey::of(&*obj);
    let identity = ctx.identity(&ns, &obj.spec.identity_ref.name);
    // What is assigned is the identity as Azure has it (its spec's coordinates, its owner tag),
    // never what its status names.
    let azure = match identity.as_deref().filter(|i| plan::identity_ready(i)) {
        Some(i) => azure_identity::resolve(ctx, i).await?,
        None => None,
    };
    let planned = plan::plan(
        &obj,
        ctx.settings.default_subscription.as_deref(),
        &ctx.policies(),
        identity.as_deref(),
        azure.as_ref(),
        |fingerprint| ctx.recently_checked(&key, fingerprint),
    );
    let grants = plan::checked_grants(&obj, &ctx.stores.grants.state());
    let planes = super::planes::grant_planes(ctx, &grants).await;
    let inputs = plan::agent_inputs(&obj, azure.as_ref(), &grants, &planes);
    let with_inputs = |mut report: super::outcome::Report<uami_api::IdentityBindingStatus>| {
        if let Some(status) = report.status.as_mut() {
            plan::with_agent_inputs(status, &inputs);
        }
        report
    };
    let report = match planned {
        Plan::Report(report) => with_inputs(report),
        Plan::Revoke { target, message } => {
            // A policy that stops allowing a binding revokes it: the identity this controller
            // added is removed from the target.
            let removal = match owned_identity(&obj, ctx) {
                Some(identity_id) => Some(remove_identity(&obj, ctx, &target, &identity_id).await?),
                None => None,
            };
            let mut report = plan::revoked(&obj, &target, &message, removal);
            if let Some(note) = report.note.take() {
                note.publish(ctx, &*obj).await;
            }
            if removal == Some(Removal::Gone) {
                record_identity(&obj, ctx, None).await?;
            }
            report
        }
        Plan::Ensure(e) => {
            let mut labelled = labelled(&obj, &e.target);
            let found = ensure(&obj, ctx, &e, &mut labelled).await?;
            if matches!(found, Found::Assigned { .. }) {
                ctx.memo.mark_checked(&key, e.fingerprint);
            }
            if !labelled {
                label_target(&obj, ctx, &e.target).await?;
            }
            let settled = with_inputs(plan::settle(&obj, &e, &found));
            let action = conclude(ctx, &*obj, settled, OWNED_FIELDS).await?;
            let want = match found {
                Found::Submit { .. } => Some(Want::Present),
                Found::Replace => Some(Want::Absent),
                _ => None,
            };
            if let Some(want) = want {
                // Submitted after the status says so: the writer's answer is reported next.
                ctx.writer
                    .submit(&e.target, &e.identity_id, want, ObjectRef::from_obj(&*obj));
            }
            return Ok(action);
        }
    };
    conclude(ctx, &*obj, report, OWNED_FIELDS).await
}

/// Where the identity stands on the target, from the writer and ARM; records that this
/// controller added it before the writer's outcome is forgotten, so that only an identity it
/// added is ever removed.
async fn ensure(
    obj: &IdentityBinding,
    ctx: &Context,
    e: &Ensure,
    labelled: &mut bool,
) -> Result<Found, ReconcileError> {
    let key = ObjectKey::of(obj);
    let (target, identity_id) = (&e.target, e.identity_id.as_str());
    let done = |outcome: Option<Outcome>| matches!(outcome, Some(Outcome::Done));
    // A stale entry (the identity deleted and created again) is being removed first.
    let mut replaced = false;
    if ctx.memo.replacing(&key) {
        match ctx.writer.outcome(target, identity_id) {
            Some(Outcome::Pending) => return Ok(Found::Pending),
            Some(Outcome::Done) => {
                ctx.writer.forget(target, identity_id);
                ctx.memo.set_replacing(&key, false);
                replaced = true;
            }
            _ => {
                ctx.memo.set_replacing(&key, false);
            }
        }
    }
    if done(ctx.writer.outcome(target, identity_id)) {
        // The writer's PATCH carrying this identity just succeeded: no need to read the VM again.
        if !recorded(obj, identity_id) {
            record_identity(obj, ctx, Some((identity_id, target))).await?;
            *labelled = true;
        }
        ctx.writer.forget(target, identity_id);
        ctx.memo.succeeded(&key, Run::TargetWrite);
        return Ok(Found::Assigned {
            ours: true,
            added: true,
        });
    }
    if matches!(
        ctx.writer.outcome(target, identity_id),
        Some(Outcome::Pending)
    ) && recorded(obj, identity_id)
    {
        // The writer has this change queued or in flight and reconciles this binding when it is
        // done: reading the target now tells nothing new.
        return Ok(Found::Pending);
    }
    let current = read_target(ctx, target).await?;
    let Some(current) = current else {
        ctx.memo.forget_checked(&key);
        return Ok(Found::TargetNotFound);
    };
    let stale = current.identity.user_assigned.iter().any(|(k, info)| {
        k.eq_ignore_ascii_case(identity_id)
            && !e.principal_id.is_empty()
            && info
                .principal_id
                .as_deref()
                .is_some_and(|p| !p.eq_ignore_ascii_case(&e.principal_id))
    });
    if stale && recorded(obj, identity_id) {
        // Assigned by this controller, to the identity that was deleted: IMDS has no token for
        // the new one until the entry is removed and the identity assigned again. One someone
        // else assigned is theirs to renew.
        tracing::info!(target = %target.id(), "identity recreated since it was assigned; removing and assigning it again");
        ctx.memo.forget_checked(&key);
        ctx.memo.set_replacing(&key, true);
        return Ok(Found::Replace);
    }
    if current.identity.has_user_assigned(identity_id) {
        // The write succeeded: a later failure starts its backoff from the beginning.
        ctx.memo.succeeded(&key, Run::TargetWrite);
        let added = done(ctx.writer.outcome(target, identity_id));
        let mut ours = recorded(obj, identity_id);
        if added && !ours {
            // This controller's write put it there.
            record_identity(obj, ctx, Some((identity_id, target))).await?;
            *labelled = true;
            ours = true;
        }
        ctx.writer.forget(target, identity_id);
        return Ok(Found::Assigned { ours, added });
    }
    ctx.memo.forget_checked(&key);
    match ctx.writer.outcome(target, identity_id) {
        Some(Outcome::Pending) => Ok(Found::Pending),
        Some(Outcome::Failed {
            code,
            message,
            retryable,
            retry_after,
        }) => {
            ctx.writer.forget(target, identity_id);
            Ok(Found::Failed {
                code,
                message,
                retryable,
                retry_after,
                attempts: ctx.memo.failed(&key, Run::TargetWrite),
            })
        }
        other => {
            let drift = e.assigned_before && other.is_none() && !replaced;
            if drift {
                tracing::info!(target = %target.id(), "identity no longer assigned; repairing drift");
            }
            // Record the assignment before asking for it: after a crash between the write and
            // its answer, or when the answer is lost (a timeout, a 500 after the fact), the
            // identity found on the target is known as this controller's, not adopted, and is
            // removed on deletion.
            if !recorded(obj, identity_id) {
                record_identity(obj, ctx, Some((identity_id, target))).await?;
                *labelled = true;
            }
            Ok(Found::Submit { drift })
        }
    }
}

async fn cleanup(obj: Arc<IdentityBinding>, ctx: &Context) -> Result<Action, ReconcileError> {
    ctx.memo.forget_checked(&ObjectKey::of(&*obj));
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        return Ok(Action::await_change());
    }
    // Only an identity this controller recorded adding is removed: a binding refused by policy,
    // deleted before its first reconcile, or that found the identity already assigned, removes
    // nothing. Status is not evidence.
    let Some(identity_id) = owned_identity(&obj, ctx) else {
        return Ok(Action::await_change());
    };
    let Some(target) = target_of(&obj, ctx.settings.default_subscription.as_deref()) else {
        return Ok(Action::await_change());
    };
    match remove_identity(&obj, ctx, &target, &identity_id).await? {
        Removal::Gone => Ok(Action::await_change()),
        // The finalizer stays until the identity is off the VM; the writer reconciles this
        // binding again when the removal is done.
        Removal::Pending => Err(ReconcileError::Waiting {
            step: "UnassignIdentity",
            message: format!("removing the identity from {}", target.id()),
            retry: Duration::from_secs(30),
        }),
    }
}
