//! `UserAssignedIdentity` reconciler: resolve -> plan (pure) -> ensure (write only on a diff) ->
//! status (one patch).
//!
//! Ownership in Azure is recorded with a tag (`uami.dev-owner: <cluster>/<namespace>/<name>`),
//! so a restart never mistakes the controller's own identity for a foreign one, two clusters never
//! take over each other's identities, and a foreign identity is never silently taken over: that
//! needs `adoptExisting` and a GrantPolicy rule that allows adoption from its resource group; the
//! identity keeps its tags, gains `uami.dev-adopted`, and is never deleted. Creation sends
//! `If-None-Match: *`, so an identity that appears between the read and the create is never
//! overwritten.

use crate::outcome::write_owned;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::azure_identity::{self, AzureIdentity, coordinates};
use super::context::Context;
use super::error::ReconcileError;
use super::memo::{Fingerprint, ObjectKey};
use super::outcome::{Note, finalized, warn_once};
use super::pass::Kind;
use super::policy::{self, Decision};
use super::reasons;
use uami_api::conditions::{self, NewCondition, types};
use uami_api::{DeletionPolicy, UserAssignedIdentity, UserAssignedIdentityStatus};
use uami_azure::federated::IdentityCoordinates;
use uami_azure::identity::Identity;
use uami_kube::status::{self, Reported, ready_reason_is};

mod export;
pub mod plan;

use export::{Export, export_config_map};
pub use plan::{ADOPTED_TAG, OWNER_TAG, OWNER_UID_TAG, Plan, owned, owner_value, plan};

/// Finalizer of identities.
pub const FINALIZER: &str = "uami.dev/identity";

impl Kind for UserAssignedIdentity {
    const FINALIZER: Option<&'static str> = Some(FINALIZER);
    const OWNED_FIELDS: &'static [&'static str] = OWNED_FIELDS;

    /// An identity's status is left as it is when an ARM step fails: its Ready condition
    /// changes only on an answer (created, refused, waiting for dependents).
    fn failed_status(&self, _reason: &str, _message: &str) -> Option<UserAssignedIdentityStatus> {
        None
    }
}

/// Entry point (see [`super::pass::run`]): finalizer handling around apply and cleanup.
pub async fn reconcile(
    obj: Arc<UserAssignedIdentity>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    finalized(&ctx, FINALIZER, obj, apply, cleanup).await
}

