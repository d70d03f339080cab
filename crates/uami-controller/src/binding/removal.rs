//! Taking an identity back from a VM or scale set, and the record that allows it: only an
//! identity this controller recorded adding (an annotation in the binding's metadata, which the
//! agent cannot write) is ever removed, and only when no other live binding still wants it.

use crate::outcome::write_owned;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::super::azure_identity::coordinates;
use super::super::context::Context;
use super::super::error::{ReconcileError, backoff};
use super::super::memo::{ObjectKey, Run};
use super::super::meta_patch::{MetaMerge, MetaPatch};
use super::super::policy;
use super::super::target_writer::{Outcome, Want};
use super::OWNED_FIELDS;
use super::plan::{ASSIGNED_ANNOTATION, Removal, not_ready, recorded_identity, target_of};
use uami_api::IdentityBinding;
use uami_api::binding::{TARGET_LABEL, target_label_value};
use uami_api::conditions::types;
use uami_azure::compute::{ComputeResource, ComputeTarget};
use uami_kube::status::FIELD_MANAGER;

/// Record (or with `None` forget) that this controller added `identity_id` to the target.
///
/// A binding to a VM or scale set gets its finalizer in the same patch as its first record,
/// before the target is written: until it records an identity, deleting it has nothing to undo.
/// The patch tests the finalizers (and the annotations when there are none) it extends, so a
/// stale cache fails it (retried shortly) instead of dropping someone else's.
pub(super) async fn record_identity(
    obj: &IdentityBinding,
    ctx: &Context,
    identity_id: Option<(&str, &ComputeTarget)>,
) -> Result<(), ReconcileError> {
    let (api, params) = metadata_patcher(obj, ctx);
    let Some((identity_id, target)) = identity_id else {
        let patch = MetaMerge::default().remove_annotation(ASSIGNED_ANNOTATION);
        api.patch(&obj.name_any(), &params, &Patch::Merge(&patch))
            .await
            .map_err(ReconcileError::kube("RecordAssignment"))?;
        return Ok(());
    };
    let meta = obj.meta();
    let mut patch = MetaPatch::default()
        .add_finalizer(meta, super::FINALIZER)
        .put(
            "annotations",
            meta.annotations.as_ref(),
            ASSIGNED_ANNOTATION,
            identity_id,
        );
    // The target's label, for the agents on it, comes with the first record.
    if !labelled(obj, target) {
        let value = target_label_value(&target.id());
        patch = patch.put("labels", meta.labels.as_ref(), TARGET_LABEL, &value);
    }
    // A failed test (422) means the cache is behind the object: a race, looked at again soon.
    send_finalizer_patch(&api, obj, &params, patch, "RecordAssignment").await
}

/// Remove this controller's finalizer after cleanup; the `test` keeps it from removing another
/// finalizer that took its place.
pub(super) async fn remove_finalizer(
    ctx: &Context,
    obj: &IdentityBinding,
) -> Result<(), ReconcileError> {
    let Some(patch) = MetaPatch::remove_finalizer(obj.meta(), super::FINALIZER) else {
        return Ok(());
    };
    let api: Api<IdentityBinding> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    send_finalizer_patch(&api, obj, &PatchParams::default(), patch, "RemoveFinalizer").await
}

/// Send a JSON patch that changes the finalizers: a failure is the finalizer `step`'s, a race
/// when it is 409 or 422 (see [`ReconcileError::Finalizer`]).
async fn send_finalizer_patch(
    api: &Api<IdentityBinding>,
    obj: &IdentityBinding,
    params: &PatchParams,
    patch: MetaPatch,
    step: &'static str,
) -> Result<(), ReconcileError> {
    api.patch(&obj.name_any(), params, &Patch::<()>::Json(patch.build()))
        .await
        .map_err(|source| ReconcileError::Finalizer { step, source })?;
    Ok(())
}

/// The identity this controller recorded adding to the target, when it is still the binding's
/// identity: the ARM id its spec names (the status is not evidence). A record naming another
/// identity removes nothing. The identity is read from the shared cache, like every identity
/// read (see [`Context::identity`]): it stays there while this binding, its dependent, exists.
pub(super) fn owned_identity(obj: &IdentityBinding, ctx: &Context) -> Option<String> {
    let recorded = recorded_identity(obj)?;
    let ns = obj.namespace().unwrap_or_default();
    ctx.identity(&ns, &obj.spec.identity_ref.name)
        .and_then(|i| coordinates(&i, ctx))
        .map(|at| at.path())
        .filter(|c| c.eq_ignore_ascii_case(recorded))
        .map(|_| recorded.to_string())
}

/// Have the writer remove `identity_id` from `target`, unless another live binding of the same
/// identity to the same target still wants it.
pub(super) async fn remove_identity(
    obj: &IdentityBinding,
    ctx: &Context,
    target: &ComputeTarget,
    identity_id: &str,
) -> Result<Removal, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let key = ObjectKey::of(obj);
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
                target,
                ctx.settings.default_subscription.as_deref(),
            )
            .is_allowed()
    });
    if shared {
        return Ok(Removal::Gone);
    }
    let current = read_target(ctx, target).await?;
    let Some(current) = current else {
        ctx.memo.succeeded(&key, Run::TargetWrite);
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
        ctx.memo.succeeded(&key, Run::TargetWrite);
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
            let attempts = ctx.memo.failed(&key, Run::TargetWrite);
            let status = not_ready(
                obj,
                types::READY,
                &code,
                &format!("removing the identity failed: {message}"),
            );
            write_owned(ctx, obj, &status, OWNED_FIELDS).await?;
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

/// The VM or scale set as ARM returns it.
pub(super) async fn read_target(
    ctx: &Context,
    target: &ComputeTarget,
) -> Result<Option<ComputeResource>, ReconcileError> {
    ctx.azure
        .compute
        .get_compute(target)
        .await
        .map_err(ReconcileError::arm("GetTarget"))
}

/// Whether a provisioning state means an update is still running (terminal: `Succeeded`,
/// `Failed`, `Canceled`; absent means done).
fn updating(state: Option<&str>) -> bool {
    state.is_some_and(|s| !["Succeeded", "Failed", "Canceled"].contains(&s))
}

/// Whether `obj` carries the label of `target` that its agents select on.
pub(super) fn labelled(obj: &IdentityBinding, target: &ComputeTarget) -> bool {
    obj.labels().get(TARGET_LABEL) == Some(&target_label_value(&target.id()))
}

/// Put the label of `target` on `obj` (a binding that found its identity assigned without
/// recording it, or whose label someone removed or changed).
pub(super) async fn label_target(
    obj: &IdentityBinding,
    ctx: &Context,
    target: &ComputeTarget,
) -> Result<(), ReconcileError> {
    let value = target_label_value(&target.id());
    let patch = MetaMerge::default().label(TARGET_LABEL, &value);
    let (api, params) = metadata_patcher(obj, ctx);
    api.patch(&obj.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(ReconcileError::kube("LabelTarget"))?;
    Ok(())
}

/// The bindings of `obj`'s namespace, and the parameters of the controller's metadata patches.
fn metadata_patcher(obj: &IdentityBinding, ctx: &Context) -> (Api<IdentityBinding>, PatchParams) {
    let api = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    (api, params)
}
