//! Taking an identity back from a VM or scale set, and the record that allows it: only an
//! identity this controller recorded adding (an annotation in the binding's metadata, which the
//! agent cannot write) is ever removed, and only when no other live binding still wants it.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::super::context::{Context, object_key};
use super::super::error::{ReconcileError, backoff};
use super::super::identity::coordinates;
use super::super::policy;
use super::super::status::{self, FIELD_MANAGER};
use super::super::target_writer::{Outcome, Want};
use super::OWNED_FIELDS;
use super::plan::{Removal, not_ready, target_of};
use crate::api::IdentityBinding;
use crate::api::binding::{TARGET_LABEL, target_label_value};
use crate::api::conditions::types;
use crate::azure::compute::{ComputeResource, ComputeTarget};

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

/// Whether the record names `identity_id`.
pub(super) fn recorded(obj: &IdentityBinding, identity_id: &str) -> bool {
    recorded_identity(obj).is_some_and(|r| r.eq_ignore_ascii_case(identity_id))
}

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
        let patch = serde_json::json!({"metadata": {"annotations": {ASSIGNED_ANNOTATION: null}}});
        api.patch(&obj.name_any(), &params, &Patch::Merge(&patch))
            .await
            .map_err(ReconcileError::kube("RecordAssignment"))?;
        return Ok(());
    };
    let mut ops = Vec::new();
    let finalizers = obj.finalizers();
    if !finalizers.iter().any(|f| f == super::FINALIZER) {
        if finalizers.is_empty() {
            ops.push(
                serde_json::json!({"op": "test", "path": "/metadata/finalizers", "value": null}),
            );
            ops.push(serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": [super::FINALIZER]}));
        } else {
            ops.push(serde_json::json!({"op": "test", "path": "/metadata/finalizers", "value": finalizers}));
            ops.push(serde_json::json!({"op": "add", "path": "/metadata/finalizers/-", "value": super::FINALIZER}));
        }
    }
    if obj.metadata.annotations.is_some() {
        let path = format!(
            "/metadata/annotations/{}",
            ASSIGNED_ANNOTATION.replace('~', "~0").replace('/', "~1")
        );
        ops.push(serde_json::json!({"op": "add", "path": path, "value": identity_id}));
    } else {
        ops.push(serde_json::json!({"op": "test", "path": "/metadata/annotations", "value": null}));
        ops.push(serde_json::json!({"op": "add", "path": "/metadata/annotations", "value": {ASSIGNED_ANNOTATION: identity_id}}));
    }
    // The target's label, for the agents on it, comes with the first record.
    if !labelled(obj, target) {
        let value = target_label_value(&target.id());
        if obj.metadata.labels.is_some() {
            let path = format!("/metadata/labels/{}", TARGET_LABEL.replace('/', "~1"));
            ops.push(serde_json::json!({"op": "add", "path": path, "value": value}));
        } else {
            ops.push(serde_json::json!({"op": "test", "path": "/metadata/labels", "value": null}));
            ops.push(serde_json::json!({"op": "add", "path": "/metadata/labels", "value": {TARGET_LABEL: value}}));
        }
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| ReconcileError::Finalizer(format!("building the record patch: {e}")))?;
    match api
        .patch(&obj.name_any(), &params, &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        // A test failed: the cache is behind the object. Looked at again shortly.
        Err(kube::Error::Api(e)) if e.code == 422 => Err(ReconcileError::Finalizer(format!(
            "recording the assignment raced a change of the binding: {}",
            e.message
        ))),
        Err(e) => Err(ReconcileError::Kube {
            step: "RecordAssignment",
            source: e,
        }),
    }
}

/// Remove this controller's finalizer after cleanup; the `test` keeps it from removing another
/// finalizer that took its place.
pub(super) async fn remove_finalizer(
    ctx: &Context,
    obj: &IdentityBinding,
) -> Result<(), ReconcileError> {
    let api: Api<IdentityBinding> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let Some(i) = obj.finalizers().iter().position(|f| f == super::FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": path, "value": super::FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .map_err(|e| ReconcileError::Finalizer(format!("building the finalizer patch: {e}")))?;
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map_err(|e| ReconcileError::Finalizer(format!("removing the finalizer: {e}")))?;
    Ok(())
}

/// The identity this controller recorded adding to the target, when it is still the binding's
/// identity: the ARM id its spec names (the status is not evidence). A record naming another
/// identity removes nothing.
///
/// The identity is read from the API server, not the cache: right after a restart the identity
/// cache may not be filled yet, and an identity that looks absent would leave its assignment
/// behind (and the identity then deleted while still listed on the VM).
pub(super) async fn owned_identity(
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
        .and_then(|i| coordinates(&i, ctx))
        .map(|at| at.path());
    Ok(current
        .filter(|c| c.eq_ignore_ascii_case(recorded))
        .map(|_| recorded.to_string()))
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
            status::write(&ctx.client, obj, &status, OWNED_FIELDS).await?;
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
    let patch = serde_json::json!({"metadata": {"labels": {TARGET_LABEL: target_label_value(&target.id())}}});
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