/// Resolve, plan, ensure, settle: the apply side of a pass.
async fn apply(obj: Arc<UserAssignedIdentity>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let Some(at) = coordinates(&obj, ctx) else {
        let status = not_ready(
            &obj,
            reasons::NO_SUBSCRIPTION,
            "spec.subscriptionId is not set and the controller has no default subscription",
        );
        write_status(&obj, ctx, status).await?;
        return Ok(Action::await_change());
    };
    let key = ObjectKey::of(&*obj);
    let fingerprint = Fingerprint::of(&(obj.metadata.generation, at.key(), &obj.spec.tags));
    let ready = obj.status.as_ref().is_some_and(|s| {
        s.observed_generation == obj.metadata.generation
            && s.resource_id.is_some()
            && conditions::is_true(&s.conditions, types::READY)
    });
    let as_written = azure_identity::last_known(ctx, &obj).is_some_and(|k| shows(&obj, &k));
    if ready
        && as_written
        && obj.spec.export_to.is_none()
        && ctx.recently_checked(&key, fingerprint)
    {
        // A pass caused by our own status write: Azure was read moments ago. A status that no
        // longer shows what was read (edited by someone else) is written again below.
        return Ok(Action::requeue(ctx.settings.jittered_resync()));
    }
    let current = azure_identity::get(ctx, &at).await?;
    let may_adopt = match policy::check_adoption(
        &ctx.policies(),
        &ns,
        &at.subscription,
        &at.resource_group,
        ctx.settings.default_subscription.as_deref(),
    ) {
        Decision::Allowed(_) => Ok(()),
        Decision::Denied(message) => Err(message),
    };
    let owner = owner_value(&ctx.settings.cluster_name, &ns, &obj.name_any());
    let uid = obj.uid().unwrap_or_default();
    let planned = plan(&obj.spec, &owner, &uid, current.as_ref(), may_adopt);
    let identity = match ensure(&obj, ctx, &at, planned, current).await? {
        Ok(identity) => identity,
        Err((reason, message)) => {
            azure_identity::remember(ctx, &obj, None);
            warn_once(ctx, &*obj, reason, "ReconcileIdentity", &message).await;
            write_status(&obj, ctx, not_ready(&obj, reason, &message)).await?;
            // A foreign identity may be removed or re-tagged in Azure: look again now and then.
            return Ok(Action::requeue(ctx.settings.jittered_resync()));
        }
    };
    // The principal this controller last read for the identity: a different one now means the
    // identity was deleted and created again (out of band, or by this controller after it went).
    let recreated = azure_identity::last_known(ctx, &obj)
        .map(|before| before.principal_id)
        .filter(|before| {
            !before.is_empty()
                && !identity.principal_id.is_empty()
                && !before.eq_ignore_ascii_case(&identity.principal_id)
        });
    azure_identity::remember(ctx, &obj, Some(&identity));
    if let Some(before) = &recreated {
        ctx.event(
            &*obj,
            true,
            reasons::IDENTITY_RECREATED,
            "GetIdentity",
            recreated_message(&at.name, before, &identity.principal_id),
        )
        .await;
    }
    let export = match &obj.spec.export_to {
        Some(export) => Some(export_config_map(&obj, ctx, &export.config_map, &identity).await?),
        None => None,
    };
    if let Some(Export::Refused(message)) = &export {
        warn_once(
            ctx,
            &*obj,
            reasons::CONFIG_MAP_CONFLICT,
            "ExportConfigMap",
            message,
        )
        .await;
    }
    let status = settle(&obj, &at, &identity, export, recreated.as_deref());
    write_status(&obj, ctx, status).await?;
    ctx.memo.mark_checked(&key, fingerprint);
    Ok(Action::requeue(ctx.settings.jittered_resync()))
}

/// Carry out `planned` against the identity `current` at `at`: the identity as Azure has it
/// now, or the refusal (reason, message) for the Ready condition.
async fn ensure(
    obj: &UserAssignedIdentity,
    ctx: &Context,
    at: &IdentityCoordinates,
    planned: Plan,
    current: Option<Identity>,
) -> Result<Result<Identity, (&'static str, String)>, ReconcileError> {
    let ids = &ctx.azure.identities;
    let identity = match planned {
        Plan::Create { tags } => {
            let created = ids
                .create_identity(at, &obj.spec.location, &tags)
                .await
                .map_err(ReconcileError::arm("CreateIdentity"))?;
            let note = format!("created identity {}", created.id);
            Note::normal(reasons::CREATED, "CreateIdentity", note)
                .publish(ctx, obj)
                .await;
            created
        }
        Plan::UpdateTags { tags, adopting } => {
            let updated = ids
                .update_identity_tags(at, &tags)
                .await
                .map_err(ReconcileError::arm("UpdateIdentity"))?;
            if adopting {
                let note = format!("adopted existing identity {}", updated.id);
                Note::normal(reasons::ADOPTED, "AdoptIdentity", note)
                    .publish(ctx, obj)
                    .await;
            }
            updated
        }
        Plan::InSync => current.unwrap_or_default(),
        Plan::Refuse { reason, message } => return Ok(Err((reason, message))),
    };
    Ok(Ok(identity))
}

