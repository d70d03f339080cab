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

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as FinalizerEvent;
use kube::{Resource, ResourceExt};

use super::azure_identity::{self, AzureIdentity};
use super::context::{Context, object_key};
use super::error::ReconcileError;
use super::outcome::{Note, finalized, warn_once};
use super::policy::{self, Decision};
use super::reasons;
use super::status::{self, FIELD_MANAGER, Reported, ready_reason_is};
use crate::api::conditions::{self, NewCondition, types};
use crate::api::{
    DeletionPolicy, UserAssignedIdentity, UserAssignedIdentitySpec, UserAssignedIdentityStatus,
};
use crate::azure::federated::IdentityCoordinates;
use crate::azure::identity::Identity;

/// Finalizer of identities.
pub const FINALIZER: &str = "uami.dev/identity";
/// Tag naming the Kubernetes object that owns an identity.
pub const OWNER_TAG: &str = "uami.dev-owner";
/// Tag marking an identity that was adopted, never to be deleted by the controller.
pub const ADOPTED_TAG: &str = "uami.dev-adopted";
/// Tag naming the uid of the object that owns an identity: an object of the same cluster,
/// namespace and name created later (after its predecessor left the identity behind with
/// `deletionPolicy: Orphan`, its namespace perhaps given to another team) is another owner.
pub const OWNER_UID_TAG: &str = "uami.dev-owner-uid";

/// Whether `tags` name the owner `owner` with uid `uid` (an identity tagged before owner uids
/// were recorded names no uid, and is taken as its owner's; the uid tag is then added).
pub fn owned(tags: &BTreeMap<String, String>, owner: &str, uid: &str) -> bool {
    tags.get(OWNER_TAG).map(String::as_str) == Some(owner)
        && tags.get(OWNER_UID_TAG).is_none_or(|u| u == uid)
}

/// What to do about the identity in Azure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Create it with these tags.
    Create { tags: BTreeMap<String, String> },
    /// It is ours (or being adopted) and its tags differ: write these.
    UpdateTags {
        tags: BTreeMap<String, String>,
        adopting: bool,
    },
    /// Nothing to write.
    InSync,
    /// Do not touch it: `reason` and `message` for the Ready condition.
    Refuse {
        reason: &'static str,
        message: String,
    },
}

/// The owner tag value of an object of cluster `cluster`.
pub fn owner_value(cluster: &str, namespace: &str, name: &str) -> String {
    format!("{cluster}/{namespace}/{name}")
}

fn normalise_location(l: &str) -> String {
    l.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase()
}

/// Decide what to write (pure). `may_adopt` says whether a GrantPolicy allows this object to
/// adopt an identity that exists without an owner (`Err` carries the denial).
pub fn plan(
    spec: &UserAssignedIdentitySpec,
    owner: &str,
    uid: &str,
    current: Option<&Identity>,
    may_adopt: Result<(), String>,
) -> Plan {
    let mut desired = spec.tags.clone();
    desired.insert(OWNER_TAG.to_string(), owner.to_string());
    desired.insert(OWNER_UID_TAG.to_string(), uid.to_string());
    let Some(current) = current else {
        return Plan::Create { tags: desired };
    };
    // Taking over an identity this object did not create is adoption: it needs adoptExisting
    // and a GrantPolicy's identityAdoption.
    let adopt = |not_ours: String| -> Result<bool, Plan> {
        if !spec.adopt_existing {
            return Err(Plan::Refuse {
                reason: reasons::ALREADY_EXISTS,
                message: format!(
                    "{not_ours}; set spec.adoptExisting: true (and allow it in a GrantPolicy's identityAdoption) to take it over"
                ),
            });
        }
        match may_adopt {
            Ok(()) => Ok(true),
            Err(message) => Err(Plan::Refuse {
                reason: reasons::DENIED_BY_POLICY,
                message,
            }),
        }
    };
    let current_owner = current.tags.get(OWNER_TAG).map(String::as_str);
    let decided = match current_owner {
        Some(_) if owned(&current.tags, owner, uid) => Ok(false),
        Some(o) if o == owner => adopt(format!(
            "the identity exists in Azure and was created for an earlier object named {owner} (uid {})",
            current
                .tags
                .get(OWNER_UID_TAG)
                .map(String::as_str)
                .unwrap_or_default()
        )),
        Some(other) => Err(Plan::Refuse {
            reason: reasons::ALREADY_EXISTS,
            message: format!("the identity exists in Azure and is managed by {other}"),
        }),
        None => adopt("the identity exists in Azure and was not created by this object".into()),
    };
    let adopting = match decided {
        Ok(adopting) => adopting,
        Err(refusal) => return refusal,
    };
    if normalise_location(&current.location) != normalise_location(&spec.location) {
        return Plan::Refuse {
            reason: reasons::LOCATION_MISMATCH,
            message: format!(
                "the identity is in {} but spec.location is {}",
                current.location, spec.location
            ),
        };
    }
    if adopting || current.tags.contains_key(ADOPTED_TAG) {
        // An adopted identity keeps the tags it had; the spec's tags are added to them.
        let mut merged = current.tags.clone();
        merged.extend(desired);
        merged.insert(ADOPTED_TAG.to_string(), "true".to_string());
        desired = merged;
    }
    if adopting || current.tags != desired {
        Plan::UpdateTags {
            tags: desired,
            adopting,
        }
    } else {
        Plan::InSync
    }
}

