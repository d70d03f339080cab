//! `IdentityBinding` reconciler: resolve (target, identity, policy) -> read the VM or scale set
//! -> submit the missing change to the target's writer -> status.
//!
//! The binding never PATCHes the target itself; [`TargetWriter`](super::target_writer) merges
//! the changes of every binding of one target into one write. `Ready` also needs the agent on the
//! VM to report a token (`TokenAcquired`, written by the agent's own field manager).

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::context::{Context, object_key};
use super::error::{ReconcileError, backoff};
use super::policy::{self, Decision, ResolvedTarget};
use super::reasons;
use super::status::{self, FIELD_MANAGER, arm_reason, now, own_conditions};
use super::target_writer::{Outcome, Want};
use super::workload;
use crate::api::conditions::{self, NewCondition, set_condition, types};
use crate::api::{DeletionPolicy, IdentityBinding, IdentityBindingStatus};
use crate::azure::compute::{ComputeTarget, TargetKind};

/// Finalizer of bindings.
pub const FINALIZER: &str = "uami.dev/binding";

/// Annotation on a binding recording the identity (ARM id) that this controller added to the
/// binding's target. Only an identity recorded here is ever removed from a VM or scale set. It
/// lives in the object's metadata, which the agent cannot write (it may patch only the status
/// subresource, and writes through `/status` ignore metadata), unlike `status.adopted`.
pub const ASSIGNED_ANNOTATION: &str = "uami.dev/assigned-identity";

/// The identity this controller recorded adding to the target of `obj`, if any.
pub fn recorded_identity(obj: &IdentityBinding) -> Option<&str> {
    obj.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(ASSIGNED_ANNOTATION))
        .map(String::as_str)
}