/// The status after a pass that found or made `identity` (pure): its ids, and Ready unless the
/// export was refused; the pass that notices a `recreated` identity (the principal it had) says
/// so, and the next resync says Ready again.
fn settle(
    obj: &UserAssignedIdentity,
    at: &IdentityCoordinates,
    identity: &Identity,
    export: Option<Export>,
    recreated: Option<&str>,
) -> UserAssignedIdentityStatus {
    let mut status = UserAssignedIdentityStatus {
        observed_generation: obj.metadata.generation,
        conditions: obj.conditions().to_vec(),
        resource_id: Some(identity.id.clone()),
        client_id: Some(identity.client_id.clone()),
        principal_id: Some(identity.principal_id.clone()),
        tenant_id: Some(identity.tenant_id.clone()),
    };
    let exists = format!("identity {} exists", at.name);
    let ready = match (export, recreated) {
        (Some(Export::Refused(message)), _) => {
            NewCondition::new(types::READY, false, reasons::CONFIG_MAP_CONFLICT, message)
        }
        (_, Some(before)) => NewCondition::new(
            types::READY,
            true,
            reasons::IDENTITY_RECREATED,
            recreated_message(&at.name, before, &identity.principal_id),
        ),
        (Some(Export::Written) | None, None) => {
            NewCondition::new(types::READY, true, reasons::READY, exists)
        }
    };
    status::set_in(&mut status.conditions, obj.metadata.generation, ready);
    status
}

fn recreated_message(name: &str, before: &str, now: &str) -> String {
    format!(
        "identity {name} was deleted and created again in Azure (principal {before} is now {now}): its VMs get it assigned again, its grants' role assignments are made for the new principal (the old one, ours, deleted) and its federated credentials are written again"
    )
}