/// Entry point of the controller: finalizer handling around apply and cleanup.
pub async fn reconcile(
    obj: Arc<UserAssignedIdentity>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    finalized(&ctx, FINALIZER, obj, |event| async {
        match event {
            FinalizerEvent::Apply(obj) => apply(obj, &ctx).await,
            FinalizerEvent::Cleanup(obj) => cleanup(obj, &ctx).await,
        }
    })
    .await
}

/// Where the identity of `obj` lives in Azure, from its spec (the subscription defaults to the
/// controller's); `None` without a subscription.
pub fn coordinates(obj: &UserAssignedIdentity, ctx: &Context) -> Option<IdentityCoordinates> {
    let subscription = obj
        .spec
        .subscription_id
        .clone()
        .or_else(|| ctx.settings.default_subscription.clone())?;
    Some(IdentityCoordinates {
        subscription,
        resource_group: obj.spec.resource_group.clone(),
        name: obj.azure_name(),
    })
}

async fn apply(obj: Arc<UserAssignedIdentity>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let owner = owner_value(&ctx.settings.cluster_name, &ns, &obj.name_any());
    let Some(at) = coordinates(&obj, ctx) else {
        let status = not_ready(
            &obj,
            reasons::NO_SUBSCRIPTION,
            "spec.subscriptionId is not set and the controller has no default subscription",
        );
        write_status(&obj, ctx, status).await?;
        return Ok(Action::await_change());
    };
    let key = object_key(&*obj);
    let fingerprint = format!(
        "{:?}/{}/{}/{}/{:?}",
        obj.metadata.generation,
        at.subscription.to_lowercase(),
        at.resource_group.to_lowercase(),
        at.name.to_lowercase(),
        obj.spec.tags
    );
    let ready = obj.status.as_ref().is_some_and(|s| {
        s.observed_generation == obj.metadata.generation
            && s.resource_id.is_some()
            && conditions::is_true(&s.conditions, types::READY)
    });
    let as_written = azure_identity::last_known(ctx, &obj).is_some_and(|k| shows(&obj, &k));
    if ready
        && as_written
        && obj.spec.export_to.is_none()
        && ctx.recently_checked(&key, &fingerprint)
    {
        // A pass caused by our own status write: Azure was read moments ago. A status that no
        // longer shows what was read (edited by someone else) is written again below.
        return Ok(Action::requeue(ctx.settings.jittered_resync()));
    }
    let ids = &ctx.azure.identities;
    let current = ids
        .get_identity(&at)
        .await
        .map_err(ReconcileError::arm("GetIdentity"))?;
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
    let uid = obj.uid().unwrap_or_default();
    let identity = match plan(&obj.spec, &owner, &uid, current.as_ref(), may_adopt) {
        Plan::Create { tags } => {
            let created = ids
                .create_identity(&at, &obj.spec.location, &tags)
                .await
                .map_err(ReconcileError::arm("CreateIdentity"))?;
            let note = format!("created identity {}", created.id);
            Note::normal(reasons::CREATED, "CreateIdentity", note)
                .publish(ctx, &*obj)
                .await;
            created
        }
        Plan::UpdateTags { tags, adopting } => {
            let updated = ids
                .update_identity_tags(&at, &tags)
                .await
                .map_err(ReconcileError::arm("UpdateIdentity"))?;
            if adopting {
                let note = format!("adopted existing identity {}", updated.id);
                Note::normal(reasons::ADOPTED, "AdoptIdentity", note)
                    .publish(ctx, &*obj)
                    .await;
            }
            updated
        }
        Plan::InSync => current.unwrap_or_default(),
        Plan::Refuse { reason, message } => {
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
    let mut status = UserAssignedIdentityStatus {
        observed_generation: obj.metadata.generation,
        conditions: obj.conditions().to_vec(),
        resource_id: Some(identity.id.clone()),
        client_id: Some(identity.client_id.clone()),
        principal_id: Some(identity.principal_id.clone()),
        tenant_id: Some(identity.tenant_id.clone()),
    };
    let ready = match &obj.spec.export_to {
        Some(export) => match export_config_map(&obj, ctx, &export.config_map, &identity).await? {
            Export::Written => NewCondition::new(
                types::READY,
                true,
                reasons::READY,
                format!("identity {} exists", at.name),
            ),
            Export::Refused(message) => {
                warn_once(
                    ctx,
                    &*obj,
                    reasons::CONFIG_MAP_CONFLICT,
                    "ExportConfigMap",
                    &message,
                )
                .await;
                NewCondition::new(types::READY, false, reasons::CONFIG_MAP_CONFLICT, message)
            }
        },
        None => NewCondition::new(
            types::READY,
            true,
            reasons::READY,
            format!("identity {} exists", at.name),
        ),
    };
    // The pass that notices a recreated identity says so (the next resync says Ready again).
    let ready = match &recreated {
        Some(before) if ready.status == conditions::status::TRUE => NewCondition::new(
            types::READY,
            true,
            reasons::IDENTITY_RECREATED,
            recreated_message(&at.name, before, &identity.principal_id),
        ),
        _ => ready,
    };
    status::set_in(&mut status.conditions, obj.metadata.generation, ready);
    write_status(&obj, ctx, status).await?;
    ctx.mark_checked(&key, fingerprint);
    Ok(Action::requeue(ctx.settings.jittered_resync()))
}

fn recreated_message(name: &str, before: &str, now: &str) -> String {
    format!(
        "identity {name} was deleted and created again in Azure (principal {before} is now {now}): its VMs get it assigned again, its grants' role assignments are made for the new principal (the old one, ours, deleted) and its federated credentials are written again"
    )
}

async fn cleanup(obj: Arc<UserAssignedIdentity>, ctx: &Context) -> Result<Action, ReconcileError> {
    ctx.forget_checked(&object_key(&*obj));
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

/// What became of the export.
enum Export {
    /// The ConfigMap holds the ids.
    Written,
    /// The ConfigMap exists and is not this identity's: untouched.
    Refused(String),
}

/// Publish the ids into ConfigMap `name`, which this identity owns (controller owner reference,
/// so Kubernetes deletes it with the identity). A ConfigMap that exists without that reference
/// belongs to someone else: it is refused, never written, so it is never adopted into the
/// identity's garbage collection either.
async fn export_config_map(
    obj: &UserAssignedIdentity,
    ctx: &Context,
    name: &str,
    identity: &Identity,
) -> Result<Export, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = obj.uid().unwrap_or_default();
    let existing = api
        .get_opt(name)
        .await
        .map_err(ReconcileError::kube("GetConfigMap"))?;
    let foreign = || {
        Export::Refused(format!(
            "ConfigMap {name} exists and was not created for this identity; it is left untouched (choose another spec.exportTo.configMap)"
        ))
    };
    if let Some(existing) = &existing {
        let ours = existing.owner_references().iter().any(|r| {
            r.controller == Some(true) && r.uid == uid && r.kind == UserAssignedIdentity::kind(&())
        });
        if !ours {
            return Ok(foreign());
        }
    }
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.clone()),
            labels: Some(std::collections::BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "uami-controller".to_string(),
            )])),
            owner_references: obj.controller_owner_ref(&()).map(|o| vec![o]),
            // Ours: applied on the version just read, so one replaced since then is not written.
            resource_version: existing.as_ref().and_then(|e| e.resource_version()),
            ..Default::default()
        },
        data: Some(std::collections::BTreeMap::from([
            ("clientId".to_string(), identity.client_id.clone()),
            ("principalId".to_string(), identity.principal_id.clone()),
            ("tenantId".to_string(), identity.tenant_id.clone()),
            ("resourceId".to_string(), identity.id.clone()),
        ])),
        ..Default::default()
    };
    if existing.is_none() {
        // A new ConfigMap is created, never applied: one that appeared since the read (someone
        // else's) makes the create fail instead of being taken over with the owner reference.
        let pp = kube::api::PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        match api.create(&pp, &cm).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(foreign()),
            Err(e) => return Err(ReconcileError::kube("ExportConfigMap")(e)),
        }
    } else {
        // A ConfigMap always serializes; were it not to, the API server would refuse the body.
        let mut body = serde_json::to_value(&cm).unwrap_or_default();
        body["apiVersion"] = "v1".into();
        body["kind"] = "ConfigMap".into();
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(ReconcileError::kube("ExportConfigMap"))?;
    }
    Ok(Export::Written)
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
    status::write(&ctx.client, obj, &status, OWNED_FIELDS).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(adopt: bool) -> UserAssignedIdentitySpec {
        serde_json::from_value(serde_json::json!({
            "resourceGroup": "DevTest", "location": "eastus", "adoptExisting": adopt, "tags": {"team": "a"}
        }))
        .unwrap()
    }

    fn azure(tags: &[(&str, &str)], location: &str) -> Identity {
        Identity {
            location: location.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn plans() {
        const UID: &str = "u1";
        let owner = "c1/ns/id";
        assert!(
            matches!(plan(&spec(false), owner, UID, None, Ok(())), Plan::Create { tags } if tags[OWNER_TAG] == owner && tags["team"] == "a")
        );
        let ours = azure(
            &[(OWNER_TAG, owner), (OWNER_UID_TAG, UID), ("team", "a")],
            "East US",
        );
        assert_eq!(
            plan(&spec(false), owner, UID, Some(&ours), Ok(())),
            Plan::InSync
        );
        // Tagged before owner uids were recorded: ours, and the uid is added.
        let unrecorded = azure(&[(OWNER_TAG, owner), ("team", "a")], "eastus");
        assert!(
            matches!(plan(&spec(false), owner, UID, Some(&unrecorded), Ok(())), Plan::UpdateTags { adopting: false, tags } if tags[OWNER_UID_TAG] == UID)
        );
        // Created for an earlier object of the same name (orphaned, then the name reused): not
        // ours; taking it over is adoption.
        let earlier = azure(
            &[(OWNER_TAG, owner), (OWNER_UID_TAG, "u0"), ("team", "a")],
            "eastus",
        );
        assert!(
            matches!(plan(&spec(false), owner, UID, Some(&earlier), Ok(())), Plan::Refuse { reason, message } if reason == reasons::ALREADY_EXISTS && message.contains("earlier object"))
        );
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&earlier), Err("no".into())), Plan::Refuse { reason, .. } if reason == reasons::DENIED_BY_POLICY)
        );
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&earlier), Ok(())), Plan::UpdateTags { adopting: true, tags } if tags[OWNER_UID_TAG] == UID && tags[ADOPTED_TAG] == "true")
        );
        let drifted = azure(&[(OWNER_TAG, owner), ("team", "b")], "eastus");
        assert!(matches!(
            plan(&spec(false), owner, UID, Some(&drifted), Ok(())),
            Plan::UpdateTags {
                adopting: false,
                ..
            }
        ));
        let foreign = azure(&[("team", "a")], "eastus");
        assert!(
            matches!(plan(&spec(false), owner, UID, Some(&foreign), Ok(())), Plan::Refuse { reason, .. } if reason == reasons::ALREADY_EXISTS)
        );
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&foreign), Ok(())), Plan::UpdateTags { adopting: true, tags } if tags[ADOPTED_TAG] == "true")
        );
        let other_owner = azure(&[(OWNER_TAG, "other/x")], "eastus");
        assert!(matches!(
            plan(&spec(true), owner, UID, Some(&other_owner), Ok(())),
            Plan::Refuse { .. }
        ));
        let elsewhere = azure(&[(OWNER_TAG, owner), ("team", "a")], "westeurope");
        assert!(
            matches!(plan(&spec(false), owner, UID, Some(&elsewhere), Ok(())), Plan::Refuse { reason, .. } if reason == reasons::LOCATION_MISMATCH)
        );
        let adopted = azure(
            &[
                (OWNER_TAG, owner),
                (OWNER_UID_TAG, UID),
                ("team", "a"),
                (ADOPTED_TAG, "true"),
            ],
            "eastus",
        );
        assert_eq!(
            plan(&spec(true), owner, UID, Some(&adopted), Ok(())),
            Plan::InSync
        );
        // Adoption needs a policy, keeps the identity's tags, and never takes another
        // cluster's identity with the same namespace and name.
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&foreign), Err("no".into())), Plan::Refuse { reason, .. } if reason == reasons::DENIED_BY_POLICY)
        );
        let tagged = azure(&[("cost-center", "42")], "eastus");
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&tagged), Ok(())), Plan::UpdateTags { tags, .. } if tags["cost-center"] == "42" && tags["team"] == "a")
        );
        let other_cluster = azure(&[(OWNER_TAG, "c2/ns/id")], "eastus");
        assert!(
            matches!(plan(&spec(true), owner, UID, Some(&other_cluster), Ok(())), Plan::Refuse { reason, .. } if reason == reasons::ALREADY_EXISTS)
        );
    }
}