/// Record (or with `None` forget) that this controller added `identity_id` to the target.
async fn record_identity(
    obj: &IdentityBinding,
    ctx: &Context,
    identity_id: Option<&str>,
) -> Result<(), ReconcileError> {
    let api: Api<IdentityBinding> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch =
        serde_json::json!({"metadata": {"annotations": {ASSIGNED_ANNOTATION: identity_id}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch(&obj.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(ReconcileError::kube("RecordAssignment"))?;
    Ok(())
}

/// Where removing an identity from a target stands.
enum Removal {
    /// The identity is not on the target (any more).
    Gone,
    /// The writer is removing it.
    Pending,
}

/// Conditions this controller writes on a binding (the agent writes `TokenAcquired`).
const OWN: &[&str] = &[types::ASSIGNED, types::READY];

/// The target of a binding, with the subscription resolved.
pub fn target_of(
    obj: &IdentityBinding,
    default_subscription: Option<&str>,
) -> Option<ComputeTarget> {
    let t = &obj.spec.target;
    let (kind, r) = match (&t.virtual_machine, &t.virtual_machine_scale_set) {
        (Some(r), _) => (TargetKind::VirtualMachine, r),
        (None, Some(r)) => (TargetKind::VirtualMachineScaleSet, r),
        (None, None) => return None,
    };
    Some(ComputeTarget {
        kind,
        subscription: r
            .subscription_id
            .clone()
            .or_else(|| default_subscription.map(str::to_string))?,
        resource_group: r.resource_group.clone(),
        name: r.name.clone(),
    })
}

fn resolved(target: &ComputeTarget) -> ResolvedTarget {
    ResolvedTarget {
        kind: match target.kind {
            TargetKind::VirtualMachine => policy::TargetKind::VirtualMachine,
            TargetKind::VirtualMachineScaleSet => policy::TargetKind::VirtualMachineScaleSet,
        },
        subscription_id: target.subscription.clone(),
        resource_group: target.resource_group.clone(),
        name: target.name.clone(),
    }
}

/// Entry point: finalizer handling around apply and cleanup.
pub async fn reconcile(
    obj: Arc<IdentityBinding>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<IdentityBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, obj.clone(), |event| async {
        match event {
            // Service accounts (workload identity) have their own path.
            FinalizerEvent::Apply(obj) if workload::is_service_account(&obj) => {
                workload::apply(obj, &ctx).await
            }
            FinalizerEvent::Cleanup(obj) if workload::is_service_account(&obj) => {
                workload::cleanup(obj, &ctx).await
            }
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
                let status = not_ready(&obj, types::READY, &reason, &e.to_string());
                let _ = write_status(&obj, &ctx, status).await;
            }
        }
    }
    result
}

async fn apply(obj: Arc<IdentityBinding>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let resync = Action::requeue(ctx.settings.jittered_resync());
    let Some(target) = target_of(&obj, ctx.settings.default_subscription.as_deref()) else {
        let status = not_ready(
            &obj,
            types::READY,
            reasons::NO_SUBSCRIPTION,
            "the target has no subscriptionId and the controller has no default subscription",
        );
        write_status(&obj, ctx, status).await?;
        return Ok(Action::await_change());
    };
    if let Decision::Denied(message) = policy::check_binding(
        &ctx.policies(),
        &ns,
        &resolved(&target),
        ctx.settings.default_subscription.as_deref(),
    ) {
        // A policy that stops allowing a binding revokes it: the identity this controller added
        // is removed from the target.
        if let Some(identity_id) = owned_identity(&obj, ctx).await? {
            let removal = remove_identity(&obj, ctx, &target, &identity_id).await?;
            let mut status = not_ready(&obj, types::ASSIGNED, reasons::DENIED_BY_POLICY, &message);
            status.target_resource_id = Some(target.id());
            set(
                &obj,
                &mut status,
                types::READY,
                false,
                reasons::DENIED_BY_POLICY,
                &message,
            );
            return match removal {
                Removal::Gone => {
                    ctx.event(
                        &*obj,
                        true,
                        reasons::DENIED_BY_POLICY,
                        "RevokeAssignment",
                        format!("{message}; removed the identity from {}", target.id()),
                    )
                    .await;
                    record_identity(&obj, ctx, None).await?;
                    status.assigned = Some(false);
                    status.adopted = None;
                    write_status(&obj, ctx, status).await?;
                    Ok(Action::await_change())
                }
                Removal::Pending => {
                    write_status(&obj, ctx, status).await?;
                    Ok(Action::requeue(Duration::from_secs(30)))
                }
            };
        }
        if !reason_is(&obj, reasons::DENIED_BY_POLICY) {
            ctx.event(
                &*obj,
                true,
                reasons::DENIED_BY_POLICY,
                "CheckPolicy",
                message.clone(),
            )
            .await;
        }
        let mut status = not_ready(&obj, types::ASSIGNED, reasons::DENIED_BY_POLICY, &message);
        status.target_resource_id = Some(target.id());
        if recorded_identity(&obj).is_none() {
            status.assigned = None;
            status.adopted = None;
        }
        set(
            &obj,
            &mut status,
            types::READY,
            false,
            reasons::DENIED_BY_POLICY,
            &message,
        );
        write_status(&obj, ctx, status).await?;
        // Policies are watched: a policy change reconciles again.
        return Ok(Action::await_change());
    }
    let identity_name = &obj.spec.identity_ref.name;
    let Some(identity) = ctx.identity(&ns, identity_name) else {
        let message =
            format!("UserAssignedIdentity {identity_name} does not exist in namespace {ns}");
        write_status(
            &obj,
            ctx,
            waiting(&obj, &target, reasons::IDENTITY_NOT_FOUND, &message),
        )
        .await?;
        // The identity's change wakes this object; the resync covers a missed event.
        return Ok(resync);
    };
    let Some(identity_id) = identity
        .status
        .as_ref()
        .and_then(|s| s.resource_id.clone())
        .filter(|_| {
            conditions::is_true(
                identity
                    .status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default(),
                types::READY,
            )
        })
    else {
        if identity.status.is_none() && obj.status.is_none() {
            // The identity is being created right now and its change wakes this binding.
            return Ok(resync);
        }
        let message = format!("UserAssignedIdentity {identity_name} is not ready yet");
        write_status(
            &obj,
            ctx,
            waiting(&obj, &target, reasons::WAITING_FOR_IDENTITY, &message),
        )
        .await?;
        // The identity's change wakes this object; the resync covers a missed event.
        return Ok(resync);
    };

    let key = object_key(&*obj);
    let fingerprint = format!(
        "{:?}/{}",
        obj.metadata.generation,
        identity_id.to_lowercase()
    );
    let assigned_before = obj.status.as_ref().and_then(|s| s.assigned) == Some(true);
    if assigned_before && ctx.recently_checked(&key, &fingerprint) {
        // A pass caused by a status write (ours or the agent's): only the summary can change.
        let status = summary(&obj, &target, obj.status.as_ref().and_then(|s| s.adopted));
        write_status(&obj, ctx, status).await?;
        return Ok(resync);
    }

    if matches!(
        ctx.writer.outcome(&target, &identity_id),
        Some(Outcome::Done)
    ) {
        // The writer's PATCH carrying this identity just succeeded: no need to read the VM again.
        // Record that this controller added it before forgetting the outcome, so that only an
        // identity it added is ever removed.
        if !recorded_identity(&obj).is_some_and(|r| r.eq_ignore_ascii_case(&identity_id)) {
            record_identity(&obj, ctx, Some(&identity_id)).await?;
        }
        ctx.writer.forget(&target, &identity_id);
        ctx.record_success(&format!("{key}/write"));
        let adopted = false;
        ctx.event(
            &*obj,
            false,
            reasons::ASSIGNED,
            "AssignIdentity",
            format!("assigned {identity_name} to {}", target.id()),
        )
        .await;
        ctx.mark_checked(&key, fingerprint);
        write_status(&obj, ctx, summary_assigned(&obj, &target, adopted)).await?;
        return Ok(resync);
    }
    let current = ctx
        .azure
        .compute
        .get_compute(&target)
        .await
        .map_err(ReconcileError::arm("GetTarget"))?;
    let Some(current) = current else {
        ctx.forget_checked(&key);
        let message = format!("{} does not exist", target.id());
        if !reason_is(&obj, reasons::TARGET_NOT_FOUND) {
            ctx.event(
                &*obj,
                true,
                reasons::TARGET_NOT_FOUND,
                "GetTarget",
                message.clone(),
            )
            .await;
        }
        write_status(
            &obj,
            ctx,
            waiting(&obj, &target, reasons::TARGET_NOT_FOUND, &message),
        )
        .await?;
        return Ok(resync);
    };
    let me = ObjectRef::from_obj(&*obj);
    if current.identity.has_user_assigned(&identity_id) {
        // The write succeeded: a later failure starts its backoff from the beginning.
        ctx.record_success(&format!("{key}/write"));
        let outcome = ctx.writer.outcome(&target, &identity_id);
        let mut ours =
            recorded_identity(&obj).is_some_and(|r| r.eq_ignore_ascii_case(&identity_id));
        if matches!(outcome, Some(Outcome::Done)) {
            // This controller's write put it there: record that before forgetting the outcome,
            // so that only an identity it added is ever removed.
            if !ours {
                record_identity(&obj, ctx, Some(&identity_id)).await?;
                ours = true;
            }
            ctx.event(
                &*obj,
                false,
                reasons::ASSIGNED,
                "AssignIdentity",
                format!("assigned {identity_name} to {}", target.id()),
            )
            .await;
        }
        ctx.writer.forget(&target, &identity_id);
        // Assigned without a record of this controller adding it: someone else put it there,
        // so it is never removed by this controller.
        let adopted = !ours;
        ctx.mark_checked(&key, fingerprint);
        write_status(&obj, ctx, summary_assigned(&obj, &target, adopted)).await?;
        return Ok(resync);
    }
    ctx.forget_checked(&key);
    match ctx.writer.outcome(&target, &identity_id) {
        Some(Outcome::Pending) => {
            write_status(&obj, ctx, assigning(&obj, &target)).await?;
            Ok(resync)
        }
        Some(Outcome::Failed {
            code,
            message,
            retryable,
            retry_after,
        }) => {
            ctx.writer.forget(&target, &identity_id);
            let attempts = ctx.record_failure(&format!("{key}/write"));
            ctx.event(
                &*obj,
                true,
                "AssignFailed",
                "AssignIdentity",
                format!("{code}: {message}"),
            )
            .await;
            let mut status = not_ready(&obj, types::ASSIGNED, &code, &message);
            set(&obj, &mut status, types::READY, false, &code, &message);
            status.target_resource_id = Some(target.id());
            write_status(&obj, ctx, status).await?;
            if retryable {
                Ok(Action::requeue(backoff(
                    attempts.saturating_sub(1),
                    retry_after,
                )))
            } else {
                Ok(resync)
            }
        }
        other => {
            if assigned_before && other.is_none() {
                tracing::info!(binding = %key, target = %target.id(), "identity no longer assigned; repairing drift");
                ctx.event(&*obj, true, "DriftDetected", "AssignIdentity", format!("{identity_name} was removed from {} outside the controller; assigning it again", target.id())).await;
            }
            // Record the assignment before asking for it: after a crash between the write and
            // its answer, or when the answer is lost (a timeout, a 500 after the fact), the
            // identity found on the target is known as this controller's, not adopted, and is
            // removed on deletion.
            if !recorded_identity(&obj).is_some_and(|r| r.eq_ignore_ascii_case(&identity_id)) {
                record_identity(&obj, ctx, Some(&identity_id)).await?;
            }
            write_status(&obj, ctx, assigning(&obj, &target)).await?;
            ctx.writer.submit(&target, &identity_id, Want::Present, me);
            Ok(resync)
        }
    }
}

/// The identity this controller recorded adding to the target, when it is still the binding's
/// identity (the identity's status is written by this controller only). A record naming another
/// identity is not evidence and removes nothing.
///
/// The identity is read from the API server, not the cache: right after a restart the identity
/// cache may not be filled yet, and an identity that looks absent would leave its assignment
/// behind (and the identity then deleted while still listed on the VM).
async fn owned_identity(
    obj: &IdentityBinding,
    ctx: &Context,
) -> Result<Option<String>, ReconcileError> {
    let Some(recorded) = recorded_identity(obj) else {
        return Ok(None);
    };
    let ns = obj.namespace().unwrap_or_default();
    let identities: Api<crate::api::UserAssignedIdentity> =
        Api::namespaced(ctx.client.clone(), &ns);
    let by_name = kube::api::ListParams::default()
        .fields(&format!("metadata.name={}", obj.spec.identity_ref.name));
    let current = identities
        .list(&by_name)
        .await
        .map_err(ReconcileError::kube("GetIdentity"))?
        .items
        .into_iter()
        .find(|i| i.name_any() == obj.spec.identity_ref.name)
        .and_then(|i| i.status.and_then(|s| s.resource_id));
    Ok(current
        .filter(|c| c.eq_ignore_ascii_case(recorded))
        .map(|_| recorded.to_string()))
}

/// Have the writer remove `identity_id` from `target`, unless another live binding of the same
/// identity to the same target still wants it.
async fn remove_identity(
    obj: &IdentityBinding,
    ctx: &Context,
    target: &ComputeTarget,
    identity_id: &str,
) -> Result<Removal, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let key = object_key(obj);
    // Another live binding of the same identity to the same target keeps it assigned. Listed
    // from the API server: a cache can miss a binding, or hold one already gone.
    let live: Api<IdentityBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let live = live
        .list(&kube::api::ListParams::default())
        .await
        .map_err(ReconcileError::kube("ListBindings"))?;
    let shared = live.items.iter().any(|b| {
        b.meta().deletion_timestamp.is_none()
            && b.uid() != obj.uid()
            && b.namespace().as_deref() == Some(ns.as_str())
            && b.spec.identity_ref.name == obj.spec.identity_ref.name
            && target_of(b, ctx.settings.default_subscription.as_deref())
                .is_some_and(|t| t.key() == target.key())
            && policy::check_binding(
                &ctx.policies(),
                &ns,
                &resolved(target),
                ctx.settings.default_subscription.as_deref(),
            )
            .is_allowed()
    });
    if shared {
        return Ok(Removal::Gone);
    }
    let current = ctx
        .azure
        .compute
        .get_compute(target)
        .await
        .map_err(ReconcileError::arm("GetTarget"))?;
    let Some(current) = current else {
        ctx.record_success(&format!("{key}/write"));
        ctx.writer.forget(target, identity_id);
        return Ok(Removal::Gone);
    };
    if !current.identity.has_user_assigned(identity_id) {
        // Not listed, but an update still running may be the one that adds it (sent before a
        // restart, or answered after the client gave up): the finalizer stays until the
        // target is settled, so the identity is never deleted while it is being assigned.
        if updating(current.provisioning_state.as_deref()) {
            return Err(ReconcileError::Waiting {
                step: "UnassignIdentity",
                message: format!("{} is being updated; looking again", target.id()),
                retry: Duration::from_secs(2),
            });
        }
        ctx.record_success(&format!("{key}/write"));
        ctx.writer.forget(target, identity_id);
        return Ok(Removal::Gone);
    }
    match ctx.writer.outcome(target, identity_id) {
        Some(Outcome::Pending) => {}
        Some(Outcome::Failed {
            code,
            message,
            retry_after,
            ..
        }) => {
            ctx.writer.forget(target, identity_id);
            let attempts = ctx.record_failure(&format!("{key}/write"));
            let status = not_ready(
                obj,
                types::READY,
                &code,
                &format!("removing the identity failed: {message}"),
            );
            write_status(obj, ctx, status).await?;
            return Err(ReconcileError::Waiting {
                step: "UnassignIdentity",
                message: format!(
                    "removing the identity from {} failed ({code}); retrying",
                    target.id()
                ),
                retry: backoff(attempts.saturating_sub(1), retry_after),
            });
        }
        _ => ctx
            .writer
            .submit(target, identity_id, Want::Absent, ObjectRef::from_obj(obj)),
    }
    Ok(Removal::Pending)
}

async fn cleanup(obj: Arc<IdentityBinding>, ctx: &Context) -> Result<Action, ReconcileError> {
    let key = object_key(&*obj);
    ctx.forget_checked(&key);
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        return Ok(Action::await_change());
    }
    // Only an identity this controller recorded adding is removed: a binding refused by policy,
    // deleted before its first reconcile, or that found the identity already assigned, removes
    // nothing. Status is not evidence.
    let Some(identity_id) = owned_identity(&obj, ctx).await? else {
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

/// Whether a provisioning state means an update is still running (terminal: `Succeeded`,
/// `Failed`, `Canceled`; absent means done).
fn updating(state: Option<&str>) -> bool {
    state.is_some_and(|s| !["Succeeded", "Failed", "Canceled"].contains(&s))
}

fn reason_is(obj: &IdentityBinding, reason: &str) -> bool {
    obj.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, types::READY))
        .is_some_and(|c| c.reason == reason)
}

/// A status that starts from the controller's own fields of the current status.
fn base(obj: &IdentityBinding) -> IdentityBindingStatus {
    let current = obj.status.as_ref();
    IdentityBindingStatus {
        observed_generation: obj.metadata.generation,
        conditions: own_conditions(obj, OWN),
        target_resource_id: current.and_then(|s| s.target_resource_id.clone()),
        assigned: current.and_then(|s| s.assigned),
        adopted: current.and_then(|s| s.adopted),
        token: None,
        instances: Vec::new(),
        ..IdentityBindingStatus::default()
    }
}

fn set(
    obj: &IdentityBinding,
    status: &mut IdentityBindingStatus,
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

fn not_ready(
    obj: &IdentityBinding,
    type_: &str,
    reason: &str,
    message: &str,
) -> IdentityBindingStatus {
    let mut status = base(obj);
    set(obj, &mut status, type_, false, reason, message);
    status
}

fn waiting(
    obj: &IdentityBinding,
    target: &ComputeTarget,
    reason: &str,
    message: &str,
) -> IdentityBindingStatus {
    let mut status = base(obj);
    status.target_resource_id = Some(target.id());
    set(obj, &mut status, types::ASSIGNED, false, reason, message);
    set(obj, &mut status, types::READY, false, reason, message);
    status
}

fn assigning(obj: &IdentityBinding, target: &ComputeTarget) -> IdentityBindingStatus {
    let message = format!("assigning the identity to {}", target.id());
    waiting(obj, target, reasons::ASSIGNING, &message)
}

fn summary_assigned(
    obj: &IdentityBinding,
    target: &ComputeTarget,
    adopted: bool,
) -> IdentityBindingStatus {
    let mut status = base(obj);
    status.assigned = Some(true);
    status.adopted = Some(adopted);
    status.target_resource_id = Some(target.id());
    let message = if adopted {
        format!(
            "the identity was already assigned to {}; it will not be removed on deletion",
            target.id()
        )
    } else {
        format!("the identity is assigned to {}", target.id())
    };
    set(
        obj,
        &mut status,
        types::ASSIGNED,
        true,
        reasons::ASSIGNED,
        &message,
    );
    ready_from_agent(obj, &mut status);
    status
}

fn summary(
    obj: &IdentityBinding,
    target: &ComputeTarget,
    adopted: Option<bool>,
) -> IdentityBindingStatus {
    summary_assigned(obj, target, adopted.unwrap_or(false))
}

/// `Ready` of an assigned binding follows the agent's `TokenAcquired`.
fn ready_from_agent(obj: &IdentityBinding, status: &mut IdentityBindingStatus) {
    let token = obj
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, types::TOKEN_ACQUIRED).cloned());
    let (ok, reason, message) = match token {
        Some(c) if c.status == conditions::status::TRUE => (
            true,
            reasons::READY.to_string(),
            "the identity is assigned and the agent on the VM obtained a token with it".to_string(),
        ),
        Some(c) => (
            false,
            c.reason.clone(),
            format!("the agent could not obtain a token: {}", c.message),
        ),
        None => (
            false,
            reasons::AWAITING_TOKEN.to_string(),
            "the identity is assigned; waiting for the agent on the VM to report a token"
                .to_string(),
        ),
    };
    set(obj, status, types::READY, ok, &reason, &message);
}

/// The status fields the controller owns on a binding to a VM or scale set.
const OWNED: &[&str] = &[
    "targetResourceId",
    "assigned",
    "adopted",
    "observedGeneration",
];

async fn write_status(
    obj: &IdentityBinding,
    ctx: &Context,
    status: IdentityBindingStatus,
) -> Result<(), ReconcileError> {
    status::write(&ctx.client, obj, &status, OWNED).await
}