async fn cleanup(obj: Arc<UserAssignedIdentity>, ctx: &Context) -> Result<Action, ReconcileError> {
    ctx.memo.forget_checked(&ObjectKey::of(&*obj));
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let dependents = dependents(ctx, &ns, &name).await?;
    if !dependents.is_empty() {
        let message = format!(
            "deletion waits for {} that use this identity",
            dependents.join(", ")
        );
        write_status(
            &obj,
            ctx,
            not_ready(&obj, reasons::WAITING_FOR_DEPENDENTS, &message),
        )
        .await?;
        // A dependent's deletion wakes this identity (see run.rs); the retry is a safety net.
        return Err(ReconcileError::Waiting {
            step: "WaitingForDependents",
            message,
            retry: DEPENDENTS_RECHECK,
        });
    }
    // Its dependents are gone: nothing acts on this identity any more.
    azure_identity::remember(ctx, &obj, None);
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        return Ok(Action::await_change());
    }
    let Some(at) = coordinates(&obj, ctx) else {
        return Ok(Action::await_change());
    };
    let ids = &ctx.azure.identities;
    let current = ids
        .get_identity(&at)
        .await
        .map_err(ReconcileError::arm("GetIdentity"))?;
    let Some(current) = current else {
        return Ok(Action::await_change());
    };
    let owner = owner_value(&ctx.settings.cluster_name, &ns, &name);
    let ours = owned(&current.tags, &owner, &obj.uid().unwrap_or_default());
    if ours && !current.tags.contains_key(ADOPTED_TAG) {
        ids.delete_identity(&at)
            .await
            .map_err(ReconcileError::arm("DeleteIdentity"))?;
        ctx.event(
            &*obj,
            false,
            reasons::DELETED,
            "DeleteIdentity",
            format!("deleted identity {}", current.id),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// How long an identity whose deletion waits for its dependents waits before it looks again,
/// when no dependent's deletion woke it first.
const DEPENDENTS_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Bindings and grants in `namespace` that reference identity `name`, from the shared caches
/// (reconciles start only once every cache is filled, and a dependent's deletion reaches the
/// cache before it wakes the identity).
async fn dependents(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Vec<String>, ReconcileError> {
    let mut out = using(&ctx.stores.bindings, namespace, name, |b| {
        &b.spec.identity_ref.name
    });
    out.extend(using(&ctx.stores.grants, namespace, name, |g| {
        &g.spec.identity_ref.name
    }));
    out.sort();
    Ok(out)
}

/// `Kind name` of each object of kind `K` in `namespace` whose identity is `name`.
fn using<K: Reported>(
    store: &kube::runtime::reflector::Store<K>,
    namespace: &str,
    name: &str,
    identity_of: fn(&K) -> &String,
) -> Vec<String> {
    store
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(namespace) && identity_of(o) == name)
        .map(|o| format!("{} {}", K::kind(&()), o.name_any()))
        .collect()
}

/// Whether the status of `obj` shows the ids of `known`, as the controller wrote them.
fn shows(obj: &UserAssignedIdentity, known: &AzureIdentity) -> bool {
    obj.status.as_ref().is_some_and(|s| {
        s.resource_id.as_deref() == Some(known.id.as_str())
            && s.client_id.as_deref() == Some(known.client_id.as_str())
            && s.principal_id.as_deref() == Some(known.principal_id.as_str())
            && s.tenant_id.as_deref() == Some(known.tenant_id.as_str())
    })
}

/// Whether a GrantPolicy refused this identity (adoption): a policy change looks at it again.
pub fn denied_by_policy(obj: &UserAssignedIdentity) -> bool {
    ready_reason_is(obj, reasons::DENIED_BY_POLICY)
}

/// Status with `Ready=False` and the ids kept from the current status.
fn not_ready(
    obj: &UserAssignedIdentity,
    reason: &str,
    message: &str,
) -> UserAssignedIdentityStatus {
    let mut status = obj.status.clone().unwrap_or_default();
    status.observed_generation = obj.metadata.generation;
    status::set_in(
        &mut status.conditions,
        obj.metadata.generation,
        NewCondition::new(types::READY, false, reason, message),
    );
    status
}

/// The status fields the controller owns.
const OWNED_FIELDS: &[&str] = &[
    "resourceId",
    "clientId",
    "principalId",
    "tenantId",
    "observedGeneration",
];

async fn write_status(
    obj: &UserAssignedIdentity,
    ctx: &Context,
    status: UserAssignedIdentityStatus,
) -> Result<(), ReconcileError> {
    write_owned(ctx, obj, &status, OWNED_FIELDS).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity_object() -> UserAssignedIdentity {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "uami.dev/v1alpha1", "kind": "UserAssignedIdentity",
            "metadata": {"name": "app", "namespace": "team-a", "generation": 2},
            "spec": {"resourceGroup": "DevTest", "location": "eastus"},
        }))
        .expect("identity")
    }

    fn ready_of(status: &UserAssignedIdentityStatus) -> (String, String) {
        let c = conditions::find(&status.conditions, types::READY).expect("Ready");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn settle_reports_the_ids_and_a_refused_export_before_a_recreation() {
        let obj = identity_object();
        let at = IdentityCoordinates::new("s", "DevTest", "app");
        let found = Identity {
            id: at.path(),
            principal_id: "p2".into(),
            client_id: "c".into(),
            tenant_id: "t".into(),
            ..Default::default()
        };
        let plain = settle(&obj, &at, &found, None, None);
        assert_eq!(plain.principal_id.as_deref(), Some("p2"));
        assert_eq!(plain.observed_generation, Some(2));
        assert_eq!(ready_of(&plain), ("True".into(), reasons::READY.into()));
        let recreated = settle(&obj, &at, &found, Some(Export::Written), Some("p1"));
        assert_eq!(
            ready_of(&recreated),
            ("True".into(), reasons::IDENTITY_RECREATED.into())
        );
        let refused = settle(
            &obj,
            &at,
            &found,
            Some(Export::Refused("taken".into())),
            Some("p1"),
        );
        assert_eq!(
            ready_of(&refused),
            ("False".into(), reasons::CONFIG_MAP_CONFLICT.into())
        );
    }
}
